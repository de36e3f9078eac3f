//! Fleet mode (feature `redis`): one quota shared by every host, kept in Redis.
//!
//! # How a decision is made
//!
//! Each decision is one round trip: a Lua script run by `EVALSHA` (and loaded again when Redis
//! answers `NOSCRIPT`, e.g. after a restart) applies the same GCRA as the local limiter to one
//! key holding the TAT in microseconds of the *Redis server's* clock (`TIME`), so the hosts'
//! own clocks never disagree about the budget. An admission writes the new TAT with a TTL equal
//! to the time until the budget is full again, so idle keys vanish by themselves. A script call
//! touches exactly the one key it is given, so it is valid on Redis Cluster too (the key is
//! `<prefix>:<name>:<key>`; this client itself talks to one node).
//!
//! # While Redis is down or slow
//!
//! Every decision has a bounded timeout (default 50 ms). If Redis does not answer in time, or
//! answers with an error, the configured [`Unavailable`] policy decides instead: admit
//! (`fail_open`), reject with [`Cause::FleetUnavailable`] (`fail_closed`), or a local GCRA
//! limiter at a share of the quota (`local`, the default, share 0.5). Every such decision is
//! counted ([`FleetSnapshot::fallbacks`]). The connection is a `redis` `ConnectionManager`,
//! which reconnects by itself; once Redis answers again, decisions go back to the shared
//! budget.

use crate::config::{Params, RateLimitConfig};
use crate::cost::{DefaultCost, Weigh};
use crate::error::{Cause, RateLimited};
use crate::future::Core;
use crate::key::{Global, KeyExtractor};
use crate::limiter::nanos;
use crate::state::{Cell, Decision, ParamTable};
use degrade_core::answer::Errors;
use degrade_core::window::ShardedCounter;
use degrade_core::{BoxError, Clock, ConfigError, TokioClock};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// The GCRA script. KEYS[1]: the budget's key. ARGV: nanoseconds per unit, tolerance in
/// nanoseconds, cost in nanoseconds. Returns {1, 0} when admitted, {0, wait in µs rounded up}
/// when not. Times are microseconds of the server's clock (exact in a Lua double for
/// centuries); the TTL is the time until the budget is full again.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local unit = tonumber(ARGV[1]) / 1000
local tolerance = tonumber(ARGV[2]) / 1000
local cost = tonumber(ARGV[3]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + cost
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, math.ceil(allow_at - now)}
end
local ttl = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', ttl)
return {1, 0}
"#;

/// What to do while Redis is down or slower than the decision timeout.
///
/// ```
/// use degrade_ratelimit::fleet::Unavailable;
/// let p: Unavailable = serde_json::from_str(r#"{ "local": { "share": 0.25 } }"#).unwrap();
/// assert_eq!(p, Unavailable::Local { share: 0.25 });
/// let p: Unavailable = serde_json::from_str(r#""fail_closed""#).unwrap();
/// assert_eq!(p, Unavailable::FailClosed);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Unavailable {
    /// Admit every request.
    FailOpen,
    /// Reject every request with [`Cause::FleetUnavailable`].
    FailClosed,
    /// Limit locally at `share` (in (0, 1]) of the quota and the burst: each host's fair part
    /// of the fleet's budget.
    Local {
        /// The host's share of the quota.
        share: f64,
    },
}

