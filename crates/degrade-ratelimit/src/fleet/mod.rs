//! Fleet mode (feature `redis`): one quota shared by every host, kept in Redis.
//!
//! # How a decision is made
//!
//! Each decision is one round trip: a Lua script run by `EVALSHA` (sent whole with `EVAL`
//! when Redis answers `NOSCRIPT`, e.g. after a restart) applies the same GCRA as the local limiter to one
//! key holding the TAT in microseconds of the *Redis server's* clock (`TIME`), so the hosts'
//! own clocks never disagree about the budget. An admission writes the new TAT with a TTL equal
//! to the time until the budget is full again, so idle keys vanish by themselves. A script call
//! touches exactly the one key it is given (`<prefix>:<name>:<key>`), so it runs on Redis
//! Cluster as it is: with [`FleetConfig::cluster`] set, each key's call goes to the node that
//! owns its slot.
//!
//! The TAT is kept in whole nanoseconds relative to now, exact in Lua's doubles, together with
//! the nanoseconds per unit it was counted in (see the `script` module's docs for the format).
//!
//! # Levels and quota changes
//!
//! The configuration's [`LevelScale`](crate::LevelScale) applies as in the local limiter when
//! the layer is given a [`LevelHandle`] ([`FleetBuilder::level`]): at `heavy = 0.25` this host
//! decides at a quarter of the quota. A [`QuotaHandle`] ([`FleetLayer::quota_handle`]) changes
//! the quota for the next decision. Both change the nanoseconds per unit, and the script
//! carries a budget's debt over *in units* (half-spent stays half-spent), so neither a change
//! nor hosts that disagree for a while (a new quota rolling out host by host, levels that are
//! per host) turn spent budget into a burst across the fleet. While hosts disagree, each
//! admits against the same units owed, and the budget refills at the rate of the host that
//! wrote it last: the fleet admits between the lowest and the highest of their quotas.
//!
//! # While Redis is down or slow
//!
//! Every decision has a bounded timeout (default 50 ms). If Redis does not answer in time, or
//! answers with an error, the configured [`Unavailable`] policy decides instead: admit
//! (`fail_open`), reject with [`Cause::FleetUnavailable`] (`fail_closed`), or a local GCRA
//! limiter at a share of the quota (`local`, the default, share 0.5), keyed like the fleet
//! limit (each tenant its own local budget, in a store bounded by
//! [`FleetConfig::local_keys`]). Every such decision is counted ([`FleetSnapshot::fallbacks`]).
//!
//! After [`FleetConfig::fail_fast_after`] consecutive failed calls (default 3), decisions stop
//! asking Redis and go to the policy at once, so a dead Redis costs no request its timeout; a
//! background task probes Redis (`EXISTS` of the key whose call opened the breaker, first
//! after one timeout, then backing off to once a second) and the first answer, from a probe or from a call still in flight, closes the
//! breaker. [`FleetSnapshot`] reports the state, the consecutive failures, and how many
//! fallbacks waited for Redis and how many did not. The connection is redis-rs's
//! `ConnectionManager` (or its cluster connection), which reconnects by itself. On a cluster
//! the probe's key goes to the node that owns its slot now: the failed node back, or the
//! replica promoted in its place.

use crate::config::{Params, RateLimitConfig};
use crate::cost::{DefaultCost, Weigh};
use crate::error::{Cause, RateLimited};
use crate::future::Core;
use crate::key::{Global, KeyExtractor, Keyed};
use crate::layer::QuotaHandle;
use crate::limiter::SetQuota;
use crate::limiter::nanos;
use crate::state::{Cell, Decision, ParamTable};
use crate::store::Store;
use conn::Conn;
use degrade_core::answer::Errors;
use degrade_core::counter::ShardedCounter;
use degrade_core::{BoxError, Clock, ConfigError, LevelHandle, TokioClock};
use script::{GCRA_LUA, Reply, read_reply};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

