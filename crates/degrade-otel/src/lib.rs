//! # degrade-otel
//!
//! Degrade and protect the OpenTelemetry export path. When a service degrades, its telemetry
//! must cost less; when the collector fails, the service must not notice.
//!
//! | piece | what it does |
//! |---|---|
//! | [`LevelSampler`] | consistent probability head sampler at the level's ratio (1 / 0.5 / 0.1 / 0.01 / 0.001 by default), under `ParentBasedSampler` so whole traces are kept |
//! | [`LevelFilter`] | span processor: errors only, critical only, verbose attributes dropped, as the level's policy says |
//! | [`ExportService`] / [`ServiceExporter`] | a `SpanExporter` as a `tower::Service<Vec<SpanData>>` and back, run on a captured runtime |
//! | [`CoalesceLayer`] | merges export calls up to the level's batch hints: fewer, larger OTLP requests |
//! | `http::TowerHttpClient` (feature `http`) | `opentelemetry_http::HttpClient` over any tower HTTP service; local rejections become 429 / 503 + `Retry-After` |
//! | `grpc::GrpcSpanExporter` (feature `grpc`) | OTLP/gRPC span exporter over a tower-wrapped tonic channel, retrying as the OTLP spec says |
//! | `ratelimit::span_rate_limit` (feature `ratelimit`) | spans per second at the batch level |
//! | [`ExportStats`] / [`TelemetryBudget`] | drops by reason, backlog and budget signals for the ladder |
//! | `metrics::Instruments` (feature `metrics`) | OTel instruments for every degrade crate's state |
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
//! ## One retry owner
//!
//! The OTLP exporters retry on their own (opentelemetry-otlp: 3 retries honouring
//! `Retry-After` / `RetryInfo`; the gRPC exporter of this crate likewise). Do not add a tower
//! retry anywhere in the stack: every layer would multiply the attempts a throttling collector
//! receives.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod adapter;
pub mod coalesce;
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
pub mod stats;

pub use adapter::{ExportService, Lifecycle, ServiceExporter};
pub use coalesce::{CoalesceHandle, CoalesceLayer};
pub use filter::LevelFilter;
pub use sampler::LevelSampler;
pub use stats::{BudgetUnit, DropReason, ExportStats, StatsSnapshot, TelemetryBudget};

// The README's example is compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
