//! OpenTelemetry metric instruments for the whole workspace (feature `metrics`).
//!
//! Two ways in, on a [`Meter`] the application passes in (`global::meter(..)` snapshots the
//! provider when it is called, so instruments made before the application installs its
//! provider would stay no-ops):
//!
//! - [`Registry`]: metrics by registration. One call per layer (`registry.breaker("db",
//!   layer.handle())`) and observable instruments read each layer's snapshot or handle when
//!   the reader collects: level, signal pressures, admission, rate limits, breakers, canary,
//!   rollout, exporter. This is the wiring to use; its table lists every name.
//! - [`Instruments`]: a recording API for values that are not in any snapshot (a level
//!   transition's cause, a breaker transition's from / to): the application calls it from a
//!   handle's subscription. It shares names with the registry: use one of them per meter.
//!
//! No semantic conventions exist for rate limiters or breakers (beyond ASP.NET Core's
//! `aspnetcore.rate_limiting.*`), so the names live under `degrade.`. The recording API's:
//!
//! | instrument | kind | unit | attributes |
//! |---|---|---|---|
//! | `degrade.level` | gauge (i64, 0 = normal … 4 = emergency) | `{level}` | – |
//! | `degrade.level.transitions` | counter | `{transition}` | `from`, `to`, `cause` |
//! | `degrade.shed` | counter | `{request}` | `reason`, `priority` |
//! | `degrade.rate_limit.decisions` | counter | `{request}` | `limiter`, `decision` (`admitted` / `rejected`), `reason` |
//! | `degrade.breaker.state` | gauge (i64, see [`breaker_state_code`]) | `{state}` | `breaker`, `state` |
//! | `degrade.breaker.transitions` | counter | `{transition}` | `breaker`, `from`, `to` |
//! | `degrade.canary.weight` | gauge (f64, 0 – 1) | `1` | `canary` |
//! | `degrade.canary.verdicts` | counter | `{verdict}` | `canary`, `verdict` |
//! | `degrade.rollout.batches` | gauge | `{batch}` | `rollout`, `state` (`done` / `total`) |
//! | `degrade.rollout.instances` | gauge | `{instance}` | `rollout`, `state` (`upgraded` / `total` / `failed`) |
//! | `degrade.otel.spans.dropped` | observable counter | `{span}` | `reason` ([`DropReason`]) |
//! | `degrade.otel.spans.exported` | observable counter | `{span}` | – |
//! | `degrade.otel.backlog` | observable gauge (i64) | `{span}` | – |

mod registry;
pub use registry::Registry;

use crate::stats::{DropReason, ExportStats};
use degrade_core::Level;
use degrade_core::ladder::LevelTransition;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Meter, ObservableCounter, ObservableGauge};
use std::fmt;

/// The `degrade.breaker.state` value of a breaker state name (`State::as_str()` of
/// degrade-breaker): closed 0, open 1, half-open 2, forced-open 3, disabled 4, metrics-only 5;
/// unknown names -1. The snake-case spellings (`half_open`) are accepted too.
///
/// ```
/// assert_eq!(degrade_otel::metrics::breaker_state_code("half-open"), 2);
/// assert_eq!(degrade_otel::metrics::breaker_state_code("forced-open"), 3);
/// ```
pub fn breaker_state_code(state: &str) -> i64 {
    match state {
        "closed" => 0,
        "open" => 1,
        "half-open" | "half_open" => 2,
        "forced-open" | "forced_open" => 3,
        "disabled" => 4,
        "metrics-only" | "metrics_only" => 5,
        _ => -1,
    }
}

/// The instruments. See the [module documentation](self) for names and attributes.
///
/// ```
/// use degrade_core::Level;
/// use degrade_otel::metrics::Instruments;
/// use opentelemetry::metrics::MeterProvider;
/// use opentelemetry_sdk::metrics::SdkMeterProvider;
///
/// # use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader};
/// # let exporter = InMemoryMetricExporter::default();
/// let provider = SdkMeterProvider::builder()
/// #   .with_reader(PeriodicReader::builder(exporter.clone()).build())
///     .build();
/// let m = Instruments::new(&provider.meter("degrade"));
/// m.level(Level::Heavy);
/// m.shed("shed", "low");
/// m.rate_limit("exporter", true, "admitted");
/// m.breaker_state("collector", "open");
/// m.canary_weight("checkout-v2", 0.25);
/// m.rollout_progress("fleet", 2, 5, 8, 20, 0);
/// # provider.force_flush().unwrap();
/// # let names: Vec<String> = exporter.get_finished_metrics().unwrap().iter()
/// #     .flat_map(|rm| rm.scope_metrics()).flat_map(|sm| sm.metrics()).map(|m| m.name().to_owned()).collect();
/// for name in ["degrade.level", "degrade.shed", "degrade.breaker.state", "degrade.canary.weight"] {
///     assert!(names.iter().any(|n| n == name), "{name} exported");
/// }
/// ```
#[derive(Clone)]
pub struct Instruments {
    level: Gauge<i64>,
    transitions: Counter<u64>,
    shed: Counter<u64>,
    rate_limit: Counter<u64>,
    breaker_state: Gauge<i64>,
    breaker_transitions: Counter<u64>,
    canary_weight: Gauge<f64>,
    canary_verdicts: Counter<u64>,
    rollout_batches: Gauge<u64>,
    rollout_instances: Gauge<u64>,
}