mod config;
mod conn;
pub mod incident;
mod script;

pub use config::{FleetConfig, Unavailable};
use config::{fleet_params, local_params};

/// The first pause of the background probe while decisions fail fast is one timeout; it
/// doubles up to this, so a recovered Redis is noticed within about a second.
const PROBE_MAX_PAUSE: Duration = Duration::from_secs(1);

const ADMITTED: usize = 0;
const REJECTED: usize = 1;
const FALLBACK_ADMITTED: usize = 2;
const FALLBACK_REJECTED: usize = 3;
const COST_ABOVE_BURST: usize = 4;
const REDIS_FAILED: usize = 5;
const FAILED_FAST: usize = 6;
const PROBES: usize = 7;
const SLOTS: usize = 8;

/// Counters and state of a fleet limit.
///
/// Exactly: `offered() = admitted + rejected + fallbacks()`, and `fallbacks() =
/// fallback_admitted + fallback_rejected = redis_failures + failed_fast`.
///
/// ```
/// use degrade_ratelimit::fleet::FleetSnapshot;
/// let s = FleetSnapshot::default();
/// assert_eq!(s.offered(), 0);
/// assert!(!s.failing_fast);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetSnapshot {
    /// Admitted by the shared budget in Redis.
    pub admitted: u64,
    /// Rejected by the shared budget in Redis (or for a cost above the burst).
    pub rejected: u64,
    /// Decided by the `unavailable` policy and admitted.
    pub fallback_admitted: u64,
    /// Decided by the `unavailable` policy and rejected.
    pub fallback_rejected: u64,
    /// Decisions that asked Redis, got an error or no answer within the timeout, and went to
    /// the `unavailable` policy.
    pub redis_failures: u64,
    /// Decisions that went to the `unavailable` policy at once, without asking Redis, while
    /// failing fast.
    pub failed_fast: u64,
    /// Background probes of Redis sent while failing fast.
    pub probes: u64,
    /// Calls to Redis (decisions and probes) that failed in a row up to now; zero once Redis
    /// answers.
    pub consecutive_failures: u32,
    /// Whether decisions are failing fast right now (Redis is not asked until a probe gets an
    /// answer).
    pub failing_fast: bool,
}

impl FleetSnapshot {
    /// Decisions made by the `unavailable` policy.
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::FleetSnapshot;
    /// assert_eq!(FleetSnapshot::default().fallbacks(), 0);
    /// ```
    pub fn fallbacks(&self) -> u64 {
        self.fallback_admitted + self.fallback_rejected
    }

    /// All requests seen.
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::FleetSnapshot;
    /// assert_eq!(FleetSnapshot::default().offered(), 0);
    /// ```
    pub fn offered(&self) -> u64 {
        self.admitted + self.rejected + self.fallbacks()
    }
}

/// Admitted and rejected count the `unavailable` policy's decisions too.
impl degrade_core::snapshot::Accounting for FleetSnapshot {
    fn offered(&self) -> u64 {
        FleetSnapshot::offered(self)
    }
    fn admitted(&self) -> u64 {
        self.admitted + self.fallback_admitted
    }
    fn rejected(&self) -> u64 {
        self.rejected + self.fallback_rejected
    }
}

/// The breaker around Redis: consecutive failures, whether decisions fail fast, and whether a
/// probe task is running. Lock-free; the probe is a tokio task.
#[derive(Debug, Default)]
struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
    probing: AtomicBool,
}

struct FleetShared<E: Keyed, W> {
    conn: Conn,
    script: redis::Script,
    key_base: String,
    timeout: Duration,
    policy: Unavailable,
    fail_fast_after: u32,
    /// The fleet's parameters per level, changed by a `QuotaHandle`.
    table: ParamTable,
    /// The `local` fallback's parameters per level.
    local_table: Option<ParamTable>,
    level: Option<LevelHandle>,
    /// The quota in force (for `QuotaHandle::get`; written only by a quota change).
    quota: Mutex<RateLimitConfig>,
    local: Cell,
    local_keys: Option<Store<E::Key>>,
    origin: Instant,
    counters: ShardedCounter<SLOTS>,
    breaker: Breaker,
    /// The key of the call that opened the breaker, which the probe asks about.
    probe_key: Mutex<String>,
    extractor: E,
    weigh: W,
}

