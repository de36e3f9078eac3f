//! Metrics by registration: one [`Registry`] on the application's [`Meter`], one call per
//! layer, and every instrument reads the layer's own snapshot when the reader collects.

use crate::stats::{DropReason, ExportStats};
use degrade_core::degrade::DegradeLayer;
use degrade_core::{LevelHandle, Priority};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Meter};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

type Read<T> = Box<dyn Fn() -> T + Send + Sync>;

/// What the instruments read, filled by the registering calls.
#[derive(Default)]
struct Sources {
    levels: Vec<LevelHandle>,
    admission: Vec<(String, Read<degrade_core::degrade::DegradeSnapshot>)>,
    exports: Vec<ExportStats>,
    #[cfg(feature = "triggers")]
    monitors: Vec<tokio::sync::watch::Receiver<std::sync::Arc<degrade_triggers::MonitorSnapshot>>>,
    #[cfg(feature = "ratelimit")]
    rate_limits: Vec<(String, Read<degrade_ratelimit::RateLimitSnapshot>)>,
    #[cfg(feature = "breaker")]
    breakers: Vec<(String, Read<degrade_breaker::BreakerSnapshot>)>,
    #[cfg(feature = "canary")]
    canaries: Vec<(String, degrade_canary::CanaryHandle, Steer)>,
    #[cfg(feature = "rollout")]
    rollouts: Vec<(String, degrade_rollout::RolloutHandle)>,
}

/// What drives a registered canary router's weight.
#[cfg(feature = "canary")]
enum Steer {
    /// Nothing registered.
    None,
    /// A local controller.
    Local(degrade_canary::Gates),
    /// This instance's part in a fleet rollout.
    #[cfg(feature = "redis")]
    Fleet(degrade_canary::fleet::FleetCanaryStatus),
}

