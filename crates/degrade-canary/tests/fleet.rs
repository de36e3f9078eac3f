//! The fleet canary with real processes: a `redis-server` started on a free port and three
//! instances of the `degrade-canary-fleet-instance` binary (`src/bin/fleet_instance.rs`, built
//! by `cargo test`), each its own router,
//! load and candidate controller. The tests read the instances' `STATUS` lines and Redis; they
//! wait on observed state with generous bounds and never sleep in place of a clock.
#![cfg(feature = "redis")]

use degrade_canary::Canary;
use degrade_canary::fleet::{FleetCanary, FleetCanaryConfig};
use degrade_core::fleet::testing::{RedisCluster, RedisServer};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
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
/// No automatic pause: on a loaded machine the judge may stay inconclusive for more than ten
/// analyses (5 s) before it passes, and these tests are about the fleet, not the judge.
fn config(url: &str, name: &str, steps: &str) -> String {
    format!(
        r#"{{"url":"{url}","name":"{name}","instance":"IID","poll":"100ms","timeout":"200ms",
        "lease":"1s","publish":"250ms","stale_after":"2s",
        "canary":{{"steps":{steps},"analysis_interval":"500ms","inconclusive_limit":100000,
        "judge":{{"min_samples":200}}}}}}"#
    )
}

struct Instance {
    name: String,
    child: Child,
    stdin: Mutex<Option<ChildStdin>>,
    lines: Arc<Mutex<Vec<(Instant, String, Value)>>>,
}

impl Instance {
    fn start(cfg: &str, i: usize, env: &[(&str, &str)]) -> Self {
        let name = format!("i{i}");
        let mut cmd = Command::new(INSTANCE);
        cmd.env("FLEET_CONFIG", cfg.replace("IID", &name))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let stdin = Mutex::new(child.stdin.take());
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
        Self {
            name,
            child,
            stdin,
            lines,
        }
    }

    /// Issues a fleet-wide gate through this instance (`<gate> <who> <why>`) and waits for its
    /// answer: the command's id, or the error.
    fn gate(&self, line: &str) -> Value {
        let since = Instant::now();
        {
            let mut stdin = self.stdin.lock().unwrap();
            let stdin = stdin.as_mut().unwrap();
            writeln!(stdin, "{line}").unwrap();
            stdin.flush().unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(at, t, _)| *at >= since && t == "GATE")
                .map(|(_, _, v)| v.clone())
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no answer to {line:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
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

/// The gate tests' steps: the first bakes for ten minutes, so nothing but a gate moves it.
const HOLD: &str = r#"[{"weight_percent":10,"bake":"600s"},{"weight_percent":100,"bake":"1s"}]"#;

/// Three instances at the first step with one leader; the index of the leader.
fn started(fleet: &[Instance]) -> usize {
    let all: Vec<&Instance> = fleet.iter().collect();
    let mut k = usize::MAX;
    wait_for(
        "a leader and every router at the first step",
        &all,
        Duration::from_secs(60),
        || {
            let ready = fleet.iter().all(|i| {
                i.last().is_some_and(|v| {
                    phase(&v).is_some_and(|(_, s)| s == 0) && v["weight_bp"] == 1_000
                })
            });
            k = fleet
                .iter()
                .position(|i| i.last().is_some_and(|v| leader(&v)))
                .unwrap_or(usize::MAX);
            ready && k != usize::MAX
        },
    );
    k
}

/// An abort issued through a follower (not the leader): the leader applies it, and every
/// router is at weight 0 within a second of the command (measured from when the test wrote
/// it to the follower); the audit list names who and why, and the leader that applied it.
#[test]
fn an_abort_issued_from_a_follower_rolls_back_every_instance_within_a_second() {
    let _serial = serial();
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "abort", HOLD);
    let fleet: Vec<Instance> = (0..3).map(|i| Instance::start(&cfg, i, &[])).collect();
    let k = started(&fleet);
    let f = (k + 1) % 3;
    let sent = Instant::now();
    let reply = fleet[f].gate("abort alice errors on v2 in eu-west");
    assert!(reply["id"].as_u64().is_some(), "{reply}");
    let all: Vec<&Instance> = fleet.iter().collect();
    let rolled_back =
        |v: &Value| v["weight_bp"] == 0 && phase(v).is_some_and(|(p, _)| p == "RolledBack");
    wait_for(
        "the rollback everywhere",
        &all,
        Duration::from_secs(10),
        || {
            fleet
                .iter()
                .all(|i| i.first_after(sent, rolled_back).is_some())
        },
    );
    for i in &fleet {
        let (at, _) = i.first_after(sent, rolled_back).unwrap();
        let lag = at - sent;
        println!("{} at weight 0 {lag:?} after the abort was sent", i.name);
        assert!(lag <= Duration::from_secs(1), "{}: {lag:?}", i.name);
    }
    let leader_status = fleet[k].last().unwrap();
    assert_eq!(leader_status["commands_applied"], 1);
    // The audit trail in Redis: issued by alice, applied by the leader's term.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gates_cfg: FleetCanaryConfig = serde_json::from_str(&cfg.replace("IID", "op")).unwrap();
    let audit = rt.block_on(async {
        let gates = degrade_canary::fleet::FleetGates::new(&gates_cfg).unwrap();
        gates.audit().await.unwrap()
    });
    let actions: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.gate.as_str(), e.who.as_str()))
        .collect();
    assert_eq!(
        actions,
        [("applied", "abort", "alice"), ("issued", "abort", "alice")]
    );
    assert_eq!(audit[0].why, "errors on v2 in eu-west");
    assert_eq!(Some(audit[0].token), leader_status["token"].as_u64());
    // The rollout has ended: another gate is refused, with the phase.
    let again = fleet[f].gate("promote bob too late");
    assert_eq!(again["finished"], "RolledBack", "{again}");
}

