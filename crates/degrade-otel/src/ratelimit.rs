//! Span rate limiting at the batch level (feature `ratelimit`).
//!
//! A rate limit in requests per second means nothing for an exporter whose batches hold 1 or
//! 2048 spans. [`span_rate_limit`] builds a degrade-ratelimit layer whose cost is the batch
//! length, so the quota reads in spans per period. Put it in the exporter stack under the
//! [`ServiceExporter`](crate::ServiceExporter) (after a [`CoalesceLayer`](crate::CoalesceLayer)
//! if you use one): a rejected batch is dropped and counted as
//! [`DropReason::RateLimited`](crate::DropReason::RateLimited).
//!
//! A batch costing more than the burst can never be admitted: keep `burst` at least as large
//! as the largest batch (the processor's `max_export_batch_size`, or the coalescing hint).

use degrade_core::ConfigError;
use degrade_ratelimit::cost::Weigh;
use degrade_ratelimit::key::Global;
use degrade_ratelimit::{RateLimitBuilder, RateLimitConfig, RateLimitLayer};
use opentelemetry_sdk::trace::SpanData;

/// The cost of an export batch: its number of spans.
///
/// ```
/// use degrade_otel::ratelimit::SpanCost;
/// use degrade_ratelimit::cost::Weigh;
/// assert_eq!(SpanCost.units(&Vec::new()), Some(0));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanCost;

impl Weigh<Vec<SpanData>> for SpanCost {
    #[inline]
    fn units(&self, batch: &Vec<SpanData>) -> Option<u64> {
        Some(batch.len() as u64)
    }
}

/// A builder for a span rate limit: `config.quota` spans per `config.period`, each batch
/// costing its length. Set a clock or a level handle on it, then `build()`.
///
/// ```
/// use degrade_otel::ratelimit::span_rate_limit;
/// use degrade_ratelimit::RateLimitConfig;
/// use std::time::Duration;
/// let layer = span_rate_limit(RateLimitConfig::per(5_000, Duration::from_secs(1)).burst(4096))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
pub fn span_rate_limit(config: RateLimitConfig) -> RateLimitBuilder<Global, SpanCost> {
    RateLimitLayer::builder(config).cost(SpanCost)
}

/// [`span_rate_limit`] built at once: `spans` per second with a burst of `burst` spans.
pub fn spans_per_second(
    spans: u64,
    burst: u64,
) -> Result<RateLimitLayer<Global, SpanCost>, ConfigError> {
    span_rate_limit(RateLimitConfig::per(spans, std::time::Duration::from_secs(1)).burst(burst))
        .build()
}