/// Observable instruments over every registered layer: the application makes one registry
/// on its [`Meter`] and registers each layer once; nothing else is wired. Values are read
/// from each layer's snapshot or handle when the meter's reader collects, never on a
/// request's path.
///
/// | instrument | kind | attributes | registered by |
/// |---|---|---|---|
/// | `degrade.level` | gauge (0 normal … 4 emergency) | – | [`level`](Self::level) |
/// | `degrade.signal.pressure` | gauge (f64, 0 – 1) | `signal` | `monitor` (feature `triggers`) |
/// | `degrade.admission.limit`, `.in_flight`, `.waiting` | gauge | `layer` | [`admission`](Self::admission) |
/// | `degrade.admission.requests` | counter | `layer`, `priority`, `decision` (`admitted` / `rejected`), `reason` (`shed` / `limited` / `abandoned`, rejected only) | [`admission`](Self::admission) |
/// | `degrade.rate_limit.decisions` | counter | `limiter`, `decision`, `reason` (the rejection's reason, rejected only) | `rate_limit` (feature `ratelimit`) |
/// | `degrade.rate_limit.keys`, `.waiting` | gauge | `limiter` | `rate_limit` |
/// | `degrade.breaker.state` | gauge ([`breaker_state_code`](super::breaker_state_code)) | `breaker`, `state` | `breaker` (feature `breaker`) |
/// | `degrade.breaker.transitions` | counter | `breaker` | `breaker` |
/// | `degrade.breaker.calls` | counter | `breaker`, `outcome` (`success` / `failure` / `slow` / `ignored` / `cancelled` / `rejected`) | `breaker` |
/// | `degrade.canary.weight` | gauge (f64, 0 – 1) | `canary` | `canary` (feature `canary`) |
/// | `degrade.canary.routed` | counter | `canary`, `arm` | `canary` |
/// | `degrade.canary.calls` | counter | `canary`, `arm`, `outcome` (`success` / `failure` / `ignored` / `cancelled`) | `canary` |
/// | `degrade.canary.step` | gauge | `canary`, `phase`, `verdict` (the latest judgement's) | `canary` with its `Gates`, `fleet_canary` (the fleet's state; the verdict of this instance's latest analysis as leader) |
/// | `degrade.canary.fleet.leader` | gauge (1 leading, 0 not) | `canary` | `fleet_canary` (feature `redis`) |
/// | `degrade.canary.fleet.token` | gauge | `canary` (the fencing token of this instance's latest term; 0: never led) | `fleet_canary` |
/// | `degrade.canary.fleet.terms` | counter | `canary` | `fleet_canary` |
/// | `degrade.canary.fleet.refused_writes` | counter | `canary` (state writes refused: a newer leader held the lease) | `fleet_canary` |
/// | `degrade.canary.fleet.fallbacks` | counter | `canary` (times the router went to stable, Redis away for `stale_after`) | `fleet_canary` |
/// | `degrade.canary.fleet.falling_back` | gauge (1 on stable because Redis is away) | `canary` | `fleet_canary` |
/// | `degrade.canary.fleet.polls` | counter | `canary`, `outcome` (`ok` / `failed`) | `fleet_canary` |
/// | `degrade.canary.fleet.intervals` | counter | `canary`, `outcome` (`added` / `duplicate` / `failed`) | `fleet_canary` |
/// | `degrade.canary.fleet.commands` | counter | `canary`, `outcome` (`applied` / `not_applied`: unchanged, superseded, finished) | `fleet_canary` |
/// | `degrade.rollout.instances` | gauge | `rollout`, `state` (`running` … `failed`) | `rollout` (feature `rollout`) |
/// | `degrade.rollout.batches` | gauge | `rollout`, `state` (`current` / `total`) | `rollout` |
/// | `degrade.otel.spans.exported`, `.dropped`, `degrade.otel.backlog` | counter, counter (`reason`), gauge | see [`ExportInstruments`](super::ExportInstruments) | [`export`](Self::export) |
///
/// A counter is the layer's cumulative count, so a registered layer that already served
/// reports its whole history. Registering a layer twice reports it twice: register each once.
/// Use the registry or [`Instruments`](super::Instruments) on a meter, not both: they share
/// names.
///
/// ```
/// use degrade_core::{Controller, DegradeLayer, Level, Policy};
/// use degrade_otel::metrics::Registry;
/// use opentelemetry::metrics::MeterProvider;
/// use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
///
/// let exporter = InMemoryMetricExporter::default();
/// let provider = SdkMeterProvider::builder()
///     .with_reader(PeriodicReader::builder(exporter.clone()).build())
///     .build();
/// let controller = Controller::new(Default::default()).unwrap();
/// let admission = DegradeLayer::new(controller.handle(), Policy::default()).unwrap();
///
/// let registry = Registry::new(&provider.meter("degrade"));
/// registry.level(controller.handle());
/// registry.admission("api", &admission);
///
/// controller.pin(Level::Heavy);
/// provider.force_flush().unwrap();
/// let level = exporter.get_finished_metrics().unwrap().iter()
///     .flat_map(|rm| rm.scope_metrics()).flat_map(|sm| sm.metrics())
///     .find(|m| m.name() == "degrade.level").map(|m| format!("{:?}", m.data())).unwrap();
/// assert!(level.contains("value: 3"), "{level}"); // heavy
/// ```
#[derive(Clone)]
pub struct Registry {
    sources: Arc<Mutex<Sources>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

fn lock(sources: &Mutex<Sources>) -> MutexGuard<'_, Sources> {
    // A panic inside a snapshot reader must not silence every later collection.
    sources.lock().unwrap_or_else(|e| e.into_inner())
}

fn gauge_i64(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

/// An instrument's callback over the sources.
fn read<T: 'static>(
    sources: &Arc<Mutex<Sources>>,
    f: impl Fn(&Sources, &dyn AsyncInstrument<T>) + Send + Sync + 'static,
) -> impl Fn(&dyn AsyncInstrument<T>) + Send + Sync + 'static {
    let sources = Arc::clone(sources);
    move |o| f(&lock(&sources), o)
}