impl<E: Keyed, W> fmt::Debug for FleetShared<E, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetShared")
            .field("key_base", &self.key_base)
            .field("timeout", &self.timeout)
            .field("policy", &self.policy)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<E: Keyed, W> FleetShared<E, W> {
    fn snapshot(&self) -> FleetSnapshot {
        let raw = self.counters.snapshot();
        FleetSnapshot {
            admitted: raw[ADMITTED],
            rejected: raw[REJECTED] + raw[COST_ABOVE_BURST],
            fallback_admitted: raw[FALLBACK_ADMITTED],
            fallback_rejected: raw[FALLBACK_REJECTED],
            redis_failures: raw[REDIS_FAILED],
            failed_fast: raw[FAILED_FAST],
            probes: raw[PROBES],
            consecutive_failures: self.breaker.failures.load(Ordering::Acquire),
            failing_fast: self.breaker.open.load(Ordering::Acquire),
        }
    }

    /// The index of this host's level (Normal without a `LevelHandle`).
    #[inline]
    fn level_index(&self) -> usize {
        self.level.as_ref().map_or(0, |h| h.current().index())
    }

    fn limited(p: &Params, cause: Cause, retry_after: Option<Duration>) -> RateLimited {
        RateLimited::new(cause, retry_after).with_policy(p.quota, Duration::from_nanos(p.window_ns))
    }

    fn failing_fast(&self) -> bool {
        self.breaker.open.load(Ordering::Acquire)
    }

    /// Redis answered: the failures in a row end, and decisions ask Redis again.
    fn redis_answered(&self) {
        self.breaker.failures.store(0, Ordering::Release);
        if self.breaker.open.swap(false, Ordering::AcqRel) {
            tracing::info!(
                limit = %self.key_base,
                "fleet rate limit: Redis answers again, decisions use the shared budget"
            );
        }
    }

    /// A call to Redis failed or timed out; returns the failures in a row.
    fn redis_failed(&self) -> u32 {
        self.breaker
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(1))
            })
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// The decision of the `unavailable` policy for a request of `units` (`None`: the
    /// configured cost) under `key`. `fast`: Redis was not asked.
    fn fallback(
        &self,
        key: Option<E::Key>,
        units: Option<u64>,
        fast: bool,
    ) -> Result<(), RateLimited> {
        self.counters
            .add(if fast { FAILED_FAST } else { REDIS_FAILED }, 1);
        let level = self.level_index();
        let p = &self.table.load(level);
        let lp = self.local_table.as_ref().map(|t| t.load(level));
        let out = match (self.policy, &lp) {
            (Unavailable::FailOpen, _) => Ok(()),
            (Unavailable::FailClosed, _) => Err(Self::limited(
                p,
                Cause::FleetUnavailable,
                Some(self.timeout),
            )),
            (Unavailable::Local { .. }, lp) => {
                let lp = lp.as_ref().unwrap_or(p);
                // The same number of units at the local unit; a cost above the local burst
                // spends the whole local burst.
                let cost = units
                    .map_or(lp.cost_ns, |n| n.saturating_mul(lp.unit_ns))
                    .min(lp.tolerance_ns);
                let now = nanos(TokioClock.now().saturating_duration_since(self.origin));
                let decision = match (key, &self.local_keys) {
                    (Some(k), Some(store)) => match store.acquire(k, lp, cost, now, 0) {
                        Ok(d) => d,
                        Err(full) => {
                            let wait = full.until.saturating_sub(now).max(1);
                            self.counters.add(FALLBACK_REJECTED, 1);
                            return Err(Self::limited(
                                lp,
                                Cause::KeyCapacity,
                                Some(Duration::from_nanos(wait)),
                            ));
                        }
                    },
                    _ => self.local.acquire(lp, cost, now, 0),
                };
                match decision {
                    Decision::Admit { .. } => Ok(()),
                    Decision::Reject { wait } => Err(Self::limited(
                        lp,
                        Cause::OverQuota,
                        Some(Duration::from_nanos(wait)),
                    )),
                }
            }
        };
        self.counters.add(
            if out.is_ok() {
                FALLBACK_ADMITTED
            } else {
                FALLBACK_REJECTED
            },
            1,
        );
        out
    }
}

