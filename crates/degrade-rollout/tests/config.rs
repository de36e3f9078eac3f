//! Bad input is a `ConfigError` naming the field, never a panic.

use degrade_rollout::discover::Pool;
use degrade_rollout::driver::CommandSpec;
use degrade_rollout::plan::RolloutMachine;
use degrade_rollout::{
    Amount, Instance, ProcessDriver, RolloutConfig, RolloutController, RolloutError,
};

fn inst(id: &str, port: u16, v: &str) -> Instance {
    Instance::new(id, format!("127.0.0.1:{port}").parse().unwrap(), v)
}

fn driver() -> ProcessDriver {
    ProcessDriver::builder()
        .version("v1", CommandSpec::new("server"))
        .version("v2", CommandSpec::new("server"))
        .build()
        .unwrap()
}

fn build(instances: Vec<Instance>, target: &str, cfg: RolloutConfig) -> Result<(), RolloutError> {
    RolloutController::builder(driver(), Pool::new(|i: &Instance| i.address))
        .config(cfg)
        .build(instances, target)
        .map(|_| ())
}

fn field(r: Result<(), RolloutError>) -> String {
    match r {
        Err(RolloutError::Config(e)) => e.field().to_owned(),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn duplicate_ids_are_rejected() {
    let r = build(
        vec![inst("a", 1, "v1"), inst("a", 2, "v1")],
        "v2",
        RolloutConfig::default(),
    );
    assert_eq!(field(r), "instances");
}

#[test]
fn duplicate_addresses_are_rejected() {
    let r = build(
        vec![inst("a", 1, "v1"), inst("b", 1, "v1")],
        "v2",
        RolloutConfig::default(),
    );
    assert_eq!(field(r), "instances");
}

#[test]
fn an_empty_instance_set_is_rejected() {
    assert_eq!(
        field(build(vec![], "v2", RolloutConfig::default())),
        "instances"
    );
}

#[test]
fn surge_and_unavailable_both_zero_are_rejected() {
    for (s, u) in [
        (Amount::Count(0), Amount::Count(0)),
        (Amount::Percent(0), Amount::Count(0)),
        (Amount::Count(0), Amount::Percent(0)),
    ] {
        let cfg = RolloutConfig {
            max_surge: s,
            max_unavailable: u,
            ..Default::default()
        };
        assert_eq!(
            field(build(vec![inst("a", 1, "v1")], "v2", cfg)),
            "max_unavailable"
        );
    }
}

#[test]
fn an_unknown_target_version_is_rejected() {
    let r = build(vec![inst("a", 1, "v1")], "v3", RolloutConfig::default());
    assert_eq!(field(r), "target");
}

#[test]
fn an_unknown_current_version_is_rejected() {
    let r = build(vec![inst("a", 1, "v0")], "v2", RolloutConfig::default());
    assert_eq!(field(r), "instances.a.version");
}

#[test]
fn percentages_above_100_and_zero_durations_are_rejected() {
    let cfg = RolloutConfig {
        max_surge: Amount::Percent(101),
        ..Default::default()
    };
    assert_eq!(
        field(build(vec![inst("a", 1, "v1")], "v2", cfg)),
        "max_surge"
    );
    let cfg = RolloutConfig {
        health_interval: std::time::Duration::ZERO,
        ..Default::default()
    };
    assert_eq!(
        field(build(vec![inst("a", 1, "v1")], "v2", cfg)),
        "health_interval"
    );
    let cfg = RolloutConfig {
        healthy_threshold: 0,
        ..Default::default()
    };
    assert_eq!(
        field(build(vec![inst("a", 1, "v1")], "v2", cfg)),
        "healthy_threshold"
    );
}

#[test]
fn percentages_round_as_kubernetes_does() {
    let cfg = RolloutConfig {
        max_surge: Amount::Percent(25),
        max_unavailable: Amount::Percent(25),
        ..Default::default()
    };
    let l = cfg.limits(10).unwrap();
    assert_eq!((l.surge, l.unavailable), (3, 2)); // 2.5 up, 2.5 down
    let cfg = RolloutConfig {
        max_surge: Amount::Percent(0),
        max_unavailable: Amount::Percent(10),
        ..Default::default()
    };
    let l = cfg.limits(4).unwrap();
    assert_eq!((l.surge, l.unavailable), (0, 1)); // both resolve to 0: unavailable 1
}

#[test]
fn instances_already_on_target_are_not_planned() {
    let p = RolloutMachine::new(
        RolloutConfig::default(),
        vec![inst("a", 1, "v2"), inst("b", 2, "v1")],
        "v2",
    )
    .unwrap();
    assert_eq!(p.batch_count(), 1);
}

#[test]
fn config_rejects_unknown_fields_and_bad_amounts() {
    assert!(serde_json::from_str::<RolloutConfig>(r#"{"max_surg": 1}"#).is_err());
    assert!(serde_json::from_str::<Amount>(r#""ten%""#).is_err());
    let cfg: RolloutConfig =
        serde_json::from_str(r#"{"max_surge": "50%", "max_unavailable": "0", "min_ready": "2s"}"#)
            .unwrap();
    assert_eq!(cfg.max_surge, Amount::Percent(50));
    assert_eq!(cfg.max_unavailable, Amount::Count(0));
}

#[test]
fn a_journal_of_another_rollout_is_rejected() {
    let dir = std::env::temp_dir().join(format!("degrade-rollout-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("other.jsonl");
    std::fs::write(
        &path,
        r#"{"target":"v9","config":{},"instances":[]}
"#,
    )
    .unwrap();
    let r = RolloutController::builder(driver(), Pool::new(|i: &Instance| i.address))
        .journal(&path)
        .build(vec![inst("a", 1, "v1")], "v2")
        .map(|_| ());
    assert_eq!(field(r), "journal");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn process_driver_config_is_checked() {
    assert_eq!(
        ProcessDriver::builder().build().unwrap_err().field(),
        "versions"
    );
    let err = ProcessDriver::builder()
        .version("v1", CommandSpec::new("x"))
        .stop_grace(std::time::Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "stop_grace");
    let a = "127.0.0.1:9".parse().unwrap();
    let err = ProcessDriver::builder()
        .version("v1", CommandSpec::new("x"))
        .spare(a)
        .spare(a)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "spare");
}

#[test]
fn post_watch_defaults_to_a_minute_reads_humantime_and_is_checked_against_the_health_interval() {
    use std::time::Duration;
    assert_eq!(RolloutConfig::default().post_watch, Duration::from_secs(60));
    let cfg: RolloutConfig = serde_json::from_str(r#"{"post_watch": "2m 30s"}"#).unwrap();
    assert_eq!(cfg.post_watch, Duration::from_secs(150));
    let err = serde_json::from_str::<RolloutConfig>(r#"{"post_watch": "soon"}"#).unwrap_err();
    assert!(err.to_string().contains("expected a duration"), "{err}");
    // Zero: one last check of each upgraded instance.
    let zero = RolloutConfig {
        post_watch: Duration::ZERO,
        ..RolloutConfig::default()
    };
    assert!(zero.validate().is_ok());
    // Shorter than one health interval: a unit mistake, most likely.
    let short = RolloutConfig {
        post_watch: Duration::from_millis(500),
        health_interval: Duration::from_secs(1),
        ..RolloutConfig::default()
    };
    assert_eq!(
        field(build(vec![inst("a", 1, "v1")], "v2", short)),
        "post_watch"
    );
    let forever = RolloutConfig {
        post_watch: Duration::MAX,
        ..RolloutConfig::default()
    };
    assert!(forever.validate().is_ok());
}

#[test]
fn ejection_settings_are_checked_naming_the_field() {
    use degrade_rollout::discover::EjectionConfig;
    use std::time::Duration;
    let bad = [
        (
            EjectionConfig {
                consecutive_failures: 0,
                ..EjectionConfig::default()
            },
            "ejection.consecutive_failures",
        ),
        (
            EjectionConfig {
                max_ejected_percent: 101,
                ..EjectionConfig::default()
            },
            "ejection.max_ejected_percent",
        ),
        (
            EjectionConfig {
                reprobe_interval: Duration::ZERO,
                ..EjectionConfig::default()
            },
            "ejection.reprobe_interval",
        ),
        (
            EjectionConfig {
                reprobe_interval: Duration::from_secs(10),
                reprobe_max: Duration::from_secs(1),
                ..EjectionConfig::default()
            },
            "ejection.reprobe_max",
        ),
        (
            EjectionConfig {
                probe_timeout: Duration::ZERO,
                ..EjectionConfig::default()
            },
            "ejection.probe_timeout",
        ),
    ];
    for (cfg, f) in bad {
        let err = Pool::builder(|i: &Instance| i.address)
            .ejection(cfg)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), f);
    }
    let forever = EjectionConfig {
        reprobe_interval: Duration::MAX,
        reprobe_max: Duration::MAX,
        probe_timeout: Duration::MAX,
        ..EjectionConfig::default()
    };
    assert!(
        Pool::builder(|i: &Instance| i.address)
            .ejection(forever)
            .build()
            .is_ok()
    );
    let e: Result<EjectionConfig, _> = serde_json::from_str(r#"{"eject": true}"#);
    assert!(e.is_err(), "unknown fields are refused");
}
