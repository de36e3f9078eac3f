//! The incident switch: one level pinned on every instance of a service at once, for a
//! bounded time, through Redis.
//!
//! Levels are per instance (pressure is local). In an incident an operator wants the whole
//! fleet at Heavy *now*, for ten minutes, without touching each instance. [`IncidentSwitch`]
//! writes the pin to one Redis key with a TTL (so it expires on the Redis server's clock, the
//! same for every instance) and appends who, when and why to a capped audit list in the same
//! script. Each instance runs an [`IncidentWatcher`] that reads the key every
//! [`IncidentConfig::poll`] (default 250 ms) and drives its own [`Controller`]'s existing pin:
//! [`Controller::pin`] while the key is there, [`Controller::unpin`] when it is gone, after
//! which the instance's own signals drive its level again.
//!
//! While a fleet-wide pin is in force it wins over a pin set on the instance itself (it is
//! applied again at the next poll); when it ends, the instance's level follows its signals.
//!
//! While Redis cannot be reached the watcher keeps a pin it has seen until the expiry it was
//! told (measured on the controller's clock from the remaining TTL read at the last answer),
//! then releases it: a lost Redis neither ends an incident early nor prolongs it. The pin key
//! and the audit list share a hash tag (`<prefix>:{<name>}:pin`, `...:audit`), so both live
//! on one node of a Redis Cluster and one script writes both.

use super::conn::{self, Conn};
use degrade_core::{BoxError, Clock, ConfigError, Controller, Level};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// The longest pin: a day. An incident switch left on for longer is a forgotten one.
const MAX_PIN: Duration = Duration::from_secs(24 * 3600);
/// Operator text is cut to this many bytes (who) and ten times that (why).
const MAX_WHO: usize = 128;

/// Sets the pin and appends to the audit list, atomically. KEYS: pin, audit. ARGV: value,
/// milliseconds, audit entry tail, audit cap. Returns the server's time in milliseconds.
const PIN_LUA: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('LPUSH', KEYS[2], string.format('%.0f', now_ms) .. '\t' .. ARGV[3])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
return now_ms
";

/// Reads the pin and its remaining time in one round trip.
const READ_LUA: &str = r"
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
";

/// Configuration of the incident switch and its watchers: the same `url` / `cluster` /
/// `timeout` vocabulary as [`FleetConfig`](super::FleetConfig).
///
/// ```
/// use degrade_ratelimit::fleet::incident::IncidentConfig;
/// let cfg: IncidentConfig = serde_json::from_str(r#"{
///     "url": "redis://10.0.0.5:6379", "name": "checkout", "poll": "200ms"
/// }"#).unwrap();
/// assert!(cfg.validate().is_ok());
/// let bad: IncidentConfig = serde_json::from_str(r#"{ "poll": "5s" }"#).unwrap();
/// assert_eq!(bad.validate().unwrap_err().field(), "poll");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct IncidentConfig {
    /// The Redis URL (default `redis://127.0.0.1:6379`).
    pub url: String,
    /// The nodes of a Redis Cluster; empty (the default) for a single Redis at `url`.
    pub cluster: Vec<String>,
    /// Prefix of the keys (default `degrade:incident`).
    pub prefix: String,
    /// The service: instances with the same prefix and name follow one switch (default
    /// `default`).
    pub name: String,
    /// The longest a call to Redis may take (default 200 ms).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often a watcher reads the switch (default 250 ms; at most 1 s, so every instance
    /// applies a pin within a second).
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// Entries kept in the audit list (default 1,000; at least 1, at most 100,000).
    pub audit_len: u32,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            url: conn::DEFAULT_URL.to_owned(),
            cluster: Vec::new(),
            prefix: "degrade:incident".to_owned(),
            name: "default".to_owned(),
            timeout: Duration::from_millis(200),
            poll: Duration::from_millis(250),
            audit_len: 1_000,
        }
    }
}

