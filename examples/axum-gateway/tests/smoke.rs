//! CI smoke test: runs the example binary with `--quick` and checks that it exits 0 with every
//! check of the scenario passed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with `args`, waiting at most `limit` (generous: CI boxes are loaded).
fn run(args: &[&str], limit: Duration) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_axum-gateway"))
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
fn quick_run_passes_every_check() {
    let (status, out) = run(&["--quick"], Duration::from_secs(120));
    println!("{out}");
    assert!(status.success(), "exit status {status}");
    for line in [
        "phase 1/4 normal",
        "phase 2/4 burst",
        "phase 3/4 outage",
        "phase 4/4 overload",
        "[ok] burst: mallory got 429s",
        "[ok] burst: alice and bob got no 429",
        "[ok] outage: the breaker opened",
        "[ok] outage: the backend received 0 calls while the breaker was open",
        "[ok] outage: the breaker closed again and requests succeed after recovery",
        "[ok] overload: low priority was shed",
        "[ok] overload: shed low >= normal >= high (beyond chance)",
        "[ok] overload: critical was served and refused least of all",
        "[ok] admin: /admin/status answers the token's holder with the level, and 401 to others",
        "[ok] metrics: the scrape lists level, signal pressure, admission, rate limit and breaker",
        "all checks passed",
    ] {
        assert!(out.contains(line), "missing `{line}` in the output");
    }
    assert!(!out.contains("FAILED"));
}

#[test]
fn bad_arguments_are_refused() {
    let (status, _) = run(&["--duration", "soon"], Duration::from_secs(60));
    assert_eq!(status.code(), Some(2));
    let (status, _) = run(&["--frobnicate"], Duration::from_secs(60));
    assert_eq!(status.code(), Some(2));
    let (status, _) = run(&["--ops", "localhost"], Duration::from_secs(60));
    assert_eq!(status.code(), Some(2));
}
