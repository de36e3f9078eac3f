//! Fleet mode on a real Redis Cluster: three `redis-server --cluster-enabled yes` on free ports
//! of 127.0.0.1, joined by `redis-cli --cluster create` (three masters, no replicas), started
//! by the test and killed on drop (`degrade_core::fleet::testing::RedisCluster`, shared with
//! the fleet canary's tests).
//!
//! The shared-quota test runs the three limiter instances as three separate processes: this
//! test binary runs itself again (`cluster_instance`, ignored unless the environment names a
//! cluster), each with its own client. `redis-server` and `redis-cli` must be on PATH.
#![cfg(feature = "redis")]

use degrade_core::fleet::testing::RedisCluster as Cluster;
use degrade_ratelimit::RateLimitConfig;
use degrade_ratelimit::error::Cause;
use degrade_ratelimit::fleet::{FleetConfig, FleetLayer, FleetSnapshot, Unavailable};
use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tower::{Layer, Service, ServiceExt};

fn cluster_config(nodes: Vec<String>, name: &str, quota: RateLimitConfig) -> FleetConfig {
    let mut c = FleetConfig::default();
    c.cluster = nodes;
    c.name = name.to_owned();
    c.timeout = Duration::from_millis(100);
    c.quota = quota;
    c.unavailable = Unavailable::Local { share: 0.5 };
    c
}

type Svc = degrade_ratelimit::fleet::FleetRateLimit<
    tower::util::ServiceFn<fn(()) -> std::future::Ready<Result<(), Infallible>>>,
>;

fn host(cfg: FleetConfig) -> (FleetLayer, Svc) {
    let layer = FleetLayer::new(cfg).unwrap();
    let f: fn(()) -> std::future::Ready<Result<(), Infallible>> = |()| std::future::ready(Ok(()));
    let svc = layer.layer(tower::service_fn(f));
    (layer, svc)
}

/// One call: Ok(true) admitted, Ok(false) rejected over quota, Err(cause) otherwise.
async fn decide(svc: &mut Svc) -> Result<bool, Cause> {
    match svc.ready().await.unwrap().call(()).await {
        Ok(()) => Ok(true),
        Err(e) => match e
            .downcast_ref::<degrade_ratelimit::RateLimited>()
            .expect("a RateLimited")
            .cause
        {
            Cause::OverQuota => Ok(false),
            c => Err(c),
        },
    }
}

/// Calls until Redis (not the fallback) decides one; the first calls connect lazily.
async fn until_redis_decides(layer: &FleetLayer, svc: &mut Svc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = layer.snapshot();
        let _ = decide(svc).await;
        let after = layer.snapshot();
        if after.admitted + after.rejected > before.admitted + before.rejected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Redis decided nothing within 20 s: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

const QUOTA: u64 = 300;
const BURST: u64 = 30;
const RUN: Duration = Duration::from_secs(2);
const TASKS: usize = 4;

/// One limiter instance, run as its own process by
/// [`three_processes_share_one_quota_on_a_cluster`]: `DEGRADE_CLUSTER` names the nodes
/// (comma-separated URLs) and `DEGRADE_START_NS` the common start (Unix nanoseconds). Prints
/// `RESULT <admitted> <offered> <fallbacks> <first decision ns> <last decision ns>`.
#[test]
#[ignore = "run by three_processes_share_one_quota_on_a_cluster as a child process"]
fn cluster_instance() {
    let Ok(nodes) = std::env::var("DEGRADE_CLUSTER") else {
        return;
    };
    let start_ns: u128 = std::env::var("DEGRADE_START_NS").unwrap().parse().unwrap();
    let nodes: Vec<String> = nodes.split(',').map(str::to_owned).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Warm the connection up on another limit, so no budget of the shared one is spent.
        let warm = RateLimitConfig::per(1_000_000, Duration::from_secs(1));
        // Redis stays up here: a long timeout, so a busy machine never makes a fallback.
        let calm = |name: &str, quota: RateLimitConfig| {
            let mut c = cluster_config(nodes.clone(), name, quota);
            c.timeout = Duration::from_secs(2);
            c
        };
        let (wl, mut ws) = host(calm("warm", warm));
        until_redis_decides(&wl, &mut ws).await;
        let shared = RateLimitConfig::per(QUOTA, Duration::from_secs(1)).burst(BURST);
        let (layer, svc) = host(calm("shared", shared));
        // The shared limit's own connection is made by its first decision (within the
        // timeout, so it is decided by the cluster all the same).
        let now = unix_ns();
        if start_ns > now {
            // Waiting for an agreed instant of the machine's clock: the processes' start line.
            tokio::time::sleep(Duration::from_nanos((start_ns - now) as u64)).await;
        }
        let end_ns = start_ns + RUN.as_nanos();
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    let (mut admitted, mut offered) = (0u64, 0u64);
                    let (mut first, mut last) = (u128::MAX, 0u128);
                    loop {
                        let t = unix_ns();
                        if t >= end_ns {
                            break;
                        }
                        first = first.min(t);
                        if decide(&mut svc).await.expect("decided") {
                            admitted += 1;
                        }
                        offered += 1;
                        last = unix_ns();
                    }
                    (admitted, offered, first, last)
                })
            })
            .collect();
        let (mut admitted, mut offered, mut first, mut last) = (0, 0, u128::MAX, 0);
        for t in tasks {
            let (a, o, f, l) = t.await.unwrap();
            admitted += a;
            offered += o;
            first = first.min(f);
            last = last.max(l);
        }
        let fallbacks = layer.snapshot().fallbacks();
        println!("RESULT {admitted} {offered} {fallbacks} {first} {last}");
    });
}