impl IncidentConfig {
    /// Checks every rule; the error names the field.
    ///
    /// ```
    /// # use degrade_ratelimit::fleet::incident::IncidentConfig;
    /// let mut cfg = IncidentConfig::default();
    /// cfg.audit_len = 0;
    /// assert_eq!(cfg.validate().unwrap_err().field(), "audit_len");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.checked().map(|_| ())
    }

    fn checked(&self) -> Result<conn::Target, ConfigError> {
        let target = conn::target(&self.url, &self.cluster)?;
        if self.name.is_empty()
            || self
                .name
                .contains(|c: char| c.is_whitespace() || "{}".contains(c))
        {
            return Err(ConfigError::new(
                "name",
                "must be non-empty, without spaces or braces",
            ));
        }
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
        if self.poll.is_zero() || self.poll > Duration::from_secs(1) {
            return Err(ConfigError::new(
                "poll",
                "must be in (0, 1s]: every instance applies a pin within one poll",
            ));
        }
        if !(1..=100_000).contains(&self.audit_len) {
            return Err(ConfigError::new("audit_len", "must be in [1, 100000]"));
        }
        Ok(target)
    }

    fn keys(&self) -> [String; 2] {
        let base = format!("{}:{{{}}}", self.prefix, self.name);
        [format!("{base}:pin"), format!("{base}:audit")]
    }
}

/// A fleet-wide pin as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IncidentPin {
    /// The pinned level.
    pub level: Level,
    /// Who set it.
    pub who: String,
    /// Why.
    pub why: String,
    /// Time left before it expires (on the Redis server's clock).
    pub remaining: Duration,
}

/// One entry of the audit list, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditEntry {
    /// When, in milliseconds since 1970 on the Redis server's clock.
    pub at_ms: u64,
    /// `pin` or `clear`.
    pub action: String,
    /// The level pinned (`-` for a clear).
    pub level: String,
    /// For how long, in milliseconds (0 for a clear).
    pub for_ms: u64,
    /// Who.
    pub who: String,
    /// Why.
    pub why: String,
}

/// Operator text made safe to store: control characters (the separators) become spaces, and
/// it is cut to `max` bytes on a character boundary.
fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Reads a pin value `<level>\n<who>\n<why>`; anything else is `None`.
fn parse_pin(v: &str, remaining: Duration) -> Option<IncidentPin> {
    let mut it = v.splitn(3, '\n');
    let level = it.next()?.parse().ok()?;
    Some(IncidentPin {
        level,
        who: it.next()?.to_owned(),
        why: it.next().unwrap_or("").to_owned(),
        remaining,
    })
}

/// Reads an audit entry `<ms>\t<action>\t<level>\t<for_ms>\t<who>\t<why>`.
fn parse_audit(v: &str) -> Option<AuditEntry> {
    let f: Vec<&str> = v.splitn(6, '\t').collect();
    let [at, action, level, for_ms, who, why] = f.as_slice() else {
        return None;
    };
    Some(AuditEntry {
        at_ms: at.parse().ok()?,
        action: (*action).to_owned(),
        level: (*level).to_owned(),
        for_ms: for_ms.parse().ok()?,
        who: (*who).to_owned(),
        why: (*why).to_owned(),
    })
}

/// The operator's side: pin a level on every instance for a while, clear it, read it and its
/// audit trail. Cheap to clone.
///
/// ```no_run
/// use degrade_core::Level;
/// use degrade_ratelimit::fleet::incident::{IncidentConfig, IncidentSwitch};
/// use std::time::Duration;
/// # #[tokio::main] async fn main() -> Result<(), degrade_core::BoxError> {
/// let switch = IncidentSwitch::new(IncidentConfig::default())?;
/// switch.pin(Level::Heavy, Duration::from_secs(600), "alice", "db failover").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct IncidentSwitch {
    conn: Conn,
    keys: Arc<[String; 2]>,
    config: Arc<IncidentConfig>,
}

impl fmt::Debug for IncidentSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncidentSwitch")
            .field("pin_key", &self.keys[0])
            .finish_non_exhaustive()
    }
}

impl IncidentSwitch {
    /// Validates the configuration and connects lazily (building succeeds while Redis is
    /// down). Must be called inside a tokio runtime.
    ///
    /// ```
    /// use degrade_ratelimit::fleet::incident::{IncidentConfig, IncidentSwitch};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mut cfg = IncidentConfig::default();
    /// cfg.name = "my service".into();
    /// assert_eq!(IncidentSwitch::new(cfg).unwrap_err().field(), "name");
    /// # }
    /// ```
    pub fn new(config: IncidentConfig) -> Result<Self, ConfigError> {
        let target = config.checked()?;
        let conn = Conn::open(target, config.timeout)?;
        Ok(Self {
            conn,
            keys: Arc::new(config.keys()),
            config: Arc::new(config),
        })
    }

