//! One canary rollout across a fleet of instances, through Redis (feature `redis`).
//!
//! Each instance of a service runs its own [`Canary`](crate::Canary) router. Alone, N
//! instances would be N judges each seeing 1/N of the traffic, free to disagree. A
//! [`FleetCanary`] on every instance makes them one rollout:
//!
//! * **The state lives in Redis.** The rollout's [`CanaryState`] (phase, step, weight) is one
//!   key; every instance reads it every [`poll`](FleetCanaryConfig::poll) (≤ 1 s) and sets its
//!   router's weight from it, so a rollback reaches every router within one poll.
//! * **The statistics are summed in Redis.** Every [`publish`](FleetCanaryConfig::publish)
//!   interval each instance adds its per-arm increments (counts, the arm's latency histogram,
//!   each key group's failures and latencies) to one hash, by a script that applies an
//!   interval once: a retry after a lost reply adds nothing (the instance keeps the unsent
//!   interval and resends it under the same number). Memory is bounded: the sums, and one
//!   field per instance naming the last interval applied.
//! * **One controller at a time.** Every instance is a candidate; the one holding a Redis lease
//!   ([`lease`](FleetCanaryConfig::lease), kept by its holder every third of it, asked for by
//!   the others every poll) is the leader:
//!   it reads the fleet's sums, runs the [`Judge`] and the [`CanaryMachine`], and writes the
//!   state. Taking the lease increments a fencing token; the state is written by a script that
//!   refuses a token other than the latest, so a deposed leader (paused, partitioned, slow)
//!   cannot overwrite its successor. A leader killed with SIGKILL stops renewing; within the
//!   lease time another instance takes over and resumes the machine at the step stored in
//!   Redis (its bake time and the judge's evidence start over, as for a restarted
//!   [`CanaryController`](crate::CanaryController)).
//! * **Redis unreachable.** Routers keep the last weight they read for
//!   [`stale_after`](FleetCanaryConfig::stale_after), then fall back to stable (weight 0) until
//!   Redis answers again; a leader that cannot renew its lease stops acting when its lease
//!   would have ended. Every Redis call is bounded by [`timeout`](FleetCanaryConfig::timeout).
//! * **Manual gates for the fleet.** [`FleetGates`] (from any instance, an operator tool or an
//!   admin endpoint) writes promote / abort / pause / resume to Redis with who and why; the
//!   leader applies it exactly once through its fenced write ([`apply`]: an abort wins over
//!   whatever was issued with it), and every router follows within a poll.
//!
//! It is all visible in [`FleetCanaryTask::snapshot`] and in `tracing` events (weight changes,
//! terms, refused writes, fallbacks, commands). The keys of a rollout share one hash tag
//! (`<prefix>:{<name>}:...`), so it runs on a Redis Cluster too (tested on three masters).
//!
//! ```no_run
//! use degrade_canary::Canary;
//! use degrade_canary::fleet::{FleetCanary, FleetCanaryConfig};
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
//! let mut cfg = FleetCanaryConfig::default();
//! cfg.url = "redis://10.0.0.5:6379".into();
//! cfg.name = "checkout-v2".into();
//! cfg.instance = "checkout-7f9c".into();
//! let task = FleetCanary::new(cfg, router.handle())?.spawn();
//! // ... serve through `router`; its weight follows the fleet's rollout.
//! println!("{:?}", task.snapshot());
//! # Ok(()) }
//! ```

mod command;
mod script;
mod wire;

pub use command::{
    CommandOutcome, FleetAuditEntry, FleetCommand, FleetCommandError, MAX_PENDING, apply,
    gate_name, parse_gate,
};

use crate::controller::Gate;
use crate::judge::{Judge, Verdict};
use crate::machine::{CanaryConfig, CanaryEvent, CanaryMachine, CanaryPhase, CanaryState};
use crate::service::CanaryHandle;
use crate::stats::CanarySnapshot;
use degrade_core::fleet::{DEFAULT_REDIS_URL, RedisConn, RedisTarget};
use degrade_core::{BoxError, Clock, ConfigError, TokioClock};
use script::Keys;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The largest state value read: a state is a few dozen bytes.
const MAX_STATE_BYTES: usize = 4096;

/// Configuration of a [`FleetCanary`]: the same `url` / `cluster` / `timeout` vocabulary as the
/// fleet rate limiter and the incident switch, the rollout (`canary`), and the fleet's timing.
///
/// ```
/// use degrade_canary::fleet::FleetCanaryConfig;
/// let cfg: FleetCanaryConfig = serde_json::from_str(r#"{
///     "url": "redis://10.0.0.5:6379", "name": "checkout-v2", "instance": "host-1",
///     "lease": "5s", "stale_after": "20s"
/// }"#).unwrap();
/// assert!(cfg.validate().is_ok());
/// assert_eq!(FleetCanaryConfig::default().validate().unwrap_err().field(), "instance");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct FleetCanaryConfig {
    /// The Redis URL (default `redis://127.0.0.1:6379`).
    pub url: String,
    /// The nodes of a Redis Cluster; empty (the default) for a single Redis at `url`.
    pub cluster: Vec<String>,
    /// Prefix of the keys (default `degrade:canary`).
    pub prefix: String,
    /// The rollout: instances with the same prefix and name take part in one rollout
    /// (default `default`). Use a new name for each release.
    pub name: String,
    /// This instance, unique in the fleet (no default: two instances under one name would
    /// share the record of which statistics were applied).
    pub instance: String,
    /// The rollout's steps, analysis interval and judge.
    pub canary: CanaryConfig,
    /// The longest a call to Redis may take (default 200 ms).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often an instance reads the rollout's state (default 250 ms; at most 1 s, so every
    /// router follows a change within a second).
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// The leader's lease (default 5 s; at least 3 × (poll + timeout), so its holder renews
    /// it in time, at most 10 min): a killed leader is replaced within it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often an instance adds its statistics to the fleet's sums (default 1 s; at most
    /// the analysis interval).
    #[serde(with = "humantime_serde")]
    pub publish: Duration,
    /// How long a router keeps the last weight it read while Redis cannot be reached before
    /// it sends everything to stable (default 30 s).
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// Entries kept in the rollout's audit list of commands (who, when, why, what the leader
    /// did with it; default 1,000, at least 1, at most 100,000).
    pub audit_len: u32,
}

impl Default for FleetCanaryConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_REDIS_URL.to_owned(),
            cluster: Vec::new(),
            prefix: "degrade:canary".to_owned(),
            name: "default".to_owned(),
            instance: String::new(),
            canary: CanaryConfig::default(),
            timeout: Duration::from_millis(200),
            poll: Duration::from_millis(250),
            lease: Duration::from_secs(5),
            publish: Duration::from_secs(1),
            stale_after: Duration::from_secs(30),
            audit_len: 1_000,
        }
    }
}

fn word(field: &'static str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty()
        || v.len() > 128
        || v.contains(|c: char| c.is_whitespace() || c.is_control() || "{}:".contains(c))
    {
        return Err(ConfigError::new(
            field,
            "must be 1 to 128 bytes, without spaces, braces or colons",
        ));
    }
    Ok(())
}