impl fmt::Debug for Instruments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instruments").finish_non_exhaustive()
    }
}

impl Instruments {
    /// Creates every instrument on `meter`.
    pub fn new(meter: &Meter) -> Self {
        Self {
            level: meter
                .i64_gauge("degrade.level")
                .with_description("Degradation level: 0 normal, 1 light, 2 moderate, 3 heavy, 4 emergency")
                .with_unit("{level}")
                .build(),
            transitions: meter
                .u64_counter("degrade.level.transitions")
                .with_description("Level transitions")
                .with_unit("{transition}")
                .build(),
            shed: meter
                .u64_counter("degrade.shed")
                .with_description("Requests shed, by reason and priority")
                .with_unit("{request}")
                .build(),
            rate_limit: meter
                .u64_counter("degrade.rate_limit.decisions")
                .with_description("Rate limit decisions")
                .with_unit("{request}")
                .build(),
            breaker_state: meter
                .i64_gauge("degrade.breaker.state")
                .with_description("Breaker state: 0 closed, 1 open, 2 half-open, 3 forced-open, 4 disabled, 5 metrics-only")
                .with_unit("{state}")
                .build(),
            breaker_transitions: meter
                .u64_counter("degrade.breaker.transitions")
                .with_description("Breaker transitions")
                .with_unit("{transition}")
                .build(),
            canary_weight: meter
                .f64_gauge("degrade.canary.weight")
                .with_description("Share of traffic routed to the canary")
                .with_unit("1")
                .build(),
            canary_verdicts: meter
                .u64_counter("degrade.canary.verdicts")
                .with_description("Canary judge verdicts")
                .with_unit("{verdict}")
                .build(),
            rollout_batches: meter
                .u64_gauge("degrade.rollout.batches")
                .with_description("Rollout batches done and total")
                .with_unit("{batch}")
                .build(),
            rollout_instances: meter
                .u64_gauge("degrade.rollout.instances")
                .with_description("Rollout instances upgraded, failed and total")
                .with_unit("{instance}")
                .build(),
        }
    }

    /// Records the current level.
    pub fn level(&self, level: Level) {
        self.level.record(level.index() as i64, &[]);
    }

    /// Records a level transition (and the new level).
    pub fn transition(&self, t: &LevelTransition) {
        self.level(t.to);
        self.transitions.add(
            1,
            &[
                KeyValue::new("from", t.from.as_str()),
                KeyValue::new("to", t.to.as_str()),
                KeyValue::new("cause", t.cause.to_string()),
            ],
        );
    }

    /// Counts one request shed for `reason` (a rejection's `reason()`) at `priority`
    /// (`Priority::as_str()`).
    pub fn shed(&self, reason: &'static str, priority: &'static str) {
        self.shed.add(
            1,
            &[
                KeyValue::new("reason", reason),
                KeyValue::new("priority", priority),
            ],
        );
    }

    /// Counts one rate-limit decision of `limiter`.
    pub fn rate_limit(&self, limiter: &str, admitted: bool, reason: &'static str) {
        self.rate_limit.add(
            1,
            &[
                KeyValue::new("limiter", limiter.to_owned()),
                KeyValue::new("decision", if admitted { "admitted" } else { "rejected" }),
                KeyValue::new("reason", reason),
            ],
        );
    }

    /// Records `breaker`'s state (`State::as_str()`).
    pub fn breaker_state(&self, breaker: &str, state: &'static str) {
        self.breaker_state.record(
            breaker_state_code(state),
            &[
                KeyValue::new("breaker", breaker.to_owned()),
                KeyValue::new("state", state),
            ],
        );
    }