/// Three processes, each its own client, share quota 300/s (burst 30) on a 3-node cluster for
/// two seconds: together they admit at most `Q·t + burst` (t from the first decision of any
/// process to the last), and, since they offer far more than the quota, at least 99 % of
/// `Q·t' + burst` (t' while all three were deciding).
#[test]
fn three_processes_share_one_quota_on_a_cluster() {
    let cluster = Cluster::start();
    let start_ns = unix_ns() + Duration::from_secs(3).as_nanos();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "cluster_instance", "--ignored", "--nocapture"])
                .args(["--test-threads", "1"])
                .env("DEGRADE_CLUSTER", cluster.urls().join(","))
                .env("DEGRADE_START_NS", start_ns.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut results = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
            .unwrap_or_else(|| panic!("no result from an instance: {text}"))
            .to_owned();
        let v: Vec<u128> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        results.push(v);
    }
    let admitted: u128 = results.iter().map(|v| v[0]).sum();
    let offered: u128 = results.iter().map(|v| v[1]).sum();
    let fallbacks: u128 = results.iter().map(|v| v[2]).sum();
    // The upper bound spans every decision (the first to start, the last to end); the lower
    // one only the time when all three processes were deciding (surely saturated).
    let first = results.iter().map(|v| v[3]).min().unwrap();
    let last = results.iter().map(|v| v[4]).max().unwrap();
    let all_first = results.iter().map(|v| v[3]).max().unwrap();
    let all_last = results.iter().map(|v| v[4]).min().unwrap();
    let t = (last - first) as f64 / 1e9;
    let t_all = all_last.saturating_sub(all_first) as f64 / 1e9;
    let bound = QUOTA as f64 * t + BURST as f64;
    let floor = QUOTA as f64 * t_all + BURST as f64;
    println!(
        "3 processes on a 3-node cluster: {admitted} admitted of {offered} in {t:.3} s \
         ({t_all:.3} s all deciding); \
         Q·t + burst = {bound:.1}; ratio {:.4}",
        admitted as f64 / bound
    );
    assert_eq!(fallbacks, 0, "every decision by the cluster");
    assert!(
        results.iter().all(|v| v[0] > 0),
        "every process spent the budget: {results:?}"
    );
    assert!(offered as f64 > 3.0 * bound, "the quota was saturated");
    assert!(admitted as f64 <= bound + 1.0, "{admitted} > {bound:.1}");
    assert!(
        admitted as f64 >= 0.99 * floor,
        "{admitted} < 99 % of {floor:.1}"
    );
}

fn delta(after: FleetSnapshot, before: FleetSnapshot) -> [u64; 6] {
    [
        after.admitted - before.admitted,
        after.rejected - before.rejected,
        after.fallback_admitted - before.fallback_admitted,
        after.fallback_rejected - before.fallback_rejected,
        after.redis_failures - before.redis_failures,
        after.failed_fast - before.failed_fast,
    ]
}

/// The node that owns the limit's key killed (SIGKILL): the next decisions go to the local
/// fallback — exactly `fail_fast_after` of them asked the cluster and waited (each bounded by
/// the timeout), the rest did not ask — nothing panics; the node restarted on its port with its
/// `nodes.conf` rejoins, the probe (`EXISTS` of the failed key) closes the breaker and the cluster
/// decides again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_node_sends_decisions_to_the_fallback_until_it_is_back() {
    let mut cluster = Cluster::start();
    let quota = RateLimitConfig::per(1_000, Duration::from_secs(1));
    let (layer, mut svc) = host(cluster_config(cluster.urls(), "node-kill", quota));
    until_redis_decides(&layer, &mut svc).await;
    let owner = cluster.owner("degrade:rl:node-kill:all").unwrap();
    let before = layer.snapshot();
    cluster.kill(owner);
    for _ in 0..40 {
        assert_eq!(decide(&mut svc).await, Ok(true), "local fallback at 500/s");
    }
    let s = layer.snapshot();
    assert_eq!(delta(s, before), [0, 0, 40, 0, 3, 37]);
    assert!(s.failing_fast, "{s:?}");

    cluster.restart(owner);
    cluster.wait_ok();
    until_redis_decides(&layer, &mut svc).await;
    let s = layer.snapshot();
    assert!(!s.failing_fast && s.consecutive_failures == 0, "{s:?}");
    assert!(s.probes >= 1, "{s:?}");
}

