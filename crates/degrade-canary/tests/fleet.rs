//! The fleet canary with real processes: a `redis-server` started on a free port and three
//! instances of the `degrade-canary-fleet-instance` binary (`src/bin/fleet_instance.rs`, built
//! by `cargo test`), each its own router,
//! load and candidate controller. The tests read the instances' `STATUS` lines and Redis; they
//! wait on observed state with generous bounds and never sleep in place of a clock.
#![cfg(feature = "redis")]

use degrade_canary::Canary;
use degrade_canary::fleet::{FleetCanary, FleetCanaryConfig};
use degrade_core::fleet::testing::RedisServer;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The tests run one at a time: each starts three instances, and four rollouts at once on a
/// shared two-core machine would starve each other's load.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The instance binary, built by `cargo test` for this test.
const INSTANCE: &str = env!("CARGO_BIN_EXE_degrade-canary-fleet-instance");

/// The configuration every instance of a test shares (`IID` becomes the instance's name).
fn config(url: &str, name: &str, steps: &str) -> String {
    format!(
        r#"{{"url":"{url}","name":"{name}","instance":"IID","poll":"100ms","timeout":"200ms",
        "lease":"1s","publish":"250ms","stale_after":"2s",
        "canary":{{"steps":{steps},"analysis_interval":"500ms","judge":{{"min_samples":200}}}}}}"#
    )
}

struct Instance {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String, Value)>>>,
}