impl<E: Keyed, W: Send + Sync + 'static> FleetShared<E, W> {
    /// One run of the GCRA script: `EVALSHA`, and on `NOSCRIPT` (a restarted or flushed
    /// Redis) `EVAL` with the script itself, which also caches it again. Not redis-rs's
    /// `invoke_async`: it loads with `SCRIPT LOAD` and asserts (in debug builds) that the hash
    /// the server returns is the expected one, so a misbehaving server could panic the
    /// caller.
    async fn gcra(&self, key: &str, args: [u64; 3]) -> redis::RedisResult<redis::Value> {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(self.script.get_hash())
            .arg(1)
            .arg(key)
            .arg(&args[..]);
        match self.conn.query(&evalsha).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut eval = redis::cmd("EVAL");
                eval.arg(GCRA_LUA).arg(1).arg(key).arg(&args[..]);
                self.conn.query(&eval).await
            }
            other => other,
        }
    }

    /// Counts a failed call and, at the threshold, makes decisions fail fast and starts the
    /// probe.
    fn on_failure(self: &Arc<Self>, key: &str) {
        if self.redis_failed() >= self.fail_fast_after {
            // Off the admit path: only the decisions that reach the threshold take this lock.
            key.clone_into(&mut self.probe_key.lock().unwrap_or_else(|e| e.into_inner()));
            if !self.breaker.open.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    limit = %self.key_base,
                    failures = self.fail_fast_after,
                    "fleet rate limit: Redis keeps failing, deciding locally without waiting for it"
                );
            }
            self.start_probe();
        }
    }

    /// Starts the probe task unless one is running.
    fn start_probe(self: &Arc<Self>) {
        if self.breaker.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        // Decisions run inside tokio (their timeout needs its timer), so a runtime is here.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(probe(Arc::downgrade(self)));
            }
            Err(_) => self.breaker.probing.store(false, Ordering::Release),
        }
    }
}

/// While decisions fail fast: ask Redis about the key that failed (`EXISTS`), after one timeout and then backing off to
/// [`PROBE_MAX_PAUSE`], until it answers (or the layer is dropped). Holds only a weak
/// reference while it sleeps.
async fn probe<E: Keyed, W: Send + Sync + 'static>(shared: std::sync::Weak<FleetShared<E, W>>) {
    let Some(mut pause) = shared.upgrade().map(|s| s.timeout) else {
        return;
    };
    loop {
        tokio::time::sleep(pause).await;
        let Some(s) = shared.upgrade() else {
            return;
        };
        if !s.failing_fast() {
            // Closed by an answer to a call in flight. A failure streak may have opened it
            // again meanwhile; then this task goes on probing.
            s.breaker.probing.store(false, Ordering::Release);
            if s.failing_fast() && !s.breaker.probing.swap(true, Ordering::AcqRel) {
                continue;
            }
            return;
        }
        s.counters.add(PROBES, 1);
        // `EXISTS` of the key whose calls failed: on a cluster it reaches the node that owns
        // that key's slot now (the same node back, or the replica promoted in its place).
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(&*s.probe_key.lock().unwrap_or_else(|e| e.into_inner()));
        match tokio::time::timeout(s.timeout, s.conn.query(&cmd)).await {
            Ok(Ok(_)) => s.redis_answered(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "fleet rate limit: probe failed");
                s.redis_failed();
                pause = (pause * 2).min(PROBE_MAX_PAUSE.max(s.timeout));
            }
            Err(_) => {
                s.redis_failed();
                pause = (pause * 2).min(PROBE_MAX_PAUSE.max(s.timeout));
            }
        }
    }
}

