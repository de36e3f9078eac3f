//! Fleet mode against a real `redis-server` that the test starts on a free port (and kills in
//! `Drop`). Two `FleetLayer`s with their own connections stand for two hosts.
//!
//! Real time (Redis keeps its own clock): bounds allow the elapsed time of each run.
//! `redis-server` must be on PATH (CI installs it); without it these tests fail, they do not
//! skip.
#![cfg(feature = "redis")]

use degrade_core::fleet::testing::RedisServer;
use degrade_ratelimit::error::Cause;
use degrade_ratelimit::fleet::{FleetConfig, FleetLayer, Unavailable};
use degrade_ratelimit::{RateLimitConfig, RateLimited};
use std::convert::Infallible;
use std::time::{Duration, Instant};
use tower::{Layer, Service, ServiceExt};

const TIMEOUT: Duration = Duration::from_millis(100);
/// The timeout of tests where Redis stays up: long, so a busy machine never turns a decision
/// into a fallback.
const CALM: Duration = Duration::from_secs(5);

/// [`config`] for a test where Redis stays up: the [`CALM`] timeout.
fn calm(url: &str, name: &str, quota: u64, unavailable: Unavailable) -> FleetConfig {
    let mut c = config(url, name, quota, unavailable);
    c.timeout = CALM;
    c
}

