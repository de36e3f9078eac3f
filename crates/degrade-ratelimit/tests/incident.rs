//! The incident switch against a real `redis-server` started on a free port: several
//! instances (each its own controller, switch client and watcher) follow one fleet-wide pin.
//! Expiry runs on the Redis server's clock (a key TTL) or, while Redis is away, on the
//! instance's `ManualClock`; the tests poll real state with bounds, they never sleep in place
//! of a clock.
#![cfg(feature = "redis")]

use degrade_core::fleet::testing::RedisServer;
use degrade_core::ladder::{LadderConfig, Reading};
use degrade_core::{Controller, Level, ManualClock};
use degrade_ratelimit::fleet::incident::{IncidentConfig, IncidentSwitch, IncidentWatcher};
use std::time::{Duration, Instant};

/// The server's clock, in milliseconds since 1970.
async fn time_ms(redis: &RedisServer) -> u64 {
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut con).await.unwrap();
    s * 1000 + us / 1000
}

fn config(url: &str) -> IncidentConfig {
    let mut c = IncidentConfig::default();
    c.url = url.to_owned();
    c.name = "checkout".to_owned();
    c.poll = Duration::from_millis(100);
    c.timeout = Duration::from_millis(100);
    c
}

/// An instance: its own controller (on a manual clock, escalating and recovering after one
/// sample, a one-second dwell), its own switch client and its watcher.
struct Instance {
    clock: ManualClock,
    controller: Controller<ManualClock>,
    watcher: IncidentWatcher,
}

fn instance(url: &str) -> Instance {
    let clock = ManualClock::new();
    let cfg = LadderConfig {
        escalate_after: 1,
        recover_after: 1,
        dwell: Duration::from_secs(1),
        ..LadderConfig::default()
    };
    let controller = Controller::with_clock(cfg, clock.clone()).unwrap();
    let watcher = IncidentSwitch::new(config(url))
        .unwrap()
        .watch(controller.clone());
    Instance {
        clock,
        controller,
        watcher,
    }
}

/// Polls `cond` until it holds (at most 15 s).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Three instances follow "Heavy for 1.5 s": each applies it at its first or second read after
/// the write (reads every 100 ms, so well within a second), and releases it only once the key
/// has expired on the Redis server's clock; then each instance's own signals drive its level
/// again. The pin is in the audit list with who and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_follows_a_fleet_wide_pin_and_returns_to_its_signals_at_expiry() {
    let redis = RedisServer::start();
    let instances: Vec<Instance> = (0..3).map(|_| instance(&redis.url())).collect();
    until("every watcher has read the switch", || {
        instances.iter().all(|i| i.watcher.snapshot().polls >= 1)
    })
    .await;
    let operator = IncidentSwitch::new(config(&redis.url())).unwrap();
    let written = Instant::now();
    let expires_at = operator
        .pin(
            Level::Heavy,
            Duration::from_millis(1500),
            "alice",
            "db failover",
        )
        .await
        .unwrap();
    // Counted once the write has returned, not before it was sent: the call (the operator's
    // first, so it also connects) can last several polls on a loaded machine, and reads answered
    // during it may or may not have seen the pin. Of the reads after this count, at most one
    // was in flight before the write; the next one started after it.
    let before: Vec<u64> = instances
        .iter()
        .map(|i| i.watcher.snapshot().polls)
        .collect();
    until("every instance is at Heavy", || {
        instances
            .iter()
            .all(|i| i.controller.level() == Level::Heavy)
    })
    .await;
    println!(
        "all three instances at Heavy {:?} after the write",
        written.elapsed()
    );
    for (i, polls) in instances.iter().zip(before) {
        let s = i.watcher.snapshot();
        assert_eq!(s.pinned, Some(Level::Heavy));
        assert_eq!(i.controller.pinned(), Some(Level::Heavy));
        assert_eq!(s.applied, 1);
        assert!(
            s.applied_at_poll <= polls + 2,
            "applied at read {} after the write returned at read {polls}",
            s.applied_at_poll
        );
    }
    let pin = operator.current().await.unwrap().expect("in force");
    assert_eq!(
        (pin.level, pin.who.as_str(), pin.why.as_str()),
        (Level::Heavy, "alice", "db failover")
    );
    assert!(pin.remaining <= Duration::from_millis(1500));

    until("every instance has released the pin", || {
        instances.iter().all(|i| i.controller.pinned().is_none())
    })
    .await;
    assert!(
        time_ms(&redis).await >= expires_at,
        "released only after the expiry on the server's clock"
    );
    assert_eq!(operator.current().await.unwrap(), None);
    for i in &instances {
        let s = i.watcher.snapshot();
        assert_eq!((s.pinned, s.applied, s.released), (None, 1, 1), "{s:?}");
        // Back to its own signals: calm readings step the level down once the dwell passes.
        i.clock.advance(Duration::from_secs(1));
        i.controller.observe(&[Reading::new("cpu", 0.05)]);
        assert_eq!(i.controller.level(), Level::Moderate);
    }
    let audit = operator.audit().await.unwrap();
    assert_eq!(audit.len(), 1);
    let e = &audit[0];
    assert_eq!(
        (
            e.action.as_str(),
            e.level.as_str(),
            e.for_ms,
            e.who.as_str(),
            e.why.as_str()
        ),
        ("pin", "heavy", 1500, "alice", "db failover")
    );
    assert!(e.at_ms + 1500 == expires_at);
}

