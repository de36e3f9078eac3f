//! Fuzz-style property tests on stable Rust (proptest: arbitrary bytes and structured
//! generators, bounded to seconds) of what the canary reads from disk and from configuration:
//! a state file of arbitrary bytes is a state or a `CorruptState` error, never a panic, and a
//! state read back resumes a rollout or is refused; configuration types through serde are Ok
//! or an error; a configured `Duration::MAX` never panics. (The sticky-key extractors are
//! fuzzed in `tests/fuzz.rs`.)

use degrade_canary::{
    Canary, CanaryConfig, CanaryController, CanaryEvent, CanaryMachine, CanaryPhase, CanaryState,
    CanaryStep, CorruptState, FileStore, JudgeConfig, PauseReason, StateStore, Verdict,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::path::PathBuf;
use std::time::Duration;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("canary-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn phase() -> impl Strategy<Value = CanaryPhase> {
    prop_oneof![
        Just(CanaryPhase::Progressing),
        Just(CanaryPhase::Paused(PauseReason::Manual)),
        Just(CanaryPhase::Paused(PauseReason::Inconclusive)),
        Just(CanaryPhase::Promoted),
        Just(CanaryPhase::RolledBack),
    ]
}

fn any_state() -> impl Strategy<Value = CanaryState> {
    (
        phase(),
        prop_oneof![0usize..8, any::<usize>()],
        prop_oneof![0u32..=10_000, any::<u32>()],
        any::<u32>(),
    )
        .prop_map(|(phase, step, weight_bp, inconclusive)| CanaryState {
            phase,
            step,
            weight_bp,
            inconclusive,
        })
}

/// Whatever a state file held, a rollout resumed from it runs or is refused.
fn resume_and_drive(s: CanaryState) {
    let now = tokio::time::Instant::now();
    if let Ok(mut r) = CanaryMachine::resume(CanaryConfig::default(), s, now) {
        for (k, e) in [
            CanaryEvent::Analysis(Verdict::Pass),
            CanaryEvent::Analysis(Verdict::Inconclusive),
            CanaryEvent::Resume,
            CanaryEvent::Analysis(Verdict::Fail),
        ]
        .into_iter()
        .enumerate()
        {
            let _ = r.on(e, now + Duration::from_secs(3600 * k as u64));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/fuzz_store.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_are_a_state_or_a_corrupt_state_error(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            // Near-valid: a saved state cut short or with one byte changed.
            (any_state(), any::<prop::sample::Index>(), any::<u8>(), any::<bool>()).prop_map(|(s, at, b, cut)| {
                let mut v = serde_json::to_vec_pretty(&s).unwrap();
                let i = at.index(v.len());
                if cut { v.truncate(i) } else { v[i] = b }
                v
            }),
        ],
    ) {
        let d = scratch("bytes");
        let path = d.join(format!("state-{}.json", bytes.len()));
        std::fs::write(&path, &bytes).unwrap();
        match FileStore::new(&path).load() {
            Ok(Some(s)) => resume_and_drive(s),
            Ok(None) => panic!("a file that exists is never \"nothing saved\""),
            Err(e) => {
                prop_assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
                prop_assert!(e.get_ref().is_some_and(|e| e.is::<CorruptState>()));
            }
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_saved_state_reads_back_equal_and_resumes_or_is_refused(s in any_state()) {
        let d = scratch("roundtrip");
        let store = FileStore::new(d.join("state.json"));
        store.save(&s).unwrap();
        prop_assert_eq!(store.load().unwrap(), Some(s));
        let _ = std::fs::remove_file(store.path());
        resume_and_drive(s);
    }

    #[test]
    fn arbitrary_json_is_a_config_or_an_error(v in json()) {
        let text = v.to_string();
        if let Ok(cfg) = serde_json::from_str::<CanaryConfig>(&text)
            && cfg.validate().is_ok()
        {
            let now = tokio::time::Instant::now();
            let mut r = CanaryMachine::new(cfg, now).expect("a valid config starts");
            let _ = r.on(CanaryEvent::Analysis(Verdict::Pass), now + Duration::from_secs(1));
        }
        if let Ok(j) = serde_json::from_str::<JudgeConfig>(&text) {
            let _ = j.validate();
        }
        let _ = serde_json::from_str::<CanaryStep>(&text);
        let _ = serde_json::from_str::<CanaryState>(&text);
    }

    #[test]
    fn near_valid_configs_are_a_config_or_an_error(v in config_json()) {
        if let Ok(cfg) = serde_json::from_value::<CanaryConfig>(v)
            && cfg.validate().is_ok()
        {
            let now = tokio::time::Instant::now();
            let mut r = CanaryMachine::new(cfg, now).expect("a valid config starts");
            for k in 1..4u64 {
                let _ = r.on(CanaryEvent::Analysis(Verdict::Pass), now + Duration::from_secs(k * 86_400 * 365));
            }
        }
    }
}

/// Arbitrary JSON, a few levels deep, with the configuration's own keys among others.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    let key = prop_oneof![
        prop::sample::select(vec![
            "steps",
            "weight_percent",
            "bake",
            "analysis_interval",
            "inconclusive_limit",
            "judge",
            "min_samples",
            "alpha",
            "beta",
            "error_ratio",
            "latency_quantile",
            "latency_ratio",
            "max_error_rate",
            "max_p99",
            "phase",
            "step",
            "weight_bp",
            "inconclusive",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A rollout configuration with plausible and extreme values.
fn config_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let duration = prop_oneof![
        (
            0u64..10_000,
            prop::sample::select(vec!["ms", "s", "m", "h", "d", "y"])
        )
            .prop_map(|(n, u)| Value::String(format!("{n}{u}"))),
        any::<u64>().prop_map(|n| Value::String(format!("{n}s"))),
        Just(Value::String(
            "18446744073709551615s 999999999ns".to_owned()
        )),
    ];
    let weight = prop_oneof![0.0f64..=100.0, any::<f64>()];
    let step =
        (weight, duration.clone()).prop_map(|(w, b)| json!({"weight_percent": w, "bake": b}));
    (
        prop::collection::vec(step, 0..8),
        duration,
        any::<u32>(),
        0.0f64..1.0,
        0.0f64..1.0,
        any::<u64>(),
    )
        .prop_map(|(steps, interval, limit, alpha, beta, min_samples)| {
            json!({
                "steps": steps,
                "analysis_interval": interval,
                "inconclusive_limit": limit,
                "judge": {"alpha": alpha, "beta": beta, "min_samples": min_samples},
            })
        })
}

#[tokio::test]
async fn duration_max_settings_never_panic() {
    let cfg = CanaryConfig {
        steps: vec![
            CanaryStep::new(10.0, Duration::MAX),
            CanaryStep::new(100.0, Duration::MAX),
        ],
        analysis_interval: Duration::MAX,
        ..CanaryConfig::default()
    };
    let now = tokio::time::Instant::now();
    let mut r = CanaryMachine::new(cfg.clone(), now).unwrap();
    let _ = r.on(
        CanaryEvent::Analysis(Verdict::Pass),
        now + Duration::from_secs(1_000 * 365 * 86_400),
    );
    assert_eq!(r.state().step, 0, "a bake of Duration::MAX never ends");

    let svc = || tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) });
    let router = Canary::builder().build(svc(), svc());
    let c = CanaryController::builder(cfg, router.handle())
        .start()
        .unwrap();
    let (task, gates) = c.spawn();
    gates.promote();
    assert_eq!(task.await.unwrap().unwrap().phase, CanaryPhase::Promoted);
}
