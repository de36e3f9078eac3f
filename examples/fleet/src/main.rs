//! From one instance to a fleet: one `redis-server` on a free port of 127.0.0.1 and three
//! instances of a service, each a separate process (this binary run again with
//! `--instance`), walked through six scenes:
//!
//! 1. a bad v2 (30 % of its calls fail) is rolled back on every instance by one verdict;
//! 2. a good v2 is promoted step by step, every router following the one rollout in Redis;
//! 3. the incident switch pins every instance at Heavy for 3 s, then each returns to its own
//!    signals at the expiry;
//! 4. Redis is killed: every router keeps the last weight for `stale_after`, then sends
//!    everything to stable; Redis restarted empty: the leader writes the last state it knew
//!    and every router is back at it;
//! 5. three instances offering three times a shared quota admit at most quota · t + burst
//!    together;
//! 6. the same three while Redis is killed and restarted: every decision goes to the local
//!    fallback (half the quota per instance) and is counted while Redis is down, and back to
//!    Redis after the restart; every request sent is decided exactly once.
//!
//! ```text
//! cargo run -p fleet-example
//! ```
//!
//! It needs `redis-server` on `PATH`; it exits with status 1 if a check fails.

mod instance;

use degrade_core::Level;
use degrade_ratelimit::fleet::incident::IncidentSwitch;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--instance") => run_instance(&args[1..]),
        None => walk(),
        Some(_) => {
            eprintln!(
                "usage: fleet-example   (runs the whole scenario; needs redis-server on PATH)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fleet-example: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--instance canary <name> <redis url> <rollout> <failure rate>` or
/// `--instance quota <name> <redis url> <milliseconds>`.
fn run_instance(args: &[String]) -> Result<bool, BoxError> {
    // The parent holds our stdin open; when it ends (the parent exited or was killed), so do we.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument");
    match arg(0)? {
        "canary" => rt.block_on(instance::canary(
            arg(1)?,
            arg(2)?,
            arg(3)?,
            arg(4)?.parse()?,
        ))?,
        "quota" => rt.block_on(instance::quota(arg(1)?, arg(2)?, arg(3)?.parse()?))?,
        other => return Err(format!("unknown instance mode {other}").into()),
    }
    Ok(true)
}

/// A `redis-server` child on a free port, without persistence, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Result<Self, BoxError> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Ok(Self {
            child: Self::spawn(port)?,
            port,
        })
    }

    /// SIGKILL: an outage (nothing is saved).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port, empty.
    fn restart(&mut self) -> Result<(), BoxError> {
        self.kill();
        self.child = Self::spawn(self.port)?;
        Ok(())
    }

    fn spawn(port: u16) -> Result<Child, BoxError> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start redis-server ({e}): this example needs it on PATH \
                     (e.g. apt-get install redis-server, brew install redis)"
                )
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait()? {
                return Err(format!("redis-server exited at start ({status})").into());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(
                    format!("redis-server did not listen on port {port} within 10 s").into(),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(child)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One instance process and the lines it printed, with when they arrived.
struct Instance {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String, Value)>>>,
}

impl Instance {
    fn start(args: &[&str]) -> Result<Self, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--instance")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some((tag, json)) = line.split_once(' ')
                    && let Ok(v) = serde_json::from_str::<Value>(json)
                {
                    lock(&sink).push((Instant::now(), tag.to_owned(), v));
                }
            }
        });
        Ok(Self {
            name: args[1].to_owned(),
            child,
            lines,
        })
    }

    /// The latest `STATUS` line.
    fn last(&self) -> Option<Value> {
        lock(&self.lines)
            .iter()
            .rev()
            .find(|(_, t, _)| t == "STATUS")
            .map(|(_, _, v)| v.clone())
    }

    /// The first line tagged `tag` that satisfies `f`, and when it arrived.
    fn first(&self, tag: &str, f: impl Fn(&Value) -> bool) -> Option<(Instant, Value)> {
        lock(&self.lines)
            .iter()
            .find(|(_, t, v)| t == tag && f(v))
            .map(|(at, _, v)| (*at, v.clone()))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What an instance's rollout looks like in its latest report.
fn rollout(v: &Value) -> String {
    format!(
        "{} step {} weight {:>5.1} %{}",
        v["phase"].as_str().unwrap_or("(no state yet)"),
        v["step"].as_u64().map_or("-".to_owned(), |s| s.to_string()),
        v["weight_bp"].as_f64().unwrap_or(0.0) / 100.0,
        match (v["leader"] == true, v["falling_back"] == true) {
            (true, true) => "  (leader; Redis unreachable: on stable)",
            (true, false) => "  (leader)",
            (false, true) => "  (Redis unreachable: on stable)",
            (false, false) => "",
        }
    )
}

/// What an instance's level looks like in its latest report.
fn level(v: &Value) -> String {
    match v["pinned"].as_str() {
        Some(p) => format!(
            "level {} (pinned fleet-wide at {p})",
            v["level"].as_str().unwrap_or("?")
        ),
        None => format!(
            "level {} (its own signals)",
            v["level"].as_str().unwrap_or("?")
        ),
    }
}

/// Polls `done` every 20 ms, printing each instance's changes (as `show` describes them) as
/// they come, until it holds or `bound` passes (`false`).
fn follow(
    fleet: &[Instance],
    start: Instant,
    bound: Duration,
    show: fn(&Value) -> String,
    seen: &mut [Option<String>],
    done: impl Fn(&[Instance]) -> bool,
) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        for (i, inst) in fleet.iter().enumerate() {
            let Some(v) = inst.last() else { continue };
            let now = show(&v);
            if seen[i].as_ref() != Some(&now) {
                println!(
                    "  [{:>5.2} s] {}: {now}",
                    start.elapsed().as_secs_f64(),
                    inst.name
                );
                seen[i] = Some(now);
            }
        }
        if done(fleet) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check(ok: bool, what: &str, failures: &mut u32) {
    if ok {
        println!("[ok] {what}");
    } else {
        println!("[FAILED] {what}");
        *failures += 1;
    }
}

fn start_fleet(args: impl Fn(&str) -> Vec<String>) -> Result<Vec<Instance>, BoxError> {
    ["i1", "i2", "i3"]
        .iter()
        .map(|n| Instance::start(&args(n).iter().map(String::as_str).collect::<Vec<_>>()))
        .collect()
}

/// The phase and weight an instance reports.
fn at(v: &Value, phase: &str, weight_bp: u64) -> bool {
    v["phase"] == phase && v["weight_bp"] == weight_bp
}

fn walk() -> Result<bool, BoxError> {
    let whole = Instant::now();
    let mut redis = Redis::start()?;
    let url = redis.url();
    println!("redis-server on {url}; three instances i1, i2, i3, each its own process\n");
    let mut failures = 0;

    // 1. A bad v2.
    println!("== 1. a bad v2 (30 % of its calls fail), steps 10 / 50 / 100 %");
    let start = Instant::now();
    let mut seen = vec![None; 3];
    let fleet = start_fleet(|n| {
        ["canary", n, &url, "v2-bad", "0.3"]
            .map(str::to_owned)
            .to_vec()
    })?;
    let rolled_back = follow(
        &fleet,
        start,
        Duration::from_secs(40),
        rollout,
        &mut seen,
        |f| {
            f.iter()
                .all(|i| i.last().is_some_and(|v| at(&v, "RolledBack", 0)))
        },
    );
    check(
        rolled_back,
        "v2-bad rolled back on every instance (weight 0)",
        &mut failures,
    );
    if rolled_back {
        // The verdict: the leader's first report of the rollback (it wrote the state); then
        // when each router reported weight 0 (reports come every 100 ms).
        let firsts: Vec<(Instant, Value)> = fleet
            .iter()
            .filter_map(|i| i.first("STATUS", |v| at(v, "RolledBack", 0)))
            .collect();
        let leader = fleet
            .iter()
            .zip(&firsts)
            .find(|(_, (_, v))| v["leader"] == true);
        let verdict_at = leader.map_or_else(
            || firsts.iter().map(|(t, _)| *t).min().unwrap_or(start),
            |(_, (t, _))| *t,
        );
        if let Some((inst, (_, v))) = leader {
            println!(
                "  leader {} judged: {}",
                inst.name,
                v["verdict"].as_str().unwrap_or("?")
            );
        }
        let spread = firsts
            .iter()
            .map(|(t, _)| t.duration_since(verdict_at))
            .max()
            .unwrap_or_default();
        for (inst, (t, v)) in fleet.iter().zip(&firsts) {
            println!(
                "  {} reported weight 0 {:>4} ms after the leader's verdict ({} canary calls served, {} failed)",
                inst.name,
                t.duration_since(verdict_at).as_millis(),
                v["canary_routed"],
                v["canary_failures"]
            );
        }
        check(
            spread <= Duration::from_secs(1),
            "all three at weight 0 within 1 s of the verdict",
            &mut failures,
        );
    }
    drop(fleet);

    // 2. A good v2.
    println!("\n== 2. a good v2, the same steps");
    let start = Instant::now();
    let mut seen = vec![None; 3];
    let fleet = start_fleet(|n| {
        ["canary", n, &url, "v2-good", "0"]
            .map(str::to_owned)
            .to_vec()
    })?;
    let promoted = follow(
        &fleet,
        start,
        Duration::from_secs(40),
        rollout,
        &mut seen,
        |f| {
            f.iter()
                .all(|i| i.last().is_some_and(|v| at(&v, "Promoted", 10_000)))
        },
    );
    check(
        promoted,
        "v2-good promoted on every instance (weight 100 %)",
        &mut failures,
    );
    let leaders = fleet
        .iter()
        .filter(|i| i.last().is_some_and(|v| v["leader"] == true))
        .count();
    let refused: u64 = fleet
        .iter()
        .filter_map(|i| i.last()?["refused_writes"].as_u64())
        .sum();
    check(
        leaders == 1 && refused == 0,
        "one leader, no write refused",
        &mut failures,
    );

    // 3. The incident switch, on the same three instances.
    println!("\n== 3. incident switch: Heavy on every instance for 3 s");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let switch = {
        let _enter = rt.enter();
        IncidentSwitch::new(instance::incident_config(&url))?
    };
    let written = Instant::now();
    rt.block_on(switch.pin(
        Level::Heavy,
        Duration::from_secs(3),
        "example-operator",
        "demo: database failover",
    ))?;
    println!("  [ 0.00 s] operator: pinned Heavy for 3 s");
    let pinned = follow(
        &fleet,
        written,
        Duration::from_secs(5),
        level,
        &mut seen,
        |f| {
            f.iter().all(|i| {
                i.last()
                    .is_some_and(|v| v["level"] == "heavy" && v["pinned"] == "heavy")
            })
        },
    );
    let took = written.elapsed();
    check(
        pinned && took <= Duration::from_secs(1),
        "every instance at Heavy within 1 s of the write",
        &mut failures,
    );
    if let Some(pin) = rt.block_on(switch.current())? {
        println!(
            "  in force: {} for {} ms more, by {}: {}",
            pin.level,
            pin.remaining.as_millis(),
            pin.who,
            pin.why
        );
    }
    let released = follow(
        &fleet,
        written,
        Duration::from_secs(10),
        level,
        &mut seen,
        |f| {
            f.iter()
                .all(|i| i.last().is_some_and(|v| v["pinned"].is_null()))
        },
    );
    let back = written.elapsed();
    check(
        released && back >= Duration::from_secs(3),
        "every instance released the pin at its expiry, not before",
        &mut failures,
    );
    let normal = follow(
        &fleet,
        written,
        Duration::from_secs(10),
        level,
        &mut seen,
        |f| {
            f.iter()
                .all(|i| i.last().is_some_and(|v| v["level"] == "normal"))
        },
    );
    check(
        normal,
        "every instance back at Normal by its own (calm) signals",
        &mut failures,
    );
    for e in rt.block_on(switch.audit())? {
        println!(
            "  audit: {} {} for {} ms by {}: {}",
            e.action, e.level, e.for_ms, e.who, e.why
        );
    }

    // 4. Redis down, then back empty.
    println!("\n== 4. Redis killed (SIGKILL), restarted empty on the same port");
    let killed = Instant::now();
    redis.kill();
    println!("  [ 0.00 s] redis-server killed");
    let on_stable = follow(
        &fleet,
        killed,
        Duration::from_secs(10),
        rollout,
        &mut seen,
        |f| {
            f.iter().all(|i| {
                i.last()
                    .is_some_and(|v| v["falling_back"] == true && v["weight_bp"] == 0)
            })
        },
    );
    let after = killed.elapsed();
    check(
        // stale_after counts from each router's last answer, at most one poll (100 ms) before
        // the kill.
        on_stable && after >= Duration::from_millis(1_900),
        "every router kept the last weight for stale_after (2 s), then went to stable",
        &mut failures,
    );
    redis.restart()?;
    let restarted = Instant::now();
    println!(
        "  [{:>5.2} s] redis-server restarted (empty)",
        killed.elapsed().as_secs_f64()
    );
    let back = follow(
        &fleet,
        killed,
        Duration::from_secs(15),
        rollout,
        &mut seen,
        |f| {
            f.iter().all(|i| {
                i.last()
                    .is_some_and(|v| at(&v, "Promoted", 10_000) && v["falling_back"] == false)
            })
        },
    );
    check(
        back,
        "a leader rewrote the last state it knew: every router at 100 % again",
        &mut failures,
    );
    println!(
        "  back {:.2} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    drop(fleet);

    // 5. The shared quota.
    let secs = 3;
    println!(
        "\n== 5. shared quota: {} req/s (burst {}) for the fleet; each instance offers about 200 req/s for {secs} s",
        instance::QUOTA,
        instance::BURST
    );
    let fleet = start_fleet(|n| {
        ["quota", n, &url, &(secs * 1_000).to_string()]
            .map(str::to_owned)
            .to_vec()
    })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fleet.iter().all(|i| i.first("DONE", |_| true).is_some()) {
        if Instant::now() > deadline {
            return Err("the quota instances did not finish within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every decision was made between the first START and the last DONE line.
    let from = fleet
        .iter()
        .filter_map(|i| i.first("START", |_| true))
        .map(|(t, _)| t)
        .min();
    let dones: Vec<(Instant, Value)> = fleet
        .iter()
        .filter_map(|i| i.first("DONE", |_| true))
        .collect();
    let to = dones.iter().map(|(t, _)| *t).max();
    let (Some(from), Some(to)) = (from, to) else {
        return Err("missing START or DONE lines".into());
    };
    let t = to.duration_since(from).as_secs_f64();
    let mut sum = 0;
    for (inst, (_, v)) in fleet.iter().zip(&dones) {
        let admitted =
            v["admitted"].as_u64().unwrap_or(0) + v["fallback_admitted"].as_u64().unwrap_or(0);
        sum += admitted;
        println!(
            "  {}: offered {}, admitted {admitted}, rejected {}, decided by the local fallback {}",
            inst.name,
            v["offered"],
            v["rejected"],
            v["fallback_admitted"].as_u64().unwrap_or(0)
                + v["fallback_rejected"].as_u64().unwrap_or(0)
        );
    }
    let bound = instance::QUOTA as f64 * t + instance::BURST as f64;
    println!(
        "  sum admitted {sum} over {t:.2} s; quota · t + burst = {bound:.0} ({:.1} % of it)",
        100.0 * sum as f64 / bound
    );
    check(
        sum as f64 <= bound,
        "the three together admitted at most quota · t + burst",
        &mut failures,
    );
    drop(fleet);

    // 6. The shared quota through a Redis outage.
    println!("\n== 6. shared quota, Redis killed (SIGKILL) mid-run and restarted");
    let fleet = start_fleet(|n| ["quota", n, &url, "8000"].map(str::to_owned).to_vec())?;
    let num = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let on_redis = |v: &Value| num(v, "admitted") + num(v, "rejected");
    let fallbacks = |v: &Value| num(v, "fallback_admitted") + num(v, "fallback_rejected");
    // Until every instance's latest report satisfies `done(its index, report)`.
    let wait = |what: &str, bound: Duration, done: &dyn Fn(usize, &Value) -> bool| {
        let deadline = Instant::now() + bound;
        while !fleet
            .iter()
            .enumerate()
            .all(|(k, i)| i.last().is_some_and(|v| done(k, &v)))
        {
            if Instant::now() > deadline {
                return Err(format!("no {what} within {bound:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    wait(
        "decisions through Redis",
        Duration::from_secs(20),
        &|_, v| on_redis(v) >= 50,
    )?;
    let before: Vec<Value> = fleet.iter().filter_map(Instance::last).collect();
    let killed = Instant::now();
    redis.kill();
    println!("  [ 0.00 s] redis-server killed");
    // While it is down: every decision goes to the local fallback (half the quota on each
    // instance), counted; none waits past the timeout.
    let went = wait("fallback decisions", Duration::from_secs(20), &|k, v| {
        fallbacks(v) >= fallbacks(&before[k]) + 100
    });
    let down: Vec<Value> = fleet.iter().filter_map(Instance::last).collect();
    for (inst, (b, d)) in fleet.iter().zip(before.iter().zip(&down)) {
        println!(
            "  [{:>5.2} s] {}: {} decisions by the local fallback ({} admitted), {} Redis failures, failing fast: {}",
            killed.elapsed().as_secs_f64(),
            inst.name,
            fallbacks(d) - fallbacks(b),
            num(d, "fallback_admitted") - num(b, "fallback_admitted"),
            num(d, "redis_failures"),
            d["failing_fast"]
        );
    }
    check(
        went.is_ok(),
        "while Redis was down every instance decided by its local fallback, counted",
        &mut failures,
    );
    redis.restart()?;
    let restarted = Instant::now();
    println!(
        "  [{:>5.2} s] redis-server restarted (empty)",
        killed.elapsed().as_secs_f64()
    );
    let back = wait(
        "decisions back on Redis",
        Duration::from_secs(20),
        &|k, v| on_redis(v) >= on_redis(&down[k]) + 50,
    );
    let at_back = restarted.elapsed();
    check(
        back.is_ok(),
        "decisions back on Redis after the restart",
        &mut failures,
    );
    println!(
        "  every instance deciding through Redis again {:.2} s after the restart",
        at_back.as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fleet.iter().all(|i| i.first("DONE", |_| true).is_some()) {
        if Instant::now() > deadline {
            return Err("the outage instances did not finish within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut exact = true;
    for inst in &fleet {
        let Some((_, v)) = inst.first("DONE", |_| true) else {
            continue;
        };
        println!(
            "  {}: sent {}, offered {} = Redis {} (admitted {}) + fallback {} (admitted {})",
            inst.name,
            num(&v, "sent"),
            num(&v, "offered"),
            on_redis(&v),
            num(&v, "admitted"),
            fallbacks(&v),
            num(&v, "fallback_admitted")
        );
        exact &= num(&v, "sent") == num(&v, "offered")
            && num(&v, "offered") == on_redis(&v) + fallbacks(&v);
    }
    check(
        exact,
        "every request sent was decided once, by Redis or by the fallback (offered = Redis + fallback)",
        &mut failures,
    );
    drop(fleet);

    println!("\nwhole run: {:.1} s", whole.elapsed().as_secs_f64());
    if failures == 0 {
        println!("all checks passed");
    } else {
        println!("{failures} check(s) FAILED");
    }
    Ok(failures == 0)
}
