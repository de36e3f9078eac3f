//! The journal: a JSON-lines file, a header and then one [`Record`] per line, each fsync'd
//! before the controller acts on it.
//!
//! Reading it back ([`load`]) tolerates exactly what a crash can leave behind: a torn last
//! line (an append cut short, possibly in the middle of a multi-byte character, or the zeros a
//! filesystem shows for blocks it never wrote). That line described something not yet acted
//! on; it is dropped with a warning. Anything else that is not a record this rollout could
//! have written at that point is refused with a [`CorruptJournal`] naming the line, and the
//! file is left untouched.
//!
//! Writing is durable: a new journal is written to a temporary file of its own (pid and
//! counter in the name, created exclusively), fsync'd, renamed over the path, and the
//! directory is fsync'd, so a crash leaves either the previous file or a whole header. A torn
//! tail is cut off, and the cut fsync'd, before anything is appended after it.

use crate::config::RolloutConfig;
use crate::error::{CorruptJournal, RolloutError};
use crate::instance::Instance;
use crate::plan::{Record, RolloutMachine};
use degrade_core::{ConfigError, durable};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// The longest line read or written. It bounds what a broken or hostile file can make the
/// reader allocate; a header of about 150,000 instances fits.
pub(crate) const MAX_LINE: usize = 16 << 20;

/// A temporary file older than this whose writer is gone is a leftover of a crash (no write
/// holds one for longer than a header's write and fsync).
const STALE_AFTER: Duration = durable::STALE_AFTER;

/// The first line of a journal: what the rollout is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) target: String,
    pub(crate) config: RolloutConfig,
    pub(crate) instances: Vec<Instance>,
}

/// What the journal file held when the rollout was built.
#[derive(Debug)]
pub(crate) enum Loaded {
    /// Nothing to resume: no file (`len` is `None`), an empty one, or only a torn header.
    Fresh { len: Option<u64> },
    /// A rollout to resume, replayed up to the last whole line.
    Resume {
        planner: Box<RolloutMachine>,
        len: u64,
        valid_len: u64,
    },
}

/// How the controller opens the journal when it runs (checked against what `build` saw).
#[derive(Debug)]
pub(crate) enum Opening {
    /// Write a new journal holding `header` (one line, newline included).
    Create { header: Vec<u8>, seen: Option<u64> },
    /// Cut the file to `valid_len` bytes if it is longer (a torn tail), then append.
    Append { seen: u64, valid_len: u64 },
}

/// The header as a journal line, refused when it would not fit in [`MAX_LINE`].
pub(crate) fn header_line(header: &Header) -> Result<Vec<u8>, RolloutError> {
    let line = to_line(header)?;
    if line.len() > MAX_LINE {
        return Err(ConfigError::new(
            "instances",
            format!(
                "too many for the journal: its header would exceed {} MiB",
                MAX_LINE >> 20
            ),
        )
        .into());
    }
    Ok(line)
}

fn to_line(value: &impl Serialize) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// A serde_json error without its "at line 1 column N" (the line is ours to name).
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let msg = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(m, _)| m);
    format!("{msg} (column {})", e.column())
}

/// Reads the journal at `path` for a rollout of `instances` to `target`.
///
/// # Errors
///
/// [`RolloutError::Config`] (field `journal`) when the file holds another rollout (another
/// target or instance set); [`RolloutError::CorruptJournal`] for a bad line other than a
/// torn last one; [`RolloutError::Journal`] when it cannot be read.
pub(crate) fn load(
    path: &Path,
    target: &str,
    instances: &[Instance],
) -> Result<Loaded, RolloutError> {
    durable::remove_stale_temps(path, STALE_AFTER);
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Fresh { len: None }),
        Err(e) => return Err(e.into()),
    };
    let len = file.metadata()?.len();
    let corrupt =
        |line: usize, reason: String| RolloutError::from(CorruptJournal::new(path, line, reason));
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut line = 0usize;
    let mut valid_len = 0u64;
    let mut planner: Option<RolloutMachine> = None;
    let mut records = 0usize;
    let mut torn = None;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line += 1;
        if buf.last() != Some(&b'\n') {
            if n > MAX_LINE {
                return Err(corrupt(line, format!("longer than {} MiB", MAX_LINE >> 20)));
            }
            // The end of the file without a newline: an append the crash cut short.
            if !buf.iter().all(u8::is_ascii_whitespace) {
                torn = Some((line, n));
            }
            break;
        }
        valid_len += n as u64;
        let text = &buf[..n - 1];
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match planner.as_mut() {
            None => {
                let h: Header = serde_json::from_slice(text).map_err(|e| {
                    corrupt(line, format!("not a journal header: {}", describe(&e)))
                })?;
                check_same_rollout(path, &h, target, instances)?;
                let p = RolloutMachine::new(h.config, h.instances, h.target)
                    .map_err(|e| corrupt(line, format!("header: {e}")))?;
                planner = Some(p);
            }
            Some(p) => {
                let r: Record = serde_json::from_slice(text)
                    .map_err(|e| corrupt(line, format!("not a record: {}", describe(&e))))?;
                p.replay_one(r).map_err(|rule| corrupt(line, rule))?;
                records += 1;
            }
        }
    }
    let Some(mut planner) = planner else {
        if let Some((line, bytes)) = torn {
            tracing::warn!(
                journal = %path.display(),
                line,
                bytes,
                "journal holds only a torn header (a crash while it was created): starting anew"
            );
        }
        return Ok(Loaded::Fresh { len: Some(len) });
    };
    if let Some((line, bytes)) = torn {
        tracing::warn!(
            journal = %path.display(),
            line,
            bytes,
            records,
            "journal ends with a torn line (a crash while appending): dropping it and resuming from the records before it"
        );
    }
    planner.end_replay();
    Ok(Loaded::Resume {
        planner: Box::new(planner),
        len,
        valid_len,
    })
}