impl FleetCanaryConfig {
    /// Checks every rule; the error names the field.
    ///
    /// ```
    /// # use degrade_canary::fleet::FleetCanaryConfig;
    /// let mut cfg = FleetCanaryConfig::default();
    /// cfg.instance = "a".into();
    /// cfg.poll = std::time::Duration::from_secs(2);
    /// assert_eq!(cfg.validate().unwrap_err().field(), "poll");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.checked().map(|_| ())
    }

    fn checked(&self) -> Result<RedisTarget, ConfigError> {
        let target = self.checked_target()?;
        word("instance", &self.instance)?;
        self.canary.validate().map_err(|e| e.within("canary"))?;
        if self.poll.is_zero() || self.poll > Duration::from_secs(1) {
            return Err(ConfigError::new(
                "poll",
                "must be in (0, 1s]: every router follows a change within one poll",
            ));
        }
        if self.lease < 3 * (self.poll + self.timeout) || self.lease > Duration::from_secs(600) {
            return Err(ConfigError::new(
                "lease",
                "must be at least 3 × (poll + timeout) and at most 10 min",
            ));
        }
        if self.publish.is_zero() || self.publish > self.canary.analysis_interval {
            return Err(ConfigError::new(
                "publish",
                "must be in (0, canary.analysis_interval]",
            ));
        }
        if self.stale_after.is_zero() {
            return Err(ConfigError::new("stale_after", "must be positive"));
        }
        Ok(target)
    }

    /// What an operator tool needs ([`FleetGates::new`]): where Redis is, the rollout's keys,
    /// the timeout and the audit cap.
    fn checked_target(&self) -> Result<RedisTarget, ConfigError> {
        let target = RedisTarget::parse(&self.url, &self.cluster)?;
        word("name", &self.name)?;
        if self
            .prefix
            .contains(|c: char| c.is_whitespace() || "{}".contains(c))
        {
            return Err(ConfigError::new(
                "prefix",
                "must not contain spaces or braces",
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err(ConfigError::new("timeout", "must be in (0, 60s]"));
        }
        if !(1..=100_000).contains(&self.audit_len) {
            return Err(ConfigError::new("audit_len", "must be in [1, 100000]"));
        }
        Ok(target)
    }
}

/// The rollout's state as Redis holds it: the state and the token of the leader that wrote
/// it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Stored {
    state: CanaryState,
    token: u64,
}

/// What one instance of a fleet rollout has seen and done ([`FleetCanaryTask::snapshot`]).
///
/// ```
/// use degrade_canary::fleet::FleetCanarySnapshot;
/// let s = FleetCanarySnapshot::default();
/// assert!(!s.leader && s.state.is_none());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetCanarySnapshot {
    /// The rollout's state as last read from Redis (or written, by the leader).
    pub state: Option<CanaryState>,
    /// The weight this instance's router has now (basis points).
    pub weight_bp: u32,
    /// Whether this instance leads the rollout now.
    pub leader: bool,
    /// The fencing token of this instance's latest term as leader (0: never led).
    pub token: u64,
    /// Terms this instance has begun as leader.
    pub terms: u64,
    /// Analyses this instance has run as leader.
    pub analyses: u64,
    /// The verdict of its latest analysis and why, in a few words.
    pub last_verdict: Option<(Verdict, &'static str)>,
    /// State writes refused because another instance had taken the lease since.
    pub refused_writes: u64,
    /// Reads of the state that got an answer.
    pub polls: u64,
    /// Reads of the state that failed or timed out.
    pub poll_failures: u64,
    /// Times the router fell back to stable after Redis was unreachable for `stale_after`.
    pub fallbacks: u64,
    /// The router is on stable because Redis is unreachable.
    pub falling_back: bool,
    /// Intervals of statistics added to the fleet's sums.
    pub published: u64,
    /// Of those, retries Redis had already applied (nothing added twice).
    pub duplicates: u64,
    /// Attempts to add statistics that failed or timed out (the interval is resent).
    pub publish_failures: u64,
    /// Commands (promote, abort, pause, resume) this instance took from Redis as leader,
    /// whatever their [`CommandOutcome`].
    pub commands: u64,
    /// Of those, the ones that changed the rollout ([`CommandOutcome::Applied`]).
    pub commands_applied: u64,
}

/// One instance's part in a fleet rollout; see the [module documentation](self).
///
/// ```
/// use degrade_canary::Canary;
/// use degrade_canary::fleet::{FleetCanary, FleetCanaryConfig};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
/// let mut cfg = FleetCanaryConfig::default();
/// cfg.instance = "my host".into();
/// assert_eq!(FleetCanary::new(cfg, router.handle()).unwrap_err().field(), "instance");
/// # }
/// ```
#[derive(Clone)]
pub struct FleetCanary<Clk = TokioClock> {
    cfg: Arc<FleetCanaryConfig>,
    conn: RedisConn,
    keys: Arc<Keys>,
    handle: CanaryHandle,
    clock: Clk,
    /// This process's run: a random word, so a restarted instance's intervals are never taken
    /// for retries of its previous life's, and its lease is not its predecessor's.
    run: u64,
}

impl<Clk> fmt::Debug for FleetCanary<Clk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetCanary")
            .field("state_key", &self.keys.state)
            .field("instance", &self.cfg.instance)
            .finish_non_exhaustive()
    }
}

impl FleetCanary {
    /// Validates the configuration and connects lazily (building succeeds while Redis is
    /// down). Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field.
    ///
    /// ```
    /// # use degrade_canary::{Canary, fleet::{FleetCanary, FleetCanaryConfig}};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// let mut cfg = FleetCanaryConfig::default();
    /// cfg.instance = "host-1".into();
    /// cfg.canary.steps.clear();
    /// assert!(FleetCanary::new(cfg, router.handle()).unwrap_err().field().starts_with("canary."));
    /// # }
    /// ```
    pub fn new(cfg: FleetCanaryConfig, handle: CanaryHandle) -> Result<Self, ConfigError> {
        let target = cfg.checked()?;
        let conn = RedisConn::open(target, cfg.timeout)?;
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Ok(Self {
            keys: Arc::new(Keys::new(&cfg.prefix, &cfg.name)),
            cfg: Arc::new(cfg),
            conn,
            handle,
            clock: TokioClock,
            run: h.finish(),
        })
    }
}

impl<Clk: Clock> FleetCanary<Clk> {
    /// Reads time (bake times, the fallback's and the lease's deadlines) from `clock`.
    ///
    /// ```
    /// # use degrade_canary::{Canary, fleet::{FleetCanary, FleetCanaryConfig}};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # let mut cfg = FleetCanaryConfig::default(); cfg.instance = "a".into();
    /// let clock = degrade_core::ManualClock::new();
    /// let fleet = FleetCanary::new(cfg, router.handle()).unwrap().clock(clock);
    /// # drop(fleet);
    /// # }
    /// ```
    pub fn clock<C2: Clock>(self, clock: C2) -> FleetCanary<C2> {
        FleetCanary {
            cfg: self.cfg,
            conn: self.conn,
            keys: self.keys,
            handle: self.handle,
            clock,
            run: self.run,
        }
    }

    async fn call(&self, cmd: &redis::Cmd) -> Result<redis::Value, BoxError> {
        call(&self.conn, self.cfg.timeout, cmd).await
    }

    async fn int(&self, cmd: &redis::Cmd) -> Result<i64, BoxError> {
        match self.call(cmd).await? {
            redis::Value::Int(n) => Ok(n),
            other => Err(format!("fleet canary: unexpected reply {other:?}").into()),
        }
    }

    /// An operator's handle on this rollout's gates, sharing this instance's connection:
    /// promote, abort, pause or resume the whole fleet from here.
    ///
    /// ```
    /// # use degrade_canary::{Canary, fleet::{FleetCanary, FleetCanaryConfig, FleetCommandError}};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// let mut cfg = FleetCanaryConfig::default();
    /// cfg.instance = "a".into();
    /// cfg.url = "redis://127.0.0.1:1".into(); // nothing listens: a typed error, in time
    /// let gates = FleetCanary::new(cfg, router.handle()).unwrap().gates();
    /// let err = gates.abort("alice", "errors on v2").await.unwrap_err();
    /// assert!(matches!(err, FleetCommandError::Redis(_)));
    /// # }
    /// ```
    pub fn gates(&self) -> FleetGates {
        FleetGates {
            conn: self.conn.clone(),
            keys: Arc::clone(&self.keys),
            timeout: self.cfg.timeout,
            audit_len: self.cfg.audit_len,
        }
    }