/// A rate limit whose budget is shared by every host through Redis; see the
/// [module docs](self).
///
/// ```no_run
/// use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
/// use tower::{Layer, Service, ServiceExt};
/// # #[tokio::main] async fn main() -> Result<(), degrade_core::BoxError> {
/// let mut config = FleetConfig::default();
/// config.url = "redis://10.0.0.5:6379".into();
/// let layer = FleetLayer::new(config)?;
/// let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
/// svc.ready().await?.call(()).await?;
/// # Ok(()) }
/// ```
pub struct FleetLayer<E = Global, W = DefaultCost, M = Errors>
where
    E: Keyed,
{
    shared: Arc<FleetShared<E, W>>,
    _mode: PhantomData<fn() -> M>,
}

impl<E: Keyed, W, M> Clone for FleetLayer<E, W, M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<E: Keyed, W, M> fmt::Debug for FleetLayer<E, W, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl FleetLayer {
    /// A global fleet limit. Connects lazily: building succeeds while Redis is down (the
    /// `unavailable` policy decides until it answers). Must be called inside a tokio runtime.
    ///
    /// ```
    /// use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mut config = FleetConfig::default();
    /// config.timeout = std::time::Duration::ZERO;
    /// let err = FleetLayer::new(config).unwrap_err();
    /// assert_eq!(err.field(), "timeout");
    /// # }
    /// ```
    pub fn new(config: FleetConfig) -> Result<Self, ConfigError> {
        Self::with(config, Global, DefaultCost)
    }
}

impl<E: Keyed, W: Send + Sync + 'static> FleetLayer<E, W> {
    /// A fleet limit with a key extractor (whose key every host must spell the same way, hence
    /// `Display`) and a cost function.
    ///
    /// ```
    /// use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
    /// use degrade_ratelimit::{cost::DefaultCost, key};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = FleetLayer::with(
    ///     FleetConfig::default(),
    ///     key::from_fn(|tenant: &String| Some(tenant.clone())),
    ///     DefaultCost,
    /// ).unwrap();
    /// # let _ = layer;
    /// # }
    /// ```
    pub fn with(config: FleetConfig, extractor: E, weigh: W) -> Result<Self, ConfigError> {
        FleetBuilder {
            config,
            extractor,
            weigh,
            level: None,
        }
        .build()
    }
}

impl FleetLayer {
    /// A builder, to add a key extractor, a cost function or a [`LevelHandle`].
    ///
    /// ```
    /// use degrade_core::{Controller, Level};
    /// use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
    /// use degrade_ratelimit::{LevelScale, RateLimitConfig};
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let controller = Controller::new(Default::default()).unwrap();
    /// let mut config = FleetConfig::default();
    /// config.quota = RateLimitConfig::per(1000, Duration::from_secs(1))
    ///     .level_scale(LevelScale { heavy: 0.25, ..LevelScale::default() });
    /// let layer = FleetLayer::builder(config)
    ///     .level(controller.handle())
    ///     .build()
    ///     .unwrap();
    /// controller.pin(Level::Heavy); // this host now decides at 250 per second
    /// # let _ = layer;
    /// # }
    /// ```
    pub fn builder(config: FleetConfig) -> FleetBuilder {
        FleetBuilder {
            config,
            extractor: Global,
            weigh: DefaultCost,
            level: None,
        }
    }
}