/// A pause issued through a follower holds the first step past the point where it would have
/// advanced (its bake time has passed and the leader's analyses keep passing); a resume lets
/// the rollout continue to promotion.
#[test]
fn a_pause_holds_the_step_past_its_bake_and_resume_continues() {
    let _serial = serial();
    let redis = RedisServer::start();
    let steps = r#"[{"weight_percent":10,"bake":"2s"},{"weight_percent":100,"bake":"1s"}]"#;
    let cfg = config(&redis.url(), "pause", steps);
    let fleet: Vec<Instance> = (0..3).map(|i| Instance::start(&cfg, i, &[])).collect();
    let k = started(&fleet);
    let f = (k + 1) % 3;
    assert!(fleet[f].gate("pause alice waiting for the batch job")["id"].is_u64());
    let paused = |v: &Value| phase(v) == Some(("Paused(Manual)".into(), 0));
    let all: Vec<&Instance> = fleet.iter().collect();
    wait_for("paused everywhere", &all, Duration::from_secs(10), || {
        fleet.iter().all(|i| i.last().is_some_and(|v| paused(&v)))
    });
    // The step's bake (2 s, on the leader's clock since before the pause) passes; then the
    // leader's analyses pass again and again: unpaused, the step would have moved.
    let baked = Instant::now() + Duration::from_secs(2);
    let mut passes = 0;
    let mut seen = 0;
    wait_for(
        "three passing analyses after the bake",
        &all,
        Duration::from_secs(60),
        || {
            if let Some((_, v)) = fleet[k].first_after(baked, |v| {
                v["analyses"].as_u64() > Some(seen)
                    && v["last_verdict"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("pass"))
            }) {
                seen = v["analyses"].as_u64().unwrap();
                passes += 1;
            }
            passes >= 3
        },
    );
    for i in &fleet {
        let v = i.last().unwrap();
        assert!(paused(&v) && v["weight_bp"] == 1_000, "{}: {v}", i.name);
    }
    assert!(fleet[f].gate("resume alice batch job done")["id"].is_u64());
    wait_for("promoted everywhere", &all, Duration::from_secs(60), || {
        fleet.iter().all(|i| {
            i.last().is_some_and(|v| {
                phase(&v) == Some(("Promoted".into(), 1)) && v["weight_bp"] == 10_000
            })
        })
    });
    assert_eq!(fleet[k].last().unwrap()["commands_applied"], 2);
}

