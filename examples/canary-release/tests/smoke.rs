//! CI smoke test: runs the example binary with `--quick` and checks that the bad release was
//! rolled back and the good one promoted.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with `args`, waiting at most `limit` (generous: CI boxes are loaded).
fn run(args: &[&str], limit: Duration) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_canary-release"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the example");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).expect("read stdout");
        out
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the example did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().expect("reader thread"))
}

#[test]
fn quick_run_rolls_back_the_bad_release_and_promotes_the_good_one() {
    let (status, out) = run(&["--quick"], Duration::from_secs(120));
    println!("{out}");
    assert!(status.success(), "exit status {status}");
    for line in [
        "verdict: v2-bad ROLLED BACK",
        "hook: v2-bad rolled back",
        "verdict: v2-good PROMOTED",
        "hook: v2-good promoted",
        "[ok] v2-bad was rolled back automatically (weight 0)",
        "[ok] after the rollback every probed user is on v1",
        "[ok] v2-good was promoted to 100 %",
        "[ok] after the promotion every probed user is on v2-good",
        "all checks passed",
    ] {
        assert!(out.contains(line), "missing `{line}` in the output");
    }
    assert!(!out.contains("FAILED"));
}

#[test]
fn bad_arguments_are_refused() {
    let (status, _) = run(&["--duration", "0"], Duration::from_secs(60));
    assert_eq!(status.code(), Some(2));
    let (status, _) = run(&["--fast"], Duration::from_secs(60));
    assert_eq!(status.code(), Some(2));
}
