//! CI smoke test: runs the example binary with `--quick` and checks that the tonic client saw
//! each gRPC status the layers answer with, with its RetryInfo delay.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with `args`, waiting at most `limit` (generous: CI boxes are loaded).
fn run(args: &[&str], limit: Duration) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tonic-service"))
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
fn quick_run_shows_every_status_mapping() {
    let (status, out) = run(&["--quick"], Duration::from_secs(120));
    println!("{out}");
    assert!(status.success(), "exit status {status}");
    for line in [
        "ResourceExhausted   rate_limited",
        "Unavailable         circuit_open",
        "Unavailable         shed",
        "[ok] rate limit: acme got RESOURCE_EXHAUSTED with a RetryInfo delay",
        "[ok] rate limit: globex was not limited",
        "[ok] breaker: opened and answered UNAVAILABLE with a RetryInfo delay",
        "[ok] breaker: the handler never ran while the breaker was open",
        "[ok] breaker: closed again once the database was back",
        "[ok] shed: low and normal answered UNAVAILABLE (shed) with a RetryInfo delay",
        "[ok] shed: critical PlaceOrder was served",
        "all checks passed",
    ] {
        assert!(out.contains(line), "missing `{line}` in the output");
    }
    assert!(!out.contains("FAILED"));
}

#[test]
fn bad_arguments_are_refused() {
    let (status, _) = run(&["--duration", "forever"], Duration::from_secs(60));
    assert_eq!(status.code(), Some(2));
    let (status, _) = run(&["--slow"], Duration::from_secs(60));
    assert_eq!(status.code(), Some(2));
}
