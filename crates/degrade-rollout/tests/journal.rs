//! The journal on real files: what a crash leaves behind is recovered, anything else is
//! refused with the line named, and nothing is ever truncated or overwritten silently.

mod support;

use degrade_rollout::discover::Pool;
use degrade_rollout::{
    CorruptJournal, Instance, RolloutConfig, RolloutController, RolloutError, RolloutOutcome,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::Recorder;

fn fleet(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|k| {
            let addr: SocketAddr = format!("127.0.0.1:{}", 7000 + k).parse().unwrap();
            Instance::new(format!("i{k}"), addr, "v1")
        })
        .collect()
}

fn config() -> RolloutConfig {
    RolloutConfig {
        min_ready: Duration::from_millis(1),
        health_interval: Duration::from_millis(1),
        healthy_threshold: 1,
        drain_timeout: Duration::from_secs(1),
        post_watch: Duration::from_millis(2),
        ..RolloutConfig::default()
    }
}

/// A fresh directory per test (tests run in parallel).
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "degrade-rollout-journal-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

type Built = Result<
    (
        RolloutController<Recorder, SocketAddr>,
        degrade_rollout::RolloutHandle,
    ),
    RolloutError,
>;

fn build(driver: &Recorder, path: &Path, instances: Vec<Instance>) -> Built {
    RolloutController::builder(driver.clone(), Pool::new(|i: &Instance| i.address))
        .config(config())
        .journal(path)
        .build(instances, "v2")
}

/// Runs a rollout of three instances to completion and returns its journal's lines.
fn complete_journal(path: &Path) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (rollout, _h) = build(&Recorder::default(), path, fleet(3)).unwrap();
    let report = rt.block_on(rollout.run()).unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'));
    text.lines().map(str::to_owned).collect()
}

/// The first `k` lines of `lines`, each with its newline.
fn prefix(lines: &[String], k: usize) -> Vec<u8> {
    lines[..k]
        .iter()
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect()
}

/// Captures what `f` logs.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || out.clone())
        .with_ansi(false)
        .finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (r, text)
}

fn corrupt(r: Built) -> CorruptJournal {
    match r {
        Err(RolloutError::CorruptJournal(c)) => c,
        Err(e) => panic!("expected a corrupt journal, got {e}"),
        Ok(_) => panic!("expected a corrupt journal, got a rollout"),
    }
}