impl Registry {
    /// Registers every instrument on `meter`; they report nothing until layers are
    /// registered. The meter keeps the callbacks: the registry is only the handle to add
    /// layers with (clones add to the same registry).
    pub fn new(meter: &Meter) -> Self {
        let sources = Arc::new(Mutex::new(Sources::default()));
        let s = &sources;
        meter
            .i64_observable_gauge("degrade.level")
            .with_description(
                "Degradation level: 0 normal, 1 light, 2 moderate, 3 heavy, 4 emergency",
            )
            .with_unit("{level}")
            .with_callback(read(s, |s, o| {
                for h in &s.levels {
                    o.observe(h.current().index() as i64, &[]);
                }
            }))
            .build();
        Self::admission_instruments(meter, s);
        Self::export_instruments(meter, s);
        #[cfg(feature = "triggers")]
        meter
            .f64_observable_gauge("degrade.signal.pressure")
            .with_description("Each signal's pressure fed to the ladder (absent: unknown)")
            .with_unit("1")
            .with_callback(read(s, |s, o| {
                for m in &s.monitors {
                    for r in &m.borrow().signals {
                        if let Some(p) = r.pressure {
                            o.observe(p, &[KeyValue::new("signal", r.name.clone())]);
                        }
                    }
                }
            }))
            .build();
        #[cfg(feature = "ratelimit")]
        Self::rate_limit_instruments(meter, s);
        #[cfg(feature = "breaker")]
        Self::breaker_instruments(meter, s);
        #[cfg(feature = "canary")]
        Self::canary_instruments(meter, s);
        #[cfg(feature = "redis")]
        Self::fleet_canary_instruments(meter, s);
        #[cfg(feature = "rollout")]
        Self::rollout_instruments(meter, s);
        Self { sources }
    }

    /// Reports the level of `handle` (`degrade.level`).
    pub fn level(&self, handle: LevelHandle) -> &Self {
        lock(&self.sources).levels.push(handle);
        self
    }

    /// Reports the adaptive limit and the decisions of a [`DegradeLayer`] as `layer`.
    pub fn admission<P, M>(&self, layer: &str, admission: &DegradeLayer<P, M>) -> &Self
    where
        P: Send + Sync + 'static,
        DegradeLayer<P, M>: Send + Sync + 'static,
    {
        let a = admission.clone();
        lock(&self.sources)
            .admission
            .push((layer.to_owned(), Box::new(move || a.snapshot())));
        self
    }

    /// Reports an [`ExportStats`] (`degrade.otel.*`).
    pub fn export(&self, stats: ExportStats) -> &Self {
        lock(&self.sources).exports.push(stats);
        self
    }

    /// Reports every signal's pressure of a running `Monitor` (`degrade.signal.pressure`).
    #[cfg(feature = "triggers")]
    pub fn monitor(&self, monitor: &degrade_triggers::MonitorHandle) -> &Self {
        lock(&self.sources).monitors.push(monitor.subscribe());
        self
    }

    /// Reports a rate limit layer as `limiter`.
    #[cfg(feature = "ratelimit")]
    pub fn rate_limit<E, W, C, M>(
        &self,
        limiter: &str,
        layer: &degrade_ratelimit::RateLimitLayer<E, W, C, M>,
    ) -> &Self
    where
        E: degrade_core::key::Keyed,
        C: degrade_core::Clock,
        degrade_ratelimit::RateLimitLayer<E, W, C, M>: Send + Sync + 'static,
    {
        let l = layer.clone();
        lock(&self.sources)
            .rate_limits
            .push((limiter.to_owned(), Box::new(move || l.snapshot())));
        self
    }

    /// Reports a breaker as `breaker`.
    #[cfg(feature = "breaker")]
    pub fn breaker<C, K>(
        &self,
        breaker: &str,
        handle: degrade_breaker::BreakerHandle<C, K>,
    ) -> &Self
    where
        C: Send + Sync + 'static,
        K: degrade_core::Clock + Send + Sync + 'static,
    {
        lock(&self.sources)
            .breakers
            .push((breaker.to_owned(), Box::new(move || handle.snapshot())));
        self
    }

    /// Reports a canary router as `canary`, and its controller's step and verdict when its
    /// [`Gates`](degrade_canary::Gates) are given.
    #[cfg(feature = "canary")]
    pub fn canary(
        &self,
        canary: &str,
        handle: degrade_canary::CanaryHandle,
        gates: Option<degrade_canary::Gates>,
    ) -> &Self {
        let steer = gates.map_or(Steer::None, Steer::Local);
        lock(&self.sources)
            .canaries
            .push((canary.to_owned(), handle, steer));
        self
    }