    /// The fleet's summed statistics, as the leader's judge reads them (both arms, every key
    /// group; `weight_bp` is `None`).
    ///
    /// # Errors
    ///
    /// Redis's error or the timeout.
    ///
    /// ```
    /// # use degrade_canary::{Canary, fleet::{FleetCanary, FleetCanaryConfig}};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// let mut cfg = FleetCanaryConfig::default();
    /// cfg.instance = "a".into();
    /// cfg.url = "redis://127.0.0.1:1".into(); // nothing listens: an error, in time
    /// let fleet = FleetCanary::new(cfg, router.handle()).unwrap();
    /// assert!(fleet.fleet_stats().await.is_err());
    /// # }
    /// ```
    pub async fn fleet_stats(&self) -> Result<CanarySnapshot, BoxError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&self.keys.stats);
        let reply = self.call(&cmd).await?;
        let mut snap = wire::empty();
        let items: &[redis::Value] = match &reply {
            redis::Value::Array(items) => items,
            redis::Value::Map(pairs) => {
                for (k, v) in pairs {
                    add_field(&mut snap, k, v);
                }
                return Ok(snap);
            }
            other => return Err(format!("fleet canary: unexpected reply {other:?}").into()),
        };
        for pair in items.chunks_exact(2) {
            add_field(&mut snap, &pair[0], &pair[1]);
        }
        Ok(snap)
    }

    /// The rollout's state in Redis, if a leader has written one.
    ///
    /// # Errors
    ///
    /// Redis's error, the timeout, or a value that is not a state.
    ///
    /// ```
    /// # use degrade_canary::{Canary, fleet::{FleetCanary, FleetCanaryConfig}};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # let mut cfg = FleetCanaryConfig::default(); cfg.instance = "a".into();
    /// cfg.url = "redis://127.0.0.1:1".into();
    /// let fleet = FleetCanary::new(cfg, router.handle()).unwrap();
    /// assert!(fleet.state().await.is_err());
    /// # }
    /// ```
    pub async fn state(&self) -> Result<Option<CanaryState>, BoxError> {
        Ok(self.stored().await?.map(|s| s.state))
    }

    async fn stored(&self) -> Result<Option<Stored>, BoxError> {
        stored(&self.conn, self.cfg.timeout, &self.keys).await
    }

    /// Takes or keeps the lease: the token of this term and whether the term is new, or
    /// `None` if another holds it.
    async fn lease(&self) -> Result<Option<(u64, bool)>, BoxError> {
        let ms = u64::try_from(self.cfg.lease.as_millis()).unwrap_or(u64::MAX);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script::LEASE_LUA)
            .arg(2)
            .arg(&self.keys.lease)
            .arg(&self.keys.token)
            .arg(self.holder())
            .arg(ms);
        let t = self.int(&cmd).await?;
        Ok((t != 0).then(|| (t.unsigned_abs(), t < 0)))
    }

    fn holder(&self) -> String {
        format!("{}:{:016x}", self.cfg.instance, self.run)
    }

    /// Writes `state` under `token`: `Ok(false)` when refused (deposed).
    #[cfg(test)]
    async fn write(&self, state: CanaryState, token: u64) -> Result<bool, BoxError> {
        Ok(self.write_with(state, token, None).await? == Written::Yes)
    }

    /// Writes `state` under `token` and, with `applied`, removes the `n` pending commands it
    /// read and records the audit tails, all or nothing.
    async fn write_with(
        &self,
        state: CanaryState,
        token: u64,
        applied: Option<(usize, &[String])>,
    ) -> Result<Written, BoxError> {
        let value = serde_json::to_string(&Stored { state, token })?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script::WRITE_LUA)
            .arg(4)
            .arg(&self.keys.token)
            .arg(&self.keys.state)
            .arg(&self.keys.commands)
            .arg(&self.keys.audit)
            .arg(token)
            .arg(value);
        match applied {
            Some((n, tails)) => {
                cmd.arg(n).arg(MAX_PENDING).arg(self.cfg.audit_len);
                for t in tails {
                    cmd.arg(t);
                }
            }
            None => {
                cmd.arg(-1).arg(MAX_PENDING).arg(self.cfg.audit_len);
            }
        }
        Ok(match self.int(&cmd).await? {
            1 => Written::Yes,
            2 => Written::Retry,
            _ => Written::Refused,
        })
    }

    /// The leader's part for commands: reads the pending list, applies it to a copy of the
    /// machine and writes the result with the list's removal and the audit entries. The
    /// machine takes the new state only when the write went through. `None` when there was
    /// nothing to do or Redis did not answer (tried again next poll).
    async fn take_commands(&self, t: &mut Term) -> Option<(Written, Vec<CommandOutcome>)> {
        let (n, commands) = match self.gates().read_pending().await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "fleet canary: cannot read the pending commands");
                return None;
            }
        };
        if n == 0 {
            return None;
        }
        if commands.len() < n {
            tracing::warn!(
                unreadable = n - commands.len(),
                "fleet canary: pending entries that are not commands are dropped"
            );
        }
        let mut m = t.machine.clone();
        let outcomes = apply(&mut m, &commands, self.clock.now());
        let tails: Vec<String> = commands
            .iter()
            .zip(&outcomes)
            .map(|(c, o)| command::audit_tail(c, *o, t.token))
            .collect();
        let state = m.state();
        match self.write_with(state, t.token, Some((n, &tails))).await {
            Ok(Written::Yes) => {
                t.machine = m;
                t.dirty = false;
                for (c, o) in commands.iter().zip(&outcomes) {
                    tracing::warn!(
                        gate = gate_name(c.gate),
                        id = c.id,
                        who = %c.who,
                        why = %c.why,
                        outcome = o.as_str(),
                        token = t.token,
                        step = state.step,
                        weight_bp = state.weight_bp,
                        phase = ?state.phase,
                        "fleet canary: command"
                    );
                }
                Some((Written::Yes, outcomes))
            }
            Ok(Written::Retry) => {
                tracing::debug!("fleet canary: a command arrived while applying; again next poll");
                Some((Written::Retry, Vec::new()))
            }
            Ok(w @ (Written::Refused | Written::Unknown)) => Some((w, Vec::new())),
            Err(e) => {
                // Written or not? Redis may have applied it and the reply been lost: the
                // machine here must not go on from the state before.
                tracing::warn!(error = %e, "fleet canary: unknown whether the commands were written; the term ends and starts again from the state in Redis");
                Some((Written::Unknown, Vec::new()))
            }
        }
    }

    /// Adds one interval's increments: `Ok(true)` if added, `Ok(false)` if already there.
    async fn add(&self, seq: u64, fields: &[(String, u64)]) -> Result<bool, BoxError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script::ADD_LUA)
            .arg(2)
            .arg(&self.keys.stats)
            .arg(&self.keys.applied)
            .arg(&self.cfg.instance)
            .arg(format!("{:x}", self.run))
            .arg(seq);
        for (f, n) in fields {
            cmd.arg(f).arg(*n);
        }
        Ok(self.int(&cmd).await? == 1)
    }

    /// Starts this instance's part: follow the state, publish statistics, stand for the lease
    /// and lead when it holds it. The task ends when the returned handle is dropped.
    ///
    /// ```no_run
    /// # use degrade_canary::{Canary, fleet::{FleetCanary, FleetCanaryConfig}};
    /// # #[tokio::main] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # let mut cfg = FleetCanaryConfig::default(); cfg.instance = "a".into();
    /// let task = FleetCanary::new(cfg, router.handle()).unwrap().spawn();
    /// tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    /// println!("leader: {}", task.snapshot().leader);
    /// # }
    /// ```
    pub fn spawn(&self) -> FleetCanaryTask {
        let shared = Arc::new(Mutex::new(FleetCanarySnapshot {
            weight_bp: self.handle.weight().get(),
            ..FleetCanarySnapshot::default()
        }));
        let task = tokio::spawn(run(self.clone(), Arc::clone(&shared)));
        FleetCanaryTask { shared, task }
    }
}