fn check_same_rollout(
    path: &Path,
    h: &Header,
    target: &str,
    instances: &[Instance],
) -> Result<(), RolloutError> {
    let other = |what: String| {
        RolloutError::Config(ConfigError::new(
            "journal",
            format!("{} holds {what}", path.display()),
        ))
    };
    if h.target != target {
        return Err(other(format!(
            "a rollout to `{}`, not `{target}`",
            h.target
        )));
    }
    let ids = |v: &[Instance]| {
        let mut ids: Vec<String> = v.iter().map(|i| i.id.clone()).collect();
        ids.sort_unstable();
        ids
    };
    let (journaled, given) = (ids(&h.instances), ids(instances));
    if journaled != given {
        return Err(other(format!(
            "a rollout of instances {journaled:?}, not {given:?}"
        )));
    }
    Ok(())
}

/// Opens the journal for appending as `opening` says, after checking that the file is still
/// what `build` read.
pub(crate) fn open(path: &Path, opening: &Opening) -> io::Result<File> {
    let now = match std::fs::metadata(path) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let changed = || {
        io::Error::other(format!(
            "{} changed between build and run (another controller?); build the rollout again",
            path.display()
        ))
    };
    match opening {
        Opening::Create { header, seen } => {
            if now != *seen {
                return Err(changed());
            }
            durable::replace(path, header)?;
        }
        Opening::Append { seen, valid_len } => {
            if now != Some(*seen) {
                return Err(changed());
            }
            if valid_len < seen {
                let f = OpenOptions::new().write(true).open(path)?;
                f.set_len(*valid_len)?;
                f.sync_all()?;
            }
        }
    }
    OpenOptions::new().append(true).open(path)
}

/// The open journal. Each record is appended and fsync'd on the blocking pool before
/// [`append`](Self::append) returns; dropping the appender (the controller's future dropped
/// mid-append) waits for that write to land, so no write of a stopped controller can reach
/// the file after a new controller has read it.
#[derive(Debug)]
pub(crate) struct Appender {
    file: Arc<File>,
    in_flight: Option<mpsc::Receiver<()>>,
}

impl Appender {
    /// Opens the journal at `path` as `opening` says (on the blocking pool).
    pub(crate) async fn open(path: PathBuf, opening: Opening) -> Result<Self, RolloutError> {
        let file = tokio::task::spawn_blocking(move || {
            let file = open(&path, &opening)?;
            tracing::debug!(journal = %path.display(), "journal open");
            Ok::<_, io::Error>(file)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(Self {
            file: Arc::new(file),
            in_flight: None,
        })
    }

    /// Appends `record` and fsyncs it.
    pub(crate) async fn append(&mut self, record: &Record) -> Result<(), RolloutError> {
        let bytes = record_line(record)?;
        let file = self.file.clone();
        let (done, in_flight) = mpsc::channel();
        self.in_flight = Some(in_flight);
        let write = tokio::task::spawn_blocking(move || {
            let r = (&*file).write_all(&bytes).and_then(|()| file.sync_data());
            let _ = done.send(());
            r
        });
        let r = write.await.map_err(io::Error::other);
        self.in_flight = None;
        r??;
        Ok(())
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            // One append and its fsync at most; returns at once if the write never started
            // (its task was dropped with the runtime).
            let _ = in_flight.recv();
        }
    }
}

/// One line to append, refused when it could not be read back.
pub(crate) fn record_line(record: &Record) -> io::Result<Vec<u8>> {
    let line = to_line(record)?;
    if line.len() > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a journal record longer than {} MiB", MAX_LINE >> 20),
        ));
    }
    Ok(line)
}
