//! Fleet mode (feature `redis`): one quota shared by every host, kept in Redis.
//!
//! # How a decision is made
//!
//! Each decision is one round trip: a Lua script run by `EVALSHA` (sent whole with `EVAL`
//! when Redis answers `NOSCRIPT`, e.g. after a restart) applies the same GCRA as the local limiter to one
//! key holding the TAT in microseconds of the *Redis server's* clock (`TIME`), so the hosts'
//! own clocks never disagree about the budget. An admission writes the new TAT with a TTL equal
//! to the time until the budget is full again, so idle keys vanish by themselves. A script call
//! touches exactly the one key it is given, so it is valid on Redis Cluster too (the key is
//! `<prefix>:<name>:<key>`; this client itself talks to one node).
//!
//! The TAT is kept as `<microseconds>.<nnn>` (the nanoseconds past the microsecond), and the
//! script's arithmetic is on whole nanoseconds relative to now, exact in Lua's doubles: a cost
//! of a tenth of a microsecond is charged as such, not rounded to the quarter microsecond that
//! a double holding microseconds since 1970 can represent.
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
//! background task probes Redis (`PING`, first after one timeout, then backing off to once a
//! second) and the first answer, from a probe or from a call still in flight, closes the
//! breaker. [`FleetSnapshot`] reports the state, the consecutive failures, and how many
//! fallbacks waited for Redis and how many did not. The connection is a `redis`
//! `ConnectionManager`, which reconnects by itself.

use crate::config::{Params, RateLimitConfig};
use crate::cost::{DefaultCost, Weigh};
use crate::error::{Cause, RateLimited};
use crate::future::Core;
use crate::key::{Global, KeyExtractor, Keyed};
use crate::layer::KeysConfig;
use crate::limiter::nanos;
use crate::state::{Cell, Decision};
use crate::store::Store;
use degrade_core::answer::Errors;
use degrade_core::counter::ShardedCounter;
use degrade_core::{BoxError, Clock, ConfigError, TokioClock};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// The body of the GCRA script, after `now_us` (microseconds of the server's clock) and
/// `min_ttl_ms` are set. KEYS[1]: the budget's key. ARGV: nanoseconds per unit, tolerance in
/// nanoseconds, cost in nanoseconds (integers). Returns {1, 0} when admitted, {0, wait in
/// nanoseconds} when not.
///
/// The TAT is stored as `<µs>.<nnn>`: whole microseconds and the nanoseconds past them (the
/// format earlier versions wrote with `%.3f`, so a mixed fleet reads each other's keys). Every
/// sum is of integers relative to now (the debt), below 2^53 for any debt under 104 days, so
/// exact in Lua's doubles; microseconds since 1970 as a double (about 2^50.6) keep only a
/// quarter microsecond, which loses a cost of 0.1 µs altogether. The TTL is the time until the
/// budget is full again. A value that cannot be read counts as a full budget (it heals itself).
macro_rules! gcra_body {
    () => {
        r#"
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local debt = 0
local v = redis.call('GET', KEYS[1])
if v then
  local us, frac = string.match(v, '^(%d+)%.?(%d*)$')
  if us then
    local ns = 0
    if frac ~= '' then ns = tonumber(string.sub(frac .. '000', 1, 3)) end
    debt = (tonumber(us) - now_us) * 1000 + ns
  end
  if debt < 0 then debt = 0 end
end
local new_debt = debt + cost
local wait = new_debt - tolerance
if wait > 0 then
  return {0, wait}
end
local q = math.floor(new_debt / 1000)
local r = new_debt - q * 1000
if r < 0 then q = q - 1; r = r + 1000 end
if r >= 1000 then q = q + 1; r = r - 1000 end
redis.call('SET', KEYS[1], string.format('%.0f.%03d', now_us + q, r), 'PX', math.floor(new_debt / 1000000) + min_ttl_ms)
return {1, 0}
"#
    };
}

/// The GCRA script on the server's clock (`TIME`), so that the hosts' own clocks never
/// disagree about the budget. A key lives one millisecond past its debt.
const GCRA_LUA: &str = concat!(
    "local t = redis.call('TIME')\nlocal now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])\n",
    "local min_ttl_ms = 1\n",
    gcra_body!()
);