/// Clearing the switch releases every instance at its next read; while the pin is in force
/// it wins over a pin set on one instance by hand. The audit list keeps both entries, newest
/// first, and stays capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_the_switch_releases_every_instance_and_the_audit_is_capped() {
    let redis = RedisServer::start();
    let instances: Vec<Instance> = (0..2).map(|_| instance(&redis.url())).collect();
    let mut cfg = config(&redis.url());
    cfg.audit_len = 3;
    let operator = IncidentSwitch::new(cfg).unwrap();
    operator
        .pin(Level::Emergency, Duration::from_secs(600), "bob", "ddos")
        .await
        .unwrap();
    until("both at Emergency", || {
        instances
            .iter()
            .all(|i| i.controller.level() == Level::Emergency)
    })
    .await;
    instances[1].controller.pin(Level::Light);
    until("the fleet pin wins again", || {
        instances[1].controller.pinned() == Some(Level::Emergency)
    })
    .await;
    operator.clear("bob", "mitigated").await.unwrap();
    until("both released", || {
        instances.iter().all(|i| i.controller.pinned().is_none())
    })
    .await;
    let audit = operator.audit().await.unwrap();
    let actions: Vec<_> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.why.as_str()))
        .collect();
    assert_eq!(actions, [("clear", "mitigated"), ("pin", "ddos")]);
    for n in 0..5 {
        operator
            .pin(
                Level::Light,
                Duration::from_secs(1),
                "ci",
                &format!("run {n}"),
            )
            .await
            .unwrap();
    }
    let audit = operator.audit().await.unwrap();
    let whys: Vec<_> = audit.iter().map(|e| e.why.as_str()).collect();
    assert_eq!(whys, ["run 4", "run 3", "run 2"], "capped at audit_len");
}

/// Redis killed (SIGKILL) during a pin of 60 s: the instance keeps the pin while its reads
/// fail, until the expiry it was told passes on its own (manual) clock, then releases it. After
/// a restart (empty) nothing is pinned again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_outlives_a_redis_outage_until_its_known_expiry_and_no_longer() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let inst = instance(&redis.url());
    let operator = IncidentSwitch::new(config(&redis.url())).unwrap();
    operator
        .pin(
            Level::Heavy,
            Duration::from_secs(60),
            "carol",
            "upstream outage",
        )
        .await
        .unwrap();
    until("applied", || inst.controller.pinned() == Some(Level::Heavy)).await;
    redis.kill();
    let f0 = inst.watcher.snapshot().failures;
    until("reads fail", || inst.watcher.snapshot().failures >= f0 + 2).await;
    inst.clock.advance(Duration::from_secs(50));
    let f1 = inst.watcher.snapshot().failures;
    until("more reads fail", || {
        inst.watcher.snapshot().failures >= f1 + 2
    })
    .await;
    assert_eq!(
        inst.controller.pinned(),
        Some(Level::Heavy),
        "10 s are left"
    );
    assert_eq!(inst.watcher.snapshot().released, 0);
    inst.clock.advance(Duration::from_secs(11));
    until("released at the known expiry", || {
        inst.watcher.snapshot().released == 1
    })
    .await;
    assert_eq!(inst.controller.pinned(), None);
    assert_eq!(inst.watcher.snapshot().pinned, None);

    let _redis = RedisServer::start_on(port);
    let p = inst.watcher.snapshot().polls;
    until("reads answered again", || {
        inst.watcher.snapshot().polls >= p + 2
    })
    .await;
    assert_eq!(inst.controller.pinned(), None);
    assert_eq!(inst.watcher.snapshot().applied, 1);
}
