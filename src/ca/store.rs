//! Where the self-signed CA's key and certificate live between restarts.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The persisted self-signed CA: PEM key and certificate, plus the store's version token
/// (a Kubernetes resourceVersion; unused by the directory store).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCa {
    pub key_pem: String,
    pub cert_pem: String,
    pub version: Option<String>,
}

/// The key never appears in logs or panic messages: `Debug` says only that one is there.
impl std::fmt::Debug for StoredCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCa")
            .field("key_pem", &"<redacted>")
            .field("cert_pem", &self.cert_pem)
            .field("version", &self.version)
            .finish()
    }
}

/// Why the store could not be used. All of them stop the CA from starting: no fallback to a
/// fresh in-memory root, which would silently split trust between replicas.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("CA store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA store Secret {name}: {source}")]
    Kube {
        name: String,
        source: Box<kube::Error>,
    },
    #[error("CA store holds malformed data: {0}")]
    Malformed(String),
}

/// Persistence for the self-signed CA.
///
/// `create_if_absent` is the one primitive that makes replicas agree: whoever loses the race
/// gets the winner's material back, so every caller ends up using the same root.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync {
    /// The stored CA, if any.
    async fn load(&self) -> Result<Option<StoredCa>, StoreError>;
    /// Stores `ca` unless something is stored already; returns what is stored afterwards.
    async fn create_if_absent(&self, ca: &StoredCa) -> Result<StoredCa, StoreError>;
    /// Replaces `current` with `new` (a re-issued certificate) only if the store still holds
    /// `current` (compare-and-swap). When someone else replaced it first, nothing is written
    /// and their version is returned instead.
    async fn replace(&self, current: &StoredCa, new: &StoredCa) -> Result<StoredCa, StoreError>;
}

const KEY_FILE: &str = "ca-key.pem";
const CERT_FILE: &str = "ca-cert.pem";
/// Lock file inside `ca/` that serialises replacements (flock(2), held only while comparing
/// and swapping), so the compare-and-swap holds across threads and processes.
const LOCK_FILE: &str = ".lock";
/// CA files are small; a bigger file is not ours.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// A directory store (standalone mode): `<dir>/ca/ca-key.pem` and `ca-cert.pem`, mode 0600.
///
/// Creation is atomic: both files are written into a fresh temporary directory which is then
/// renamed to `ca/`; rename(2) of a directory onto an existing non-empty one fails, so exactly
/// one of several racing writers wins and the others read the winner's files.
#[derive(Clone, Debug)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// A store under `state_dir` (created if missing).
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_path_buf(),
        }
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn load_sync(&self) -> Result<Option<StoredCa>, StoreError> {
        let dir = self.ca_dir();
        if !dir.exists() {
            return Ok(None);
        }
        let key_pem = read_bounded(&dir.join(KEY_FILE))?;
        let cert_pem = read_bounded(&dir.join(CERT_FILE))?;
        Ok(Some(StoredCa {
            key_pem,
            cert_pem,
            version: None,
        }))
    }

    fn create_sync(&self, ca: &StoredCa) -> Result<StoredCa, StoreError> {
        create_private_dir(&self.dir).map_err(Self::io(&self.dir))?;
        let tmp = self
            .dir
            .join(format!(".ca-{}-{}", std::process::id(), unique_suffix()));
        std::fs::create_dir(&tmp).map_err(Self::io(&tmp))?;
        write_private(&tmp.join(KEY_FILE), ca.key_pem.as_bytes())?;
        write_private(&tmp.join(CERT_FILE), ca.cert_pem.as_bytes())?;
        let target = self.ca_dir();
        match std::fs::rename(&tmp, &target) {
            Ok(()) => {}
            // Lost the race (ENOTEMPTY / EEXIST): drop ours, use theirs.
            Err(_) if target.exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(Self::io(&target)(e));
            }
        }
        self.load_sync()?
            .ok_or_else(|| StoreError::Malformed("CA vanished after create".into()))
    }

    fn replace_sync(&self, current: &StoredCa, new: &StoredCa) -> Result<StoredCa, StoreError> {
        let dir = self.ca_dir();
        let lock_path = dir.join(LOCK_FILE);
        let lock = open_lock(&lock_path)?;
        lock.lock().map_err(Self::io(&lock_path))?;
        let stored = self
            .load_sync()?
            .ok_or_else(|| StoreError::Malformed("CA vanished before replace".into()))?;
        if stored.key_pem != current.key_pem || stored.cert_pem != current.cert_pem {
            // Someone else replaced it first: theirs stands, ours is not written.
            return Ok(stored);
        }
        // The key never changes on re-issue, so replacing the certificate file atomically
        // (write + rename) is the whole update.
        let tmp = dir.join(format!(".{CERT_FILE}.{}", unique_suffix()));
        write_private(&tmp, new.cert_pem.as_bytes())?;
        let target = dir.join(CERT_FILE);
        if let Err(e) = std::fs::rename(&tmp, &target) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Self::io(&target)(e));
        }
        let replaced = self.load_sync()?;
        drop(lock);
        replaced.ok_or_else(|| StoreError::Malformed("CA vanished after replace".into()))
    }
}