    async fn call(&self, cmd: &redis::Cmd) -> Result<redis::Value, BoxError> {
        match tokio::time::timeout(self.config.timeout, self.conn.query(cmd)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err("incident switch: Redis did not answer within the timeout".into()),
        }
    }

    async fn write(&self, value: &str, ms: u64, audit: &str) -> Result<u64, BoxError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PIN_LUA)
            .arg(2)
            .arg(&self.keys[..])
            .arg(value)
            .arg(ms)
            .arg(audit)
            .arg(self.config.audit_len);
        match self.call(&cmd).await? {
            redis::Value::Int(ms) => Ok(u64::try_from(ms).unwrap_or(0)),
            other => Err(format!("incident switch: unexpected reply {other:?}").into()),
        }
    }

    /// Pins `level` on every instance for `duration` (at most a day), recording `who` and
    /// `why` in the audit list and in tracing. Returns when it expires, in milliseconds since
    /// 1970 on the Redis server's clock. A new pin replaces the one in force.
    ///
    /// ```
    /// use degrade_core::Level;
    /// use degrade_ratelimit::fleet::incident::{IncidentConfig, IncidentSwitch};
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let switch = IncidentSwitch::new(IncidentConfig::default()).unwrap();
    /// let err = switch.pin(Level::Heavy, Duration::ZERO, "alice", "typo").await.unwrap_err();
    /// assert_eq!(err.downcast_ref::<degrade_core::ConfigError>().unwrap().field(), "duration");
    /// # }
    /// ```
    pub async fn pin(
        &self,
        level: Level,
        duration: Duration,
        who: &str,
        why: &str,
    ) -> Result<u64, BoxError> {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 || duration > MAX_PIN {
            return Err(ConfigError::new("duration", "must be in [1ms, 24h]").into());
        }
        let (who, why) = (clean(who, MAX_WHO), clean(why, 10 * MAX_WHO));
        let value = format!("{level}\n{who}\n{why}");
        let audit = format!("pin\t{level}\t{ms}\t{who}\t{why}");
        let now_ms = self.write(&value, ms, &audit).await?;
        tracing::warn!(
            switch = %self.keys[0],
            %level,
            for_ms = ms,
            who,
            why,
            "incident: level pinned on every instance"
        );
        Ok(now_ms.saturating_add(ms))
    }

    /// Ends the pin now (every instance returns to its own signals within one poll), recorded
    /// in the audit list and in tracing.
    ///
    /// ```no_run
    /// # use degrade_ratelimit::fleet::incident::{IncidentConfig, IncidentSwitch};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_core::BoxError> {
    /// let switch = IncidentSwitch::new(IncidentConfig::default())?;
    /// switch.clear("alice", "failover done").await?;
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self, who: &str, why: &str) -> Result<(), BoxError> {
        let (who, why) = (clean(who, MAX_WHO), clean(why, 10 * MAX_WHO));
        let audit = format!("clear\t-\t0\t{who}\t{why}");
        self.write("", 0, &audit).await?;
        tracing::warn!(switch = %self.keys[0], who, why, "incident: fleet-wide pin cleared");
        Ok(())
    }

    /// The pin in force, if any.
    ///
    /// ```no_run
    /// # use degrade_ratelimit::fleet::incident::{IncidentConfig, IncidentSwitch};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_core::BoxError> {
    /// let switch = IncidentSwitch::new(IncidentConfig::default())?;
    /// if let Some(pin) = switch.current().await? {
    ///     println!("{} for {:?} more, by {}: {}", pin.level, pin.remaining, pin.who, pin.why);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn current(&self) -> Result<Option<IncidentPin>, BoxError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(READ_LUA).arg(1).arg(&self.keys[0]);
        read_pin(&self.call(&cmd).await?)
    }

    /// The audit list, newest first (at most `audit_len` entries). Entries that cannot be
    /// read are skipped.
    ///
    /// ```no_run
    /// # use degrade_ratelimit::fleet::incident::{IncidentConfig, IncidentSwitch};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_core::BoxError> {
    /// let switch = IncidentSwitch::new(IncidentConfig::default())?;
    /// for e in switch.audit().await? {
    ///     println!("{} {} {} by {}: {}", e.at_ms, e.action, e.level, e.who, e.why);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn audit(&self) -> Result<Vec<AuditEntry>, BoxError> {
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(&self.keys[1]).arg(0).arg(-1);
        let redis::Value::Array(items) = self.call(&cmd).await? else {
            return Err("incident switch: LRANGE did not answer a list".into());
        };
        Ok(items
            .iter()
            .filter_map(|v| match v {
                redis::Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(parse_audit),
                _ => None,
            })
            .collect())
    }

    /// Starts this instance's watcher: every `poll` it reads the switch and pins or unpins
    /// `controller`. The task ends when the returned [`IncidentWatcher`] is dropped.
    ///
    /// ```no_run
    /// use degrade_core::Controller;
    /// use degrade_ratelimit::fleet::incident::{IncidentConfig, IncidentSwitch};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_core::BoxError> {
    /// let controller = Controller::new(Default::default())?;
    /// let watcher = IncidentSwitch::new(IncidentConfig::default())?.watch(controller.clone());
    /// assert_eq!(watcher.snapshot().pinned, None);
    /// # Ok(()) }
    /// ```
    pub fn watch<C>(&self, controller: Controller<C>) -> IncidentWatcher
    where
        C: Clock + Send + Sync + 'static,
    {
        let state = Arc::new(WatchState::default());
        let task = tokio::spawn(watch(self.clone(), controller, Arc::clone(&state)));
        IncidentWatcher { state, task }
    }
}