/// Builds a [`FleetLayer`]: [`FleetLayer::builder`].
pub struct FleetBuilder<E = Global, W = DefaultCost> {
    config: FleetConfig,
    extractor: E,
    weigh: W,
    level: Option<LevelHandle>,
}

impl<E, W> fmt::Debug for FleetBuilder<E, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetBuilder")
            .field("config", &self.config)
            .field("level", &self.level.as_ref().map(LevelHandle::current))
            .finish_non_exhaustive()
    }
}

impl<E: Keyed, W> FleetBuilder<E, W> {
    /// Scales the quota by this host's level, by the configuration's `level_scale`.
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let controller = degrade_core::Controller::new(Default::default()).unwrap();
    /// let layer = FleetLayer::builder(FleetConfig::default()).level(controller.handle()).build();
    /// assert!(layer.is_ok());
    /// # }
    /// ```
    #[must_use]
    pub fn level(mut self, handle: LevelHandle) -> Self {
        self.level = Some(handle);
        self
    }

    /// Keys the limit (every host must spell a key the same way, hence `Display`); while Redis
    /// is away, the local fallback keeps a budget per key too, up to `local_keys`.
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = FleetLayer::builder(FleetConfig::default())
    ///     .keyed(degrade_ratelimit::key::from_fn(|tenant: &String| Some(tenant.clone())))
    ///     .build();
    /// assert!(layer.is_ok());
    /// # }
    /// ```
    pub fn keyed<E2: Keyed>(self, extractor: E2) -> FleetBuilder<E2, W> {
        FleetBuilder {
            config: self.config,
            extractor,
            weigh: self.weigh,
            level: self.level,
        }
    }

    /// Gives each request its cost in units.
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = FleetLayer::builder(FleetConfig::default())
    ///     .cost(|batch: &Vec<u8>| batch.len() as u64)
    ///     .build();
    /// assert!(layer.is_ok());
    /// # }
    /// ```
    pub fn cost<W2>(self, weigh: W2) -> FleetBuilder<E, W2> {
        FleetBuilder {
            config: self.config,
            extractor: self.extractor,
            weigh,
            level: self.level,
        }
    }

    /// Validates the configuration and makes the layer. Connects lazily: building succeeds
    /// while Redis is down (the `unavailable` policy decides until it answers). Must be
    /// called inside a tokio runtime.
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mut config = FleetConfig::default();
    /// config.cluster = vec!["redis://10.0.0.1:7000".into()];
    /// config.url = "redis://10.0.0.9:6379".into();
    /// let err = FleetLayer::builder(config).build().unwrap_err();
    /// assert_eq!(err.field(), "url"); // a single node or a cluster, not both
    /// # }
    /// ```
    pub fn build(self) -> Result<FleetLayer<E, W>, ConfigError>
    where
        W: Send + Sync + 'static,
    {
        let config = self.config;
        let (target, params, local) = config.checked()?;
        let conn = Conn::open(target, config.timeout)?;
        degrade_core::rejection::register::<RateLimited>();
        let local_unit = local.as_ref().map_or(params[0].unit_ns, |l| l[0].unit_ns);
        Ok(FleetLayer {
            shared: Arc::new(FleetShared {
                conn,
                script: redis::Script::new(GCRA_LUA),
                key_base: format!("{}:{}", config.prefix, config.name),
                timeout: config.timeout,
                policy: config.unavailable,
                fail_fast_after: config.fail_fast_after,
                table: ParamTable::new(params),
                local_keys: local.map(|_| Store::new(config.local_keys.max_keys)),
                local_table: local.map(ParamTable::new),
                level: self.level,
                quota: Mutex::new(config.quota),
                local: Cell::new(local_unit),
                origin: TokioClock.now(),
                counters: ShardedCounter::new(),
                breaker: Breaker::default(),
                probe_key: Mutex::new(String::new()),
                extractor: self.extractor,
                weigh: self.weigh,
            }),
            _mode: PhantomData,
        })
    }
}

