//! Runs the whole example (three instance processes and a redis-server it starts itself) and
//! checks every scene's outcome. Needs `redis-server` on `PATH`, as CI installs it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_fleet_example_rolls_back_promotes_pins_survives_a_redis_restart_and_shares_the_quota() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleet-example"))
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
    // Generous: the run takes about 20 s, CI machines are loaded.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the example did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().expect("reader thread");
    println!("{out}");
    assert!(status.success(), "exit status {status}");
    for line in [
        "[ok] v2-bad rolled back on every instance (weight 0)",
        "[ok] all three at weight 0 within 1 s of the verdict",
        "[ok] v2-good promoted on every instance (weight 100 %)",
        "[ok] one leader, no write refused",
        "[ok] every instance at Heavy within 1 s of the write",
        "[ok] every instance released the pin at its expiry, not before",
        "[ok] every instance back at Normal by its own (calm) signals",
        "audit: pin heavy for 3000 ms by example-operator",
        "[ok] every router kept the last weight for stale_after (2 s), then went to stable",
        "[ok] a leader rewrote the last state it knew: every router at 100 % again",
        "[ok] the three together admitted at most quota · t + burst",
        "[ok] while Redis was down every instance decided by its local fallback, counted",
        "[ok] decisions back on Redis after the restart",
        "[ok] every request sent was decided once, by Redis or by the fallback (offered = Redis + fallback)",
        "all checks passed",
    ] {
        assert!(out.contains(line), "missing `{line}` in the output");
    }
    assert!(!out.contains("FAILED"));
}