/// Reads the reply of [`READ_LUA`]: `{nil | value, pttl}`.
fn read_pin(v: &redis::Value) -> Result<Option<IncidentPin>, BoxError> {
    let redis::Value::Array(items) = v else {
        return Err("incident switch: unexpected reply".into());
    };
    match items.as_slice() {
        [redis::Value::BulkString(b), redis::Value::Int(pttl)] if *pttl > 0 => {
            let remaining = Duration::from_millis(u64::try_from(*pttl).unwrap_or(0));
            let text = std::str::from_utf8(b).map_err(|_| "incident switch: pin is not UTF-8")?;
            parse_pin(text, remaining)
                .map(Some)
                .ok_or_else(|| "incident switch: unreadable pin".into())
        }
        // No key (nil, PTTL -2), or a key at its expiry.
        [_, redis::Value::Int(_)] | [] => Ok(None),
        _ => Err("incident switch: unexpected reply".into()),
    }
}

#[derive(Debug, Default)]
struct WatchState {
    /// `Level::index() + 1` of the pin this watcher applied, 0 for none.
    pinned: AtomicU8,
    polls: AtomicU64,
    failures: AtomicU64,
    applied: AtomicU64,
    applied_at_poll: AtomicU64,
    released: AtomicU64,
}

/// What one instance's watcher has done.
///
/// ```
/// use degrade_ratelimit::fleet::incident::IncidentSnapshot;
/// assert_eq!(IncidentSnapshot::default().pinned, None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IncidentSnapshot {
    /// The fleet-wide level this watcher has pinned on its controller, if any.
    pub pinned: Option<Level>,
    /// Reads of the switch that got an answer.
    pub polls: u64,
    /// Reads that failed or timed out (the pin in force is kept until its known expiry).
    pub failures: u64,
    /// Times a fleet-wide pin was applied to the controller.
    pub applied: u64,
    /// The answered read (counted in `polls`, from 1) that applied the latest pin: a pin
    /// written between reads `n` and `n + 1` is applied at read `n + 1` (or `n + 2` when read
    /// `n + 1` was already in flight), so within two polls.
    pub applied_at_poll: u64,
    /// Times it was released (expired, cleared, or its known expiry passed while Redis was
    /// away).
    pub released: u64,
}

/// One instance's watcher of the incident switch ([`IncidentSwitch::watch`]); stops when
/// dropped.
///
/// ```no_run
/// # use degrade_core::Controller;
/// # use degrade_ratelimit::fleet::incident::{IncidentConfig, IncidentSwitch};
/// # #[tokio::main] async fn main() -> Result<(), degrade_core::BoxError> {
/// # let controller = Controller::new(Default::default())?;
/// let watcher = IncidentSwitch::new(IncidentConfig::default())?.watch(controller);
/// println!("{:?}", watcher.snapshot());
/// drop(watcher); // the task ends
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct IncidentWatcher {
    state: Arc<WatchState>,
    task: tokio::task::JoinHandle<()>,
}

