//! OpenTelemetry metric instruments for the whole workspace (feature `metrics`).
//!
//! [`Instruments`] is built from a [`Meter`] the application passes in: `global::meter(..)`
//! snapshots the provider when it is called, so instruments made before the application
//! installs its provider would stay no-ops. It depends on no policy crate: each recording
//! method takes plain values (`state.as_str()`, a count), so the breaker, rate limiter, canary
//! and rollout crates report through it without knowing about OpenTelemetry.
//!
//! No semantic conventions exist for rate limiters or breakers (beyond ASP.NET Core's
//! `aspnetcore.rate_limiting.*`), so the names live under `degrade.`:
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

use crate::stats::{DropReason, ExportStats};
use degrade_core::Level;
use degrade_core::ladder::LevelTransition;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Meter, ObservableCounter, ObservableGauge};
use std::fmt;

/// The `degrade.breaker.state` value of a breaker state name (`State::as_str()` of
/// degrade-breaker): closed 0, open 1, half_open 2, forced_open 3, disabled 4, metrics_only 5;
/// unknown names -1.
///
/// ```
/// assert_eq!(degrade_otel::metrics::breaker_state_code("half_open"), 2);
/// ```
pub fn breaker_state_code(state: &str) -> i64 {
    match state {
        "closed" => 0,
        "open" => 1,
        "half_open" => 2,
        "forced_open" => 3,
        "disabled" => 4,
        "metrics_only" => 5,
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
/// let provider = SdkMeterProvider::builder().build();
/// let m = Instruments::new(&provider.meter("degrade"));
/// m.level(Level::Heavy);
/// m.shed("shed", "low");
/// m.rate_limit("exporter", true, "admitted");
/// m.breaker_state("collector", "open");
/// m.canary_weight("checkout-v2", 0.25);
/// m.rollout_progress("fleet", 2, 5, 8, 20, 0);
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
                .with_description("Breaker state: 0 closed, 1 open, 2 half_open, 3 forced_open, 4 disabled, 5 metrics_only")
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
    /// let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
    /// let _keep = ExportInstruments::new(&provider.meter("degrade"), ExportStats::new());
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