/// Decisions per second through one client with 64 decisions in flight, on one Redis and on
/// the 3-node cluster, keyed over 1,000 tenants (so the cluster's load spreads over its
/// nodes). A figure, not a check:
/// `cargo test -p degrade-ratelimit --features redis --release --test cluster -- --ignored
/// --nocapture decisions_per_second`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it with --release --ignored --nocapture"]
async fn decisions_per_second_on_one_node_and_on_a_cluster() {
    let single = degrade_core::fleet::testing::RedisServer::start();
    let cluster = Cluster::start();
    let quota = RateLimitConfig::per(1_000_000_000, Duration::from_secs(1));
    let mut single_cfg = cluster_config(Vec::new(), "bench", quota.clone());
    single_cfg.url = single.url();
    let mut cluster_cfg = cluster_config(cluster.urls(), "bench", quota);
    // A measurement of Redis, not of the fallback: no decision may time out into it.
    single_cfg.timeout = Duration::from_secs(2);
    cluster_cfg.timeout = Duration::from_secs(2);
    for (what, cfg) in [("single node", single_cfg), ("3-node cluster", cluster_cfg)] {
        let layer = FleetLayer::builder(cfg)
            .keyed(degrade_ratelimit::key::from_fn(|t: &u32| Some(*t)))
            .build()
            .unwrap();
        let svc = layer.layer(tower::service_fn(|_: u32| async {
            Ok::<_, Infallible>(())
        }));
        // Warm up: connect, load the script on every node.
        for t in 0..100u32 {
            let _ = svc.clone().oneshot(t).await;
        }
        let before = layer.snapshot();
        let start = Instant::now();
        let tasks: Vec<_> = (0..64u32)
            .map(|i| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let mut n = 0u32;
                    while start.elapsed() < Duration::from_secs(3) {
                        let _ = svc.clone().oneshot((i * 7919 + n) % 1_000).await;
                        n += 1;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed();
        let s = layer.snapshot();
        let decided = (s.admitted + s.rejected) - (before.admitted + before.rejected);
        println!(
            "{what}: {:.0} decisions/s by Redis ({decided} in {elapsed:.2?}; {} fallbacks)",
            decided as f64 / elapsed.as_secs_f64(),
            s.fallbacks() - before.fallbacks()
        );
    }
    drop(single);
}

/// The incident switch on the cluster: its pin key and audit list share a hash tag, so the one
/// script that writes both runs on one node; two instances (their own clients) follow the pin
/// and release it when it is cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incident_switch_runs_on_a_cluster() {
    use degrade_core::{Controller, Level};
    use degrade_ratelimit::fleet::incident::{IncidentConfig, IncidentSwitch};
    let cluster = Cluster::start();
    let cfg = {
        let mut c = IncidentConfig::default();
        c.cluster = cluster.urls();
        c.name = "checkout".to_owned();
        c.poll = Duration::from_millis(100);
        c.timeout = Duration::from_secs(2);
        c
    };
    let controllers = [(); 2].map(|()| Controller::new(Default::default()).unwrap());
    let watchers: Vec<_> = controllers
        .iter()
        .map(|c| IncidentSwitch::new(cfg.clone()).unwrap().watch(c.clone()))
        .collect();
    let operator = IncidentSwitch::new(cfg).unwrap();
    operator
        .pin(
            Level::Heavy,
            Duration::from_secs(600),
            "dave",
            "cluster drill",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !controllers.iter().all(|c| c.level() == Level::Heavy) {
        assert!(
            Instant::now() < deadline,
            "never pinned: {:?}",
            watchers[0].snapshot()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    operator.clear("dave", "drill over").await.unwrap();
    while !controllers.iter().all(|c| c.pinned().is_none()) {
        assert!(Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let audit = operator.audit().await.unwrap();
    let actions: Vec<_> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["clear", "pin"]);
    for w in &watchers {
        let s = w.snapshot();
        assert_eq!((s.applied, s.released, s.pinned), (1, 1, None), "{s:?}");
    }
}

/// Failover: three masters with a replica each (node timeout 1 s). The master that owns the
/// limit's key is killed and not restarted: decisions go to the fallback (3 asked and failed,
/// the rest did not ask), the cluster promotes its replica, the probe's `EXISTS` of the key
/// reaches the new master, and the cluster decides again, with no restart and no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_takes_the_decisions_back_after_a_master_is_killed() {
    let mut cluster = Cluster::start_with(1, 1000);
    cluster.wait_replicas_synced();
    let key = "degrade:rl:failover:all";
    let quota = RateLimitConfig::per(1_000, Duration::from_secs(1));
    let (layer, mut svc) = host(cluster_config(cluster.urls(), "failover", quota));
    until_redis_decides(&layer, &mut svc).await;
    let owner = cluster.owner(key).unwrap();
    let before = layer.snapshot();
    cluster.kill(owner);
    for _ in 0..20 {
        assert_eq!(decide(&mut svc).await, Ok(true), "local fallback at 500/s");
    }
    assert_eq!(delta(layer.snapshot(), before), [0, 0, 20, 0, 3, 17]);

    until_redis_decides(&layer, &mut svc).await;
    let s = layer.snapshot();
    assert!(!s.failing_fast && s.consecutive_failures == 0, "{s:?}");
    let promoted = cluster.owner(key).expect("a replica was promoted");
    assert_ne!(promoted, owner);
}