/// The leader is killed (SIGKILL); while no leader lives, a promote is issued through a
/// survivor: it waits in Redis, and the next leader (a new term, a higher token) applies it;
/// every survivor ends promoted.
#[test]
fn a_promote_issued_while_the_leader_is_killed_is_applied_by_the_next_leader() {
    let _serial = serial();
    let redis = RedisServer::start();
    // A 3 s lease: from the kill to its expiry there are at least 2 s to issue the command
    // and see that it waits.
    let cfg = config(&redis.url(), "promote", HOLD).replace(r#""lease":"1s""#, r#""lease":"3s""#);
    let mut fleet: Vec<Instance> = (0..3).map(|i| Instance::start(&cfg, i, &[])).collect();
    let k = started(&fleet);
    let token = fleet[k].last().unwrap()["token"].as_u64().unwrap();
    fleet[k].kill();
    let f = (k + 1) % 3;
    assert!(fleet[f].gate("promote alice sign-off from the business")["id"].is_u64());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gates_cfg: FleetCanaryConfig = serde_json::from_str(&cfg.replace("IID", "op")).unwrap();
    let gates = {
        let _rt = rt.enter();
        degrade_canary::fleet::FleetGates::new(&gates_cfg).unwrap()
    };
    // The dead leader still holds the lease (no one has led since the kill): the command
    // waits in Redis.
    let holder = rt
        .block_on(redis_value(&redis.url(), "degrade:canary:{promote}:lease"))
        .unwrap_or_default();
    assert!(
        holder.starts_with(&format!("{}:", fleet[k].name)),
        "{holder}"
    );
    let pending = rt.block_on(gates.pending()).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].who, "alice");
    let survivors: Vec<&Instance> = fleet
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != k)
        .map(|(_, i)| i)
        .collect();
    wait_for(
        "promoted on the survivors",
        &survivors,
        Duration::from_secs(20),
        || {
            survivors.iter().all(|i| {
                i.last()
                    .is_some_and(|v| phase(&v).is_some_and(|(p, _)| p == "Promoted"))
            })
        },
    );
    let next = survivors
        .iter()
        .find(|i| i.last().is_some_and(|v| leader(&v)))
        .expect("a new leader");
    let v = next.last().unwrap();
    assert!(v["token"].as_u64().unwrap() > token, "a new term: {v}");
    assert_eq!(v["commands_applied"], 1);
    let audit = rt.block_on(gates.audit()).unwrap();
    assert_eq!(audit[0].action, "applied");
    assert_eq!(audit[0].gate, "promote");
    assert_eq!(
        Some(audit[0].token),
        v["token"].as_u64(),
        "applied by the new leader"
    );
    assert!(rt.block_on(gates.pending()).unwrap().is_empty());
    for i in &survivors {
        assert_eq!(
            i.last().unwrap()["weight_bp"],
            1_000,
            "a promote keeps the weight"
        );
    }
}

async fn redis_value(url: &str, key: &str) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut con = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut con)
        .await
        .ok()?
}

/// The fleet canary on a real three-master Redis Cluster (`cluster` in the configuration,
/// `url` left unset): every key of a rollout shares one hash tag, so each script runs whole on
/// the node owning it. A good v2 is promoted on all three instances, then a bad v2 (a new
/// rollout name) is rolled back on all three, and a gate on the finished rollout is refused.
#[test]
fn a_rollout_on_a_redis_cluster_is_promoted_and_a_bad_one_rolled_back() {
    let _serial = serial();
    let cluster = RedisCluster::start();
    let nodes = serde_json::to_string(&cluster.urls()).unwrap();
    let on_cluster = |name: &str| {
        config("URL", name, STEPS).replace(r#""url":"URL""#, &format!(r#""cluster":{nodes}"#))
    };
    for (name, bad, phase_end, weight_end) in [
        ("cl-good", "0", "Promoted", 10_000),
        ("cl-bad", "0.3", "RolledBack", 0),
    ] {
        let cfg = on_cluster(name);
        let fleet: Vec<Instance> = (0..3)
            .map(|i| Instance::start(&cfg, i, &[("FLEET_BAD", bad)]))
            .collect();
        let all: Vec<&Instance> = fleet.iter().collect();
        wait_for(phase_end, &all, Duration::from_secs(60), || {
            fleet.iter().all(|i| {
                i.last().is_some_and(|v| {
                    phase(&v).is_some_and(|(p, _)| p == phase_end) && v["weight_bp"] == weight_end
                })
            })
        });
        let leaders = fleet
            .iter()
            .filter(|i| i.last().is_some_and(|v| v["terms"].as_u64() > Some(0)))
            .count();
        assert_eq!(leaders, 1, "{name}: one leader");
        for i in &fleet {
            let v = i.last().unwrap();
            assert_eq!(v["refused_writes"], 0, "{name} {}", i.name);
            assert!(v["published"].as_u64() > Some(0), "{name} {}: {v}", i.name);
        }
        let refused = fleet[0].gate("pause alice too late");
        assert_eq!(refused["finished"], phase_end, "{refused}");
        // The rollout's keys live on one node.
        let owner = |k: &str| cluster.owner(&format!("degrade:canary:{{{name}}}:{k}"));
        let state_node = owner("state");
        assert!(state_node.is_some());
        for k in ["stats", "lease", "token", "applied", "audit"] {
            assert_eq!(owner(k), state_node, "{name}: {k}");
        }
    }
}
