//! CI smoke test: runs the example with `--quick` and checks that it exits 0 (every check of
//! the scenario passed).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn quick_run_passes_every_check() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_otlp-pipeline"))
        .arg("--quick")
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
    // Generous: CI boxes are loaded.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the example did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().expect("reader thread");
    println!("{out}");
    assert!(status.success(), "exit status {status}");
    assert!(out.contains("all checks passed"));
}
