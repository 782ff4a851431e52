//! The trust bundle the proxy verifies peers (and the control plane) against. It starts from the
//! mounted `root-cert.pem` (the `palisade-ca-root-cert` ConfigMap), follows that file — the
//! kubelet swaps ConfigMap files through a symlink, so the content is polled rather than
//! watched — and the ADS `TrustBundle` resource. Whichever changed last wins; a bundle that does
//! not parse is logged and ignored, so the last good one stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::state::Trust;
use crate::ca::TrustBundle;
use crate::ca::bundle::BundleError;
use crate::ca::pem;

/// Largest trust bundle file accepted (a bundle of a few roots is a few KiB).
pub const MAX_BUNDLE_BYTES: u64 = 1024 * 1024;
/// How often the bundle file is re-read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Why a bundle file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_BUNDLE_BYTES`].
    #[error("{0} is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge(PathBuf),
    /// The content is not a usable bundle.
    #[error("{path}: {source}")]
    Bundle {
        /// The file.
        path: PathBuf,
        /// Why.
        source: BundleError,
    },
}

/// Parses concatenated PEM roots into a [`Trust`] (every entry must be a certificate; at most
/// [`crate::ca::bundle::MAX_ROOTS`], duplicates dropped).
pub fn parse(text: &str) -> Result<Trust, BundleError> {
    Ok(from_bundle(&TrustBundle::from_pem(text.as_bytes())?))
}

/// The [`Trust`] of a parsed bundle.
pub fn from_bundle(bundle: &TrustBundle) -> Trust {
    Trust {
        roots_pem: bundle.roots().iter().map(|r| pem::cert_to_pem(r)).collect(),
        roots: bundle.roots().to_vec(),
    }
}

/// The bundle as one PEM text (what the CA client takes).
pub fn to_pem(trust: &Trust) -> String {
    trust.roots_pem.concat()
}

/// Reads `path` (bounded) and returns its text.
pub fn read_file(path: &Path) -> Result<String, TrustError> {
    let io = |source| TrustError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    crate::read_text_limited(file, MAX_BUNDLE_BYTES)
        .map_err(io)?
        .ok_or_else(|| TrustError::TooLarge(path.to_path_buf()))
}

/// Reads and parses `path`: the start-up bundle. Returns the text too, so [`follow_file`]
/// knows what it started from.
pub fn load(path: &Path) -> Result<(String, Trust), TrustError> {
    let text = read_file(path)?;
    let trust = parse(&text).map_err(|source| TrustError::Bundle {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((text, trust))
}

/// Publishes `trust` unless it holds exactly the roots already in force; returns whether it
/// did. (Both sources report the same bundle most of the time: no churn for the listeners.)
pub fn publish(tx: &watch::Sender<Arc<Trust>>, trust: Trust) -> bool {
    tx.send_if_modified(|current| {
        if current.roots == trust.roots {
            return false;
        }
        *current = Arc::new(trust);
        true
    })
}

/// Re-reads `path` every `interval` and publishes its bundle whenever the file's content
/// changed (`last_text` is what was loaded at start). Unreadable or unparsable content is
/// logged once per distinct content and ignored. Ends when every receiver is gone.
pub async fn follow_file(
    path: PathBuf,
    mut last_text: String,
    tx: watch::Sender<Arc<Trust>>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last_error: Option<String> = None;
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        // A few KiB, bounded: reading it inline costs less than a blocking-pool hop.
        let text = match read_file(&path) {
            Ok(text) => text,
            Err(e) => {
                let message = e.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "trust bundle file unreadable; keeping the last good bundle");
                    last_error = Some(message);
                }
                continue;
            }
        };
        if text == last_text {
            continue;
        }
        match parse(&text) {
            Ok(trust) => {
                let roots = trust.roots.len();
                if publish(&tx, trust) {
                    tracing::info!(path = %path.display(), roots, "trust bundle file changed; new handshakes use it");
                }
                last_error = None;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "trust bundle file does not parse; keeping the last good bundle");
                last_error = Some(e.to_string());
            }
        }
        last_text = text;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh self-signed CA certificate, PEM.
    pub(crate) fn root_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn parse_accepts_roots_and_refuses_garbage() {
        let (a, b) = (root_pem(), root_pem());
        let trust = parse(&format!("{a}{b}{a}")).unwrap();
        assert_eq!(trust.roots.len(), 2, "duplicates dropped");
        assert_eq!(trust.roots_pem.len(), 2);
        assert_eq!(parse(&to_pem(&trust)).unwrap().roots, trust.roots);
        assert!(matches!(parse(""), Err(BundleError::Empty)));
        assert!(parse("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n").is_err());
    }

    #[test]
    fn load_bounds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-cert.pem");
        std::fs::write(&path, vec![b'a'; MAX_BUNDLE_BYTES as usize + 1]).unwrap();
        assert!(matches!(load(&path), Err(TrustError::TooLarge(_))));
        assert!(matches!(
            load(&dir.path().join("absent")),
            Err(TrustError::Io { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_file_is_followed_and_a_bad_edit_keeps_the_last_good_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-cert.pem");
        let first = root_pem();
        std::fs::write(&path, &first).unwrap();
        let (text, trust) = load(&path).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(trust));
        tokio::spawn(follow_file(path.clone(), text, tx, POLL_INTERVAL));

        // A rotation adds a second root: published at the next poll.
        let second = root_pem();
        std::fs::write(&path, format!("{first}{second}")).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().roots.len(), 2);

        // Garbage is ignored: several polls later the bundle is still the good one.
        std::fs::write(&path, "not a certificate").unwrap();
        tokio::time::sleep(POLL_INTERVAL * 4).await;
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().roots.len(), 2);

        // The next good content is taken.
        std::fs::write(&path, &second).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().roots, parse(&second).unwrap().roots);
    }

    #[test]
    fn publish_skips_an_identical_bundle() {
        let root = root_pem();
        let (tx, _rx) = watch::channel(Arc::new(parse(&root).unwrap()));
        assert!(!publish(&tx, parse(&root).unwrap()));
        assert!(publish(&tx, parse(&root_pem()).unwrap()));
    }
}
