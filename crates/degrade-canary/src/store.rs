//! Where a rollout's state survives a restart.

use crate::machine::CanaryState;
use degrade_core::durable;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Persists a [`CanaryState`] so that a restarted controller resumes at the same step and
/// weight.
///
/// ```
/// use degrade_canary::{MemoryStore, CanaryPhase, CanaryState, StateStore};
/// let store = MemoryStore::default();
/// assert_eq!(store.load().unwrap(), None);
/// let s = CanaryState { phase: CanaryPhase::Progressing, step: 1, weight_bp: 500, inconclusive: 0 };
/// store.save(&s).unwrap();
/// assert_eq!(store.load().unwrap(), Some(s));
/// ```
pub trait StateStore: Send + Sync + 'static {
    /// The saved state, or `None` if nothing was saved yet.
    fn load(&self) -> io::Result<Option<CanaryState>>;
    /// Saves `state`, replacing the previous one.
    fn save(&self, state: &CanaryState) -> io::Result<()>;
}

/// A JSON file, replaced atomically on every save, so a crash never leaves a half-written
/// state and concurrent writers never tear each other's file.
///
/// Each save writes a temporary file of its own beside the state file
/// (`<name>.<pid>.<n>.tmp`, created exclusively), fsyncs it, renames it over the state file and
/// fsyncs the directory, so the rename itself survives a power cut. Of two concurrent saves
/// the later rename wins, whole. Temporary files left by a process that died mid-save are
/// removed on [`load`](StateStore::load).
///
/// A state file that is not a state (garbage, truncated by something else, larger than
/// 64 KiB) is an error of kind [`InvalidData`](io::ErrorKind::InvalidData) carrying a
/// [`CorruptState`] that names the file; it is never a panic, and the file is left as it is.
///
/// ```
/// use degrade_canary::{FileStore, CanaryPhase, CanaryState, StateStore};
/// let path = std::env::temp_dir().join(format!("canary-doc-{}.json", std::process::id()));
/// let store = FileStore::new(&path);
/// let s = CanaryState { phase: CanaryPhase::Promoted, step: 5, weight_bp: 10_000, inconclusive: 0 };
/// store.save(&s).unwrap();
/// assert_eq!(FileStore::new(&path).load().unwrap(), Some(s));
/// # std::fs::remove_file(&path).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

/// The largest state file read: a state is a few dozen bytes, so anything larger is not one
/// (and reading it whole would let a wrong path, say a log file, exhaust memory).
const MAX_STATE_BYTES: u64 = 64 * 1024;

/// A temporary file older than this whose writer is gone is a leftover of a crash. No save
/// holds its temporary file for more than the time of one small write and fsync.
const STALE_AFTER: Duration = durable::STALE_AFTER;

impl FileStore {
    /// A store at `path` (the file need not exist yet).
    ///
    /// ```
    /// # use degrade_canary::{FileStore, StateStore};
    /// let store = FileStore::new("/nonexistent/dir/state.json");
    /// assert_eq!(store.load().unwrap(), None);
    /// ```
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_owned(),
        }
    }

    /// The file's path.
    ///
    /// ```
    /// # use degrade_canary::FileStore;
    /// assert!(FileStore::new("s.json").path().ends_with("s.json"));
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, reason: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            CorruptState {
                path: self.path.clone(),
                reason,
            },
        )
    }
}

impl StateStore for FileStore {
    fn load(&self) -> io::Result<Option<CanaryState>> {
        durable::remove_stale_temps(&self.path, STALE_AFTER);
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(self.corrupt(format!(
                "larger than {} KiB, not a canary state",
                MAX_STATE_BYTES / 1024
            )));
        }
        match serde_json::from_slice(&bytes) {
            Ok(state) => Ok(Some(state)),
            Err(e) => Err(self.corrupt(e.to_string())),
        }
    }

    fn save(&self, state: &CanaryState) -> io::Result<()> {
        durable::replace(&self.path, &serde_json::to_vec_pretty(state)?)
    }
}

/// A state file that holds no canary state: the error inside the [`io::Error`] (of kind
/// [`InvalidData`](io::ErrorKind::InvalidData)) that [`FileStore::load`](StateStore::load)
/// returns for it.
///
/// ```
/// use degrade_canary::{CorruptState, FileStore, StateStore};
/// let path = std::env::temp_dir().join(format!("canary-corrupt-doc-{}.json", std::process::id()));
/// std::fs::write(&path, b"{\"phase\": tru").unwrap();
/// let err = FileStore::new(&path).load().unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
/// let corrupt = err.get_ref().and_then(|e| e.downcast_ref::<CorruptState>()).unwrap();
/// assert_eq!(corrupt.path, path);
/// assert!(err.to_string().starts_with("corrupt canary state file"));
/// # std::fs::remove_file(&path).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CorruptState {
    /// The state file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for CorruptState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "corrupt canary state file {}: {}",
            self.path.display(),
            self.reason
        )
    }
}

impl std::error::Error for CorruptState {}

/// An in-memory store; clones share it. For tests, and for rollouts that need not survive a
/// restart.
///
/// ```
/// use degrade_canary::{MemoryStore, StateStore};
/// assert!(MemoryStore::default().load().unwrap().is_none());
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore(Arc<Mutex<Option<CanaryState>>>);

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MemoryStore")
            .field(&self.load().ok())
            .finish()
    }
}

impl StateStore for MemoryStore {
    fn load(&self) -> io::Result<Option<CanaryState>> {
        Ok(*self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn save(&self, state: &CanaryState) -> io::Result<()> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(*state);
        Ok(())
    }
}