/// Configuration of a fleet-wide limit.
///
/// ```
/// use degrade_ratelimit::fleet::FleetConfig;
/// let cfg: FleetConfig = serde_json::from_str(r#"{
///     "url": "redis://127.0.0.1:6379", "name": "api", "timeout": "20ms",
///     "quota": { "quota": 1000, "period": "1s" },
///     "unavailable": { "local": { "share": 0.1 } }
/// }"#).unwrap();
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct FleetConfig {
    /// The Redis URL (default `redis://127.0.0.1:6379`).
    pub url: String,
    /// Prefix of every key (default `degrade:rl`).
    pub prefix: String,
    /// The limit's name: hosts with the same prefix and name share one budget (default
    /// `default`).
    pub name: String,
    /// The longest a decision may take (default 50 ms); past it, the `unavailable` policy
    /// decides.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The fleet's quota. Waiting (`max_wait`) is not supported in fleet mode.
    pub quota: RateLimitConfig,
    /// What to do while Redis is down or slow (default: local at half the quota).
    pub unavailable: Unavailable,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "degrade:rl".to_owned(),
            name: "default".to_owned(),
            timeout: Duration::from_millis(50),
            quota: RateLimitConfig::default(),
            unavailable: Unavailable::Local { share: 0.5 },
        }
    }
}

impl FleetConfig {
    /// Checks every rule; the error names the field.
    ///
    /// ```
    /// use degrade_ratelimit::fleet::{FleetConfig, Unavailable};
    /// let mut cfg = FleetConfig::default();
    /// cfg.unavailable = Unavailable::Local { share: 0.0 };
    /// assert_eq!(cfg.validate().unwrap_err().field(), "unavailable.local.share");
    /// let mut cfg = FleetConfig::default();
    /// cfg.url = "http://nope".into();
    /// assert_eq!(cfg.validate().unwrap_err().field(), "url");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.checked().map(|_| ())
    }

    fn checked(&self) -> Result<Checked, ConfigError> {
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| ConfigError::new("url", format!("is not a Redis URL: {e}")))?;
        if self.name.is_empty() || self.name.chars().any(|c| c.is_whitespace()) {
            return Err(ConfigError::new(
                "name",
                "must be non-empty, without spaces",
            ));
        }
        if self.prefix.chars().any(|c| c.is_whitespace()) {
            return Err(ConfigError::new("prefix", "must not contain spaces"));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err(ConfigError::new("timeout", "must be in (0, 60s]"));
        }
        if !self.quota.max_wait.is_zero() {
            return Err(ConfigError::new(
                "quota.max_wait",
                "must be zero: fleet mode rejects at once",
            ));
        }
        let params = self.quota.params().map_err(|e| e.within("quota"))?;
        let local = match self.unavailable {
            Unavailable::Local { share } => {
                if !(share.is_finite() && share > 0.0 && share <= 1.0) {
                    return Err(ConfigError::new(
                        "unavailable.local.share",
                        format!("must be a finite number in (0, 1], got {share}"),
                    ));
                }
                Some(
                    local_config(&self.quota, share)
                        .params()
                        .map_err(|e| e.within("unavailable.local"))?,
                )
            }
            _ => None,
        };
        Ok((client, params, local))
    }
}

/// A validated configuration: the client, the fleet's parameters and the local fallback's.
type Checked = (redis::Client, [Params; 5], Option<[Params; 5]>);

/// The host's local limiter while Redis is away: `share` of the quota and of the burst.
fn local_config(quota: &RateLimitConfig, share: f64) -> RateLimitConfig {
    let mut c = quota.clone();
    let burst = (quota.effective_burst() as f64 * share).floor().max(1.0) as u64;
    c.burst = Some(burst);
    c.cost = c.cost.min(burst as f64);
    let s = &mut c.level_scale;
    for v in [
        &mut s.normal,
        &mut s.light,
        &mut s.moderate,
        &mut s.heavy,
        &mut s.emergency,
    ] {
        *v *= share;
    }
    c
}

const ADMITTED: usize = 0;
const REJECTED: usize = 1;
const FALLBACK_ADMITTED: usize = 2;
const FALLBACK_REJECTED: usize = 3;
const COST_ABOVE_BURST: usize = 4;
const SLOTS: usize = 5;

/// Counters of a fleet limit. `offered() = admitted + rejected + fallbacks()` exactly.
///
/// ```
/// use degrade_ratelimit::fleet::FleetSnapshot;
/// assert_eq!(FleetSnapshot::default().offered(), 0);
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