/// Resumes from `lines[..k]` followed by `tail` (no newline): the tail is dropped with a
/// warning, the resumed rollout completes without redoing what the prefix recorded, and the
/// file ends as the prefix, byte for byte, plus the new records.
fn resume_after_torn_tail(name: &str, tail: &[u8]) {
    let d = dir(name);
    let path = d.join("rollout.jsonl");
    let lines = complete_journal(&path);
    // Cut just after the first instance's batch (its bake is done).
    let k = lines
        .iter()
        .position(|l| l.contains(r#""batch":1"#))
        .expect("a second batch");
    let mut bytes = prefix(&lines, k);
    let kept = bytes.clone();
    bytes.extend_from_slice(tail);
    std::fs::write(&path, &bytes).unwrap();

    let driver = Recorder::default();
    let (built, log) = logged(|| build(&driver, &path, fleet(3)));
    let (rollout, _h) = built.expect("a torn last line is recovered");
    assert!(log.contains("torn line"), "the recovery is logged: {log}");
    assert!(log.contains(&format!("line={}", k + 1)), "{log}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "build does not write");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(rollout.run()).unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    let calls = driver.calls();
    assert!(
        calls.iter().all(|(id, _)| id != "i0"),
        "i0 was upgraded before the crash and not touched again: {calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|(_, c)| *c == "install").count(),
        2,
        "{calls:?}"
    );

    let after = std::fs::read(&path).unwrap();
    assert!(
        after.starts_with(&kept),
        "the history before the tear is kept"
    );
    let text = String::from_utf8(after).expect("no torn bytes left");
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is whole");
    }
    assert!(text.ends_with("{\"record\":\"finished\",\"outcome\":\"completed\"}\n"));
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_torn_utf8_tail_is_dropped_and_the_history_kept() {
    // A failure reason cut in the middle of "é" (0xC3 0xA9).
    resume_after_torn_tail(
        "utf8",
        b"{\"record\":\"failed\",\"id\":\"i1\",\"reason\":\"caf\xc3",
    );
}

#[test]
fn a_torn_json_line_is_dropped_and_the_rollout_resumes() {
    resume_after_torn_tail("json", br#"{"record":"step_done","id":"i1","st"#);
}

#[test]
fn a_tail_of_zeros_left_by_the_filesystem_is_dropped() {
    resume_after_torn_tail("zeros", &[0u8; 37]);
}

#[test]
fn garbage_in_the_middle_of_the_journal_is_refused_naming_the_line() {
    let d = dir("middle");
    let path = d.join("rollout.jsonl");
    let lines = complete_journal(&path);
    let mut bad = lines.clone();
    bad[3] = "#!garbage".to_owned();
    let bytes = prefix(&bad, bad.len());
    std::fs::write(&path, &bytes).unwrap();
    let c = corrupt(build(&Recorder::default(), &path, fleet(3)));
    assert_eq!(c.line, 4);
    assert_eq!(c.path, path);
    assert!(c.reason.contains("not a record"), "{c}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the file is left as it was"
    );

    // Invalid UTF-8 in the middle is garbage too, not a reason to start anew.
    let mut bytes = prefix(&lines, 2);
    bytes.extend_from_slice(b"{\"record\":\"paused\xff\"}\n");
    bytes.extend_from_slice(&prefix(&lines, lines.len())[prefix(&lines, 2).len()..]);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        corrupt(build(&Recorder::default(), &path, fleet(3))).line,
        3
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_bad_last_line_with_its_newline_is_refused_not_dropped() {
    // Our appends write the newline last: a whole bad line is not a crash's tear.
    let d = dir("badlast");
    let path = d.join("rollout.jsonl");
    let lines = complete_journal(&path);
    let mut bytes = prefix(&lines, 4);
    bytes.extend_from_slice(b"{\"record\":\"nonsense\"}\n");
    std::fs::write(&path, &bytes).unwrap();
    let c = corrupt(build(&Recorder::default(), &path, fleet(3)));
    assert_eq!(c.line, 5);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_record_that_does_not_fit_the_rollout_is_refused() {
    let d = dir("nofit");
    let path = d.join("rollout.jsonl");
    let lines = complete_journal(&path);
    let mut bytes = prefix(&lines, 1);
    bytes.extend_from_slice(
        b"{\"record\":\"batch_started\",\"direction\":\"upgrade\",\"batch\":9}\n",
    );
    std::fs::write(&path, &bytes).unwrap();
    let c = corrupt(build(&Recorder::default(), &path, fleet(3)));
    assert_eq!(c.line, 2);
    assert!(c.reason.contains("batch 9 does not exist"), "{c}");

    // Or a step of an instance whose batch has not started.
    let mut bytes = prefix(&lines, 1);
    bytes.extend_from_slice(
        b"{\"record\":\"step_done\",\"id\":\"i2\",\"step\":{\"kind\":\"stop\",\"target\":\"current\"}}\n",
    );
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        corrupt(build(&Recorder::default(), &path, fleet(3))).line,
        2
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_empty_journal_starts_a_fresh_rollout() {
    for (name, content) in [("empty", &b""[..]), ("blank", &b"\n  \n"[..])] {
        let d = dir(name);
        let path = d.join("rollout.jsonl");
        std::fs::write(&path, content).unwrap();
        let driver = Recorder::default();
        let (rollout, _h) = build(&driver, &path, fleet(2)).unwrap();
        assert_eq!(rollout.machine().current_batch(), None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(
            rt.block_on(rollout.run()).unwrap().outcome,
            RolloutOutcome::Completed
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"target\":\"v2\""), "{text}");
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn a_torn_header_alone_starts_a_fresh_rollout() {
    let d = dir("tornheader");
    let path = d.join("rollout.jsonl");
    std::fs::write(&path, b"{\"target\":\"v2\",\"config\":{\"max_su").unwrap();
    let (built, log) = logged(|| build(&Recorder::default(), &path, fleet(2)));
    let (rollout, _h) = built.unwrap();
    assert!(log.contains("torn header"), "{log}");
    assert_eq!(rollout.machine().current_batch(), None);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_journal_of_other_instances_is_rejected() {
    let d = dir("other");
    let path = d.join("rollout.jsonl");
    complete_journal(&path);
    let before = std::fs::read(&path).unwrap();
    let mut others = fleet(3);
    others[2].id = "web-9".into();
    match build(&Recorder::default(), &path, others) {
        Err(RolloutError::Config(e)) => {
            assert_eq!(e.field(), "journal");
            assert!(e.to_string().contains("web-9"), "{e}");
        }
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
    // Another target too.
    let r = RolloutController::builder(Recorder::default(), Pool::new(|i: &Instance| i.address))
        .journal(&path)
        .build(fleet(3), "v3");
    assert!(matches!(r, Err(RolloutError::Config(ref e)) if e.field() == "journal"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_unreadable_journal_is_an_error_not_a_fresh_start() {
    let d = dir("unreadable");
    // A directory where the file should be: reading it fails.
    let path = d.join("rollout.jsonl");
    std::fs::create_dir(&path).unwrap();
    assert!(matches!(
        build(&Recorder::default(), &path, fleet(2)),
        Err(RolloutError::Journal(_))
    ));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_journal_changed_between_build_and_run_is_not_overwritten() {
    let d = dir("changed");
    let path = d.join("rollout.jsonl");
    let (rollout, _h) = build(&Recorder::default(), &path, fleet(2)).unwrap();
    std::fs::write(&path, b"someone else's\n").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(rollout.run()).unwrap_err();
    assert!(matches!(err, RolloutError::Journal(_)), "{err}");
    assert!(
        err.to_string().contains("changed between build and run"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else's\n");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn stale_temp_files_of_dead_processes_are_removed() {
    let d = dir("stale");
    let path = d.join("rollout.jsonl");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = d.join(format!("rollout.jsonl.{dead}.0.tmp"));
    let live = d.join(format!("rollout.jsonl.{}.7.tmp", std::process::id()));
    let unrelated = d.join("rollout.jsonl.notes.tmp");
    let fresh = d.join(format!("rollout.jsonl.{dead}.1.tmp"));
    let two_minutes_ago = std::time::SystemTime::now() - Duration::from_secs(120);
    for p in [&stale, &live, &unrelated, &fresh] {
        std::fs::write(p, b"x").unwrap();
        if p != &fresh {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(two_minutes_ago).unwrap();
        }
    }
    let _ = build(&Recorder::default(), &path, fleet(2)).unwrap();
    assert!(
        !stale.exists(),
        "the dead writer's old temp file is removed"
    );
    assert!(live.exists(), "a live writer's temp file is kept");
    assert!(
        fresh.exists(),
        "a recent one is kept (its writer may be in another pid namespace)"
    );
    assert!(unrelated.exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_controller_resumed_during_the_post_rollout_watch_keeps_watching_then_completes() {
    let d = dir("watch");
    let path = d.join("rollout.jsonl");
    let lines = complete_journal(&path);
    // Cut just after the watch began: every batch done, not yet completed.
    let k = lines
        .iter()
        .position(|l| l.contains(r#""record":"watch_started""#))
        .expect("the journal records the watch")
        + 1;
    assert!(lines[k].contains("finished"), "{lines:?}");
    std::fs::write(&path, prefix(&lines, k)).unwrap();

    let driver = Recorder::default();
    let (rollout, handle) = build(&driver, &path, fleet(3)).unwrap();
    assert_eq!(
        rollout.machine().phase(),
        degrade_rollout::plan::RolloutPhase::Watching
    );
    assert_eq!(rollout.machine().watched().len(), 3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(rollout.run()).unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    assert_eq!(handle.status().outcome, Some(RolloutOutcome::Completed));
    // Nothing upgraded again: the resumed controller only watched.
    let calls = driver.calls();
    assert!(calls.is_empty(), "{calls:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with("{\"record\":\"finished\",\"outcome\":\"completed\"}\n"));
    let _ = std::fs::remove_dir_all(&d);
}