/// The same script with `now_us` given as ARGV[4], so tests can freeze the clock (and keys
/// live a minute, since Redis expires them on its real clock).
#[cfg(test)]
const GCRA_LUA_AT: &str = concat!(
    "local now_us = tonumber(ARGV[4])\nlocal min_ttl_ms = 60000\n",
    gcra_body!()
);

/// The first pause of the background probe while decisions fail fast is one timeout; it
/// doubles up to this, so a recovered Redis is noticed within about a second.
const PROBE_MAX_PAUSE: Duration = Duration::from_secs(1);

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
    /// The cap of the `local` fallback's key store (default 100,000 keys): while Redis is away
    /// each key gets its own local budget, and the store is bounded like a local keyed limit.
    pub local_keys: KeysConfig,
    /// After this many consecutive failed or timed-out calls to Redis (default 3), decisions
    /// stop waiting for Redis and go to the `unavailable` policy at once, until a background
    /// probe (or a call still in flight) gets an answer. At least 1.
    pub fail_fast_after: u32,
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
            local_keys: KeysConfig::default(),
            fail_fast_after: 3,
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
        if self.fail_fast_after == 0 {
            return Err(ConfigError::new(
                "fail_fast_after",
                "must be at least 1 (0 would never ask Redis)",
            ));
        }
        self.local_keys
            .validate()
            .map_err(|e| e.within("local_keys"))?;
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
                        .map_err(|e| e.within("unavailable.local"))?[0],
                )
            }
            _ => None,
        };
        Ok((client, params, local))
    }
}

/// A validated configuration: the client, the fleet's parameters and the local fallback's
/// (fleet mode has no per-level scaling: level Normal's).
type Checked = (redis::Client, [Params; 5], Option<Params>);

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

/// What Redis answered to one script call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Admit,
    /// Rejected; the same request is admitted after this many nanoseconds.
    Reject(u64),
}

/// Reads the script's reply: `{1, _}` admits, `{0, wait_ns}` rejects. Anything else (another
/// shape, a negative wait) is not an answer: `None`. A wait longer than the burst's tolerance
/// (which no correct reply exceeds) is cut to it, so a wrong reply cannot ask for centuries.
fn read_reply(v: &redis::Value, tolerance_ns: u64) -> Option<Reply> {
    let redis::Value::Array(items) = v else {
        return None;
    };
    match items.as_slice() {
        [redis::Value::Int(1), _] => Some(Reply::Admit),
        [redis::Value::Int(0), redis::Value::Int(wait)] => {
            let wait = u64::try_from(*wait).ok()?;
            Some(Reply::Reject(wait.clamp(1, tolerance_ns.max(1))))
        }
        _ => None,
    }
}