struct FleetShared<E, W> {
    manager: ConnectionManager,
    script: redis::Script,
    key_base: String,
    timeout: Duration,
    policy: Unavailable,
    params: ParamTable,
    local_params: Option<ParamTable>,
    local: Cell,
    origin: Instant,
    counters: ShardedCounter<SLOTS>,
    extractor: E,
    weigh: W,
}

impl<E, W> fmt::Debug for FleetShared<E, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetShared")
            .field("key_base", &self.key_base)
            .field("timeout", &self.timeout)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<E, W> FleetShared<E, W> {
    fn snapshot(&self) -> FleetSnapshot {
        let raw = self.counters.snapshot();
        FleetSnapshot {
            admitted: raw[ADMITTED],
            rejected: raw[REJECTED] + raw[COST_ABOVE_BURST],
            fallback_admitted: raw[FALLBACK_ADMITTED],
            fallback_rejected: raw[FALLBACK_REJECTED],
        }
    }

    fn limited(p: &Params, cause: Cause, retry_after: Option<Duration>) -> RateLimited {
        RateLimited::new(cause, retry_after).with_policy(p.quota, Duration::from_nanos(p.window_ns))
    }

    /// The decision of the `unavailable` policy.
    fn fallback(&self, cost_ns: u64) -> Result<(), RateLimited> {
        let p = self.params.load(0);
        let out = match self.policy {
            Unavailable::FailOpen => Ok(()),
            Unavailable::FailClosed => Err(Self::limited(
                &p,
                Cause::FleetUnavailable,
                Some(self.timeout),
            )),
            Unavailable::Local { .. } => {
                let lp = self.local_params.as_ref().map_or(p, |t| t.load(0));
                // The local cost is the same number of units at the local unit.
                let units = cost_ns.div_ceil(p.unit_ns.max(1));
                let cost = units.saturating_mul(lp.unit_ns).min(lp.tolerance_ns);
                let now = nanos(TokioClock.now().saturating_duration_since(self.origin));
                match self.local.acquire(&lp, cost, now, 0) {
                    Decision::Admit { .. } => Ok(()),
                    Decision::Reject { wait } => Err(Self::limited(
                        &lp,
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
pub struct FleetLayer<E = Global, W = DefaultCost, M = Errors> {
    shared: Arc<FleetShared<E, W>>,
    _mode: PhantomData<fn() -> M>,
}

impl<E, W, M> Clone for FleetLayer<E, W, M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<E, W, M> fmt::Debug for FleetLayer<E, W, M> {
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
    /// assert_eq!(err.downcast_ref::<degrade_core::ConfigError>().unwrap().field(), "timeout");
    /// # }
    /// ```
    pub fn new(config: FleetConfig) -> Result<Self, BoxError> {
        Self::with(config, Global, DefaultCost)
    }
}

impl<E: Send + Sync + 'static, W: Send + Sync + 'static> FleetLayer<E, W> {
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
    pub fn with(config: FleetConfig, extractor: E, weigh: W) -> Result<Self, BoxError> {
        let (client, params, local) = config.checked()?;
        let mgr_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let manager = ConnectionManager::new_lazy_with_config(client, mgr_config)?;
        degrade_core::rejection::register::<RateLimited>();
        let local_unit = local.as_ref().map_or(params[0].unit_ns, |l| l[0].unit_ns);
        Ok(Self {
            shared: Arc::new(FleetShared {
                manager,
                script: redis::Script::new(GCRA_LUA),
                key_base: format!("{}:{}", config.prefix, config.name),
                timeout: config.timeout,
                policy: config.unavailable,
                params: ParamTable::new(params),
                local_params: local.map(ParamTable::new),
                local: Cell::new(local_unit),
                origin: TokioClock.now(),
                counters: ShardedCounter::new(),
                extractor,
                weigh,
            }),
            _mode: PhantomData,
        })
    }
}

impl<E, W, M> FleetLayer<E, W, M> {
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
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = FleetLayer::new(FleetConfig::default()).unwrap().http();
    /// # let _ = layer;
    /// # }
    /// ```
    #[cfg(feature = "http")]
    pub fn http(self) -> FleetLayer<E, W, degrade_core::answer::HttpResponses> {
        FleetLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }
}

impl<S, E, W, M> Layer<S> for FleetLayer<E, W, M> {
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
pub struct FleetRateLimit<S, E = Global, W = DefaultCost, M = Errors> {
    inner: S,
    shared: Arc<FleetShared<E, W>>,
    _mode: PhantomData<fn() -> M>,
}

impl<S: Clone, E, W, M> Clone for FleetRateLimit<S, E, W, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, E, W, M> fmt::Debug for FleetRateLimit<S, E, W, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetRateLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, E, W, M> FleetRateLimit<S, E, W, M> {
    /// The inner service.
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::{FleetConfig, FleetLayer}; use tower::Layer;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let svc = FleetLayer::new(FleetConfig::default()).unwrap().layer(1u8);
    /// assert_eq!(*svc.get_ref(), 1);
    /// # }
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::{FleetConfig, FleetLayer}; use tower::Layer;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mut svc = FleetLayer::new(FleetConfig::default()).unwrap().layer(1u8);
    /// *svc.get_mut() = 2;
    /// assert_eq!(svc.into_inner(), 2);
    /// # }
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the wrapper, returning the inner service.
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::{FleetConfig, FleetLayer}; use tower::Layer;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let svc = FleetLayer::new(FleetConfig::default()).unwrap().layer("x");
    /// assert_eq!(svc.into_inner(), "x");
    /// # }
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The decision for `req` as a [`Core`] future: the round trip to Redis runs inside the
    /// response future, bounded by the timeout.
    fn decide<R>(&mut self, req: R) -> Core<S::Future, S, R>
    where
        S: Service<R> + Clone,
        E: KeyExtractor<R>,
        E::Key: fmt::Display,
        W: Weigh<R>,
    {
        let shared = &self.shared;
        let p = shared.params.load(0);
        let cost_ns = match shared.weigh.units(&req) {
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
        let key = match shared.extractor.extract(&req) {
            Some(k) => format!("{}:k:{k}", shared.key_base),
            None => format!("{}:all", shared.key_base),
        };
        let shared = Arc::clone(shared);
        let decision = Box::pin(async move {
            let mut con = shared.manager.clone();
            let mut invocation = shared.script.key(&key);
            invocation.arg(p.unit_ns).arg(p.tolerance_ns).arg(cost_ns);
            let call = invocation.invoke_async::<(i64, i64)>(&mut con);
            match tokio::time::timeout(shared.timeout, call).await {
                Ok(Ok((1, _))) => {
                    shared.counters.add(ADMITTED, 1);
                    Ok(())
                }
                Ok(Ok((_, wait_us))) => {
                    shared.counters.add(REJECTED, 1);
                    let wait = Duration::from_micros(u64::try_from(wait_us).unwrap_or(0).max(1));
                    Err(FleetShared::<E, W>::limited(
                        &p,
                        Cause::OverQuota,
                        Some(wait),
                    ))
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "fleet rate limit: Redis error, using fallback");
                    shared.fallback(cost_ns)
                }
                Err(_) => {
                    tracing::debug!("fleet rate limit: Redis timed out, using fallback");
                    shared.fallback(cost_ns)
                }
            }
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
impl<S, E, W, M, ReqB, ResB> Service<http::Request<ReqB>> for FleetRateLimit<S, E, W, M>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>> + Clone,
    E: KeyExtractor<http::Request<ReqB>>,
    E::Key: fmt::Display,
    W: Weigh<http::Request<ReqB>>,
    M: crate::Answer,
    ResB: Default,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = crate::future::RespondFuture<S::Future, S, http::Request<ReqB>, M>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        crate::future::RespondFuture::new(self.decide(req))
    }
}
