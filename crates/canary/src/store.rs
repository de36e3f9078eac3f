//! Where a rollout's state survives a restart.

use crate::rollout::RolloutState;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Persists a [`RolloutState`] so that a restarted controller resumes at the same step and
/// weight.
///
/// ```
/// use degrade_canary::{MemoryStore, Phase, RolloutState, StateStore};
/// let store = MemoryStore::default();
/// assert_eq!(store.load().unwrap(), None);
/// let s = RolloutState { phase: Phase::Progressing, step: 1, weight_bp: 500, inconclusive: 0 };
/// store.save(&s).unwrap();
/// assert_eq!(store.load().unwrap(), Some(s));
/// ```
pub trait StateStore: Send + Sync + 'static {
    /// The saved state, or `None` if nothing was saved yet.
    fn load(&self) -> io::Result<Option<RolloutState>>;
    /// Saves `state`, replacing the previous one.
    fn save(&self, state: &RolloutState) -> io::Result<()>;
}

/// A JSON file, replaced atomically on every save (written to a temporary file beside it,
/// synced, then renamed over it), so a crash never leaves a half-written state.
///
/// ```
/// use degrade_canary::{FileStore, Phase, RolloutState, StateStore};
/// let path = std::env::temp_dir().join(format!("canary-doc-{}.json", std::process::id()));
/// let store = FileStore::new(&path);
/// let s = RolloutState { phase: Phase::Promoted, step: 5, weight_bp: 10_000, inconclusive: 0 };
/// store.save(&s).unwrap();
/// assert_eq!(FileStore::new(&path).load().unwrap(), Some(s));
/// # std::fs::remove_file(&path).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

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
}

impl StateStore for FileStore {
    fn load(&self) -> io::Result<Option<RolloutState>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&self, state: &RolloutState) -> io::Result<()> {
        use std::io::Write;
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&serde_json::to_vec_pretty(state)?)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }
}

/// An in-memory store; clones share it. For tests, and for rollouts that need not survive a
/// restart.
///
/// ```
/// use degrade_canary::{MemoryStore, StateStore};
/// assert!(MemoryStore::default().load().unwrap().is_none());
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore(Arc<Mutex<Option<RolloutState>>>);

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MemoryStore")
            .field(&self.load().ok())
            .finish()
    }
}

impl StateStore for MemoryStore {
    fn load(&self) -> io::Result<Option<RolloutState>> {
        Ok(*self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn save(&self, state: &RolloutState) -> io::Result<()> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(*state);
        Ok(())
    }
}