    /// Reports this instance's part in a fleet rollout as `canary` (feature `redis`): the
    /// router behind `handle` (weight, routed, calls, as [`canary`](Self::canary)), the fleet's
    /// step and phase, and the `degrade.canary.fleet.*` instruments read from `status`
    /// ([`FleetCanaryTask::status`](degrade_canary::fleet::FleetCanaryTask::status)) at
    /// collection. Register the router here instead of through `canary`, not both.
    ///
    /// ```no_run
    /// use degrade_canary::Canary;
    /// use degrade_canary::fleet::{FleetCanary, FleetCanaryConfig};
    /// use degrade_otel::metrics::Registry;
    /// use opentelemetry::metrics::MeterProvider;
    /// # #[tokio::main] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
    /// # let mut cfg = FleetCanaryConfig::default(); cfg.instance = "a".into();
    /// let task = FleetCanary::new(cfg, router.handle()).unwrap().spawn();
    /// Registry::new(&provider.meter("degrade")).fleet_canary("v2", router.handle(), task.status());
    /// # }
    /// ```
    #[cfg(feature = "redis")]
    pub fn fleet_canary(
        &self,
        canary: &str,
        handle: degrade_canary::CanaryHandle,
        status: degrade_canary::fleet::FleetCanaryStatus,
    ) -> &Self {
        lock(&self.sources)
            .canaries
            .push((canary.to_owned(), handle, Steer::Fleet(status)));
        self
    }

    /// Reports a rollout as `rollout`.
    #[cfg(feature = "rollout")]
    pub fn rollout(&self, rollout: &str, handle: degrade_rollout::RolloutHandle) -> &Self {
        lock(&self.sources)
            .rollouts
            .push((rollout.to_owned(), handle));
        self
    }

