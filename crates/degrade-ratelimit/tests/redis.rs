//! Fleet mode against a real `redis-server` that the test starts on a free port (and kills in
//! `Drop`). Two `FleetLayer`s with their own connections stand for two hosts.
//!
//! Real time (Redis keeps its own clock): bounds allow the elapsed time of each run.
//! `redis-server` must be on PATH (CI installs it); without it these tests fail, they do not
//! skip.
#![cfg(feature = "redis")]

use degrade_ratelimit::error::Cause;
use degrade_ratelimit::fleet::{FleetConfig, FleetLayer, Unavailable};
use degrade_ratelimit::{RateLimitConfig, RateLimited};
use std::convert::Infallible;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tower::{Layer, Service, ServiceExt};

/// A `redis-server` child process on 127.0.0.1.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): the redis tests need it on PATH \
                     (apt-get install redis-server)"
                )
            });
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

const TIMEOUT: Duration = Duration::from_millis(100);

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
    let (a_layer, a) = host(config(
        &redis.url(),
        "shared",
        quota,
        Unavailable::FailClosed,
    ));
    let (b_layer, b) = host(config(
        &redis.url(),
        "shared",
        quota,
        Unavailable::FailClosed,
    ));
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
    let (_, mut other) = host(config(
        &redis.url(),
        "other",
        quota,
        Unavailable::FailClosed,
    ));
    assert_eq!(decide(&mut other).await, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_budgets_are_shared_per_key_across_hosts() {
    let redis = RedisServer::start();
    let mk = || {
        let layer = FleetLayer::with(
            config(&redis.url(), "keyed", 5, Unavailable::FailClosed),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_the_policy_holds_within_the_timeout_and_sharing_resumes_after_restart() {
    let mut redis = RedisServer::start();
    let port = redis.port;
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

    // Up: all three spend the one budget.
    assert_eq!(decide(&mut open).await, Ok(true));
    assert_eq!(decide(&mut closed).await, Ok(true));
    assert_eq!(decide(&mut local).await, Ok(true));

    redis.kill();

    // Down: each call is decided by its policy, none waits past the timeout (plus scheduling
    // slack).
    let slack = Duration::from_millis(150);
    let mut local_admitted = 0;
    let start = Instant::now();
    for _ in 0..40 {
        for (svc, expect) in [
            (&mut open, Some(Ok(true))),
            (&mut closed, Some(Err(Cause::FleetUnavailable))),
            (&mut local, None),
        ] {
            let t = Instant::now();
            let out = decide(svc).await;
            assert!(
                t.elapsed() <= TIMEOUT + slack,
                "a decision took {:?}",
                t.elapsed()
            );
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
    assert_eq!(open_layer.snapshot().fallback_admitted, 40);
    assert_eq!(closed_layer.snapshot().fallback_rejected, 40);
    assert_eq!(local_layer.snapshot().fallbacks(), 40);

    // Restart on the same port (empty, so the script must be loaded again: NOSCRIPT path).
    let _redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = closed_layer.snapshot().fallbacks();
        let out = decide(&mut closed).await;
        if out != Err(Cause::FleetUnavailable) && closed_layer.snapshot().fallbacks() == before {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnection within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reconnect the other two the same way (each has its own connection).
    for (layer, svc) in [(&open_layer, &mut open), (&local_layer, &mut local)] {
        loop {
            let before = layer.snapshot().fallbacks();
            let _ = decide(svc).await;
            if layer.snapshot().fallbacks() == before {
                break;
            }
            assert!(Instant::now() < deadline, "no reconnection within 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
