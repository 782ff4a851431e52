//! The standalone adapter of [`Source`]: the config directory (`--config-dir`).
//!
//! The directory holds the manifests a user would `kubectl apply`, read exactly as
//! `palisade policy explain --manifests DIR` reads them ([`crate::api::manifest`]): every
//! `.yaml`/`.yml`/`.json` file below it (recursively, hidden entries skipped, name order,
//! multi-document, Istio `apiVersion`s accepted, the same size and count bounds), except the
//! injector's `injection.yaml` at its top. What the files become is described in
//! [`super::dir_inventory`].
//!
//! Changes apply within a second: file notifications (inotify), debounced, trigger a re-scan;
//! where notifications cannot be set up the directory is re-scanned every half second, and
//! otherwise every minute as a safety net for missed events. A re-scan re-reads every file
//! but re-parses only those whose content changed.
//!
//! A file that cannot be read or parsed is reported once per content (an error log line naming
//! file, document and field, and `palisade_controller_config_errors_total`) and its last good
//! content stays in force; the process keeps running. Until every file has parsed once, the
//! source is not synced (`/readyz` fails), so a typo at start-up never serves a mesh without
//! the policy the user wrote.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::SourceMetrics;
use super::dir_inventory::{PolicyAges, build};
use super::inventory::{Inventory, Source};
use crate::api::manifest::{MAX_OBJECTS, ManifestError, Manifests, manifest_files, read_bounded};

/// The injector's configuration, not a manifest.
pub const INJECTION_FILE: &str = "injection.yaml";
/// Quiet time after a notification before the directory is re-scanned.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest a stream of notifications delays a re-scan.
const MAX_DEBOUNCE: Duration = Duration::from_millis(500);
/// Re-scan period when notifications cannot be set up.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Re-scan period with notifications (a safety net for missed events).
const SAFETY_RESCAN: Duration = Duration::from_secs(60);

/// The directory adapter of [`Source`]. Its task and file watch stop when it is dropped.
pub struct DirSource {
    inventory: watch::Receiver<Arc<Inventory>>,
    synced: watch::Receiver<bool>,
    task: JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl DirSource {
    /// Starts following `dir` on the current tokio runtime. Fails only when `dir` is not a
    /// readable directory; everything about its files is reported as it is found.
    pub fn start(dir: PathBuf, metrics: SourceMetrics) -> Result<DirSource, ManifestError> {
        DirSource::start_with(dir, metrics, true)
    }

    /// As [`DirSource::start`]; without `notifications`, the directory is only polled (every
    /// [`POLL_INTERVAL`]), as when they cannot be set up.
    fn start_with(
        dir: PathBuf,
        metrics: SourceMetrics,
        notifications: bool,
    ) -> Result<DirSource, ManifestError> {
        let meta = std::fs::metadata(&dir).map_err(|source| ManifestError::Io {
            path: dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(ManifestError::Io {
                path: dir,
                source: std::io::Error::other("not a directory"),
            });
        }
        let changed = Arc::new(Notify::new());
        let watcher = notifications
            .then(|| watch_dir(&dir, Arc::clone(&changed)))
            .flatten();
        let rescan = if watcher.is_some() {
            SAFETY_RESCAN
        } else {
            POLL_INTERVAL
        };
        let (inventory_tx, inventory) = watch::channel(Arc::new(Inventory::default()));
        let (synced_tx, synced) = watch::channel(false);
        let scanner = Scanner::new(dir, metrics);
        let task = tokio::spawn(run(scanner, changed, rescan, inventory_tx, synced_tx));
        Ok(DirSource {
            inventory,
            synced,
            task,
            _watcher: watcher,
        })
    }
}

impl Source for DirSource {
    fn subscribe(&self) -> watch::Receiver<Arc<Inventory>> {
        self.inventory.clone()
    }

    fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }
}

impl Drop for DirSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A recursive inotify watch on `dir` that wakes `changed` on every event (errors included:
/// an overflowed queue also means "look again"); `None`, with a warning, when it cannot be
/// set up.
fn watch_dir(dir: &Path, changed: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    let handler = move |_event: notify::Result<notify::Event>| changed.notify_one();
    let result = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher.watch(dir, notify::RecursiveMode::Recursive)?;
        Ok(watcher)
    });
    match result {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            warn!(dir = %dir.display(), %error, "cannot watch the config directory; re-scanning it every {} ms", POLL_INTERVAL.as_millis());
            None
        }
    }
}

async fn run(
    mut scanner: Scanner,
    changed: Arc<Notify>,
    rescan: Duration,
    inventory: watch::Sender<Arc<Inventory>>,
    synced: watch::Sender<bool>,
) {
    loop {
        let result = tokio::task::spawn_blocking(move || {
            let outcome = scanner.scan();
            (scanner, outcome)
        })
        .await;
        let outcome;
        (scanner, outcome) = match result {
            Ok(done) => done,
            Err(error) => {
                // A panic while scanning (a bug): nothing left to scan with; keep serving the
                // last snapshot and say so.
                error!(%error, "the config directory scanner failed; the last good state stays in force");
                return;
            }
        };
        if let Some(snapshot) = outcome.publish {
            inventory.send_replace(snapshot);
        }
        if outcome.complete && !*synced.borrow() {
            synced.send_replace(true);
            info!(dir = %scanner.dir.display(), "config directory loaded");
        }
        wait_for_change(&changed, rescan).await;
    }
}

