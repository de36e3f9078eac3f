//! Bad input is a `ConfigError` naming the field; nothing panics.

use degrade_canary::{Canary, CanaryConfig, CanaryController, CanaryMachine, JudgeConfig, Weight};
use std::convert::Infallible;

fn rollout(json: &str) -> CanaryConfig {
    serde_json::from_str(json).unwrap()
}

#[test]
fn weights_outside_0_to_100_percent_are_refused() {
    assert_eq!(Weight::new(10_001).unwrap_err().field(), "weight");
    let w = Weight::new(10_000).unwrap();
    assert!(w.set(u32::MAX).is_err());
    assert!(w.set_percent(100.01).is_err());
    assert!(w.set_percent(-0.01).is_err());
    assert!(w.set_percent(f64::INFINITY).is_err());
    assert_eq!(w.get(), 10_000, "a refused weight leaves the old one");

    let cfg = rollout(r#"{"steps": [{"weight_percent": 150, "bake": "1m"}]}"#);
    let err = cfg.validate().unwrap_err();
    assert_eq!(err.field(), "steps.0.weight_percent");
    let cfg = rollout(r#"{"steps": [{"weight_percent": -5, "bake": "1m"}]}"#);
    assert_eq!(
        cfg.validate().unwrap_err().field(),
        "steps.0.weight_percent"
    );
    let cfg = rollout(r#"{"steps": [{"weight_percent": 0, "bake": "1m"}]}"#);
    assert_eq!(
        cfg.validate().unwrap_err().field(),
        "steps.0.weight_percent"
    );
}

#[test]
fn steps_that_do_not_rise_are_refused() {
    let flat = rollout(
        r#"{"steps": [{"weight_percent": 5, "bake": "1m"}, {"weight_percent": 5, "bake": "1m"}]}"#,
    );
    let err = flat.validate().unwrap_err();
    assert_eq!(err.field(), "steps.1.weight_percent");
    assert!(err.rule().contains("rise"));
    let down = rollout(
        r#"{"steps": [{"weight_percent": 50, "bake": "1m"}, {"weight_percent": 10, "bake": "1m"}]}"#,
    );
    assert!(CanaryMachine::new(down, tokio::time::Instant::now()).is_err());
    assert_eq!(
        rollout(r#"{"steps": []}"#).validate().unwrap_err().field(),
        "steps"
    );
}

#[test]
fn a_zero_minimum_sample_is_refused() {
    let cfg = rollout(r#"{"judge": {"min_samples": 0}}"#);
    assert_eq!(cfg.validate().unwrap_err().field(), "judge.min_samples");
    let judge: JudgeConfig = serde_json::from_str(r#"{"min_samples": 0}"#).unwrap();
    assert!(degrade_canary::Judge::new(judge).is_err());
}

#[test]
fn other_bad_judge_and_rollout_fields_are_named() {
    for (json, field) in [
        (r#"{"judge": {"alpha": 0}}"#, "judge.alpha"),
        (r#"{"judge": {"alpha": 0.7}}"#, "judge.alpha"),
        (r#"{"judge": {"max_key_share": 0}}"#, "judge.max_key_share"),
        (
            r#"{"judge": {"max_key_share": 1.5}}"#,
            "judge.max_key_share",
        ),
        (r#"{"judge": {"error_ratio": 0.5}}"#, "judge.error_ratio"),
        (r#"{"judge": {"latency_ratio": 1}}"#, "judge.latency_ratio"),
        (
            r#"{"judge": {"max_error_rate": 2}}"#,
            "judge.max_error_rate",
        ),
        (r#"{"judge": {"max_p99": "0s"}}"#, "judge.max_p99"),
        (r#"{"analysis_interval": "0s"}"#, "analysis_interval"),
        (r#"{"inconclusive_limit": 0}"#, "inconclusive_limit"),
    ] {
        assert_eq!(
            rollout(json).validate().unwrap_err().field(),
            field,
            "{json}"
        );
    }
}

#[test]
fn unknown_fields_are_refused_by_serde() {
    assert!(serde_json::from_str::<CanaryConfig>(r#"{"stepz": []}"#).is_err());
    assert!(serde_json::from_str::<JudgeConfig>(r#"{"min_sample": 3}"#).is_err());
}

#[tokio::test]
async fn the_controller_refuses_a_bad_config() {
    let router = Canary::builder().build(
        tower::service_fn(|x: u8| async move { Ok::<_, Infallible>(x) }),
        tower::service_fn(|x: u8| async move { Ok::<_, Infallible>(x) }),
    );
    let cfg = rollout(r#"{"judge": {"min_samples": 0}}"#);
    let err = CanaryController::builder(cfg, router.handle())
        .start()
        .unwrap_err();
    let err = err.downcast::<degrade_core::ConfigError>().unwrap();
    assert_eq!(err.field(), "judge.min_samples");
    assert_eq!(
        router.weight().get(),
        0,
        "a refused controller leaves the weight alone"
    );
}