    /// Counts a transition of `breaker` (and records the new state).
    pub fn breaker_transition(&self, breaker: &str, from: &'static str, to: &'static str) {
        self.breaker_state(breaker, to);
        self.breaker_transitions.add(
            1,
            &[
                KeyValue::new("breaker", breaker.to_owned()),
                KeyValue::new("from", from),
                KeyValue::new("to", to),
            ],
        );
    }

    /// Records the canary's traffic weight in `[0, 1]`.
    pub fn canary_weight(&self, canary: &str, weight: f64) {
        self.canary_weight
            .record(weight, &[KeyValue::new("canary", canary.to_owned())]);
    }

    /// Counts a judge verdict (`"pass"`, `"fail"`, `"inconclusive"`).
    pub fn canary_verdict(&self, canary: &str, verdict: &str) {
        self.canary_verdicts.add(
            1,
            &[
                KeyValue::new("canary", canary.to_owned()),
                KeyValue::new("verdict", verdict.to_owned()),
            ],
        );
    }

    /// Records a rollout's progress: batches done of total, instances upgraded of total, and
    /// instances that failed. Call it after every batch (the rollout crate's progress events
    /// carry these counts).
    pub fn rollout_progress(
        &self,
        rollout: &str,
        batches_done: u64,
        batches_total: u64,
        instances_upgraded: u64,
        instances_total: u64,
        instances_failed: u64,
    ) {
        let attrs = |state: &'static str| {
            [
                KeyValue::new("rollout", rollout.to_owned()),
                KeyValue::new("state", state),
            ]
        };
        self.rollout_batches.record(batches_done, &attrs("done"));
        self.rollout_batches.record(batches_total, &attrs("total"));
        self.rollout_instances
            .record(instances_upgraded, &attrs("upgraded"));
        self.rollout_instances
            .record(instances_total, &attrs("total"));
        self.rollout_instances
            .record(instances_failed, &attrs("failed"));
    }
}

/// Observable instruments over an [`ExportStats`]: spans exported, dropped by reason, and the
/// backlog, read when the meter's reader collects. Keep the value alive as long as the
/// instruments should report.
pub struct ExportInstruments {
    _exported: ObservableCounter<u64>,
    _dropped: ObservableCounter<u64>,
    _backlog: ObservableGauge<i64>,
}

impl fmt::Debug for ExportInstruments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportInstruments").finish_non_exhaustive()
    }
}

impl ExportInstruments {
    /// Registers the instruments on `meter`.
    ///
    /// ```
    /// use degrade_otel::{ExportStats, metrics::ExportInstruments};
    /// use opentelemetry::metrics::MeterProvider;
    /// # use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader};
    /// # let exporter = InMemoryMetricExporter::default();
    /// let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
    /// #   .with_reader(PeriodicReader::builder(exporter.clone()).build())
    ///     .build();
    /// let stats = ExportStats::new();
    /// let _keep = ExportInstruments::new(&provider.meter("degrade"), stats.clone());
    /// stats.record_offered(10);
    /// stats.record_exported(7, 1);
    /// provider.force_flush().unwrap(); // the instruments read `stats` at each collection
    /// # let names: Vec<String> = exporter.get_finished_metrics().unwrap().iter()
    /// #     .flat_map(|rm| rm.scope_metrics()).flat_map(|sm| sm.metrics()).map(|m| m.name().to_owned()).collect();
    /// # assert!(names.iter().any(|n| n == "degrade.otel.spans.exported"));
    /// ```
    pub fn new(meter: &Meter, stats: ExportStats) -> Self {
        let s = stats.clone();
        let exported = meter
            .u64_observable_counter("degrade.otel.spans.exported")
            .with_description("Spans exported")
            .with_unit("{span}")
            .with_callback(move |o| o.observe(s.snapshot().exported, &[]))
            .build();
        let s = stats.clone();
        let dropped = meter
            .u64_observable_counter("degrade.otel.spans.dropped")
            .with_description("Spans dropped on the export path, by reason")
            .with_unit("{span}")
            .with_callback(move |o| {
                let snap = s.snapshot();
                for r in DropReason::ALL {
                    o.observe(snap.dropped(r), &[KeyValue::new("reason", r.as_str())]);
                }
            })
            .build();
        let backlog = meter
            .i64_observable_gauge("degrade.otel.backlog")
            .with_description("Spans handed to the batch processor and not yet exported or dropped")
            .with_unit("{span}")
            .with_callback(move |o| {
                o.observe(i64::try_from(stats.backlog()).unwrap_or(i64::MAX), &[])
            })
            .build();
        Self {
            _exported: exported,
            _dropped: dropped,
            _backlog: backlog,
        }
    }
}