/// Returns after a notification followed by [`DEBOUNCE`] of quiet (at most [`MAX_DEBOUNCE`]
/// after it), or after `rescan` without any.
async fn wait_for_change(changed: &Notify, rescan: Duration) {
    tokio::select! {
        () = changed.notified() => {}
        () = tokio::time::sleep(rescan) => return,
    }
    let first = Instant::now();
    loop {
        tokio::select! {
            () = changed.notified() => {
                if first.elapsed() >= MAX_DEBOUNCE {
                    return;
                }
            }
            () = tokio::time::sleep(DEBOUNCE) => return,
        }
    }
}

/// What one file last gave.
struct FileState {
    /// Hash of the content last seen (good or not), to skip re-parsing and re-reporting it.
    seen: u64,
    /// The last content that parsed; `None` if none has yet.
    good: Option<Manifests>,
}

/// The result of one scan.
#[derive(Default)]
struct ScanOutcome {
    /// A snapshot to publish (something changed).
    publish: Option<Arc<Inventory>>,
    /// Every file present has parsed at least once.
    complete: bool,
}

/// The directory's files and their last good content.
struct Scanner {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    ages: PolicyAges,
    current: Arc<Inventory>,
    metrics: SourceMetrics,
    /// The last directory-level error reported, so a persisting one is reported once.
    dir_error: Option<String>,
    /// Every file has parsed once: from then on a bad file keeps its last good content (or,
    /// new, contributes nothing) while the others apply.
    loaded: bool,
}

impl Scanner {
    fn new(dir: PathBuf, metrics: SourceMetrics) -> Scanner {
        Scanner {
            dir,
            files: BTreeMap::new(),
            ages: PolicyAges::default(),
            current: Arc::new(Inventory::default()),
            metrics,
            dir_error: None,
            loaded: false,
        }
    }

    fn report_dir_error(&mut self, error: &ManifestError) {
        let text = error.to_string();
        if self.dir_error.as_deref() != Some(text.as_str()) {
            error!(dir = %self.dir.display(), error = %text, "config directory not read; the last good state stays in force");
            self.metrics.config_errors.inc();
            self.dir_error = Some(text);
        }
    }

    fn scan(&mut self) -> ScanOutcome {
        let injection = self.dir.join(INJECTION_FILE);
        let paths = match manifest_files(&self.dir) {
            Ok(paths) => paths,
            Err(error) => {
                self.report_dir_error(&error);
                return ScanOutcome::default();
            }
        };
        let mut files = BTreeMap::new();
        let mut objects = 0usize;
        for path in paths.into_iter().filter(|p| *p != injection) {
            let state = self.files.remove(&path);
            let Some(state) = self.read(&path, state) else {
                continue; // deleted since it was listed
            };
            objects += state.good.as_ref().map_or(0, Manifests::object_count);
            files.insert(path, state);
            if objects > MAX_OBJECTS {
                // Bounded like `explain`: stop reading; what was read is kept for the next
                // scan, nothing changes until the directory is back under the limit.
                self.files.extend(files);
                self.report_dir_error(&ManifestError::TooMany {
                    what: "objects",
                    limit: MAX_OBJECTS,
                });
                return ScanOutcome::default();
            }
        }
        for gone in self.files.keys() {
            debug!(file = %gone.display(), "config file removed");
        }
        self.files = files;
        self.dir_error = None;
        let complete = self.files.values().all(|f| f.good.is_some());
        if !complete && !self.loaded {
            // Nothing good served yet and a file never parsed: serve nothing rather than a
            // mesh without that file's policies.
            return ScanOutcome::default();
        }
        let (inventory, duplicates) = build(
            self.files.values().filter_map(|f| f.good.as_ref()),
            &self.current,
            &mut self.ages,
        );
        for duplicate in duplicates {
            warn!(kind = duplicate.kind, object = %duplicate.key, "defined more than once in the config directory; the last definition (file name order) wins");
        }
        self.loaded |= complete;
        let publish = (!inventory.same_records(&self.current)).then(|| {
            self.current = Arc::new(inventory);
            Arc::clone(&self.current)
        });
        ScanOutcome { publish, complete }
    }

    /// Reads one file; a new content is parsed, and a failure is reported once and keeps the
    /// last good content.
    /// `None` when the file is gone (deleted between listing and reading).
    fn read(&self, path: &Path, state: Option<FileState>) -> Option<FileState> {
        let mut state = state.unwrap_or(FileState {
            seen: 0,
            good: None,
        });
        let parsed = read_bounded(path).and_then(|text| {
            let seen = hash(text.as_bytes());
            if seen == state.seen {
                return Ok(None);
            }
            state.seen = seen;
            let mut manifests = Manifests::default();
            manifests.add_str(&text, path).map(|()| Some(manifests))
        });
        match parsed {
            Ok(None) => {}
            Ok(Some(manifests)) => {
                debug!(file = %path.display(), "config file read");
                state.good = Some(manifests);
            }
            Err(ManifestError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                debug!(file = %path.display(), "config file removed while scanning");
                return None;
            }
            Err(error) => {
                let seen = hash(error.to_string().as_bytes());
                // Read errors have no content to hash: report each distinct one once.
                if matches!(
                    error,
                    ManifestError::Io { .. } | ManifestError::TooLarge { .. }
                ) {
                    if state.seen == seen {
                        return Some(state);
                    }
                    state.seen = seen;
                }
                error!(file = %path.display(), %error, "config file not applied; its last good content stays in force");
                self.metrics.config_errors.inc();
            }
        }
        Some(state)
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    // 0 means "never seen".
    hasher.finish().max(1)
}

#[cfg(test)]
#[path = "dir_source_tests.rs"]
mod tests;