impl Instance {
    fn start(cfg: &str, i: usize, env: &[(&str, &str)]) -> Self {
        let name = format!("i{i}");
        let mut cmd = Command::new(INSTANCE);
        cmd.env("FLEET_CONFIG", cfg.replace("IID", &name))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some((tag, json)) = line.split_once(' ')
                    && let Ok(v) = serde_json::from_str::<Value>(json)
                {
                    sink.lock()
                        .unwrap()
                        .push((Instant::now(), tag.to_owned(), v));
                }
            }
        });
        Self { name, child, lines }
    }

    fn last(&self) -> Option<Value> {
        let l = self.lines.lock().unwrap();
        l.iter()
            .rev()
            .find(|(_, t, _)| t == "STATUS")
            .map(|(_, _, v)| v.clone())
    }

    fn done(&self) -> Option<Value> {
        let l = self.lines.lock().unwrap();
        l.iter()
            .find(|(_, t, _)| t == "DONE")
            .map(|(_, _, v)| v.clone())
    }

    /// The first status line at or after `since` that satisfies `f`, and when it came.
    fn first_after(&self, since: Instant, f: impl Fn(&Value) -> bool) -> Option<(Instant, Value)> {
        let l = self.lines.lock().unwrap();
        l.iter()
            .find(|(at, t, v)| *at >= since && t == "STATUS" && f(v))
            .map(|(at, _, v)| (*at, v.clone()))
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for(what: &str, fleet: &[&Instance], bound: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !f() {
        if Instant::now() >= deadline {
            let last: Vec<String> = fleet
                .iter()
                .map(|i| format!("{}: {:?}", i.name, i.last()))
                .collect();
            panic!(
                "timed out waiting for {what}; last status:\n{}",
                last.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn phase(v: &Value) -> Option<(String, u64)> {
    let s = v.get("state")?;
    Some((s["phase"].as_str()?.to_owned(), s["step"].as_u64()?))
}

fn leader(v: &Value) -> bool {
    v["leader"].as_bool() == Some(true)
}

const STEPS: &str = r#"[{"weight_percent":10,"bake":"1s"},{"weight_percent":50,"bake":"3s"},
    {"weight_percent":100,"bake":"1s"}]"#;

/// A candidate failing 30 % of its calls, three instances: one leader's verdict rolls the
/// rollout back, and every router is at weight 0 within a second of it (one poll is 100 ms);
/// one leader only, and no instance ever refused a write.
#[test]
fn a_bad_v2_is_rolled_back_on_every_instance() {
    let _serial = serial();
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "bad", STEPS);
    let fleet: Vec<Instance> = (0..3)
        .map(|i| Instance::start(&cfg, i, &[("FLEET_BAD", "0.3")]))
        .collect();
    wait_for(
        "the rollback on every instance",
        &fleet.iter().collect::<Vec<_>>(),
        Duration::from_secs(60),
        || {
            fleet.iter().all(|i| {
                i.last().is_some_and(|v| {
                    phase(&v).is_some_and(|(p, _)| p == "RolledBack") && v["weight_bp"] == 0
                })
            })
        },
    );
    let leaders: Vec<&Instance> = fleet
        .iter()
        .filter(|i| i.last().is_some_and(|v| v["terms"].as_u64() > Some(0)))
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one instance led");
    let verdict_at = leaders[0]
        .first_after(Instant::now() - Duration::from_secs(600), |v| {
            phase(v).is_some_and(|(p, _)| p == "RolledBack")
        })
        .unwrap()
        .0;
    for i in &fleet {
        let v = i.last().unwrap();
        assert_eq!(v["refused_writes"], 0, "{}", i.name);
        let (at, _) = i
            .first_after(Instant::now() - Duration::from_secs(600), |v| {
                v["weight_bp"] == 0 && phase(v).is_some_and(|(p, _)| p == "RolledBack")
            })
            .unwrap();
        let lag = at.saturating_duration_since(verdict_at);
        println!("{} at weight 0 {lag:?} after the leader's verdict", i.name);
        // Status lines come every 100 ms and polls every 100 ms: a router lags the verdict by
        // a poll and a status line; a second is ten polls.
        assert!(lag <= Duration::from_secs(1), "{}: {lag:?}", i.name);
    }
}

/// A good candidate; the leader is killed (SIGKILL) once the rollout reached its second step:
/// another instance takes the lease within the lease time (1 s, plus a poll for the attempt),
/// resumes at that same step (never at the first), and the rollout ends promoted on every
/// survivor.
#[test]
fn a_killed_leader_is_replaced_within_the_lease_at_the_same_step() {
    let _serial = serial();
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "takeover", STEPS);
    let mut fleet: Vec<Instance> = (0..3).map(|i| Instance::start(&cfg, i, &[])).collect();
    let mut k = usize::MAX;
    let all: Vec<&Instance> = fleet.iter().collect();
    // The second step bakes for 3 s from its start: it is still the step when the kill lands.
    wait_for(
        "a leader at the second step",
        &all,
        Duration::from_secs(60),
        || {
            k = all
                .iter()
                .position(|i| {
                    i.last()
                        .is_some_and(|v| leader(&v) && phase(&v).is_some_and(|(_, s)| s == 1))
                })
                .unwrap_or(usize::MAX);
            k != usize::MAX
        },
    );
    let token = fleet[k].last().unwrap()["token"].as_u64().unwrap();
    fleet[k].kill();
    let killed = Instant::now();
    let survivors: Vec<&Instance> = fleet
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != k)
        .map(|(_, i)| i)
        .collect();
    let mut next = None;
    wait_for("a new leader", &survivors, Duration::from_secs(10), || {
        next = survivors.iter().find_map(|i| {
            i.first_after(killed, leader)
                .map(|(at, v)| (i.name.clone(), at, v))
        });
        next.is_some()
    });
    let (name, at, v) = next.unwrap();
    let takeover = at - killed;
    println!("{name} took over {takeover:?} after the SIGKILL: {v}");
    assert!(
        v["token"].as_u64().unwrap() > token,
        "a new term, a higher token"
    );
    assert_eq!(
        phase(&v).map(|(_, s)| s),
        Some(1),
        "resumed at the same step"
    );
    // Lease 1 s, the successor's attempts every poll (100 ms) plus a status line: within
    // lease + 1 s.
    assert!(takeover <= Duration::from_secs(2), "{takeover:?}");
    wait_for(
        "promotion on the survivors",
        &survivors,
        Duration::from_secs(60),
        || {
            survivors.iter().all(|i| {
                i.last().is_some_and(|v| {
                    phase(&v) == Some(("Promoted".into(), 2)) && v["weight_bp"] == 10_000
                })
            })
        },
    );
}

/// Each instance serves exactly 1,500 requests; once all are done, the fleet's sums in Redis
/// equal the sum of the instances' own counts exactly, per arm, and stay so (an interval is
/// never added twice).
#[test]
fn per_instance_counts_sum_exactly_to_the_fleet_sums() {
    let _serial = serial();
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "counts", STEPS);
    let fleet: Vec<Instance> = (0..3)
        .map(|i| {
            Instance::start(
                &cfg,
                i,
                &[
                    ("FLEET_BAD", "0.01"),
                    ("FLEET_REQUESTS", "1500"),
                    ("FLEET_RATE", "1000"),
                ],
            )
        })
        .collect();
    // A reader with a router of its own that serves nothing.
    let reader_cfg: FleetCanaryConfig =
        serde_json::from_str(&cfg.replace("IID", "reader")).unwrap();
    let idle = Canary::new(
        tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
        tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let reader = {
        let _rt = rt.enter();
        FleetCanary::new(reader_cfg, idle.handle()).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fleet.iter().all(|i| i.done().is_some()) {
        assert!(Instant::now() < deadline, "instances did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let done: Vec<Value> = fleet.iter().map(|i| i.done().unwrap()).collect();
    let sum = |k: &str| {
        done.iter()
            .map(|v| v["local"][k].as_u64().unwrap())
            .sum::<u64>()
    };
    let want = [
        sum("stable_routed"),
        sum("canary_routed"),
        sum("stable_failures"),
        sum("canary_failures"),
        sum("stable_samples"),
        sum("canary_samples"),
    ];
    assert_eq!(want[0] + want[1], 4_500);
    let read = || {
        let s = rt.block_on(reader.fleet_stats()).unwrap();
        [
            s.stable.routed,
            s.canary.routed,
            s.stable.failures,
            s.canary.failures,
            s.stable.samples(),
            s.canary.samples(),
        ]
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = read();
    while got != want {
        assert!(
            Instant::now() < deadline,
            "fleet sums {got:?} != instances' {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
        got = read();
    }
    println!("per-instance sums {want:?} = fleet sums in Redis");
    // Four more publish intervals on every instance (observed through their polls): still equal.
    let polls: Vec<u64> = fleet
        .iter()
        .map(|i| i.last().unwrap()["polls"].as_u64().unwrap())
        .collect();
    while fleet
        .iter()
        .zip(&polls)
        .any(|(i, p)| i.last().unwrap()["polls"].as_u64().unwrap() < p + 10)
    {
        assert!(Instant::now() < deadline + Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(read(), want, "nothing added twice");
    for (i, v) in fleet.iter().zip(&done) {
        let last = i.last().unwrap();
        assert_eq!(
            last["local"]["stable_routed"], v["local"]["stable_routed"],
            "{} served nothing after its load",
            i.name
        );
    }
}

/// Redis killed (SIGKILL) in the middle of a rollout at 50 %: every router keeps the weight it
/// had while polls fail, falls back to stable once Redis has been away for `stale_after` (2 s),
/// and, when Redis is back (empty: nothing was saved), a leader writes the rollout back at the
/// step every instance last saw — not at the first — and every router follows it again.
#[test]
fn redis_killed_and_restarted_routers_keep_the_weight_then_stable_then_the_step_resumes() {
    let _serial = serial();
    let mut redis = RedisServer::start();
    let steps = r#"[{"weight_percent":10,"bake":"1s"},{"weight_percent":50,"bake":"600s"},
        {"weight_percent":100,"bake":"1s"}]"#;
    let cfg = config(&redis.url(), "outage", steps);
    let fleet: Vec<Instance> = (0..3).map(|i| Instance::start(&cfg, i, &[])).collect();
    let all: Vec<&Instance> = fleet.iter().collect();
    let at_half =
        |v: &Value| phase(v) == Some(("Progressing".into(), 1)) && v["weight_bp"] == 5_000;
    wait_for(
        "every router at 50 %",
        &all,
        Duration::from_secs(60),
        || fleet.iter().all(|i| i.last().is_some_and(|v| at_half(&v))),
    );
    redis.kill();
    let killed = Instant::now();
    let failed: Vec<u64> = fleet
        .iter()
        .map(|i| i.last().unwrap()["poll_failures"].as_u64().unwrap())
        .collect();
    let third_failure = |i: &Instance, f: u64| {
        i.first_after(killed, |v| v["poll_failures"].as_u64().unwrap() >= f + 3)
    };
    wait_for(
        "failed polls on every instance",
        &all,
        Duration::from_secs(10),
        || {
            fleet
                .iter()
                .zip(&failed)
                .all(|(i, &f)| third_failure(i, f).is_some())
        },
    );
    for (i, &f) in fleet.iter().zip(&failed) {
        // Polls fail every 100 ms; the fallback waits 2 s: the status line of the third
        // failed poll still shows the last weight.
        let (_, v) = third_failure(i, f).unwrap();
        assert_eq!(v["weight_bp"], 5_000, "{} kept the last weight", i.name);
        assert_eq!(v["falling_back"], false);
    }
    wait_for(
        "stable on every instance",
        &all,
        Duration::from_secs(10),
        || {
            fleet.iter().all(|i| {
                i.last()
                    .is_some_and(|v| v["falling_back"] == true && v["weight_bp"] == 0)
            })
        },
    );
    redis.restart();
    wait_for(
        "the rollout back at 50 %",
        &all,
        Duration::from_secs(20),
        || {
            fleet.iter().all(|i| {
                i.last()
                    .is_some_and(|v| at_half(&v) && v["falling_back"] == false)
            })
        },
    );
    for i in &fleet {
        assert_eq!(i.last().unwrap()["fallbacks"], 1, "{}", i.name);
    }
}
