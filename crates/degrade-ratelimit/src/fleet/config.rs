//! The configuration of a fleet limit, validated into the parameters per level of the fleet's
//! quota and of its local fallback.

use super::conn;
use crate::config::{Params, RateLimitConfig};
use crate::layer::KeysConfig;
use degrade_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    /// Reject every request with [`Cause::FleetUnavailable`](crate::error::Cause::FleetUnavailable).
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
///
/// // A Redis Cluster: its nodes instead of `url`.
/// let cfg: FleetConfig = serde_json::from_str(r#"{
///     "cluster": ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000", "redis://10.0.0.3:7000"],
///     "name": "api"
/// }"#).unwrap();
/// assert!(cfg.validate().is_ok());
/// let bad: FleetConfig = serde_json::from_str(r#"{ "cluster": ["10.0.0.1:7000"] }"#).unwrap();
/// assert_eq!(bad.validate().unwrap_err().field(), "cluster[0]");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct FleetConfig {
    /// The Redis URL (default `redis://127.0.0.1:6379`).
    pub url: String,
    /// The nodes of a Redis Cluster (URLs; any one that answers is enough to find the others).
    /// Empty (the default): a single Redis at `url`. When set, `url` must be left unset.
    pub cluster: Vec<String>,
    /// Prefix of every key (default `degrade:rl`).
    pub prefix: String,
    /// The limit's name: hosts with the same prefix and name share one budget (default
    /// `default`).
    pub name: String,
    /// The longest a decision may take (default 50 ms); past it, the `unavailable` policy
    /// decides.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The fleet's quota, with its per-level scale (applied when the layer is given a
    /// `LevelHandle`). Waiting (`max_wait`) is not supported in fleet mode.
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
            url: conn::DEFAULT_URL.to_owned(),
            cluster: Vec::new(),
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

    pub(super) fn checked(&self) -> Result<Checked, ConfigError> {
        let target = conn::target(&self.url, &self.cluster)?;
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
        if self.fail_fast_after == 0 {
            return Err(ConfigError::new(
                "fail_fast_after",
                "must be at least 1 (0 would never ask Redis)",
            ));
        }
        self.local_keys
            .validate()
            .map_err(|e| e.within("local_keys"))?;
        if let Unavailable::Local { share } = self.unavailable
            && !(share.is_finite() && share > 0.0 && share <= 1.0)
        {
            return Err(ConfigError::new(
                "unavailable.local.share",
                format!("must be a finite number in (0, 1], got {share}"),
            ));
        }
        let params = fleet_params(&self.quota).map_err(|e| e.within("quota"))?;
        let local = local_params(&self.quota, self.unavailable)
            .map_err(|e| e.within("unavailable.local"))?;
        Ok((target, params, local))
    }
}

/// A validated configuration: where Redis is, the fleet's parameters per level and the local
/// fallback's.
pub(super) type Checked = (conn::Target, [Params; 5], Option<[Params; 5]>);

/// The parameters of a fleet quota per level; field names are the quota's own.
pub(super) fn fleet_params(quota: &RateLimitConfig) -> Result<[Params; 5], ConfigError> {
    if !quota.max_wait.is_zero() {
        return Err(ConfigError::new(
            "max_wait",
            "must be zero: fleet mode rejects at once",
        ));
    }
    quota.params()
}

/// The parameters per level of the `local` fallback (`share` of the quota and the burst).
pub(super) fn local_params(
    quota: &RateLimitConfig,
    unavailable: Unavailable,
) -> Result<Option<[Params; 5]>, ConfigError> {
    match unavailable {
        Unavailable::Local { share } => local_config(quota, share).params().map(Some),
        _ => Ok(None),
    }
}

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