async fn call(
    conn: &RedisConn,
    timeout: Duration,
    cmd: &redis::Cmd,
) -> Result<redis::Value, BoxError> {
    match tokio::time::timeout(timeout, conn.query(cmd)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err("fleet canary: Redis did not answer within the timeout".into()),
    }
}

async fn stored(
    conn: &RedisConn,
    timeout: Duration,
    keys: &Keys,
) -> Result<Option<Stored>, BoxError> {
    let mut cmd = redis::cmd("GET");
    cmd.arg(&keys.state);
    match call(conn, timeout, &cmd).await? {
        redis::Value::Nil => Ok(None),
        redis::Value::BulkString(b) if b.len() <= MAX_STATE_BYTES => {
            let s: Stored = serde_json::from_slice(&b)
                .map_err(|e| format!("fleet canary: unreadable state: {e}"))?;
            if s.state.weight_bp > crate::FULL_BP {
                return Err("fleet canary: state weight above 10000".into());
            }
            Ok(Some(s))
        }
        other => Err(format!("fleet canary: unexpected state reply {other:?}").into()),
    }
}

/// The outcome of a fenced state write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Yes,
    /// A newer leader holds the lease.
    Refused,
    /// A command arrived after the pending list was read.
    Retry,
    /// No answer: written or not, unknown.
    Unknown,
}

/// Promote, abort, pause or resume a fleet rollout from any instance
/// ([`FleetCanary::gates`]) or an operator tool ([`FleetGates::new`]). A command goes to
/// Redis with who issued it and why; the rollout's leader applies it exactly once (see
/// [`apply`] for a batch), within a poll while a leader lives, else as soon as the next one
/// takes the lease; every router follows the resulting state within a poll. Cheap to clone.
///
/// ```no_run
/// use degrade_canary::fleet::{FleetCanaryConfig, FleetGates};
/// # #[tokio::main] async fn main() -> Result<(), degrade_canary::BoxError> {
/// let mut cfg = FleetCanaryConfig::default();
/// cfg.url = "redis://10.0.0.5:6379".into();
/// cfg.name = "checkout-v2".into(); // the rollout, as its instances name it
/// let gates = FleetGates::new(&cfg)?;
/// let id = gates.abort("alice", "5xx on checkout in eu-west").await?;
/// println!("command {id} issued; pending: {:?}", gates.pending().await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FleetGates {
    conn: RedisConn,
    keys: Arc<Keys>,
    timeout: Duration,
    audit_len: u32,
}

impl fmt::Debug for FleetGates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetGates")
            .field("commands_key", &self.keys.commands)
            .finish_non_exhaustive()
    }
}

impl FleetGates {
    /// Connects (lazily) to the rollout `cfg` names: `url` / `cluster`, `prefix`, `name`,
    /// `timeout` and `audit_len` are used; `instance` and the rollout's timing are not (an
    /// operator tool is no instance). Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field.
    ///
    /// ```
    /// # use degrade_canary::fleet::{FleetCanaryConfig, FleetGates};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mut cfg = FleetCanaryConfig::default();
    /// assert!(FleetGates::new(&cfg).is_ok()); // no instance needed
    /// cfg.name = "v2 of checkout".into();
    /// assert_eq!(FleetGates::new(&cfg).unwrap_err().field(), "name");
    /// # }
    /// ```
    pub fn new(cfg: &FleetCanaryConfig) -> Result<Self, ConfigError> {
        let target = cfg.checked_target()?;
        Ok(Self {
            conn: RedisConn::open(target, cfg.timeout)?,
            keys: Arc::new(Keys::new(&cfg.prefix, &cfg.name)),
            timeout: cfg.timeout,
            audit_len: cfg.audit_len,
        })
    }

    /// Issues `gate`, recorded with `who` and `why` (cut to 128 and 1,280 bytes, control
    /// characters as spaces) in the audit list and in tracing. Returns the command's number.
    /// A command issued while another waits is applied with it (an abort wins, see [`apply`]).
    ///
    /// # Errors
    ///
    /// [`FleetCommandError::Finished`] when the rollout has ended, [`FleetCommandError::Backlog`]
    /// when [`MAX_PENDING`] commands wait already, [`FleetCommandError::Redis`] when Redis does
    /// not answer in time.
    ///
    /// ```no_run
    /// # use degrade_canary::{Gate, fleet::{FleetCanaryConfig, FleetGates, FleetCommandError}};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_canary::BoxError> {
    /// # let gates = FleetGates::new(&FleetCanaryConfig::default())?;
    /// match gates.send(Gate::Promote, "alice", "business sign-off").await {
    ///     Ok(id) => println!("command {id} waits for the leader"),
    ///     Err(FleetCommandError::Finished(phase)) => println!("too late: {phase:?}"),
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, gate: Gate, who: &str, why: &str) -> Result<u64, FleetCommandError> {
        let c = FleetCommand::new(0, gate, who, why);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(command::ISSUE_LUA)
            .arg(4)
            .arg(&self.keys.state)
            .arg(&self.keys.commands)
            .arg(&self.keys.audit)
            .arg(&self.keys.seq)
            .arg(gate_name(gate))
            .arg(&c.who)
            .arg(&c.why)
            .arg(MAX_PENDING)
            .arg(self.audit_len);
        let reply = call(&self.conn, self.timeout, &cmd)
            .await
            .map_err(FleetCommandError::Redis)?;
        let redis::Value::Array(items) = &reply else {
            return Err(FleetCommandError::Redis(
                format!("unexpected reply {reply:?}").into(),
            ));
        };
        match items.as_slice() {
            [redis::Value::Int(-1), phase] => {
                let phase = match phase {
                    redis::Value::BulkString(b) if b.as_slice() == b"promoted" => {
                        CanaryPhase::Promoted
                    }
                    _ => CanaryPhase::RolledBack,
                };
                Err(FleetCommandError::Finished(phase))
            }
            [redis::Value::Int(-2), _] => Err(FleetCommandError::Backlog),
            [redis::Value::Int(id), _] if *id > 0 => {
                tracing::warn!(
                    rollout = %self.keys.state,
                    gate = gate_name(gate),
                    id,
                    who = %c.who,
                    why = %c.why,
                    "fleet canary: command issued"
                );
                Ok(id.unsigned_abs())
            }
            _ => Err(FleetCommandError::Redis(
                format!("unexpected reply {reply:?}").into(),
            )),
        }
    }

    /// Promote the fleet's candidate now ([`send`](Self::send) of [`Gate::Promote`]).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    ///
    /// ```no_run
    /// # use degrade_canary::fleet::{FleetCanaryConfig, FleetGates};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_canary::BoxError> {
    /// # let gates = FleetGates::new(&FleetCanaryConfig::default())?;
    /// gates.promote("alice", "sign-off").await?;
    /// # Ok(()) }
    /// ```
    pub async fn promote(&self, who: &str, why: &str) -> Result<u64, FleetCommandError> {
        self.send(Gate::Promote, who, why).await
    }

    /// Roll the fleet back now ([`Gate::Abort`]); wins over a promote issued with it.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    ///
    /// ```no_run
    /// # use degrade_canary::fleet::{FleetCanaryConfig, FleetGates};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_canary::BoxError> {
    /// # let gates = FleetGates::new(&FleetCanaryConfig::default())?;
    /// gates.abort("alice", "5xx").await?;
    /// # Ok(()) }
    /// ```
    pub async fn abort(&self, who: &str, why: &str) -> Result<u64, FleetCommandError> {
        self.send(Gate::Abort, who, why).await
    }

    /// Hold the current step ([`Gate::Pause`]); a Fail still rolls back.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    ///
    /// ```no_run
    /// # use degrade_canary::fleet::{FleetCanaryConfig, FleetGates};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_canary::BoxError> {
    /// # let gates = FleetGates::new(&FleetCanaryConfig::default())?;
    /// gates.pause("alice", "waiting for the batch job").await?;
    /// # Ok(()) }
    /// ```
    pub async fn pause(&self, who: &str, why: &str) -> Result<u64, FleetCommandError> {
        self.send(Gate::Pause, who, why).await
    }

    /// Continue after a pause ([`Gate::Resume`]; the step's bake time starts over).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    ///
    /// ```no_run
    /// # use degrade_canary::fleet::{FleetCanaryConfig, FleetGates};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_canary::BoxError> {
    /// # let gates = FleetGates::new(&FleetCanaryConfig::default())?;
    /// gates.resume("alice", "batch job done").await?;
    /// # Ok(()) }
    /// ```
    pub async fn resume(&self, who: &str, why: &str) -> Result<u64, FleetCommandError> {
        self.send(Gate::Resume, who, why).await
    }

    /// The rollout's state in Redis, if a leader has written one.
    ///
    /// # Errors
    ///
    /// Redis's error, the timeout, or a value that is not a state.
    ///
    /// ```no_run
    /// # use degrade_canary::fleet::{FleetCanaryConfig, FleetGates};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_canary::BoxError> {
    /// # let gates = FleetGates::new(&FleetCanaryConfig::default())?;
    /// println!("{:?}", gates.state().await?);
    /// # Ok(()) }
    /// ```
    pub async fn state(&self) -> Result<Option<CanaryState>, BoxError> {
        Ok(stored(&self.conn, self.timeout, &self.keys)
            .await?
            .map(|s| s.state))
    }

    /// The commands waiting for the leader, oldest first.
    ///
    /// # Errors
    ///
    /// Redis's error or the timeout.
    ///
    /// ```no_run
    /// # use degrade_canary::fleet::{FleetCanaryConfig, FleetGates};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_canary::BoxError> {
    /// # let gates = FleetGates::new(&FleetCanaryConfig::default())?;
    /// for c in gates.pending().await? {
    ///     println!("#{} {:?} by {}: {}", c.id, c.gate, c.who, c.why);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn pending(&self) -> Result<Vec<FleetCommand>, BoxError> {
        Ok(self.read_pending().await?.1)
    }

    /// The entries read (at most [`MAX_PENDING`]) and the commands among them.
    async fn read_pending(&self) -> Result<(usize, Vec<FleetCommand>), BoxError> {
        let items = self.list(&self.keys.commands, MAX_PENDING).await?;
        let n = items.len();
        Ok((
            n,
            items
                .iter()
                .filter_map(|v| FleetCommand::parse(v))
                .collect(),
        ))
    }

    async fn list(&self, key: &str, max: usize) -> Result<Vec<String>, BoxError> {
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(key).arg(0).arg(max.saturating_sub(1));
        let redis::Value::Array(items) = call(&self.conn, self.timeout, &cmd).await? else {
            return Err("fleet canary: LRANGE did not answer a list".into());
        };
        Ok(items
            .iter()
            .map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect())
    }

    /// The audit list, newest first (at most `audit_len` entries): every command issued, and
    /// what the leader did with it. Entries that cannot be read are skipped.
    ///
    /// # Errors
    ///
    /// Redis's error or the timeout.
    ///
    /// ```no_run
    /// # use degrade_canary::fleet::{FleetCanaryConfig, FleetGates};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_canary::BoxError> {
    /// # let gates = FleetGates::new(&FleetCanaryConfig::default())?;
    /// for e in gates.audit().await? {
    ///     println!("{} {} {} #{} by {}: {}", e.at_ms, e.action, e.gate, e.id, e.who, e.why);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn audit(&self) -> Result<Vec<FleetAuditEntry>, BoxError> {
        let max = usize::try_from(self.audit_len).unwrap_or(usize::MAX);
        Ok(self
            .list(&self.keys.audit, max)
            .await?
            .iter()
            .filter_map(|v| command::parse_audit(v))
            .collect())
    }
}

