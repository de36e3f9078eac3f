//! # degrade-otel
//!
//! Degrade and protect the OpenTelemetry export path. When a service degrades, its telemetry
//! must cost less; when the collector fails, the service must not notice.
//!
//! | piece | what it does |
//! |---|---|
//! | [`LevelSampler`] | consistent probability head sampler at the level's ratio (1 / 0.5 / 0.1 / 0.01 / 0.001 by default), under `ParentBasedSampler` so whole traces are kept |
//! | [`SampledParentCap`] | the level's rules for spans under a sampled remote parent too, from a chosen level up (the SDK keeps them all by default) |
//! | [`LevelFilter`] | span processor: errors only, critical only, verbose attributes dropped, as the level's policy says |
//! | [`ExportService`] / [`ServiceExporter`] | a `SpanExporter` as a `tower::Service<Vec<SpanData>>` and back, run on a captured runtime |
//! | [`CoalesceLayer`] | merges export calls up to the level's batch hints: fewer, larger OTLP requests |
//! | `http::TowerHttpClient` (feature `http`) | `opentelemetry_http::HttpClient` over any tower HTTP service; local rejections become 429 / 503 + `Retry-After` |
//! | `grpc::GrpcSpanExporter` (feature `grpc`) | OTLP/gRPC span exporter over a tower-wrapped tonic channel, retrying as the OTLP spec says |
//! | `ratelimit::span_rate_limit` (feature `ratelimit`) | spans per second at the batch level |
//! | [`ExportStats`] / [`TelemetryBudget`] | drops by reason, backlog and budget signals for the ladder |
//! | `metrics::Registry` (feature `metrics`) | metrics by registration: OTel instruments that read every registered layer |
//! | `logs::ServiceLogExporter` (feature `logs`) | the adapters for log exporters (one copy of each record) |
//!
//! ## A pipeline
//!
//! ```text
//! spans ─► LevelSampler (head) ─► LevelFilter ─► BatchSpanProcessor (own thread)
//!   ─► ServiceExporter (runs on tokio) ─► CoalesceLayer ─► rate limit ─► breaker
//!   ─► ExportService ─► OTLP exporter (TowerHttpClient or GrpcSpanExporter)
//! ```
//!
//! ## What you get at Emergency
//!
//! With the default [`Policy`](degrade_core::Policy), Emergency samples 0.1 % of traces and
//! exports errors only. Under `ParentBasedSampler` the ratio decides **roots**; a span whose
//! remote parent arrives sampled is recorded by the SDK's default at every level. So:
//!
//! * by default (`record_errors_only_levels(true)`) every span is recorded and the
//!   [`LevelFilter`] exports the error spans only, whoever decided to sample them;
//! * with `record_errors_only_levels(false)`, roots are kept at 0.1 %, but spans under a
//!   sampled remote parent are all recorded (then filtered to errors) — unless the
//!   sampled-parent branch is capped with [`LevelSampler::cap_sampled_parents`], which applies
//!   the level's ratio to them too, on randomness a caller cannot choose.
//!
//! ```
//! use degrade_core::{Controller, Level, Policy};
//! use degrade_otel::LevelSampler;
//! use opentelemetry::Context;
//! use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState};
//! use opentelemetry_sdk::trace::{ParentBasedSampler, SamplingDecision, ShouldSample};
//!
//! let controller = Controller::new(Default::default()).unwrap();
//! let level = LevelSampler::new(controller.handle(), Policy::default())
//!     .unwrap()
//!     .record_errors_only_levels(false);
//! let sampler = ParentBasedSampler::new(level.clone())
//!     .with_remote_parent_sampled(level.cap_sampled_parents(Level::Heavy));
//! controller.pin(Level::Emergency);
//!
//! let kept = |parent: Option<SpanContext>| (1..=10_000u128).filter(|&i| {
//!     let id = TraceId::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
//!     let cx = parent.clone().map(|p| Context::new().with_remote_span_context(
//!         SpanContext::new(id, SpanId::from(1), p.trace_flags(), true, p.trace_state().clone())));
//!     sampler.should_sample(cx.as_ref(), id, "GET /", &SpanKind::Server, &[], &[]).decision
//!         == SamplingDecision::RecordAndSample
//! }).count();
//!
//! // Roots: about 0.1 %.
//! assert!(kept(None) < 40);
//! // Requests arriving with a sampled parent claiming the highest randomness: capped too.
//! let greedy = TraceState::from_key_value([("ot", "rv:ffffffffffffff")]).unwrap();
//! let sampled = SpanContext::new(TraceId::from(1), SpanId::from(1), TraceFlags::SAMPLED, true, greedy);
//! assert!(kept(Some(sampled)) < 40);
//! // Without the cap every one of them would be recorded.
//! ```
//!
//! ## One retry owner
//!
//! The OTLP exporters retry on their own (opentelemetry-otlp: 3 retries honouring
//! `Retry-After` / `RetryInfo`; the gRPC exporter of this crate likewise). Do not add a tower
//! retry anywhere in the stack: every layer would multiply the attempts a throttling collector
//! receives.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod adapter;
pub mod coalesce;
mod export;
pub mod filter;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "logs")]
pub mod logs;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "ratelimit")]
pub mod ratelimit;
pub mod sampler;
#[cfg(feature = "grpc")]
mod sanitize;
pub mod stats;

pub use adapter::{ExportService, Lifecycle, ServiceExporter};
pub use coalesce::{CoalesceHandle, CoalesceLayer};
pub use filter::LevelFilter;
pub use sampler::{LevelSampler, SampledParentCap};
pub use stats::{BudgetUnit, DropReason, ExportStats, StatsSnapshot, TelemetryBudget};

// The README's example is compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
