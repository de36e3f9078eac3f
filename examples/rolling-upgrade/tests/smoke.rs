//! Runs the example end to end with its short settings.

use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rolling-upgrade"))
        .args(args)
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn quick_upgrade_completes_without_a_failed_request() {
    let out = run(&["--quick"]);
    assert!(out.contains("outcome: completed"), "{out}");
    assert!(out.contains("failed requests: 0"), "{out}");
}

#[test]
fn bad_release_rolls_back_without_a_failed_request() {
    let out = run(&["--quick", "--bad-release"]);
    assert!(out.contains("outcome: rolled back"), "{out}");
    assert!(out.contains("failed requests: 0"), "{out}");
}

#[test]
fn a_release_that_crashes_after_its_bake_is_rolled_back() {
    let out = run(&["--quick", "--crash"]);
    assert!(out.contains("outcome: rolled back"), "{out}");
    assert!(out.contains("exited"), "{out}");
    let failed: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("failed requests: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a count of failed requests");
    println!("failed requests with a crashing v2: {failed}");
    // Only those in flight at each crash (four load tasks, up to four crashes); the margin is
    // wide, the figure printed.
    assert!(failed <= 40, "{out}");
}