/// A quota change on a fleet limit: validated like the configuration's `quota` (waiting is
/// refused), put in force for this host's next decision, with the local fallback's share
/// recomputed. The spent budget carries over in units, in Redis (by the script) and locally.
impl<E: Keyed, W: Send + Sync + 'static> SetQuota for FleetShared<E, W> {
    fn set(&self, config: RateLimitConfig) -> Result<(), ConfigError> {
        let params = fleet_params(&config)?;
        let local =
            local_params(&config, self.policy).map_err(|e| e.within("unavailable.local"))?;
        let mut cur = self.quota.lock().unwrap_or_else(|e| e.into_inner());
        self.table.store(params);
        if let (Some(t), Some(l)) = (&self.local_table, local) {
            t.store(l);
        }
        tracing::info!(
            limit = %self.key_base,
            quota = config.quota,
            period = ?config.period,
            burst = config.effective_burst(),
            "fleet rate limit: quota changed on this host"
        );
        *cur = config;
        Ok(())
    }

    fn get(&self) -> RateLimitConfig {
        self.quota.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl<E: Keyed, W: Send + Sync + 'static, M> FleetLayer<E, W, M> {
    /// A handle to change this host's quota while the layer serves (the same
    /// [`QuotaHandle`] as the local limiter's). Give every host the new quota (a
    /// configuration roll-out); the spent budget is carried over in units, so neither the
    /// change nor the hosts disagreeing meanwhile make a burst.
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
    /// # use degrade_ratelimit::RateLimitConfig; use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = FleetLayer::new(FleetConfig::default()).unwrap();
    /// let handle = layer.quota_handle();
    /// handle.set(RateLimitConfig::per(50, Duration::from_secs(1))).unwrap();
    /// assert_eq!(handle.get().quota, 50);
    /// let waits = RateLimitConfig::per(50, Duration::from_secs(1)).wait(Duration::from_millis(5), 1);
    /// assert_eq!(handle.set(waits).unwrap_err().field(), "max_wait");
    /// # }
    /// ```
    pub fn quota_handle(&self) -> QuotaHandle {
        QuotaHandle::from_target(Arc::clone(&self.shared) as Arc<dyn SetQuota>)
    }
}

impl<E: Keyed, W, M> FleetLayer<E, W, M> {
    /// The counters, including decisions made by the `unavailable` policy.
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = FleetLayer::new(FleetConfig::default()).unwrap();
    /// assert_eq!(layer.snapshot().fallbacks(), 0);
    /// # }
    /// ```
    pub fn snapshot(&self) -> FleetSnapshot {
        self.shared.snapshot()
    }

    /// The same layer answering rejected HTTP requests itself (429; feature `http`).
    #[cfg(feature = "http")]
    pub fn http(self) -> FleetLayer<E, W, degrade_core::answer::HttpResponses> {
        FleetLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }
}

impl<S, E: Keyed, W, M> Layer<S> for FleetLayer<E, W, M> {
    type Service = FleetRateLimit<S, E, W, M>;