fn config(url: &str, name: &str, quota: u64, unavailable: Unavailable) -> FleetConfig {
    let mut c = FleetConfig::default();
    c.url = url.to_owned();
    c.name = name.to_owned();
    c.timeout = TIMEOUT;
    c.quota = RateLimitConfig::per(quota, Duration::from_secs(1));
    c.unavailable = unavailable;
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

/// One call: Ok(true) admitted, Ok(false) rejected over quota, Err(cause) other rejection.
async fn decide(svc: &mut Svc) -> Result<bool, Cause> {
    match svc.ready().await.unwrap().call(()).await {
        Ok(()) => Ok(true),
        Err(e) => {
            let r = e.downcast_ref::<RateLimited>().expect("a RateLimited");
            if r.cause == Cause::OverQuota {
                assert!(r.retry_after.unwrap() > Duration::ZERO);
                Ok(false)
            } else {
                Err(r.cause)
            }
        }
    }
}

/// Sends `n` calls alternating between the hosts; returns (admitted, elapsed).
async fn alternate(hosts: &mut [Svc], n: usize) -> (u64, Duration) {
    let start = Instant::now();
    let mut admitted = 0;
    for i in 0..n {
        let h = i % hosts.len();
        if decide(&mut hosts[h]).await.expect("decided by Redis") {
            admitted += 1;
        }
    }
    (admitted, start.elapsed())
}

/// The most a quota of `q`/s with burst `q` may admit in `elapsed`, plus one unit of slack for
/// the boundary (Redis's clock and ours are read at different instants).
fn bound(q: u64, elapsed: Duration) -> u64 {
    q + (q as f64 * elapsed.as_secs_f64()).ceil() as u64 + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_one_quota() {
    let redis = RedisServer::start();
    let quota = 50;
    let (a_layer, a) = host(calm(&redis.url(), "shared", quota, Unavailable::FailClosed));
    let (b_layer, b) = host(calm(&redis.url(), "shared", quota, Unavailable::FailClosed));
    let mut hosts = [a, b];
    let (admitted, elapsed) = alternate(&mut hosts, 400).await;
    assert!(admitted >= quota, "the burst is available: {admitted}");
    assert!(
        admitted <= bound(quota, elapsed),
        "{admitted} admitted by two hosts in {elapsed:?} under {quota}/s"
    );
    let (sa, sb) = (a_layer.snapshot(), b_layer.snapshot());
    assert_eq!(sa.admitted + sb.admitted, admitted);
    assert!(
        sa.admitted > 0 && sb.admitted > 0,
        "both hosts spend the budget"
    );
    assert_eq!(sa.fallbacks() + sb.fallbacks(), 0);
    assert_eq!(sa.offered() + sb.offered(), 400);

    // A different name is a different budget.
    let (_, mut other) = host(calm(&redis.url(), "other", quota, Unavailable::FailClosed));
    assert_eq!(decide(&mut other).await, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_budgets_are_shared_per_key_across_hosts() {
    let redis = RedisServer::start();
    let mk = || {
        let layer = FleetLayer::with(
            calm(&redis.url(), "keyed", 5, Unavailable::FailClosed),
            degrade_ratelimit::key::from_fn(|tenant: &&'static str| Some(*tenant)),
            degrade_ratelimit::cost::DefaultCost,
        )
        .unwrap();
        layer.layer(tower::service_fn(|_: &'static str| async {
            Ok::<_, Infallible>(())
        }))
    };
    let (mut a, mut b) = (mk(), mk());
    for tenant in ["acme", "globex"] {
        let mut ok = 0;
        for i in 0..20 {
            let svc = if i % 2 == 0 { &mut a } else { &mut b };
            if svc.ready().await.unwrap().call(tenant).await.is_ok() {
                ok += 1;
            }
        }
        assert!((5..=6).contains(&ok), "{tenant}: {ok}");
    }
}

/// Decides calls on `svc` until one is decided by Redis (the first call connects lazily and,
/// on a cold machine, connecting and loading the script can take longer than the timeout; a
/// restarted Redis needs the probe or the reconnection first). Returns how many calls it took.
async fn until_redis_decides(layer: &FleetLayer, svc: &mut Svc) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut calls = 0;
    loop {
        let before = layer.snapshot();
        let _ = decide(svc).await;
        calls += 1;
        let after = layer.snapshot();
        if after.admitted + after.rejected > before.admitted + before.rejected {
            return calls;
        }
        assert!(
            Instant::now() < deadline,
            "Redis decided nothing within 15 s: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The counters of `after` minus those of `before`.
fn delta(
    after: degrade_ratelimit::fleet::FleetSnapshot,
    before: degrade_ratelimit::fleet::FleetSnapshot,
) -> [u64; 6] {
    [
        after.admitted - before.admitted,
        after.rejected - before.rejected,
        after.fallback_admitted - before.fallback_admitted,
        after.fallback_rejected - before.fallback_rejected,
        after.redis_failures - before.redis_failures,
        after.failed_fast - before.failed_fast,
    ]
}

/// Issue 14 (flaky: `fallback_admitted` 41 vs 40 on a fresh machine): the up-phase decision
/// could time out while the lazy connection was still being made and the script loaded, so
/// it was counted as a fallback too. Each host now warms up until Redis itself has decided,
/// and the test counts what happens after the kill as deltas. No wall-clock assertion: that
/// decisions do not wait for a dead Redis is shown by the counts (after `fail_fast_after`
/// failures, every decision is decided without asking Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_the_policy_holds_and_sharing_resumes_after_restart() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let url = redis.url();
    let quota = 40;
    let (open_layer, mut open) = host(config(&url, "down", quota, Unavailable::FailOpen));
    let (closed_layer, mut closed) = host(config(&url, "down", quota, Unavailable::FailClosed));
    let (local_layer, mut local) = host(config(
        &url,
        "down",
        quota,
        Unavailable::Local { share: 0.25 },
    ));

    // Up: all three spend the one budget, decided by Redis.
    until_redis_decides(&open_layer, &mut open).await;
    until_redis_decides(&closed_layer, &mut closed).await;
    until_redis_decides(&local_layer, &mut local).await;
    let before = [&open_layer, &closed_layer, &local_layer].map(|l| l.snapshot());
    for s in &before {
        assert_eq!(s.consecutive_failures, 0);
        assert!(!s.failing_fast);
    }

    redis.kill();

    // Down: each call is decided by its policy.
    let mut local_admitted = 0;
    let start = Instant::now();
    for _ in 0..40 {
        for (svc, expect) in [
            (&mut open, Some(Ok(true))),
            (&mut closed, Some(Err(Cause::FleetUnavailable))),
            (&mut local, None),
        ] {
            let out = decide(svc).await;
            match expect {
                Some(e) => assert_eq!(out, e),
                None => {
                    if out == Ok(true) {
                        local_admitted += 1;
                    } else {
                        assert_eq!(out, Ok(false), "local fallback rejects as over quota");
                    }
                }
            }
        }
    }
    let down_for = start.elapsed();
    // Local at a quarter: burst 10, 10/s.
    assert!(local_admitted >= 10, "local burst: {local_admitted}");
    assert!(
        local_admitted <= bound(10, down_for),
        "{local_admitted} admitted locally in {down_for:?}"
    );
    let after = [&open_layer, &closed_layer, &local_layer].map(|l| l.snapshot());
    // Exactly the 40 calls of each host, by its policy; the first three asked Redis and
    // failed, the other 37 did not ask it.
    assert_eq!(delta(after[0], before[0]), [0, 0, 40, 0, 3, 37]);
    assert_eq!(delta(after[1], before[1]), [0, 0, 0, 40, 3, 37]);
    assert_eq!(
        delta(after[2], before[2]),
        [0, 0, local_admitted, 40 - local_admitted, 3, 37]
    );
    for s in &after {
        assert!(s.failing_fast, "{s:?}");
        assert!(s.consecutive_failures >= 3, "{s:?}");
        assert_eq!(s.fallbacks(), s.redis_failures + s.failed_fast);
    }

    // Restart on the same port (empty, so the script must be loaded again: NOSCRIPT path).
    let _redis = RedisServer::start_on(port);
    for (layer, svc) in [
        (&open_layer, &mut open),
        (&closed_layer, &mut closed),
        (&local_layer, &mut local),
    ] {
        until_redis_decides(layer, svc).await;
        let s = layer.snapshot();
        assert!(!s.failing_fast, "{s:?}");
        assert_eq!(s.consecutive_failures, 0, "{s:?}");
    }
    // Shared limiting again: the three hosts together stay within one quota.
    let fallbacks_before: u64 = [&open_layer, &closed_layer, &local_layer]
        .iter()
        .map(|l| l.snapshot().fallbacks())
        .sum();
    let mut hosts = [open, closed, local];
    let (admitted, elapsed) = alternate(&mut hosts, 300).await;
    assert!(
        admitted <= bound(quota, elapsed),
        "{admitted} admitted in {elapsed:?} after restart"
    );
    let fallbacks_after: u64 = [&open_layer, &closed_layer, &local_layer]
        .iter()
        .map(|l| l.snapshot().fallbacks())
        .sum();
    assert_eq!(fallbacks_after, fallbacks_before, "decided by Redis again");
}

type TenantSvc = degrade_ratelimit::fleet::FleetRateLimit<
    tower::util::ServiceFn<fn(&'static str) -> std::future::Ready<Result<(), Infallible>>>,
    degrade_ratelimit::key::KeyFn<fn(&&'static str) -> Option<&'static str>, &'static str>,
>;
type TenantLayer = FleetLayer<
    degrade_ratelimit::key::KeyFn<fn(&&'static str) -> Option<&'static str>, &'static str>,
>;

/// A host keyed per tenant: quota 10 per hour, burst 10, local fallback at half.
fn tenant_host(url: &str) -> (TenantLayer, TenantSvc) {
    let mut c = config(url, "tenants", 10, Unavailable::Local { share: 0.5 });
    c.quota = RateLimitConfig::per(10, Duration::from_secs(3600)).burst(10);
    let by_tenant: fn(&&'static str) -> Option<&'static str> = |t| Some(*t);
    let layer = FleetLayer::with(
        c,
        degrade_ratelimit::key::from_fn(by_tenant),
        degrade_ratelimit::cost::DefaultCost,
    )
    .unwrap();
    let f: fn(&'static str) -> std::future::Ready<Result<(), Infallible>> =
        |_| std::future::ready(Ok(()));
    let svc = layer.layer(tower::service_fn(f));
    (layer, svc)
}

/// One call for `tenant`: Ok(true) admitted, Ok(false) over quota, Err(cause) otherwise.
async fn tenant_call(svc: &mut TenantSvc, tenant: &'static str) -> Result<bool, Cause> {
    match svc.ready().await.unwrap().call(tenant).await {
        Ok(()) => Ok(true),
        Err(e) => match e
            .downcast_ref::<RateLimited>()
            .expect("a RateLimited")
            .cause
        {
            Cause::OverQuota => Ok(false),
            c => Err(c),
        },
    }
}

/// Calls for a fresh tenant until Redis decides one (see [`until_redis_decides`]).
async fn tenant_until_redis_decides(layer: &TenantLayer, svc: &mut TenantSvc, t: &'static str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = layer.snapshot();
        let _ = tenant_call(svc, t).await;
        let after = layer.snapshot();
        if after.admitted + after.rejected > before.admitted + before.rejected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Redis decided nothing: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 14, reproduced with its inputs: keyed per tenant, quota 10 per hour, burst 10,
/// `Local { share: 0.5 }`, redis-server killed with SIGKILL. All tenants used to share one
/// local bucket, so once one tenant had spent it a tenant never seen before was refused.
/// Now each tenant has its own local budget (5), decisions stop asking the dead Redis after
/// three failures, and after a restart two hosts share each tenant's quota again (exactly
/// 10 per tenant: nothing refills within an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tenant_is_admitted_by_the_local_fallback_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let (a_layer, mut a) = tenant_host(&redis.url());
    let (b_layer, mut b) = tenant_host(&redis.url());
    tenant_until_redis_decides(&a_layer, &mut a, "warm-a").await;
    tenant_until_redis_decides(&b_layer, &mut b, "warm-b").await;

    // Up: acme spends its 10 in Redis.
    let up = a_layer.snapshot();
    for _ in 0..10 {
        assert_eq!(tenant_call(&mut a, "acme").await, Ok(true));
    }
    assert_eq!(tenant_call(&mut a, "acme").await, Ok(false));
    assert_eq!(delta(a_layer.snapshot(), up)[..2], [10, 1]);

    redis.kill(); // SIGKILL
    let down = a_layer.snapshot();
    // acme has its local half-burst (the fallback does not know the Redis debt).
    let mut acme_admitted = 0;
    for _ in 0..10 {
        match tenant_call(&mut a, "acme").await {
            Ok(true) => acme_admitted += 1,
            Ok(false) => {}
            Err(c) => panic!("acme refused with {c:?}"),
        }
    }
    assert_eq!(acme_admitted, 5, "local burst is half of 10");
    // A tenant never seen before has its own local budget.
    assert_eq!(tenant_call(&mut a, "initech").await, Ok(true));
    for _ in 0..4 {
        assert_eq!(tenant_call(&mut a, "globex").await, Ok(true));
    }
    let s = a_layer.snapshot();
    // 15 decisions (10 acme, 1 initech, 4 globex): 10 admitted, 5 rejected; 3 asked the
    // dead Redis, 12 did not.
    assert_eq!(delta(s, down), [0, 0, 10, 5, 3, 12]);
    assert!(s.failing_fast, "{s:?}");
    assert!(s.consecutive_failures >= 3, "{s:?}");
    assert_eq!(
        s.offered(),
        s.admitted + s.rejected + s.redis_failures + s.failed_fast
    );

    // Restart: the probe notices, and the two hosts share each tenant's quota again.
    let _redis = RedisServer::start_on(port);
    tenant_until_redis_decides(&a_layer, &mut a, "warm-a2").await;
    tenant_until_redis_decides(&b_layer, &mut b, "warm-b2").await;
    assert!(!a_layer.snapshot().failing_fast);
    let (sa, sb) = (a_layer.snapshot(), b_layer.snapshot());
    let mut admitted = 0;
    for i in 0..30 {
        let svc = if i % 2 == 0 { &mut a } else { &mut b };
        if tenant_call(svc, "umbrella").await == Ok(true) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "one quota of 10 for two hosts");
    assert_eq!(a_layer.snapshot().fallbacks(), sa.fallbacks());
    assert_eq!(b_layer.snapshot().fallbacks(), sb.fallbacks());
}

/// A Redis that accepts connections but never answers (SIGSTOP) costs exactly
/// `fail_fast_after` decisions their timeout; the following ones are decided at once by the
/// policy without asking Redis, probes run in the background, and once Redis answers again
/// (SIGCONT) a probe closes the breaker and decisions use the shared budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_only_the_first_failures_their_timeout() {
    let redis = RedisServer::start();
    let (layer, mut svc) = host(config(&redis.url(), "hung", 1000, Unavailable::FailOpen));
    until_redis_decides(&layer, &mut svc).await;
    let before = layer.snapshot();
    redis.signal("STOP");
    for _ in 0..50 {
        assert_eq!(decide(&mut svc).await, Ok(true));
    }
    let s = layer.snapshot();
    assert_eq!(delta(s, before), [0, 0, 50, 0, 3, 47]);
    assert!(s.failing_fast);
    redis.signal("CONT");
    until_redis_decides(&layer, &mut svc).await;
    let s = layer.snapshot();
    assert!(!s.failing_fast && s.consecutive_failures == 0, "{s:?}");
    assert!(s.probes >= 1, "closed by a probe: {s:?}");
}

/// The most a budget refilling at `rate` units/s admits in `elapsed` once it is spent (less
/// than one unit left): the refill, plus that unit.
fn refill_bound(rate: f64, elapsed: Duration) -> u64 {
    (rate * elapsed.as_secs_f64()).ceil() as u64 + 1
}

/// Calls alternating between the hosts until one is rejected over quota; returns the instant
/// before that rejection (from then on, less than one unit is left).
async fn spend_the_burst(hosts: &mut [Svc]) -> Instant {
    for i in 0..10_000 {
        let t = Instant::now();
        if !decide(&mut hosts[i % hosts.len()])
            .await
            .expect("decided by Redis")
        {
            return t;
        }
    }
    panic!("10,000 calls never spent the burst");
}

/// The spent budget carries over a quota change in units. Quota 100/s, burst 100, spent by two
/// hosts; host A lowers its quota to 10/s (burst 100), then host B does. Were the debt read as
/// time, A would find one second of debt to be only 10 of its units and admit 90 at once;
/// carried over, it still owes 100 units. While only A has changed the fleet admits at most
/// the higher quota's refill, and once both have, at most the lower one's: never a burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_change_rolling_over_the_fleet_makes_no_burst() {
    let redis = RedisServer::start();
    let mut cfg = config(&redis.url(), "change", 100, Unavailable::FailClosed);
    cfg.timeout = CALM; // not an outage test: no decision may fall back on a busy machine
    cfg.quota = RateLimitConfig::per(100, Duration::from_secs(1)).burst(100);
    let (a_layer, a) = host(cfg.clone());
    let (b_layer, b) = host(cfg);
    let mut hosts = [a, b];
    until_redis_decides(&a_layer, &mut hosts[0]).await;
    until_redis_decides(&b_layer, &mut hosts[1]).await;
    let spent = spend_the_burst(&mut hosts).await;

    let slow = RateLimitConfig::per(10, Duration::from_secs(1)).burst(100);
    a_layer.quota_handle().set(slow.clone()).unwrap();
    assert_eq!(a_layer.quota_handle().get(), slow);
    let (mixed, _) = alternate(&mut hosts, 60).await;
    let mixed_end = Instant::now();
    b_layer.quota_handle().set(slow).unwrap();
    let (after, _) = alternate(&mut hosts, 200).await;
    let end = Instant::now();
    assert!(
        mixed <= refill_bound(100.0, mixed_end - spent),
        "{mixed} admitted while the hosts disagreed, in {:?}",
        mixed_end - spent
    );
    assert!(
        mixed + after
            <= refill_bound(100.0, mixed_end - spent) + refill_bound(10.0, end - mixed_end),
        "{after} admitted at the lower quota in {:?}",
        end - mixed_end
    );
    let (sa, sb) = (a_layer.snapshot(), b_layer.snapshot());
    assert_eq!(sa.fallbacks() + sb.fallbacks(), 0);
}

/// Per-level scaling: two hosts, each with its own controller (levels are per host), quota
/// 100/s and `heavy = 0.1`. Spent at Normal, then both pinned at Heavy: the debt of 100 units
/// stays 100 units (no burst), and the fleet refills at 10/s. Back at Normal, still no burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_scales_the_fleet_quota_and_a_level_change_makes_no_burst() {
    use degrade_core::{Controller, Level};
    use degrade_ratelimit::LevelScale;
    let redis = RedisServer::start();
    let mut cfg = config(&redis.url(), "levels", 100, Unavailable::FailClosed);
    cfg.timeout = CALM;
    cfg.quota = RateLimitConfig::per(100, Duration::from_secs(1))
        .burst(100)
        .level_scale(LevelScale {
            heavy: 0.1,
            ..LevelScale::default()
        });
    let controllers = [(); 2].map(|()| Controller::new(Default::default()).unwrap());
    let f: fn(()) -> std::future::Ready<Result<(), Infallible>> = |()| std::future::ready(Ok(()));
    let layers = controllers.clone().map(|c| {
        FleetLayer::builder(cfg.clone())
            .level(c.handle())
            .build()
            .unwrap()
    });
    let mut hosts = [
        layers[0].layer(tower::service_fn(f)),
        layers[1].layer(tower::service_fn(f)),
    ];
    until_redis_decides(&layers[0], &mut hosts[0]).await;
    until_redis_decides(&layers[1], &mut hosts[1]).await;
    let spent = spend_the_burst(&mut hosts).await;
    for c in &controllers {
        c.pin(Level::Heavy);
    }
    let (heavy, _) = alternate(&mut hosts, 200).await;
    let heavy_end = Instant::now();
    assert!(
        heavy <= refill_bound(10.0, heavy_end - spent),
        "{heavy} admitted at Heavy (10/s) in {:?}",
        heavy_end - spent
    );
    for c in &controllers {
        c.unpin();
        assert_eq!(
            c.level(),
            Level::Heavy,
            "recovery is stepwise; pin Normal instead"
        );
        c.pin(Level::Normal);
    }
    let (normal, _) = alternate(&mut hosts, 200).await;
    let end = Instant::now();
    assert!(
        heavy + normal
            <= refill_bound(10.0, heavy_end - spent) + refill_bound(100.0, end - heavy_end),
        "{normal} admitted back at Normal in {:?}",
        end - heavy_end
    );
    assert_eq!(
        layers[0].snapshot().fallbacks() + layers[1].snapshot().fallbacks(),
        0
    );
}

/// Redis not running when the layer is built: the policy decides (three calls ask and fail,
/// then decisions fail fast); once Redis starts, the probe closes the breaker and Redis
/// decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_not_up_at_start_the_policy_decides_until_it_is() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let (layer, mut svc) = host(config(&url, "late", 10, Unavailable::FailOpen));
    for _ in 0..10 {
        assert_eq!(decide(&mut svc).await, Ok(true));
    }
    let s = layer.snapshot();
    assert_eq!(delta(s, Default::default()), [0, 0, 10, 0, 3, 7]);
    assert!(s.failing_fast);
    let _redis = RedisServer::start_on(port);
    until_redis_decides(&layer, &mut svc).await;
    let s = layer.snapshot();
    assert!(!s.failing_fast && s.consecutive_failures == 0, "{s:?}");
}

/// Redis up but answering the script with an error (the limit's key holds a list: WRONGTYPE):
/// that one decision goes to the policy and is counted; one failure does not open the
/// breaker, and once the key is usable Redis decides again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reply_goes_to_the_policy_and_is_counted() {
    let redis = RedisServer::start();
    let (layer, mut svc) = host(calm(&redis.url(), "wrongtype", 10, Unavailable::FailClosed));
    until_redis_decides(&layer, &mut svc).await;
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = "degrade:rl:wrongtype:all";
    let _: () = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(key)
        .arg("x")
        .query_async(&mut con)
        .await
        .unwrap();
    let before = layer.snapshot();
    assert_eq!(decide(&mut svc).await, Err(Cause::FleetUnavailable));
    let s = layer.snapshot();
    assert_eq!(delta(s, before), [0, 0, 0, 1, 1, 0]);
    assert_eq!(s.consecutive_failures, 1);
    assert!(!s.failing_fast);
    let _: () = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(decide(&mut svc).await, Ok(true));
    assert_eq!(layer.snapshot().consecutive_failures, 0);
}

/// Many decisions in flight while Redis is killed (SIGKILL) and restarted: every call returns
/// (no panic, none hangs: each is bounded by the timeout or fails fast), every one is counted
/// exactly once, and Redis decides again after the restart. The longest decision is printed
/// (not asserted: a wall-clock figure on a shared machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_in_flight_across_a_kill_and_restart_are_all_accounted() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut redis = RedisServer::start();
    let port = redis.port();
    let (layer, mut svc) = host(config(
        &redis.url(),
        "inflight",
        1_000,
        Unavailable::Local { share: 0.5 },
    ));
    until_redis_decides(&layer, &mut svc).await;
    let base = layer.snapshot();
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut svc = svc.clone();
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut longest = Duration::ZERO;
                for _ in 0..300 {
                    let t = Instant::now();
                    match decide(&mut svc).await {
                        Ok(_) => {}
                        Err(c) => panic!("unexpected {c:?}"),
                    }
                    longest = longest.max(t.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
                longest
            })
        })
        .collect();
    let wait_for = |n: u64| {
        let done = Arc::clone(&done);
        async move {
            while done.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    wait_for(600).await;
    redis.kill();
    wait_for(1_400).await;
    let _redis = RedisServer::start_on(port);
    let mut longest = Duration::ZERO;
    for t in tasks {
        longest = longest.max(t.await.expect("no decision panicked"));
    }
    let s = layer.snapshot();
    let d = delta(s, base);
    assert_eq!(s.offered() - base.offered(), 2_400, "{s:?}");
    assert_eq!(d[0] + d[1] + d[2] + d[3], 2_400);
    assert_eq!(
        d[2] + d[3],
        d[4] + d[5],
        "every fallback either waited or failed fast"
    );
    assert!(d[4] >= 3 && d[5] > 0, "the kill was seen: {d:?}");
    println!("longest decision across the kill: {longest:?} (timeout {TIMEOUT:?})");
    until_redis_decides(&layer, &mut svc).await;
    assert!(!layer.snapshot().failing_fast);
}
