//! Files replaced whole, durably: what the canary's state store and the rollout's journal
//! write, written once.
//!
//! [`replace`] writes a temporary file of its own beside the target (`<name>.<pid>.<n>.tmp`,
//! created exclusively), fsyncs it, renames it over the target and fsyncs the directory, so a
//! crash leaves either the previous file or the new one whole, the rename itself survives a
//! power cut, and of two concurrent writers the later rename wins, whole.
//! [`remove_stale_temps`] removes the temporary files of writers that died mid-write.
//!
//! ```
//! use degrade_core::durable;
//! let path = std::env::temp_dir().join(format!("durable-doc-{}.json", std::process::id()));
//! durable::replace(&path, b"{\"a\": 1}").unwrap();
//! durable::replace(&path, b"{\"a\": 2}").unwrap();
//! assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\": 2}");
//! # std::fs::remove_file(&path).unwrap();
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A temporary file older than this whose writer is gone is a leftover of a crash: no write
/// holds its temporary file for longer than one small write and fsync.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Replaces `path` with `bytes` durably: temporary file, fsync, rename, fsync of the directory.
/// On an error the temporary file is removed and `path` is as it was.
///
/// ```
/// # use degrade_core::durable;
/// let missing = std::env::temp_dir().join("no-such-dir-durable-doc").join("state.json");
/// assert!(durable::replace(&missing, b"x").is_err());
/// ```
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (tmp, mut file) = create_temp(path)?;
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, path)
        })
        .and_then(|()| sync_dir(path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs the directory that holds `path`, so a rename or a creation in it survives a power
/// cut.
///
/// ```
/// # use degrade_core::durable;
/// durable::sync_dir(&std::env::temp_dir().join("any-file")).unwrap();
/// ```
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(dir_of(path))?.sync_all()
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `<name>.<pid>.<n>.tmp` beside `path`, created exclusively.
fn create_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    loop {
        let mut tmp = name.to_owned();
        tmp.push(format!(
            ".{}.{}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dir_of(path).join(tmp);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            // Left by an earlier process with this pid: take the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
}

/// Removes the temporary files of `path` left by writers that died before renaming them: older
/// than `stale_after`, of another process, and that process gone. Errors are ignored (a file
/// that stays is removed next time).
///
/// ```
/// # use degrade_core::durable;
/// let dir = std::env::temp_dir();
/// let path = dir.join(format!("durable-stale-doc-{}.json", std::process::id()));
/// // A temp file of a live writer (this process) is kept, whatever its age.
/// let mine = dir.join(format!("{}.{}.0.tmp", path.file_name().unwrap().to_str().unwrap(), std::process::id()));
/// std::fs::write(&mine, b"x").unwrap();
/// durable::remove_stale_temps(&path, std::time::Duration::ZERO);
/// assert!(mine.exists());
/// # std::fs::remove_file(&mine).unwrap();
/// ```
pub fn remove_stale_temps(path: &Path, stale_after: Duration) {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir_of(path)) else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| {
                f.strip_prefix(name)?
                    .strip_prefix('.')?
                    .strip_suffix(".tmp")
            })
            .and_then(|rest| rest.split_once('.'))
            .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= stale_after);
        if pid != own && old && !process_exists(pid) {
            tracing::debug!(temp = %entry.path().display(), pid, "removing a stale temporary file");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether a process with this pid exists (where that cannot be known: yes; a reused pid keeps
/// a stale file one more time).
fn process_exists(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(raw) = i32::try_from(pid) else {
            return false;
        };
        !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
            Err(nix::errno::Errno::ESRCH)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}
