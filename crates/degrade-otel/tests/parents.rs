//! Spans under a sampled remote parent, through the SDK: the SDK's `ParentBasedSampler` keeps
//! them all at every level; a `SampledParentCap` applies the level's ratio from its level up,
//! on randomness a caller can neither choose by its trace id nor by an `ot=rv` tracestate.

use degrade_core::{Controller, Level, Policy};
use degrade_otel::{DropReason, ExportStats, LevelSampler, SampledParentCap};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer, TracerProvider,
};
use opentelemetry::{Context, trace::Span as _};
use opentelemetry_sdk::trace::{
    InMemorySpanExporter, ParentBasedSampler, SdkTracerProvider, SimpleSpanProcessor,
};

const N: u64 = 4_000;

struct Setup {
    controller: Controller,
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    stats: ExportStats,
}

fn setup(cap: Option<fn(&LevelSampler) -> SampledParentCap>) -> Setup {
    let controller = Controller::new(Default::default()).unwrap();
    let stats = ExportStats::new();
    let level = LevelSampler::new(controller.handle(), Policy::default())
        .unwrap()
        .record_errors_only_levels(false)
        .stats(stats.clone());
    let mut sampler = ParentBasedSampler::new(level.clone());
    if let Some(cap) = cap {
        sampler = sampler.with_remote_parent_sampled(cap(&level));
    }
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_span_processor(SimpleSpanProcessor::new(exporter.clone()))
        .build();
    Setup {
        controller,
        exporter,
        provider,
        stats,
    }
}

/// A spread of trace ids (a multiplicative hash of `i`).
fn id(i: u64) -> TraceId {
    TraceId::from(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) | 1)
}

/// A trace id whose 56 low bits are all ones: above every threshold for a consistent sampler.
fn greedy_id(i: u64) -> TraceId {
    TraceId::from(u128::from(i) << 64 | 0x00ff_ffff_ffff_ffff)
}

fn remote(trace: TraceId, state: TraceState) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        trace,
        SpanId::from(7),
        TraceFlags::SAMPLED,
        true,
        state,
    ))
}

/// Serves `N` requests arriving with a sampled remote parent; each makes a server span and a
/// child. Returns the server spans exported.
fn serve(s: &Setup, trace: fn(u64) -> TraceId, state: &TraceState) -> usize {
    s.exporter.reset();
    let tracer = s.provider.tracer("parents");
    for i in 0..N {
        let cx = remote(trace(i), state.clone());
        let server = tracer.start_with_context("GET /", &cx);
        let cx = cx.with_span(server);
        tracer.start_with_context("db", &cx).end();
        cx.span().end();
    }
    let spans = s.exporter.get_finished_spans().unwrap();
    let servers = spans.iter().filter(|s| s.name == "GET /").count();
    let children = spans.iter().filter(|s| s.name == "db").count();
    assert_eq!(servers, children, "children follow their local parent");
    servers
}

fn cap_heavy(l: &LevelSampler) -> SampledParentCap {
    l.cap_sampled_parents(Level::Heavy)
}

#[test]
fn sampled_remote_parents_bypass_the_level_without_a_cap() {
    let s = setup(None);
    s.controller.pin(Level::Emergency);
    assert_eq!(serve(&s, id, &TraceState::default()), N as usize);
}

#[test]
fn a_cap_applies_the_level_ratio_to_sampled_remote_parents_from_its_level() {
    let s = setup(Some(cap_heavy));
    let none = TraceState::default();
    s.controller.pin(Level::Moderate);
    assert_eq!(
        serve(&s, id, &none),
        N as usize,
        "below the cap: the parent decides"
    );
    s.controller.pin(Level::Heavy); // 1 %: about 40 of 4,000
    let heavy = serve(&s, id, &none);
    assert!((10..=90).contains(&heavy), "{heavy}");
    s.controller.pin(Level::Emergency); // 0.1 %: about 4
    let emergency = serve(&s, id, &none);
    assert!(emergency <= 20, "{emergency}");
    let dropped = s.stats.snapshot().dropped(DropReason::SampledOut);
    assert_eq!(
        dropped,
        2 * N - (heavy + emergency) as u64,
        "every drop is counted"
    );
}

#[test]
fn a_caller_cannot_choose_randomness_that_beats_the_cap() {
    let greedy_rv = TraceState::from_key_value([("ot", "rv:ffffffffffffff")]).unwrap();
    // Uncapped: everything. Capped: the ratio, whether the caller picks its rv or its ids.
    let s = setup(None);
    s.controller.pin(Level::Heavy);
    assert_eq!(serve(&s, id, &greedy_rv), N as usize);
    let s = setup(Some(cap_heavy));
    s.controller.pin(Level::Heavy);
    let by_rv = serve(&s, id, &greedy_rv);
    let by_id = serve(&s, greedy_id, &TraceState::default());
    assert!((10..=90).contains(&by_rv), "{by_rv}");
    assert!((10..=90).contains(&by_id), "{by_id}");
    // Trusting the caller's randomness, as inside a trust boundary: consistent, and so
    // beaten by a greedy rv.
    let s = setup(Some(|l| {
        l.cap_sampled_parents(Level::Heavy)
            .trust_caller_randomness(true)
    }));
    s.controller.pin(Level::Heavy);
    assert_eq!(serve(&s, id, &greedy_rv), N as usize);
    let honest = serve(&s, id, &TraceState::default());
    assert!((10..=90).contains(&honest), "{honest}");
}

#[test]
fn a_kept_capped_trace_carries_its_threshold_and_our_randomness() {
    let s = setup(Some(cap_heavy));
    s.controller.pin(Level::Heavy);
    let caller =
        TraceState::from_key_value([("ot", "rv:ffffffffffffff;x:1"), ("vendor", "v")]).unwrap();
    serve(&s, id, &caller);
    let spans = s.exporter.get_finished_spans().unwrap();
    let server = spans.iter().find(|s| s.name == "GET /").expect("some kept");
    let state = server.span_context.trace_state();
    assert_eq!(state.get("vendor"), Some("v"), "other entries are kept");
    let ot = state.get("ot").unwrap();
    let th = ot.split(';').find_map(|p| p.strip_prefix("th:")).unwrap();
    let rv = ot.split(';').find_map(|p| p.strip_prefix("rv:")).unwrap();
    assert!(ot.ends_with(";x:1"), "{ot}");
    assert_ne!(rv, "ffffffffffffff", "our randomness replaced the caller's");
    // Consistent for samplers downstream: rv >= th (th padded to 14 hex digits).
    let th = u64::from_str_radix(&format!("{th:0<14}"), 16).unwrap();
    let rv = u64::from_str_radix(rv, 16).unwrap();
    assert!(rv >= th, "rv {rv:x} below th {th:x}");
    assert_eq!(format!("{th:x}"), "fd70a3d70a3d71", "Heavy's 1 %");
}
