//! Property tests of the level sampler: consistency across levels, the threshold it writes,
//! and that it never answers `RecordOnly`.

use degrade_core::{Controller, Level, Policy};
use degrade_otel::LevelSampler;
use degrade_otel::sampler::{encode_threshold, threshold_for};
use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn decide(sampler: &LevelSampler, id: u128, parent: Option<&Context>) -> (bool, TraceState) {
    let r = sampler.should_sample(
        parent,
        TraceId::from(id),
        "GET /",
        &SpanKind::Server,
        &[],
        &[],
    );
    assert_ne!(r.decision, SamplingDecision::RecordOnly, "never RecordOnly");
    (
        r.decision == SamplingDecision::RecordAndSample,
        r.trace_state,
    )
}

fn randomness(id: u128) -> u64 {
    (id as u64) & ((1 << 56) - 1)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/proptests.txt",
        ))),
        ..ProptestConfig::default()
    })]

    /// A trace kept at a more degraded level is kept at every less degraded one: the levels'
    /// decisions nest, so raising the level only removes traces, never swaps them.
    #[test]
    fn decisions_nest_across_levels(id in 1u128..) {
        let controller = Controller::new(Default::default()).unwrap();
        let sampler = LevelSampler::new(controller.handle(), Policy::default())
            .unwrap()
            .record_errors_only_levels(false);
        let mut previous = true;
        for level in Level::ALL {
            controller.pin(level);
            let (kept, state) = decide(&sampler, id, None);
            prop_assert!(previous || !kept, "kept at {level} but not below");
            previous = kept;
            let threshold = threshold_for(Policy::default().level(level).sampling).unwrap();
            prop_assert_eq!(kept, randomness(id) >= threshold);
            if kept {
                let expected = format!("th:{}", encode_threshold(threshold));
                prop_assert_eq!(state.get("ot"), Some(expected.as_str()));
            }
        }
    }

    /// With an explicit `rv` in the parent's tracestate, that randomness decides, and the other
    /// sub-keys and vendor entries survive.
    #[test]
    fn rv_decides_and_state_survives(id in 1u128.., rv in 0u64..(1 << 56)) {
        let controller = Controller::new(Default::default()).unwrap();
        controller.pin(Level::Moderate);
        let sampler = LevelSampler::new(controller.handle(), Policy::default()).unwrap();
        let state = TraceState::from_key_value([
            ("ot", format!("rv:{rv:014x}")),
            ("vendor", "x".to_owned()),
        ])
        .unwrap();
        // An invalid-but-present parent span carrying the state (as a propagator would set it
        // on an unsampled remote parent).
        let parent = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(id),
            SpanId::from(1u64),
            TraceFlags::default(),
            true,
            state,
        ));
        let (kept, out) = decide(&sampler, id, Some(&parent));
        let threshold = threshold_for(0.1).unwrap();
        prop_assert_eq!(kept, rv >= threshold);
        prop_assert_eq!(out.get("vendor"), Some("x"));
        if kept {
            let expected = format!("th:{};rv:{rv:014x}", encode_threshold(threshold));
            prop_assert_eq!(out.get("ot"), Some(expected.as_str()));
        }
    }
}
