//! Errors-only, critical-only and verbose-attribute filtering as a span processor.
//!
//! [`LevelFilter`] wraps the processor that exports (usually the SDK's `BatchSpanProcessor`)
//! and decides in `on_end`, when the span's status is known, whether it goes on:
//!
//! * at a level whose policy is `errors_only`, only spans with `Status::Error` pass;
//! * at a `critical_only` level, only spans of a critical service (the resource's
//!   `service.name`) or whose name is on the critical list pass, and errors;
//! * at a `drop_verbose_attributes` level, attributes not on the allow-list are removed (and
//!   counted in the span's `dropped_attributes_count`).
//!
//! Filtering before the processor, rather than in the exporter, keeps dropped spans out of the
//! processor's bounded queue, so a flood of unwanted spans cannot push wanted ones out of it.
//! Every drop is counted by reason in the [`ExportStats`]; every span passed on counts as
//! *offered*, the base of the backlog signal.

use crate::stats::{DropReason, ExportStats};
use degrade_core::{LevelHandle, PerLevel, Policy};
use opentelemetry::trace::Status;
use opentelemetry::{Context, Key};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Attributes kept by default when verbose attributes are dropped: the ones that identify what
/// happened (semantic conventions for HTTP, RPC, database, messaging and errors).
pub const DEFAULT_ALLOWED_ATTRIBUTES: &[&str] = &[
    "http.request.method",
    "http.response.status_code",
    "http.route",
    "url.path",
    "server.address",
    "rpc.system",
    "rpc.service",
    "rpc.method",
    "rpc.grpc.status_code",
    "db.system",
    "db.operation.name",
    "messaging.system",
    "messaging.operation.name",
    "error.type",
    "exception.type",
    "exception.message",
];

#[derive(Debug, Clone, Copy)]
struct Rule {
    errors_only: bool,
    critical_only: bool,
    drop_verbose: bool,
}

#[derive(Debug)]
struct Rules {
    per_level: PerLevel<Rule>,
    policy: Policy,
    allowed: HashSet<Key>,
}

/// A span processor that applies the level's errors-only, critical-only and attribute rules
/// before handing spans to `P`. See the [module documentation](self).
///
/// ```
/// use degrade_core::{Controller, Level, Policy};
/// use degrade_otel::{DropReason, ExportStats, LevelFilter};
/// use opentelemetry::trace::{Status, Tracer, TracerProvider, Span as _};
/// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor};
///
/// let controller = Controller::new(Default::default()).unwrap();
/// let exporter = InMemorySpanExporter::default();
/// let stats = ExportStats::new();
/// let filter = LevelFilter::new(SimpleSpanProcessor::new(exporter.clone()), controller.handle(), Policy::default())
///     .unwrap()
///     .stats(stats.clone());
/// let provider = SdkTracerProvider::builder().with_span_processor(filter).build();
/// let tracer = provider.tracer("doc");
///
/// controller.pin(Level::Emergency);
/// tracer.start("fine").end();
/// let mut failed = tracer.start("failed");
/// failed.set_status(Status::error("boom"));
/// failed.end();
///
/// let names: Vec<_> = exporter.get_finished_spans().unwrap().into_iter().map(|s| s.name).collect();
/// assert_eq!(names, ["failed"]);
/// assert_eq!(stats.snapshot().dropped(DropReason::NotError), 1);
/// ```
#[derive(Debug)]
pub struct LevelFilter<P> {
    inner: P,
    level: LevelHandle,
    rules: Arc<Rules>,
    stats: ExportStats,
    service_critical: bool,
}

impl<P: SpanProcessor> LevelFilter<P> {
    /// Wraps `inner`, reading `level` and `policy` (validated here). Verbose attributes are
    /// judged against [`DEFAULT_ALLOWED_ATTRIBUTES`].
    pub fn new(
        inner: P,
        level: LevelHandle,
        policy: Policy,
    ) -> Result<Self, degrade_core::ConfigError> {
        policy.validate()?;
        let per_level = PerLevel::from_fn(|l| {
            let lp = policy.level(l);
            Rule {
                errors_only: lp.errors_only,
                critical_only: lp.critical_only,
                drop_verbose: lp.drop_verbose_attributes,
            }
        });
        Ok(Self {
            inner,
            level,
            rules: Arc::new(Rules {
                per_level,
                policy,
                allowed: DEFAULT_ALLOWED_ATTRIBUTES
                    .iter()
                    .map(|k| Key::from_static_str(k))
                    .collect(),
            }),
            stats: ExportStats::new(),
            service_critical: false,
        })
    }

    /// Replaces the attribute allow-list used at `drop_verbose_attributes` levels.
    #[must_use]
    pub fn allow_attributes<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<Key>,
    {
        let allowed = keys.into_iter().map(Into::into).collect();
        let r = &self.rules;
        self.rules = Arc::new(Rules {
            per_level: r.per_level,
            policy: r.policy.clone(),
            allowed,
        });
        self
    }

    /// Counts offered spans and drops in `stats`.
    #[must_use]
    pub fn stats(mut self, stats: ExportStats) -> Self {
        self.stats = stats;
        self
    }

    /// The wrapped processor.
    pub fn get_ref(&self) -> &P {
        &self.inner
    }

    /// The wrapped processor, mutably.
    pub fn get_mut(&mut self) -> &mut P {
        &mut self.inner
    }

    /// Unwraps the processor.
    pub fn into_inner(self) -> P {
        self.inner
    }
}

impl<P: SpanProcessor> SpanProcessor for LevelFilter<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        let rule = self.rules.per_level[self.level.current()];
        let is_error = matches!(span.status, Status::Error { .. });
        if !is_error {
            if rule.errors_only {
                self.stats.record_drop(DropReason::NotError, 1);
                return;
            }
            if rule.critical_only
                && !self.service_critical
                && !self.rules.policy.is_critical(&span.name)
            {
                self.stats.record_drop(DropReason::NotCritical, 1);
                return;
            }
        }
        if rule.drop_verbose {
            let before = span.attributes.len();
            let allowed = &self.rules.allowed;
            span.attributes.retain(|kv| allowed.contains(&kv.key));
            let removed = before - span.attributes.len();
            span.dropped_attributes_count = span
                .dropped_attributes_count
                .saturating_add(u32::try_from(removed).unwrap_or(u32::MAX));
        }
        self.stats.record_offered(1);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(name) = resource.get(&Key::from_static_str("service.name")) {
            self.service_critical = self.rules.policy.is_critical(name.as_str().as_ref());
        }
        self.inner.set_resource(resource);
    }
}