struct FleetShared<E: Keyed, W> {
    manager: ConnectionManager,
    script: redis::Script,
    key_base: String,
    timeout: Duration,
    policy: Unavailable,
    fail_fast_after: u32,
    params: Params,
    local_params: Option<Params>,
    local: Cell,
    local_keys: Option<Store<E::Key>>,
    origin: Instant,
    counters: ShardedCounter<SLOTS>,
    breaker: Breaker,
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
        let p = &self.params;
        let out = match (self.policy, &self.local_params) {
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
        let mut con = self.manager.clone();
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(self.script.get_hash())
            .arg(1)
            .arg(key)
            .arg(&args[..]);
        match evalsha.query_async::<redis::Value>(&mut con).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut eval = redis::cmd("EVAL");
                eval.arg(GCRA_LUA).arg(1).arg(key).arg(&args[..]);
                eval.query_async::<redis::Value>(&mut con).await
            }
            other => other,
        }
    }

    /// Counts a failed call and, at the threshold, makes decisions fail fast and starts the
    /// probe.
    fn on_failure(self: &Arc<Self>) {
        if self.redis_failed() >= self.fail_fast_after {
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

/// While decisions fail fast: `PING` Redis, after one timeout and then backing off to
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
        let mut con = s.manager.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<redis::Value>(&mut con);
        match tokio::time::timeout(s.timeout, ping).await {
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
    /// assert_eq!(err.downcast_ref::<degrade_core::ConfigError>().unwrap().field(), "timeout");
    /// # }
    /// ```
    pub fn new(config: FleetConfig) -> Result<Self, BoxError> {
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
    pub fn with(config: FleetConfig, extractor: E, weigh: W) -> Result<Self, BoxError> {
        let (client, params, local) = config.checked()?;
        let mgr_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let manager = ConnectionManager::new_lazy_with_config(client, mgr_config)?;
        degrade_core::rejection::register::<RateLimited>();
        let local_unit = local.as_ref().map_or(params[0].unit_ns, |l| l.unit_ns);
        Ok(Self {
            shared: Arc::new(FleetShared {
                manager,
                script: redis::Script::new(GCRA_LUA),
                key_base: format!("{}:{}", config.prefix, config.name),
                timeout: config.timeout,
                policy: config.unavailable,
                fail_fast_after: config.fail_fast_after,
                params: params[0],
                local_keys: local.map(|_| Store::new(config.local_keys.max_keys)),
                local_params: local,
                local: Cell::new(local_unit),
                origin: TokioClock.now(),
                counters: ShardedCounter::new(),
                breaker: Breaker::default(),
                extractor,
                weigh,
            }),
            _mode: PhantomData,
        })
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
        let p = shared.params;
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
            shared.on_failure();
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::{Child, Command, Stdio};

    /// A `redis-server` on a free port of 127.0.0.1, killed on drop.
    struct Server(Child, u16);

    impl Server {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH (the redis feature's tests need it)");
            let server = Server(child, port);
            for _ in 0..1000 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("redis-server did not listen on {port}");
        }

        async fn connection(&self) -> redis::aio::MultiplexedConnection {
            redis::Client::open(format!("redis://127.0.0.1:{}", self.1))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The script of earlier versions (TAT as a double of microseconds since 1970), with
    /// `now_us` as ARGV[4] and keys living a minute: kept here only to show the drift the
    /// integer script removes.
    const FLOAT_US_LUA_AT: &str = r#"
local now = tonumber(ARGV[4])
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
local ttl = math.ceil((new_tat - now) / 1000) + 60000
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', ttl)
return {1, 0}
"#;

    /// A 2026 instant in microseconds since 1970.
    const NOW_US: u64 = 1_771_234_567_890_123;

    async fn run(
        con: &mut redis::aio::MultiplexedConnection,
        script: &str,
        key: &str,
        (unit, tolerance, cost): (u64, u64, u64),
        now_us: u64,
    ) -> (i64, i64) {
        redis::Script::new(script)
            .key(key)
            .arg(unit)
            .arg(tolerance)
            .arg(cost)
            .arg(now_us)
            .invoke_async(con)
            .await
            .unwrap()
    }

    /// Issue 14: with a unit of 100 ns (ten million per second) and a burst of 10, the float
    /// script loses every 0.1 µs cost (a double near 1.8e15 holds quarter microseconds) and
    /// admits without limit; the integer script admits exactly the burst, rejects the next
    /// with a wait of exactly one unit, and admits ten more one microsecond later.
    #[tokio::test]
    async fn sub_microsecond_costs_are_charged_exactly() {
        let server = Server::start();
        let mut con = server.connection().await;
        let q = (100, 1_000, 100);
        let mut float_admitted = 0;
        for _ in 0..100 {
            if run(&mut con, FLOAT_US_LUA_AT, "float", q, NOW_US).await.0 == 1 {
                float_admitted += 1;
            }
        }
        assert_eq!(float_admitted, 100, "the drift the float script had");

        let mut admitted = 0;
        for _ in 0..10 {
            admitted += run(&mut con, GCRA_LUA_AT, "int", q, NOW_US).await.0;
        }
        assert_eq!(admitted, 10);
        assert_eq!(run(&mut con, GCRA_LUA_AT, "int", q, NOW_US).await, (0, 100));
        let mut admitted = 0;
        for _ in 0..11 {
            admitted += run(&mut con, GCRA_LUA_AT, "int", q, NOW_US + 1).await.0;
        }
        assert_eq!(admitted, 10, "one microsecond refills exactly ten units");
        // Costs that are not whole microseconds add up exactly too: nine of 1.1 µs fill a
        // 10 µs burst to 9.9 µs, and the tenth is 1 µs over. The float script charged each
        // 1.1 µs as 1 µs (the nearest quarter) and admitted the tenth.
        let q = (1_100, 10_000, 1_100);
        for _ in 0..9 {
            assert_eq!(run(&mut con, GCRA_LUA_AT, "w", q, NOW_US).await, (1, 0));
            assert_eq!(
                run(&mut con, FLOAT_US_LUA_AT, "fw", q, NOW_US).await,
                (1, 0)
            );
        }
        assert_eq!(run(&mut con, GCRA_LUA_AT, "w", q, NOW_US).await, (0, 1_000));
        assert_eq!(
            run(&mut con, FLOAT_US_LUA_AT, "fw", q, NOW_US).await,
            (1, 0)
        );
    }

    /// A TAT written by an earlier version (`%.3f` microseconds) is read to the nanosecond,
    /// so a fleet mixing versions shares one budget; an unreadable value counts as a full
    /// budget instead of breaking the key.
    #[tokio::test]
    async fn keys_in_the_earlier_format_are_read() {
        let server = Server::start();
        let mut con = server.connection().await;
        let old = format!("{}.250", NOW_US + 5);
        let _: () = redis::cmd("SET")
            .arg("old")
            .arg(&old)
            .query_async(&mut con)
            .await
            .unwrap();
        // Debt 5,250 ns; tolerance 6,000; cost 1,000: over by 250 ns.
        let q = (1_000, 6_000, 1_000);
        assert_eq!(run(&mut con, GCRA_LUA_AT, "old", q, NOW_US).await, (0, 250));
        let _: () = redis::cmd("SET")
            .arg("junk")
            .arg("not a time")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(run(&mut con, GCRA_LUA_AT, "junk", q, NOW_US).await, (1, 0));
        let v: String = redis::cmd("GET")
            .arg("junk")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(v, format!("{}.000", NOW_US + 1));
    }

    fn value() -> impl Strategy<Value = redis::Value> {
        let leaf = prop_oneof![
            Just(redis::Value::Nil),
            Just(redis::Value::Okay),
            any::<i64>().prop_map(redis::Value::Int),
            prop_oneof![Just(0i64), Just(1), Just(-1)].prop_map(redis::Value::Int),
            prop::collection::vec(any::<u8>(), 0..16).prop_map(redis::Value::BulkString),
            ".{0,12}".prop_map(redis::Value::SimpleString),
            any::<f64>().prop_map(redis::Value::Double),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop::collection::vec(inner, 0..4).prop_map(redis::Value::Array)
        })
    }

    proptest! {
        /// Whatever Redis (or something pretending to be Redis) answers, reading the reply
        /// never panics, and a rejection's wait stays within one burst.
        #[test]
        fn any_reply_is_read_without_panic(v in value(), tolerance in 0u64..u64::MAX) {
            match read_reply(&v, tolerance) {
                Some(Reply::Reject(wait)) => prop_assert!(wait >= 1 && wait <= tolerance.max(1)),
                Some(Reply::Admit) | None => {}
            }
        }

        #[test]
        fn the_scripts_replies_are_read(wait in 0i64..i64::MAX, tolerance in 1u64..1 << 62) {
            let admit = redis::Value::Array(vec![redis::Value::Int(1), redis::Value::Int(wait)]);
            prop_assert_eq!(read_reply(&admit, tolerance), Some(Reply::Admit));
            let reject = redis::Value::Array(vec![redis::Value::Int(0), redis::Value::Int(wait)]);
            let expect = u64::try_from(wait).unwrap().clamp(1, tolerance);
            prop_assert_eq!(read_reply(&reject, tolerance), Some(Reply::Reject(expect)));
        }
    }
}