/// Opens (creating, 0600) the lock file of a replacement.
fn open_lock(path: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn unique_suffix() -> String {
    let mut b = [0u8; 8];
    // Uniqueness only matters against our own concurrent writers; a clock fallback is fine.
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return format!("{:?}", std::time::SystemTime::now());
    }
    crate::hex(&b)
}

/// Reads a file of at most [`MAX_FILE_BYTES`] as UTF-8, with the crate's one bounded reader
/// (it stops after the bound, so a file growing between a size check and the read cannot
/// make us hold more).
pub(crate) fn read_bounded(path: &Path) -> Result<String, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    match crate::read_text_limited(file, MAX_FILE_BYTES) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(StoreError::Malformed(format!(
            "{} is more than {MAX_FILE_BYTES} bytes",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(StoreError::Malformed(
            format!("{} is not UTF-8", path.display()),
        )),
        Err(e) => Err(io(e)),
    }
}

/// Creates `dir` (and parents) as 0700 if missing; an existing directory is left as it is.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Publishes `data` at `path` only if nothing is there yet, atomically: readers see either no
/// file or the complete one (temp file, then link(2), which fails when `path` exists).
/// Returns false when another writer got there first.
pub(crate) fn publish_private_once(path: &Path, data: &[u8]) -> Result<bool, StoreError> {
    let tmp = path.with_extension(format!("tmp-{}", unique_suffix()));
    write_private(&tmp, data)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a new file readable by its owner only (0600 from creation, never wider).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

#[async_trait::async_trait]
impl KeyStore for DirStore {
    async fn load(&self) -> Result<Option<StoredCa>, StoreError> {
        let this = self.clone();
        blocking(move || this.load_sync()).await
    }

    async fn create_if_absent(&self, ca: &StoredCa) -> Result<StoredCa, StoreError> {
        let (this, ca) = (self.clone(), ca.clone());
        blocking(move || this.create_sync(&ca)).await
    }

    async fn replace(&self, current: &StoredCa, new: &StoredCa) -> Result<StoredCa, StoreError> {
        let (this, current, new) = (self.clone(), current.clone(), new.clone());
        blocking(move || this.replace_sync(&current, &new)).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Malformed(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn ca(n: u8) -> StoredCa {
        StoredCa {
            key_pem: format!("key{n}"),
            cert_pem: format!("cert{n}"),
            version: None,
        }
    }

    #[tokio::test]
    async fn create_then_load_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        assert_eq!(store.load().await.unwrap(), None);
        let stored = store.create_if_absent(&ca(1)).await.unwrap();
        assert_eq!(stored, ca(1));
        assert_eq!(store.create_if_absent(&ca(2)).await.unwrap(), ca(1));
        for f in [KEY_FILE, CERT_FILE] {
            let mode = std::fs::metadata(dir.path().join("ca").join(f))
                .unwrap()
                .permissions();
            assert_eq!(mode.mode() & 0o777, 0o600, "{f}");
        }
        let new = StoredCa {
            cert_pem: "new".into(),
            ..ca(1)
        };
        assert_eq!(store.replace(&stored, &new).await.unwrap().cert_pem, "new");
    }

    #[test]
    fn racing_stores_end_with_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let results: Vec<StoredCa> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| {
                    let store = DirStore::new(&path);
                    s.spawn(move || store.create_sync(&ca(i)).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(
            leftovers.len(),
            1,
            "temporary directories must be cleaned up"
        );
    }

    #[test]
    fn racing_replacers_leave_one_winner_and_one_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let current = store.create_sync(&ca(1)).unwrap();
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<(StoredCa, StoredCa)> = std::thread::scope(|s| {
            let handles: Vec<_> = ["mine", "theirs"]
                .map(|cert| {
                    let (store, current, barrier) = (store.clone(), current.clone(), &barrier);
                    s.spawn(move || {
                        let new = StoredCa {
                            cert_pem: cert.into(),
                            ..current.clone()
                        };
                        barrier.wait();
                        let got = store.replace_sync(&current, &new).unwrap();
                        (new, got)
                    })
                })
                .into_iter()
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners = results.iter().filter(|(new, got)| new == got).count();
        assert_eq!(winners, 1, "{results:?}");
        // The loser got the winner's version back, which is what the store holds.
        assert_eq!(results[0].1, results[1].1);
        assert_eq!(store.load_sync().unwrap(), Some(results[0].1.clone()));
    }

    #[test]
    fn replace_of_a_stale_version_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let current = store.create_sync(&ca(1)).unwrap();
        let stale = StoredCa {
            cert_pem: "an older certificate".into(),
            ..current.clone()
        };
        let new = StoredCa {
            cert_pem: "new".into(),
            ..current.clone()
        };
        assert_eq!(store.replace_sync(&stale, &new).unwrap(), current);
        assert_eq!(store.load_sync().unwrap(), Some(current));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let stored = StoredCa {
            key_pem: "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n".into(),
            ..ca(1)
        };
        let shown = format!("{stored:?} {stored:#?}");
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains("secret"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn oversize_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, vec![b'a'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        assert!(matches!(read_bounded(&p), Err(StoreError::Malformed(_))));
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_bounded(&p), Err(StoreError::Malformed(m)) if m.contains("UTF-8")));
    }
}