    fn layer(&self, inner: S) -> Self::Service {
        FleetRateLimit {
            inner,
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

/// The service made by [`FleetLayer`].
///
/// ```
/// # use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
/// use tower::Layer;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = FleetLayer::new(FleetConfig::default()).unwrap().layer(7u8);
/// assert_eq!(*svc.get_ref(), 7);
/// # }
/// ```
pub struct FleetRateLimit<S, E = Global, W = DefaultCost, M = Errors>
where
    E: Keyed,
{
    inner: S,
    shared: Arc<FleetShared<E, W>>,
    _mode: PhantomData<fn() -> M>,
}

impl<S: Clone, E: Keyed, W, M> Clone for FleetRateLimit<S, E, W, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, E: Keyed, W, M> fmt::Debug for FleetRateLimit<S, E, W, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetRateLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, E: Keyed, W: Send + Sync + 'static, M> FleetRateLimit<S, E, W, M> {
    degrade_core::inner_service_accessors!(S);

    /// The decision for `req` as a [`Core`] future: the round trip to Redis runs inside the
    /// response future, bounded by the timeout; while failing fast, the policy decides at once.
    fn decide<R>(&mut self, req: R) -> Core<S::Future, S, R>
    where
        S: Service<R> + Clone,
        E: KeyExtractor<R>,
        E::Key: fmt::Display,
        W: Weigh<R>,
    {
        let shared = &self.shared;
        let p = shared.table.load(shared.level_index());
        let units = shared.weigh.units(&req);
        let cost_ns = match units {
            None => p.cost_ns,
            Some(0) => {
                shared.counters.add(ADMITTED, 1);
                return Core::called(self.inner.call(req));
            }
            Some(n) => n.saturating_mul(p.unit_ns),
        };
        if cost_ns > p.tolerance_ns {
            shared.counters.add(COST_ABOVE_BURST, 1);
            return Core::rejected(FleetShared::<E, W>::limited(
                &p,
                Cause::CostAboveBurst,
                None,
            ));
        }
        let key = shared.extractor.extract(&req);
        if shared.failing_fast() {
            return match shared.fallback(key, units, true) {
                Ok(()) => Core::called(self.inner.call(req)),
                Err(r) => Core::rejected(r),
            };
        }
        let redis_key = match &key {
            Some(k) => format!("{}:k:{k}", shared.key_base),
            None => format!("{}:all", shared.key_base),
        };
        let shared = Arc::clone(shared);
        let decision = Box::pin(async move {
            let call = shared.gcra(&redis_key, [p.unit_ns, p.tolerance_ns, cost_ns]);
            let failure = match tokio::time::timeout(shared.timeout, call).await {
                Ok(Ok(v)) => match read_reply(&v, p.tolerance_ns) {
                    Some(Reply::Admit) => {
                        shared.redis_answered();
                        shared.counters.add(ADMITTED, 1);
                        return Ok(());
                    }
                    Some(Reply::Reject(wait)) => {
                        shared.redis_answered();
                        shared.counters.add(REJECTED, 1);
                        return Err(FleetShared::<E, W>::limited(
                            &p,
                            Cause::OverQuota,
                            Some(Duration::from_nanos(wait)),
                        ));
                    }
                    None => "an unexpected reply",
                },
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "fleet rate limit: Redis error");
                    "an error"
                }
                Err(_) => "no answer within the timeout",
            };
            tracing::debug!(failure, "fleet rate limit: using the fallback");
            shared.on_failure(&redis_key);
            shared.fallback(key, units, false)
        });
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        Core::Deciding {
            decision,
            svc: Some(ready),
            req: Some(req),
        }
    }
}

impl<S, E, W, R> Service<R> for FleetRateLimit<S, E, W, Errors>
where
    W: Send + Sync + 'static,
    S: Service<R> + Clone,
    S::Error: Into<BoxError>,
    E: KeyExtractor<R>,
    E::Key: fmt::Display,
    W: Weigh<R>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = crate::future::ResponseFuture<S::Future, S, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        crate::future::ResponseFuture::new(self.decide(req))
    }
}

#[cfg(feature = "http")]
impl<S, E, W, F, ReqB, ResB> Service<http::Request<ReqB>>
    for FleetRateLimit<S, E, W, degrade_core::answer::Responses<F>>
where
    W: Send + Sync + 'static,
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>> + Clone,
    E: KeyExtractor<http::Request<ReqB>>,
    E::Key: fmt::Display,
    W: Weigh<http::Request<ReqB>>,
    degrade_core::answer::Responses<F>: degrade_core::answer::Respond,
    ResB: Default,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = crate::future::RespondFuture<
        S::Future,
        S,
        http::Request<ReqB>,
        degrade_core::answer::Responses<F>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        crate::future::RespondFuture::new(self.decide(req))
    }
}
