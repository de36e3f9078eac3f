//! Signals read from the operating system: CPU, memory and pressure stall information.
//!
//! # Why cgroup first
//!
//! Inside a container, host-wide figures mislead: a pod limited to 2 CPUs on a 64-CPU node is
//! saturated while the host reads 3 % busy, and its memory limit is hit long before the host's
//! memory is. The readers therefore look for the process's cgroup v2 first (through
//! `/proc/self/cgroup`), take the tightest limit on the way up to the cgroup root (a limit may be
//! set on a parent slice), and fall back to host figures (through `sysinfo`) only where no limit
//! applies.
//!
//! # Reading apart from the math
//!
//! Every reader takes a root directory ([`SignalEnv::root`], `/` in production): the files it
//! reads are `<root>/proc/self/cgroup`, `<root>/sys/fs/cgroup/...` and `<root>/proc/pressure/...`,
//! so tests point it at fixture trees. The parsing and the rate arithmetic are plain functions
//! tested without a machine. A missing or malformed file is an error ([`SignalError`]) the
//! [`Monitor`](crate::Monitor) logs once and reads as unknown; nothing here panics on what the
//! kernel writes.
//!
//! # Rates without sleeping
//!
//! CPU usage is a rate: two readings and the time between them. The readers keep the previous
//! reading and use the monitor's `now`; the first sample of a rate is `Ok(None)` (unknown). The
//! host CPU reading through `sysinfo` needs its two refreshes at least
//! `sysinfo::MINIMUM_CPU_UPDATE_INTERVAL` (200 ms on Linux) apart: a sample sooner than that
//! repeats the previous value rather than refreshing. Nothing sleeps inside a sample.

mod cpu;
mod memory;
pub(crate) mod parse;
mod psi;

pub use self::cpu::{CpuConfig, CpuSignal, CpuSource};
pub use self::memory::{MemoryConfig, MemorySignal, MemorySource};
pub use self::psi::{PsiConfig, PsiKind, PsiResource, PsiScope, PsiSignal};

use crate::signal::SignalError;
use degrade_core::ladder::Thresholds;
use std::io;
use std::path::{Path, PathBuf};

/// Where the OS readers look, and the ladder thresholds their scales anchor to.
///
/// ```
/// use degrade_triggers::os::SignalEnv;
/// let env = SignalEnv::default();
/// assert_eq!(env.root, std::path::PathBuf::from("/"));
/// let fixture = SignalEnv::with_root("tests/fixtures/cgroup-limited");
/// assert!(fixture.root.ends_with("cgroup-limited"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SignalEnv {
    /// The filesystem root: `/` in production, a fixture tree in tests.
    pub root: PathBuf,
    /// The ladder's thresholds (only the `enter` values are used), see [`Scale`](crate::Scale).
    pub anchors: Thresholds,
}

impl Default for SignalEnv {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            anchors: Thresholds::default(),
        }
    }
}

impl SignalEnv {
    /// The default anchors over another root.
    ///
    /// ```
    /// # use degrade_triggers::os::SignalEnv;
    /// assert_eq!(SignalEnv::with_root("/tmp/x").root.to_str(), Some("/tmp/x"));
    /// ```
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            ..Self::default()
        }
    }

    /// The process's cgroup v2, if there is one.
    ///
    /// ```
    /// # use degrade_triggers::os::SignalEnv;
    /// let none = SignalEnv::with_root("/nonexistent").cgroup();
    /// assert!(none.is_none());
    /// ```
    pub fn cgroup(&self) -> Option<Cgroup> {
        Cgroup::discover(&self.root)
    }
}

/// The process's cgroup v2 directory and the mount it lives in.
///
/// ```
/// use degrade_triggers::os::Cgroup;
/// assert!(Cgroup::discover("/nonexistent".as_ref()).is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    mount: PathBuf,
    dir: PathBuf,
}

impl Cgroup {
    /// Finds the cgroup v2 of the process under `root`: the `0::<path>` line of
    /// `<root>/proc/self/cgroup`, under `<root>/sys/fs/cgroup` (unified hierarchy) or
    /// `<root>/sys/fs/cgroup/unified` (hybrid). `None` without cgroup v2.
    ///
    /// ```
    /// # use degrade_triggers::os::Cgroup;
    /// assert!(Cgroup::discover("/nonexistent-root".as_ref()).is_none()); // no cgroup v2 there
    /// ```
    pub fn discover(root: &Path) -> Option<Cgroup> {
        let text = std::fs::read_to_string(root.join("proc/self/cgroup")).ok()?;
        let rel = parse::cgroup_v2_path(&text)?.trim_start_matches('/');
        for mount in ["sys/fs/cgroup", "sys/fs/cgroup/unified"] {
            let mount = root.join(mount);
            if mount.join("cgroup.controllers").is_file() {
                let dir = mount.join(rel);
                if dir.is_dir() {
                    return Some(Cgroup { mount, dir });
                }
            }
        }
        None
    }

    /// The process's cgroup directory.
    ///
    /// ```
    /// # use degrade_triggers::os::Cgroup;
    /// if let Some(cg) = Cgroup::discover("/".as_ref()) {
    ///     assert!(cg.dir().is_dir());
    /// }
    /// ```
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process's cgroup and its parents up to the mount, innermost first.
    pub(crate) fn levels(&self) -> impl Iterator<Item = &Path> {
        self.dir
            .ancestors()
            .take_while(move |p| p.starts_with(&self.mount))
    }
}

/// Reads a file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<String, SignalError> {
    std::fs::read_to_string(path).map_err(|e| SignalError::new(format!("{}: {e}", path.display())))
}

/// Reads a file that may legitimately be absent.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, SignalError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SignalError::new(format!("{}: {e}", path.display()))),
    }
}