    fn admission_instruments(meter: &Meter, s: &Arc<Mutex<Sources>>) {
        type Field = fn(&degrade_core::limit::LimitSnapshot) -> u32;
        let gauges: [(&'static str, &'static str, Field); 3] = [
            (
                "degrade.admission.limit",
                "The adaptive concurrency limit",
                |l| l.limit,
            ),
            (
                "degrade.admission.in_flight",
                "Requests in the inner service",
                |l| l.in_flight,
            ),
            (
                "degrade.admission.waiting",
                "Requests waiting for a slot",
                |l| l.waiting,
            ),
        ];
        for (name, description, field) in gauges {
            meter
                .i64_observable_gauge(name)
                .with_description(description)
                .with_unit("{request}")
                .with_callback(read(s, move |s, o| {
                    for (layer, snap) in &s.admission {
                        if let Some(l) = snap().limit {
                            o.observe(
                                i64::from(field(&l)),
                                &[KeyValue::new("layer", layer.clone())],
                            );
                        }
                    }
                }))
                .build();
        }
        meter
            .u64_observable_counter("degrade.admission.requests")
            .with_description("Requests seen by the admission layer, by priority and decision")
            .with_unit("{request}")
            .with_callback(read(s, |s, o| {
                for (layer, snap) in &s.admission {
                    let snap = snap();
                    for p in Priority::ALL {
                        let attrs = |decision: &'static str| {
                            [
                                KeyValue::new("layer", layer.clone()),
                                KeyValue::new("priority", p.as_str()),
                                KeyValue::new("decision", decision),
                            ]
                        };
                        o.observe(snap.admitted_by(p), &attrs("admitted"));
                        for (reason, n) in [
                            ("shed", snap.shed_by(p)),
                            ("limited", snap.limited_by(p)),
                            ("abandoned", snap.abandoned[p.index()]),
                        ] {
                            let [a, b, c] = attrs("rejected");
                            o.observe(n, &[a, b, c, KeyValue::new("reason", reason)]);
                        }
                    }
                }
            }))
            .build();
    }

    fn export_instruments(meter: &Meter, s: &Arc<Mutex<Sources>>) {
        meter
            .u64_observable_counter("degrade.otel.spans.exported")
            .with_description("Spans exported")
            .with_unit("{span}")
            .with_callback(read(s, |s, o| {
                for e in &s.exports {
                    o.observe(e.snapshot().exported, &[]);
                }
            }))
            .build();
        meter
            .u64_observable_counter("degrade.otel.spans.dropped")
            .with_description("Spans dropped on the export path, by reason")
            .with_unit("{span}")
            .with_callback(read(s, |s, o| {
                for e in &s.exports {
                    let snap = e.snapshot();
                    for r in DropReason::ALL {
                        o.observe(snap.dropped(r), &[KeyValue::new("reason", r.as_str())]);
                    }
                }
            }))
            .build();
        meter
            .i64_observable_gauge("degrade.otel.backlog")
            .with_description("Spans handed to the batch processor and not yet exported or dropped")
            .with_unit("{span}")
            .with_callback(read(s, |s, o| {
                for e in &s.exports {
                    o.observe(gauge_i64(e.backlog()), &[]);
                }
            }))
            .build();
    }

    #[cfg(feature = "ratelimit")]
    fn rate_limit_instruments(meter: &Meter, s: &Arc<Mutex<Sources>>) {
        use degrade_ratelimit::error::Cause;
        meter
            .u64_observable_counter("degrade.rate_limit.decisions")
            .with_description("Rate limit decisions")
            .with_unit("{request}")
            .with_callback(read(s, |s, o| {
                for (limiter, snap) in &s.rate_limits {
                    let snap = snap();
                    let name = KeyValue::new("limiter", limiter.clone());
                    o.observe(
                        snap.admitted + snap.waited,
                        &[name.clone(), KeyValue::new("decision", "admitted")],
                    );
                    for cause in Cause::ALL {
                        o.observe(
                            snap.rejected_by(cause),
                            &[
                                name.clone(),
                                KeyValue::new("decision", "rejected"),
                                KeyValue::new("reason", cause.as_str()),
                            ],
                        );
                    }
                }
            }))
            .build();
        meter
            .i64_observable_gauge("degrade.rate_limit.keys")
            .with_description("Keys held by a keyed limit")
            .with_unit("{key}")
            .with_callback(read(s, |s, o| {
                for (limiter, snap) in &s.rate_limits {
                    o.observe(
                        gauge_i64(snap().keys),
                        &[KeyValue::new("limiter", limiter.clone())],
                    );
                }
            }))
            .build();
        meter
            .i64_observable_gauge("degrade.rate_limit.waiting")
            .with_description("Requests waiting for budget")
            .with_unit("{request}")
            .with_callback(read(s, |s, o| {
                for (limiter, snap) in &s.rate_limits {
                    o.observe(
                        i64::from(snap().waiting),
                        &[KeyValue::new("limiter", limiter.clone())],
                    );
                }
            }))
            .build();
    }

    #[cfg(feature = "breaker")]
    fn breaker_instruments(meter: &Meter, s: &Arc<Mutex<Sources>>) {
        meter
            .i64_observable_gauge("degrade.breaker.state")
            .with_description(
                "Breaker state: 0 closed, 1 open, 2 half-open, 3 forced-open, 4 disabled, 5 metrics-only",
            )
            .with_unit("{state}")
            .with_callback(read(s, |s, o| {
                for (breaker, snap) in &s.breakers {
                    let state = snap().state.as_str();
                    o.observe(
                        super::breaker_state_code(state),
                        &[
                            KeyValue::new("breaker", breaker.clone()),
                            KeyValue::new("state", state),
                        ],
                    );
                }
            }))
            .build();
        meter
            .u64_observable_counter("degrade.breaker.transitions")
            .with_description("Breaker transitions")
            .with_unit("{transition}")
            .with_callback(read(s, |s, o| {
                for (breaker, snap) in &s.breakers {
                    o.observe(
                        snap().transitions,
                        &[KeyValue::new("breaker", breaker.clone())],
                    );
                }
            }))
            .build();
        meter
            .u64_observable_counter("degrade.breaker.calls")
            .with_description("Calls through a breaker, by outcome")
            .with_unit("{call}")
            .with_callback(read(s, |s, o| {
                for (breaker, snap) in &s.breakers {
                    let b = snap();
                    for (outcome, n) in [
                        ("success", b.successes),
                        ("failure", b.failures),
                        ("slow", b.slow),
                        ("ignored", b.ignored),
                        ("cancelled", b.cancelled),
                        ("rejected", b.rejected),
                    ] {
                        o.observe(
                            n,
                            &[
                                KeyValue::new("breaker", breaker.clone()),
                                KeyValue::new("outcome", outcome),
                            ],
                        );
                    }
                }
            }))
            .build();
    }

    #[cfg(feature = "canary")]
    fn canary_instruments(meter: &Meter, s: &Arc<Mutex<Sources>>) {
        use degrade_canary::{Arm, CanaryPhase};
        meter
            .f64_observable_gauge("degrade.canary.weight")
            .with_description("Share of traffic routed to the canary")
            .with_unit("1")
            .with_callback(read(s, |s, o| {
                for (canary, handle, _) in &s.canaries {
                    let weight = f64::from(handle.weight().get()) / 10_000.0;
                    o.observe(weight, &[KeyValue::new("canary", canary.clone())]);
                }
            }))
            .build();
        meter
            .u64_observable_counter("degrade.canary.routed")
            .with_description("Requests routed to each arm")
            .with_unit("{request}")
            .with_callback(read(s, |s, o| {
                for (canary, handle, _) in &s.canaries {
                    let snap = handle.snapshot();
                    for arm in [Arm::Stable, Arm::Canary] {
                        o.observe(
                            snap.arm(arm).routed,
                            &[
                                KeyValue::new("canary", canary.clone()),
                                KeyValue::new("arm", arm.as_str()),
                            ],
                        );
                    }
                }
            }))
            .build();
        meter
            .u64_observable_counter("degrade.canary.calls")
            .with_description("Finished calls of each arm, by outcome")
            .with_unit("{call}")
            .with_callback(read(s, |s, o| {
                for (canary, handle, _) in &s.canaries {
                    let snap = handle.snapshot();
                    for arm in [Arm::Stable, Arm::Canary] {
                        let a = snap.arm(arm);
                        for (outcome, n) in [
                            ("success", a.successes),
                            ("failure", a.failures),
                            ("ignored", a.ignored),
                            ("cancelled", a.cancelled),
                        ] {
                            o.observe(
                                n,
                                &[
                                    KeyValue::new("canary", canary.clone()),
                                    KeyValue::new("arm", arm.as_str()),
                                    KeyValue::new("outcome", outcome),
                                ],
                            );
                        }
                    }
                }
            }))
            .build();
        meter
            .i64_observable_gauge("degrade.canary.step")
            .with_description("The controller's step, with its phase and latest verdict")
            .with_unit("{step}")
            .with_callback(read(s, |s, o| {
                for (canary, _, steer) in &s.canaries {
                    let (state, verdict) = match steer {
                        Steer::None => continue,
                        Steer::Local(gates) => (
                            gates.state(),
                            gates.last_judgement().map(|j| j.verdict.to_string()),
                        ),
                        #[cfg(feature = "redis")]
                        Steer::Fleet(status) => {
                            let f = status.snapshot();
                            // Nothing read from Redis yet: no step to report.
                            let Some(state) = f.state else { continue };
                            (state, f.last_verdict.map(|(v, _)| v.to_string()))
                        }
                    };
                    let phase = match state.phase {
                        CanaryPhase::Progressing => "progressing",
                        CanaryPhase::Paused(_) => "paused",
                        CanaryPhase::Promoted => "promoted",
                        CanaryPhase::RolledBack => "rolled_back",
                    };
                    let verdict = verdict.unwrap_or_else(|| "none".to_owned());
                    o.observe(
                        gauge_i64(state.step),
                        &[
                            KeyValue::new("canary", canary.clone()),
                            KeyValue::new("phase", phase),
                            KeyValue::new("verdict", verdict),
                        ],
                    );
                }
            }))
            .build();
    }

    #[cfg(feature = "redis")]
    fn fleet_canary_instruments(meter: &Meter, s: &Arc<Mutex<Sources>>) {
        use degrade_canary::fleet::FleetCanarySnapshot;
        /// Name, description, unit and the value read from the snapshot.
        type Plain = (
            &'static str,
            &'static str,
            &'static str,
            fn(&FleetCanarySnapshot) -> u64,
        );
        /// Name, description, unit and the values read by outcome.
        type ByOutcome = (
            &'static str,
            &'static str,
            &'static str,
            fn(&FleetCanarySnapshot) -> Vec<(&'static str, u64)>,
        );
        /// Every fleet canary's snapshot with its `canary` attribute.
        fn each(s: &Sources, mut f: impl FnMut(&FleetCanarySnapshot, KeyValue)) {
            for (canary, _, steer) in &s.canaries {
                if let Steer::Fleet(status) = steer {
                    f(&status.snapshot(), KeyValue::new("canary", canary.clone()));
                }
            }
        }
        let gauges: [Plain; 3] = [
            (
                "degrade.canary.fleet.leader",
                "Whether this instance leads the fleet rollout (1) or not (0)",
                "1",
                |f| u64::from(f.leader),
            ),
            (
                "degrade.canary.fleet.token",
                "The fencing token of this instance's latest term as leader (0: never led)",
                "{token}",
                |f| f.token,
            ),
            (
                "degrade.canary.fleet.falling_back",
                "Whether the router is on stable because Redis is unreachable (1) or not (0)",
                "1",
                |f| u64::from(f.falling_back),
            ),
        ];
        for (name, description, unit, value) in gauges {
            meter
                .i64_observable_gauge(name)
                .with_description(description)
                .with_unit(unit)
                .with_callback(read(s, move |s, o| {
                    each(s, |f, canary| o.observe(gauge_i64(value(f)), &[canary]));
                }))
                .build();
        }
        let counters: [Plain; 3] = [
            (
                "degrade.canary.fleet.terms",
                "Terms this instance has begun as the fleet rollout's leader",
                "{term}",
                |f| f.terms,
            ),
            (
                "degrade.canary.fleet.refused_writes",
                "State writes refused because a newer leader held the lease",
                "{write}",
                |f| f.refused_writes,
            ),
            (
                "degrade.canary.fleet.fallbacks",
                "Times the router fell back to stable while Redis was unreachable",
                "{fallback}",
                |f| f.fallbacks,
            ),
        ];
        for (name, description, unit, value) in counters {
            meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_unit(unit)
                .with_callback(read(s, move |s, o| {
                    each(s, |f, canary| o.observe(value(f), &[canary]));
                }))
                .build();
        }
        let by_outcome: [ByOutcome; 3] = [
            (
                "degrade.canary.fleet.polls",
                "Reads of the fleet rollout's state in Redis, by outcome",
                "{poll}",
                |f| vec![("ok", f.polls), ("failed", f.poll_failures)],
            ),
            (
                "degrade.canary.fleet.intervals",
                "Intervals of statistics sent to the fleet's sums, by outcome (a duplicate: a retry Redis had already applied)",
                "{interval}",
                |f| {
                    vec![
                        ("added", f.published.saturating_sub(f.duplicates)),
                        ("duplicate", f.duplicates),
                        ("failed", f.publish_failures),
                    ]
                },
            ),
            (
                "degrade.canary.fleet.commands",
                "Manual gates this instance took from Redis as leader, by outcome",
                "{command}",
                |f| {
                    vec![
                        ("applied", f.commands_applied),
                        ("not_applied", f.commands.saturating_sub(f.commands_applied)),
                    ]
                },
            ),
        ];
        for (name, description, unit, values) in by_outcome {
            meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_unit(unit)
                .with_callback(read(s, move |s, o| {
                    each(s, |f, canary| {
                        for (outcome, n) in values(f) {
                            o.observe(n, &[canary.clone(), KeyValue::new("outcome", outcome)]);
                        }
                    });
                }))
                .build();
        }
    }

    #[cfg(feature = "rollout")]
    fn rollout_instruments(meter: &Meter, s: &Arc<Mutex<Sources>>) {
        use degrade_rollout::InstanceState;
        meter
            .i64_observable_gauge("degrade.rollout.instances")
            .with_description("Instances of a rollout, by state")
            .with_unit("{instance}")
            .with_callback(read(s, |s, o| {
                for (rollout, handle) in &s.rollouts {
                    let status = handle.status();
                    for state in [
                        InstanceState::Running,
                        InstanceState::Draining,
                        InstanceState::Stopped,
                        InstanceState::Installing,
                        InstanceState::Starting,
                        InstanceState::Ready,
                        InstanceState::Failed,
                    ] {
                        let n = status.instances.iter().filter(|i| i.state == state).count();
                        o.observe(
                            gauge_i64(n),
                            &[
                                KeyValue::new("rollout", rollout.clone()),
                                KeyValue::new("state", state.to_string()),
                            ],
                        );
                    }
                }
            }))
            .build();
        meter
            .i64_observable_gauge("degrade.rollout.batches")
            .with_description("The batch in progress and the batches in the plan")
            .with_unit("{batch}")
            .with_callback(read(s, |s, o| {
                for (rollout, handle) in &s.rollouts {
                    let status = handle.status();
                    let attrs = |state: &'static str| {
                        [
                            KeyValue::new("rollout", rollout.clone()),
                            KeyValue::new("state", state),
                        ]
                    };
                    if let Some(b) = status.batch {
                        o.observe(gauge_i64(b), &attrs("current"));
                    }
                    o.observe(gauge_i64(status.batches), &attrs("total"));
                }
            }))
            .build();
    }
}