impl IncidentWatcher {
    /// What the watcher has done so far.
    ///
    /// ```no_run
    /// # use degrade_core::Controller;
    /// # use degrade_ratelimit::fleet::incident::{IncidentConfig, IncidentSwitch};
    /// # #[tokio::main] async fn main() -> Result<(), degrade_core::BoxError> {
    /// # let w = IncidentSwitch::new(IncidentConfig::default())?.watch(Controller::new(Default::default())?);
    /// assert_eq!(w.snapshot().applied, 0);
    /// # Ok(()) }
    /// ```
    pub fn snapshot(&self) -> IncidentSnapshot {
        let s = &self.state;
        let p = s.pinned.load(Ordering::Acquire);
        IncidentSnapshot {
            pinned: p
                .checked_sub(1)
                .and_then(|i| Level::ALL.get(usize::from(i)).copied()),
            polls: s.polls.load(Ordering::Acquire),
            failures: s.failures.load(Ordering::Acquire),
            applied: s.applied.load(Ordering::Acquire),
            applied_at_poll: s.applied_at_poll.load(Ordering::Acquire),
            released: s.released.load(Ordering::Acquire),
        }
    }
}

impl Drop for IncidentWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The watcher's loop: one read per poll, bounded by the timeout.
async fn watch<C: Clock>(
    switch: IncidentSwitch,
    controller: Controller<C>,
    state: Arc<WatchState>,
) {
    let mut tick = tokio::time::interval(switch.config.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The pin applied and when it ends on the controller's clock.
    let mut held: Option<(Level, tokio::time::Instant)> = None;
    loop {
        tick.tick().await;
        let read = switch.current().await;
        let now = controller.clock().now();
        match read {
            Ok(Some(pin)) => {
                let poll = state.polls.fetch_add(1, Ordering::AcqRel) + 1;
                let until = now + pin.remaining;
                let fresh = held.map(|(l, _)| l) != Some(pin.level)
                    || controller.pinned() != Some(pin.level);
                held = Some((pin.level, until));
                if fresh {
                    controller.pin(pin.level);
                    state
                        .pinned
                        .store(pin.level.index() as u8 + 1, Ordering::Release);
                    state.applied.fetch_add(1, Ordering::AcqRel);
                    state.applied_at_poll.store(poll, Ordering::Release);
                    tracing::warn!(
                        switch = %switch.keys[0],
                        level = %pin.level,
                        remaining = ?pin.remaining,
                        who = pin.who,
                        why = pin.why,
                        "incident: this instance follows the fleet-wide pin"
                    );
                }
            }
            Ok(None) => {
                state.polls.fetch_add(1, Ordering::AcqRel);
                if let Some((level, _)) = held.take() {
                    release(&controller, &state, level, "expired or cleared");
                }
            }
            Err(e) => {
                state.failures.fetch_add(1, Ordering::AcqRel);
                tracing::debug!(error = %e, "incident: cannot read the switch");
                if let Some((level, until)) = held
                    && now >= until
                {
                    held = None;
                    release(
                        &controller,
                        &state,
                        level,
                        "its expiry passed while Redis was away",
                    );
                }
            }
        }
    }
}

/// Gives the level back to the instance's signals, unless someone pinned another level here
/// meanwhile (that pin is theirs to lift).
fn release<C: Clock>(controller: &Controller<C>, state: &WatchState, level: Level, why: &str) {
    if controller.pinned() == Some(level) {
        controller.unpin();
    }
    state.pinned.store(0, Ordering::Release);
    state.released.fetch_add(1, Ordering::AcqRel);
    tracing::warn!(%level, why, "incident: fleet-wide pin released, the level follows this instance's signals");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_text_is_cleaned_and_cut_on_a_character_boundary() {
        assert_eq!(clean("a\tb\nc", 10), "a b c");
        assert_eq!(clean("ééé", 5), "éé");
        assert_eq!(
            parse_pin("heavy\nalice\nwhy\nmore", Duration::ZERO)
                .unwrap()
                .why,
            "why\nmore"
        );
        assert!(parse_pin("nonsense\nx\ny", Duration::ZERO).is_none());
        assert!(parse_audit("12\tpin\theavy\tx\ta\tb").is_none());
        let e = parse_audit("12\tpin\theavy\t600000\talice\tdb\tfailover").unwrap();
        assert_eq!(
            (e.at_ms, e.for_ms, e.why.as_str()),
            (12, 600_000, "db\tfailover")
        );
    }
}