fn add_field(snap: &mut CanarySnapshot, k: &redis::Value, v: &redis::Value) {
    let field = match k {
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok(),
        _ => None,
    };
    let value = match v {
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()),
        redis::Value::Int(n) => Some(*n),
        _ => None,
    };
    if let (Some(f), Some(n)) = (field, value) {
        wire::add(snap, f, n);
    }
}

/// A running [`FleetCanary`] ([`FleetCanary::spawn`]); stops when dropped.
#[derive(Debug)]
pub struct FleetCanaryTask {
    shared: Arc<Mutex<FleetCanarySnapshot>>,
    task: tokio::task::JoinHandle<()>,
}

impl FleetCanaryTask {
    /// What this instance has seen and done so far.
    ///
    /// ```no_run
    /// # use degrade_canary::{Canary, fleet::{FleetCanary, FleetCanaryConfig}};
    /// # #[tokio::main] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # let mut cfg = FleetCanaryConfig::default(); cfg.instance = "a".into();
    /// let task = FleetCanary::new(cfg, router.handle()).unwrap().spawn();
    /// let s = task.snapshot();
    /// println!("weight {} bp, leader {}, fallbacks {}", s.weight_bp, s.leader, s.fallbacks);
    /// # }
    /// ```
    pub fn snapshot(&self) -> FleetCanarySnapshot {
        *self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reader of this instance's snapshot that can be cloned and kept (an admin page, a
    /// metrics callback); it reads the last snapshot after the task has stopped.
    ///
    /// ```no_run
    /// # use degrade_canary::{Canary, fleet::{FleetCanary, FleetCanaryConfig}};
    /// # #[tokio::main] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # let mut cfg = FleetCanaryConfig::default(); cfg.instance = "a".into();
    /// let task = FleetCanary::new(cfg, router.handle()).unwrap().spawn();
    /// let status = task.status();
    /// assert_eq!(status.snapshot(), task.snapshot());
    /// # }
    /// ```
    pub fn status(&self) -> FleetCanaryStatus {
        FleetCanaryStatus {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A cloneable reader of a [`FleetCanaryTask`]'s snapshot ([`FleetCanaryTask::status`]).
#[derive(Debug, Clone)]
pub struct FleetCanaryStatus {
    shared: Arc<Mutex<FleetCanarySnapshot>>,
}

impl FleetCanaryStatus {
    /// What the instance has seen and done so far (as [`FleetCanaryTask::snapshot`]).
    ///
    /// ```no_run
    /// # use degrade_canary::{Canary, fleet::{FleetCanary, FleetCanaryConfig}};
    /// # #[tokio::main] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # let mut cfg = FleetCanaryConfig::default(); cfg.instance = "a".into();
    /// let status = FleetCanary::new(cfg, router.handle()).unwrap().spawn().status();
    /// println!("leader: {}", status.snapshot().leader);
    /// # }
    /// ```
    pub fn snapshot(&self) -> FleetCanarySnapshot {
        *self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FleetCanaryTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The leader's term.
struct Term {
    token: u64,
    machine: CanaryMachine,
    judge: Judge,
    /// When the lease surely still holds, on `Clk`: a lease after the last successful renewal
    /// was *sent*, so this instance stops acting no later than Redis lets the lease expire.
    lease_until: Instant,
    /// When the holder renews at the latest, on `Clk`: a third of the lease after that send.
    renew_at: Instant,
    next_analysis: Instant,
    /// The machine's state not yet written.
    dirty: bool,
}

/// The unsent interval of statistics: resent under the same number until Redis answers.
struct Pending {
    seq: u64,
    fields: Vec<(String, u64)>,
    upto: CanarySnapshot,
}

fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(100 * 365 * 24 * 3600))
}

async fn run<Clk: Clock>(fc: FleetCanary<Clk>, shared: Arc<Mutex<FleetCanarySnapshot>>) {
    let cfg = Arc::clone(&fc.cfg);
    let update = |f: &mut dyn FnMut(&mut FleetCanarySnapshot)| {
        f(&mut shared.lock().unwrap_or_else(|e| e.into_inner()));
    };
    let mut tick = tokio::time::interval(cfg.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = fc.clock.now();
    let mut term: Option<Term> = None;
    // The lease expires on Redis's clock; the local deadline is on `Clk`, measured from before
    // the renewal was sent, so the local view ends no later than Redis's however long the ticks
    // last (Redis calls waiting for their timeouts make a tick longer than a poll). The holder
    // renews every third of the lease, whichever comes first of that many polls and that much
    // time on `Clk`. A deposed leader's writes are refused by the fencing token regardless.
    let ratio = |d: Duration| (d.as_nanos() / cfg.poll.as_nanos().max(1)).max(1);
    let renew_every = u64::try_from(ratio(cfg.lease / 3)).unwrap_or(u64::MAX);
    let publish_every = u64::try_from(ratio(cfg.publish)).unwrap_or(u64::MAX);
    let mut ticks = 0u64;
    let mut last_answer = start;
    let mut falling_back = false;
    let mut seq = 1u64;
    let mut sent = wire::empty();
    let mut pending: Option<Pending> = None;
    loop {
        tick.tick().await;

        // The lease: stand for it, or keep it.
        ticks += 1;
        // The holder renews every third of the lease; the others ask every poll, so a lease
        // left by a dead leader is taken within a poll of its expiry.
        let due =
            |t: &Term| (ticks - 1).is_multiple_of(renew_every) || fc.clock.now() >= t.renew_at;
        if term.as_ref().is_none_or(due) {
            let sent = fc.clock.now();
            match fc.lease().await {
                Ok(Some((token, false))) if term.as_ref().is_some_and(|t| t.token == token) => {
                    if let Some(t) = term.as_mut() {
                        t.lease_until = later(sent, cfg.lease);
                        t.renew_at = later(sent, cfg.lease / 3);
                    }
                }
                Ok(Some((token, _))) => {
                    let known = shared.lock().unwrap_or_else(|e| e.into_inner()).state;
                    term = begin_term(&fc, token, sent, known).await;
                    if let Some(t) = &term {
                        let state = t.machine.state();
                        let _ = fc.handle.weight().set(state.weight_bp);
                        update(&mut |s| {
                            s.leader = true;
                            s.token = token;
                            s.terms += 1;
                            s.state = Some(state);
                            s.weight_bp = state.weight_bp;
                        });
                    }
                }
                Ok(None) => {
                    if let Some(t) = term.take() {
                        tracing::warn!(
                            token = t.token,
                            "fleet canary: lease taken by another instance, no longer leading"
                        );
                        update(&mut |s| s.leader = false);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fleet canary: lease renewal failed");
                }
            }
        }
        if expire(&mut term, fc.clock.now()) {
            update(&mut |s| s.leader = false);
        }

        // The commands issued since the last poll (or while no leader lived), applied once
        // through the fenced write.
        if let Some(t) = term.as_mut() {
            match fc.take_commands(t).await {
                Some((Written::Yes, outcomes)) => {
                    let state = t.machine.state();
                    let _ = fc.handle.weight().set(state.weight_bp);
                    let applied = outcomes
                        .iter()
                        .filter(|o| **o == CommandOutcome::Applied)
                        .count();
                    update(&mut |s| {
                        s.commands += outcomes.len() as u64;
                        s.commands_applied += applied as u64;
                        s.state = Some(state);
                        s.weight_bp = state.weight_bp;
                    });
                }
                Some((Written::Unknown, _)) => {
                    term = None;
                    update(&mut |s| s.leader = false);
                }
                Some((Written::Refused, _)) => {
                    tracing::warn!(
                        token = t.token,
                        "fleet canary: commands refused (a newer leader holds the lease), no longer leading"
                    );
                    term = None;
                    update(&mut |s| {
                        s.refused_writes += 1;
                        s.leader = false;
                    });
                }
                Some((Written::Retry, _)) | None => {}
            }
        }

        // The leader's analysis, and the write of what it decided.
        if let Some(t) = term.as_mut() {
            let now = fc.clock.now();
            let terminal = t.machine.state().phase.is_terminal();
            if now >= t.next_analysis && !terminal {
                t.next_analysis = later(now, cfg.canary.analysis_interval);
                match fc.fleet_stats().await {
                    Ok(mut sums) => {
                        sums.weight_bp = Some(t.machine.state().weight_bp);
                        let judgement = t.judge.look(&sums);
                        let before = t.machine.state();
                        t.machine
                            .on(CanaryEvent::Analysis(judgement.verdict), fc.clock.now());
                        let after = t.machine.state();
                        tracing::debug!(
                            verdict = %judgement.verdict,
                            reason = judgement.reason,
                            stable_samples = judgement.samples.0,
                            canary_samples = judgement.samples.1,
                            step = after.step,
                            "fleet canary analysis"
                        );
                        if after != before {
                            t.dirty = true;
                            let _ = fc.handle.weight().set(after.weight_bp);
                        }
                        update(&mut |s| {
                            s.analyses += 1;
                            s.last_verdict = Some((judgement.verdict, judgement.reason));
                            s.weight_bp = fc.handle.weight().get();
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "fleet canary: cannot read the fleet's statistics")
                    }
                }
            }
        }
        // The analysis may have waited for Redis: look at the lease again before writing.
        if expire(&mut term, fc.clock.now()) {
            update(&mut |s| s.leader = false);
        }
        if let Some(t) = term.as_mut()
            && t.dirty
        {
            let state = t.machine.state();
            match fc.write_with(state, t.token, None).await {
                Ok(Written::Yes) => {
                    t.dirty = false;
                    tracing::info!(token = t.token, step = state.step, weight_bp = state.weight_bp, phase = ?state.phase, "fleet canary: state written");
                    update(&mut |s| s.state = Some(state));
                }
                Ok(Written::Refused | Written::Retry | Written::Unknown) => {
                    tracing::warn!(
                        token = t.token,
                        step = state.step,
                        "fleet canary: write refused (a newer leader holds the lease), no longer leading"
                    );
                    term = None;
                    update(&mut |s| {
                        s.refused_writes += 1;
                        s.leader = false;
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fleet canary: state write failed, retried");
                }
            }
        }

        // Follow the fleet's state.
        let now = fc.clock.now();
        match fc.stored().await {
            Ok(stored) => {
                last_answer = now;
                if falling_back {
                    falling_back = false;
                    tracing::info!("fleet canary: Redis answers again, following the rollout");
                }
                let mut state = None;
                if let Some(st) = stored
                    && term.as_ref().is_none_or(|t| t.token <= st.token)
                {
                    let old = fc.handle.weight().get();
                    if old != st.state.weight_bp {
                        let _ = fc.handle.weight().set(st.state.weight_bp);
                        tracing::info!(from_bp = old, to_bp = st.state.weight_bp, step = st.state.step, phase = ?st.state.phase, "fleet canary: router weight follows the rollout");
                    }
                    state = Some(st.state);
                }
                update(&mut |s| {
                    s.polls += 1;
                    s.falling_back = false;
                    if state.is_some() {
                        s.state = state;
                    }
                    s.weight_bp = fc.handle.weight().get();
                });
            }
            Err(e) => {
                let stale = now.saturating_duration_since(last_answer) >= cfg.stale_after;
                let fall = stale && !falling_back;
                if fall {
                    falling_back = true;
                    let _ = fc.handle.weight().set(0);
                    tracing::warn!(error = %e, stale_after = ?cfg.stale_after, "fleet canary: Redis unreachable, router falls back to stable");
                } else {
                    tracing::debug!(error = %e, "fleet canary: cannot read the rollout's state; keeping the last weight");
                }
                update(&mut |s| {
                    s.poll_failures += 1;
                    if fall {
                        s.fallbacks += 1;
                    }
                    s.falling_back = falling_back;
                    s.weight_bp = fc.handle.weight().get();
                });
            }
        }

        // Add this instance's statistics to the fleet's sums (counted in polls:
        // a network cadence; an unsent interval is retried at the next poll).
        if ticks.is_multiple_of(publish_every) || pending.is_some() {
            if pending.is_none() {
                let upto = fc.handle.snapshot();
                let fields = wire::increments(&upto, &sent);
                if !fields.is_empty() {
                    pending = Some(Pending { seq, fields, upto });
                }
            }
            if let Some(p) = &pending {
                match fc.add(p.seq, &p.fields).await {
                    Ok(added) => {
                        if let Some(p) = pending.take() {
                            sent = p.upto;
                            seq = p.seq + 1;
                        }
                        update(&mut |s| {
                            s.published += 1;
                            if !added {
                                s.duplicates += 1;
                            }
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, seq = p.seq, "fleet canary: statistics not added, resent");
                        update(&mut |s| s.publish_failures += 1);
                    }
                }
            }
        }
    }
}

/// Ends the term whose lease has passed on the clock (its renewals failed, or were too slow).
/// Whether it ended one.
fn expire(term: &mut Option<Term>, now: Instant) -> bool {
    if term.as_ref().is_some_and(|t| now >= t.lease_until) {
        let t = term.take();
        tracing::warn!(
            token = t.map(|t| t.token),
            "fleet canary: lease not renewed in time, no longer leading"
        );
        return true;
    }
    false
}

/// Starts a term: the machine at the state in Redis — or, when Redis has none (it lost its
/// data), at the last state this instance knew, else a new rollout, written at once — and the
/// judge from the fleet's sums now. `None` if Redis cannot be read (the next renewal tries
/// again). `sent` is when the request that took the lease was sent, on the clock.
async fn begin_term<Clk: Clock>(
    fc: &FleetCanary<Clk>,
    token: u64,
    sent: Instant,
    known: Option<CanaryState>,
) -> Option<Term> {
    let cfg = &fc.cfg;
    let stored = match fc.stored().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "fleet canary: lease taken but the state cannot be read");
            return None;
        }
    };
    let sums = match fc.fleet_stats().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "fleet canary: lease taken but the statistics cannot be read");
            return None;
        }
    };
    let (machine, dirty) = match stored.map(|s| s.state).or(known) {
        Some(s) => match CanaryMachine::resume(cfg.canary.clone(), s, fc.clock.now()) {
            Ok(m) => (m, stored.is_none()),
            Err(e) => {
                tracing::error!(error = %e, "fleet canary: the stored state does not fit this configuration; not leading");
                return None;
            }
        },
        None => (
            CanaryMachine::new(cfg.canary.clone(), fc.clock.now()).ok()?,
            true,
        ),
    };
    let mut judge = Judge::new(cfg.canary.judge.clone()).ok()?;
    judge.start(&sums);
    let state = machine.state();
    tracing::info!(
        token,
        step = state.step,
        weight_bp = state.weight_bp,
        phase = ?state.phase,
        instance = %cfg.instance,
        "fleet canary: leading the rollout"
    );
    Some(Term {
        token,
        machine,
        judge,
        lease_until: later(sent, cfg.lease),
        renew_at: later(sent, cfg.lease / 3),
        next_analysis: later(fc.clock.now(), cfg.canary.analysis_interval),
        dirty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Canary;
    use crate::machine::CanaryPhase;
    use degrade_core::ManualClock;
    use degrade_core::fleet::testing::RedisServer;

    fn router() -> crate::service::CanaryHandle {
        let svc = || tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) });
        Canary::new(svc(), svc()).handle()
    }

    fn config(url: &str, instance: &str) -> FleetCanaryConfig {
        FleetCanaryConfig {
            url: url.to_owned(),
            name: "unit".to_owned(),
            instance: instance.to_owned(),
            poll: Duration::from_millis(50),
            timeout: Duration::from_millis(100),
            lease: Duration::from_secs(1),
            publish: Duration::from_millis(100),
            stale_after: Duration::from_secs(10),
            ..FleetCanaryConfig::default()
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_retried_interval_is_added_once() {
        let redis = RedisServer::start();
        let a = FleetCanary::new(config(&redis.url(), "a"), router()).unwrap();
        let fields = vec![("c:routed".to_owned(), 5), ("c:fail".to_owned(), 2)];
        assert!(a.add(1, &fields).await.unwrap());
        // The reply was lost; the same interval is sent again: nothing added.
        assert!(!a.add(1, &fields).await.unwrap());
        assert!(a.add(2, &fields[..1]).await.unwrap());
        // A restarted process (a new run) under the same instance name starts at 1 again.
        let again = FleetCanary::new(config(&redis.url(), "a"), router()).unwrap();
        assert!(again.add(1, &fields[..1]).await.unwrap());
        let sums = a.fleet_stats().await.unwrap();
        assert_eq!((sums.canary.routed, sums.canary.failures), (15, 2));
    }

    #[tokio::test]
    async fn a_deposed_leaders_write_is_refused() {
        let redis = RedisServer::start();
        let a = FleetCanary::new(config(&redis.url(), "a"), router()).unwrap();
        let b = FleetCanary::new(config(&redis.url(), "b"), router()).unwrap();
        let (ta, fresh) = a.lease().await.unwrap().unwrap();
        assert!(fresh);
        assert_eq!(b.lease().await.unwrap(), None, "one holder at a time");
        assert_eq!(
            a.lease().await.unwrap(),
            Some((ta, false)),
            "a renewal keeps the term"
        );
        // A stalls past its lease (here: the lease key expires at once); B takes over.
        let con = a.conn.clone();
        con.query(redis::cmd("DEL").arg(&a.keys.lease))
            .await
            .unwrap();
        let (tb, _) = b.lease().await.unwrap().unwrap();
        assert!(tb > ta);
        let mut state = CanaryMachine::new(a.cfg.canary.clone(), Instant::now())
            .unwrap()
            .state();
        assert!(b.write(state, tb).await.unwrap());
        // A wakes up and writes what it decided: refused, B's state stands.
        state.phase = CanaryPhase::Promoted;
        assert!(!a.write(state, ta).await.unwrap());
        assert_eq!(
            b.state().await.unwrap().unwrap().phase,
            CanaryPhase::Progressing
        );
        assert_eq!(a.lease().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_command_on_a_finished_rollout_is_refused_with_a_typed_error() {
        let redis = RedisServer::start();
        let a = FleetCanary::new(config(&redis.url(), "a"), router()).unwrap();
        let gates = a.gates();
        // No state yet: the command waits for a leader.
        assert_eq!(gates.pause("alice", "hold on").await.unwrap(), 1);
        let (token, _) = a.lease().await.unwrap().unwrap();
        let mut state = CanaryMachine::new(a.cfg.canary.clone(), Instant::now())
            .unwrap()
            .state();
        state.phase = CanaryPhase::Promoted;
        assert!(a.write(state, token).await.unwrap());
        let err = gates.abort("bob", "too late").await.unwrap_err();
        assert!(
            matches!(err, FleetCommandError::Finished(CanaryPhase::Promoted)),
            "{err}"
        );
        state.phase = CanaryPhase::RolledBack;
        state.weight_bp = 0;
        assert!(a.write(state, token).await.unwrap());
        assert!(matches!(
            gates.resume("bob", "").await,
            Err(FleetCommandError::Finished(CanaryPhase::RolledBack))
        ));
        // Refused commands are neither pending nor in the audit list.
        assert_eq!(gates.pending().await.unwrap().len(), 1);
        let audit = gates.audit().await.unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(
            (
                audit[0].action.as_str(),
                audit[0].gate.as_str(),
                audit[0].who.as_str()
            ),
            ("issued", "pause", "alice")
        );
    }

    #[tokio::test]
    async fn the_pending_list_and_the_audit_list_are_capped() {
        let redis = RedisServer::start();
        let mut cfg = config(&redis.url(), "a");
        cfg.audit_len = 5;
        let gates = FleetCanary::new(cfg, router()).unwrap().gates();
        for i in 0..MAX_PENDING {
            gates.pause("op", &format!("{i}")).await.unwrap();
        }
        assert!(matches!(
            gates.abort("op", "one more").await,
            Err(FleetCommandError::Backlog)
        ));
        assert_eq!(gates.pending().await.unwrap().len(), MAX_PENDING);
        let audit = gates.audit().await.unwrap();
        assert_eq!(audit.len(), 5);
        assert_eq!(audit[0].why, format!("{}", MAX_PENDING - 1), "newest first");
    }

    /// A promote and an abort issued while no leader lives: the next leader applies both in
    /// one batch, and the abort wins; each is recorded with what became of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abort_wins_over_a_promote_issued_with_it() {
        let redis = RedisServer::start();
        let handle = router();
        let fleet = FleetCanary::new(config(&redis.url(), "a"), handle.clone()).unwrap();
        let gates = fleet.gates();
        let promote = gates.promote("alice", "sign-off").await.unwrap();
        let abort = gates.abort("bob", "errors in eu").await.unwrap();
        assert!(abort > promote);
        let task = fleet.spawn();
        until("rolled back", || {
            task.snapshot()
                .state
                .is_some_and(|s| s.phase == CanaryPhase::RolledBack)
        })
        .await;
        assert_eq!(handle.weight().get(), 0);
        let s = task.snapshot();
        assert_eq!((s.commands, s.commands_applied), (2, 1));
        assert!(
            gates.pending().await.unwrap().is_empty(),
            "applied once, removed"
        );
        let audit = gates.audit().await.unwrap();
        let outcome = |id: u64| {
            audit
                .iter()
                .find(|e| e.id == id && e.action != "issued")
                .map(|e| (e.action.clone(), e.token))
        };
        assert_eq!(outcome(promote), Some(("superseded".into(), s.token)));
        assert_eq!(outcome(abort), Some(("applied".into(), s.token)));
        assert_eq!(
            gates.state().await.unwrap().unwrap().phase,
            CanaryPhase::RolledBack
        );
    }

    /// A deposed leader cannot apply a command (its write is refused and the command stays
    /// pending); the holder of the lease applies it; a command issued after the holder read
    /// the list makes its write wait for the next reading (nothing half applied).
    #[tokio::test]
    async fn only_the_holder_of_the_latest_token_applies_a_command_and_with_every_command() {
        let redis = RedisServer::start();
        let a = FleetCanary::new(config(&redis.url(), "a"), router()).unwrap();
        let b = FleetCanary::new(config(&redis.url(), "b"), router()).unwrap();
        let (ta, _) = a.lease().await.unwrap().unwrap();
        let mut term_a = begin_term(&a, ta, Instant::now(), None).await.unwrap();
        assert!(a.write(term_a.machine.state(), ta).await.unwrap());
        a.conn
            .query(redis::cmd("DEL").arg(&a.keys.lease))
            .await
            .unwrap();
        let (tb, _) = b.lease().await.unwrap().unwrap();
        let mut term_b = begin_term(&b, tb, Instant::now(), None).await.unwrap();
        a.gates().pause("alice", "hold").await.unwrap();
        let (w, _) = a.take_commands(&mut term_a).await.unwrap();
        assert_eq!(w, Written::Refused);
        assert_eq!(term_a.machine.state().phase, CanaryPhase::Progressing);
        assert_eq!(a.gates().pending().await.unwrap().len(), 1, "still pending");
        let (w, out) = b.take_commands(&mut term_b).await.unwrap();
        assert_eq!(
            (w, out.as_slice()),
            (Written::Yes, &[CommandOutcome::Applied][..])
        );
        assert_eq!(
            b.state().await.unwrap().unwrap().phase,
            CanaryPhase::Paused(crate::machine::PauseReason::Manual)
        );
        // Read one command; another is issued before the write: nothing is written.
        let gates = b.gates();
        gates.resume("alice", "go").await.unwrap();
        let (n, _) = gates.read_pending().await.unwrap();
        gates.abort("bob", "no").await.unwrap();
        let resumed =
            CanaryMachine::resume(b.cfg.canary.clone(), term_b.machine.state(), Instant::now())
                .unwrap();
        let w = b
            .write_with(resumed.state(), tb, Some((n, &[])))
            .await
            .unwrap();
        assert_eq!(w, Written::Retry);
        assert_eq!(gates.pending().await.unwrap().len(), 2);
        let (w, out) = b.take_commands(&mut term_b).await.unwrap();
        assert_eq!(
            (w, out.as_slice()),
            (
                Written::Yes,
                &[CommandOutcome::Superseded, CommandOutcome::Applied][..]
            )
        );
        assert_eq!(term_b.machine.state().phase, CanaryPhase::RolledBack);
        assert!(gates.pending().await.unwrap().is_empty());
        // Nothing pending: nothing to do.
        assert!(b.take_commands(&mut term_b).await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routers_keep_the_last_weight_then_fall_back_to_stable_while_redis_is_away() {
        let mut redis = RedisServer::start();
        let clock = ManualClock::new();
        let handle = router();
        let fleet = FleetCanary::new(config(&redis.url(), "a"), handle.clone())
            .unwrap()
            .clock(clock.clone());
        let task = fleet.spawn();
        until("the rollout's first step", || {
            task.snapshot().state.is_some() && handle.weight().get() == 100
        })
        .await;
        redis.kill();
        let failures = task.snapshot().poll_failures;
        until("failed polls", || {
            task.snapshot().poll_failures >= failures + 5
        })
        .await;
        assert_eq!(handle.weight().get(), 100, "the last weight is kept");
        assert!(!task.snapshot().falling_back);
        clock.advance(Duration::from_secs(10));
        until("the fallback", || task.snapshot().falling_back).await;
        assert_eq!(handle.weight().get(), 0, "stable only");
        assert_eq!(task.snapshot().fallbacks, 1);
        // Redis back (empty): the instance leads a rollout again and its router follows.
        redis.restart();
        until("following again", || {
            let s = task.snapshot();
            !s.falling_back && s.state.is_some() && handle.weight().get() == 100
        })
        .await;
        assert_eq!(task.snapshot().fallbacks, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_whose_renewals_fail_stops_when_its_lease_has_passed_on_the_clock() {
        let mut redis = RedisServer::start();
        let clock = ManualClock::new();
        let cfg = config(&redis.url(), "a");
        let lease = cfg.lease;
        let lease_polls = u64::try_from(cfg.lease.as_nanos() / cfg.poll.as_nanos()).unwrap();
        let task = FleetCanary::new(cfg, router())
            .unwrap()
            .clock(clock.clone())
            .spawn();
        until("leading", || task.snapshot().leader).await;
        // Every renewal from now on fails. The last one that succeeded was sent at the clock's
        // present instant, so the lease ends one lease later on the clock.
        redis.kill();
        let failures = task.snapshot().poll_failures;
        // More polls than a lease's worth, while no time passes on the clock: still leading.
        until("a lease's worth of failed polls", || {
            task.snapshot().poll_failures >= failures + lease_polls + 2
        })
        .await;
        assert!(
            task.snapshot().leader,
            "the lease has not passed on the clock"
        );
        // Just short of the lease: still leading, poll after poll.
        clock.advance(lease - Duration::from_millis(1));
        let failures = task.snapshot().poll_failures;
        until("more failed polls", || {
            task.snapshot().poll_failures >= failures + 3
        })
        .await;
        assert!(task.snapshot().leader, "1 ms of the lease left");
        // The lease has passed: the leader stops, within a poll, without another renewal.
        clock.advance(Duration::from_millis(1));
        until("no longer leading", || !task.snapshot().leader).await;
        let s = task.snapshot();
        assert_eq!(s.terms, 1);
        assert!(!s.falling_back, "stale_after (10 s) has not passed");
    }
}
