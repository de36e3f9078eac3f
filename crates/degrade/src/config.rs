//! One file for a service's protection (feature `config`): the ladder, the level policy, the
//! admission layer, the rate limits (plain and keyed), the breakers and the canaries in TOML,
//! built into layers, and reloaded while the service runs.
//!
//! ```
//! # #[cfg(all(feature = "ratelimit", feature = "breaker", feature = "canary", feature = "http"))] {
//! use degrade::config::StackConfig;
//!
//! let file = r#"
//! [ladder]                 # degrade_core::LadderConfig: trigger thresholds, hysteresis, dwell
//! escalate_after = 2
//! thresholds.light = { enter = 0.7, exit = 0.6 }
//!
//! [policy]                 # degrade_core::Policy (what each level does)
//! light.admit = { background = 0, low = 0, normal = 0.5, high = 1, critical = 1 }
//! light.sampling = 0.5
//!
//! [admission]              # the DegradeLayer: mode, adaptive limit, retry hint
//! mode = "both"            # "adaptive" (default), "level-shares" or "both"
//! limit = { max = 500 }    # degrade_core::limit::LimitConfig
//! retry_after = "1s"
//!
//! [limits.api]             # a degrade_ratelimit::RateLimitConfig per name (feature ratelimit)
//! quota = 100
//! period = "1s"
//!
//! [keyed_limits.per_client]            # a limit per key (features ratelimit + http)
//! key = { peer = { trusted_proxies = ["10.0.0.0/8"] } }   # or { header = "x-api-key" }
//! limit = { quota = 10, period = "1s" }
//!
//! [breakers.backend]       # a degrade_breaker::BreakerConfig per name (feature breaker)
//! wait = "5s"
//!
//! [canaries.v2]            # a degrade_canary::CanaryConfig per name (feature canary)
//! steps = [{ weight_percent = 5, bake = "2m" }, { weight_percent = 100, bake = "5m" }]
//! judge = { min_samples = 500 }
//! "#;
//! let stack = StackConfig::from_toml(file).unwrap().build().unwrap();
//! assert_eq!(stack.admission.snapshot().limit.unwrap().limit, 16); // the limit's initial value
//! assert_eq!(stack.keyed_limits["per_client"].quota_handle().get().quota, 10);
//! assert_eq!(stack.breakers["backend"].handle().config().wait.as_secs(), 5);
//! assert_eq!(stack.canaries["v2"].steps.len(), 2); // for the canary's controller
//! # }
//! ```
//!
//! Every section is the serde form of the layer's own config, so the field names and rules are
//! the ones documented there; an error names the path from the file's root
//! (`limits.api.quota: must be greater than zero`), whether it is a type error found while
//! parsing or a rule found by the layer's `validate()`. Unknown fields are refused.
//!
//! **Live reload.** [`Stack::reload`] validates a whole new file, and checks that everything
//! it changes can change live, before it changes anything; then it puts in force:
//!
//! | section | how | in force from |
//! |---|---|---|
//! | `ladder` | [`Controller::reconfigure`] | the next sample (a `Monitor`'s next tick): level, pin and time at the level kept, sample runs start over |
//! | `policy` | [`DegradeLayer::set_policy`] | the next request (atomic words, no lock on the request path) |
//! | `limits.*` | `QuotaHandle::set` | the next request; the budget already spent carries over |
//! | `breakers.*` thresholds, `wait`, `backoff`, half-open counts | `BreakerHandle::reconfigure` | the next call recorded; an open wait keeps its deadline |
//!
//! What shapes a layer's lock-free parts cannot change while it runs: the `admission` section,
//! a breaker's window kind and size, `slow_call_duration`, `cancelled`, `half_open.permits`,
//! `backoff.seed`, and adding or removing a limit or a breaker. A reload that changes one of
//! them is refused with the field named and "requires a restart", and nothing changes — not
//! even the live parts of the same file. [`Stack::watch`] polls the file and reloads on every
//! change; the admin router's `POST /config` reloads from a request.
//!
//! ```
//! use degrade::config::StackConfig;
//!
//! let file = r#"
//!     [limits.api]
//!     quota = 100
//!     period = "1s"
//! "#;
//! let stack = StackConfig::from_toml(file).unwrap().build().unwrap();
//! assert_eq!(stack.limits["api"].quota_handle().get().quota, 100);
//!
//! let bad = StackConfig::from_toml("[limits.api]\nquota = 0\nperiod = \"1s\"").unwrap_err();
//! assert_eq!(bad.field(), "limits.api.quota");
//! let typo = StackConfig::from_toml("[limits.api]\nquota = \"many\"").unwrap_err();
//! assert_eq!(typo.field(), "limits.api.quota");
//!
//! let lower = StackConfig::from_toml("[limits.api]\nquota = 10\nperiod = \"1s\"").unwrap();
//! stack.reload(&lower).unwrap();
//! assert_eq!(stack.limits["api"].quota_handle().get().quota, 10);
//!
//! // A trigger threshold, live: the next sample is judged by it.
//! use degrade::{Level, ladder::Reading};
//! stack.controller.observe(&[Reading::new("cpu", 0.5)]);
//! assert_eq!(stack.controller.level(), Level::Normal);
//! let hair_trigger = "[ladder]\nescalate_after = 1\nthresholds.light = { enter = 0.4, exit = 0.3 }\n\
//!                     [limits.api]\nquota = 10\nperiod = \"1s\"";
//! stack.reload(&StackConfig::from_toml(hair_trigger).unwrap()).unwrap();
//! stack.controller.observe(&[Reading::new("cpu", 0.5)]);
//! assert_eq!(stack.controller.level(), Level::Light);
//!
//! // The admission mode shapes the layer: refused, and nothing else in the file applies.
//! let restart = StackConfig::from_toml("[admission]\nmode = \"both\"\n[limits.api]\nquota = 1\nperiod = \"1s\"").unwrap();
//! let err = stack.reload(&restart).unwrap_err();
//! assert_eq!(err.field(), "admission.mode");
//! assert!(err.to_string().contains("requires a restart"));
//! assert_eq!(stack.limits["api"].quota_handle().get().quota, 10);
//! ```

use degrade_core::{ConfigError, Controller, DegradeLayer, LadderConfig, Policy};
use serde::Deserialize;
#[cfg(any(feature = "ratelimit", feature = "breaker", feature = "canary"))]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest file read: a service's protection fits in a few kilobytes.
const MAX_FILE: u64 = 1024 * 1024;

/// The file's contents, section by section; see the [module documentation](self).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct StackConfig {
    /// The level controller.
    pub ladder: LadderConfig,
    /// What each level does.
    pub policy: Policy,
    /// The admission layer.
    pub admission: AdmissionConfig,
    /// Rate limits by name.
    #[cfg(feature = "ratelimit")]
    pub limits: BTreeMap<String, degrade_ratelimit::RateLimitConfig>,
    /// Breakers by name.
    #[cfg(feature = "breaker")]
    pub breakers: BTreeMap<String, degrade_breaker::BreakerConfig>,
    /// Rate limits per key (a header's value, the client's address) by name (features
    /// `ratelimit` and `http`).
    #[cfg(all(feature = "ratelimit", feature = "http"))]
    pub keyed_limits: BTreeMap<String, KeyedLimitConfig>,
    /// Canary rollouts by name (feature `canary`): the steps, the analysis and the judge of
    /// each, for its `CanaryController`.
    #[cfg(feature = "canary")]
    pub canaries: BTreeMap<String, degrade_canary::CanaryConfig>,
}

/// The `[admission]` section: how the stack's [`DegradeLayer`] admits. Every field has a
/// default; none can change while the service runs (each shapes the layer).
///
/// ```
/// use degrade::config::StackConfig;
/// use degrade::degrade::Admission;
/// let c = StackConfig::from_toml("[admission]\nmode = \"level-shares\"\nretry_after = \"2s\"").unwrap();
/// assert_eq!(c.admission.mode, Admission::LevelShares);
/// let stack = c.build().unwrap();
/// assert!(stack.admission.snapshot().limit.is_none()); // no adaptive limit in this mode
///
/// let err = StackConfig::from_toml("[admission]\nlimit = { min = 0 }").unwrap_err();
/// assert_eq!(err.field(), "admission.limit.min");
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct AdmissionConfig {
    /// Adaptive limit, the level's shares, or both (default adaptive).
    pub mode: degrade_core::degrade::Admission,
    /// The adaptive limit's configuration (its defaults are meant to be kept).
    pub limit: degrade_core::limit::LimitConfig,
    /// The retry hint of every rejection (default 1 s).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            mode: Default::default(),
            limit: Default::default(),
            retry_after: Duration::from_secs(1),
        }
    }
}

impl AdmissionConfig {
    /// Checks the rules; the error names the field (`limit.min`, `retry_after`).
    ///
    /// ```
    /// let mut a = degrade::config::AdmissionConfig::default();
    /// a.retry_after = std::time::Duration::ZERO;
    /// assert_eq!(a.validate().unwrap_err().field(), "retry_after");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limit.validate().map_err(|e| e.within("limit"))?;
        if self.retry_after.is_zero() {
            return Err(ConfigError::new("retry_after", "must be greater than zero"));
        }
        Ok(())
    }
}

impl StackConfig {
    /// Parses and validates a TOML document; errors name the field's path.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::new("file", format!("not TOML: {}", e.message())))?;
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path.is_empty() || path == "." {
                "file".to_owned()
            } else {
                path
            };
            ConfigError::new(field, e.into_inner().message().to_owned())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates the file at `path` (at most 1 MiB).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::from_toml(&read(path.as_ref())?)
    }

    /// Checks every section with its layer's own rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.ladder.validate().map_err(|e| e.within("ladder"))?;
        self.policy.validate().map_err(|e| e.within("policy"))?;
        self.admission
            .validate()
            .map_err(|e| e.within("admission"))?;
        #[cfg(feature = "ratelimit")]
        for (name, limit) in &self.limits {
            limit
                .validate()
                .map_err(|e| e.within(&format!("limits.{name}")))?;
        }
        #[cfg(feature = "breaker")]
        for (name, breaker) in &self.breakers {
            breaker
                .validate()
                .map_err(|e| e.within(&format!("breakers.{name}")))?;
        }
        #[cfg(all(feature = "ratelimit", feature = "http"))]
        for (name, keyed) in &self.keyed_limits {
            keyed
                .validate()
                .map_err(|e| e.within(&format!("keyed_limits.{name}")))?;
        }
        #[cfg(feature = "canary")]
        for (name, canary) in &self.canaries {
            canary.validate().map_err(|e| {
                // The canary names a step `steps.2`; the file's paths write it `steps[2]`.
                let field =
                    e.field()
                        .split('.')
                        .fold(format!("canaries.{name}"), |mut path, part| {
                            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                                path.push_str(&format!("[{part}]"));
                            } else {
                                path.push('.');
                                path.push_str(part);
                            }
                            path
                        });
                ConfigError::new(field, e.rule().to_owned())
            })?;
        }
        Ok(())
    }

    /// Builds the layers.
    pub fn build(&self) -> Result<Stack, ConfigError> {
        self.validate()?;
        let controller = Controller::new(self.ladder.clone())?;
        let admission = DegradeLayer::builder(controller.handle())
            .policy(self.policy.clone())
            .admission(self.admission.mode)
            .limit(self.admission.limit.clone())
            .retry_after(self.admission.retry_after)
            .build()
            .map_err(|e| {
                if e.field().starts_with("policy") {
                    e
                } else {
                    e.within("admission")
                }
            })?;
        #[cfg(feature = "ratelimit")]
        let limits = self
            .limits
            .iter()
            .map(|(name, c)| {
                degrade_ratelimit::RateLimitLayer::new(c.clone())
                    .map(|l| (name.clone(), l))
                    .map_err(|e| e.within(&format!("limits.{name}")))
            })
            .collect::<Result<_, _>>()?;
        #[cfg(feature = "breaker")]
        let breakers = self
            .breakers
            .iter()
            .map(|(name, c)| {
                degrade_breaker::BreakerLayer::builder(c.clone())
                    .name(name.as_str())
                    .build()
                    .map(|l| (name.clone(), l))
                    .map_err(|e| e.within(&format!("breakers.{name}")))
            })
            .collect::<Result<_, _>>()?;
        #[cfg(all(feature = "ratelimit", feature = "http"))]
        let keyed_limits = self
            .keyed_limits
            .iter()
            .map(|(name, c)| {
                c.build()
                    .map(|l| (name.clone(), l))
                    .map_err(|e| e.within(&format!("keyed_limits.{name}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Stack {
            controller,
            admission,
            #[cfg(all(feature = "ratelimit", feature = "http"))]
            keyed_limits,
            #[cfg(feature = "canary")]
            canaries: self.canaries.clone(),
            #[cfg(feature = "ratelimit")]
            limits,
            #[cfg(feature = "breaker")]
            breakers,
            applied: Arc::new(Mutex::new(self.clone())),
        })
    }
}

/// A `[keyed_limits.NAME]` section: a rate limit per key, the key taken from each request.
///
/// ```toml
/// [keyed_limits.per_client]
/// key = { header = "x-api-key" }   # or key = { peer = {} }, key = { peer = { trusted_proxies = ["10.0.0.0/8"] } }
/// keys = { max_keys = 100000 }     # degrade_ratelimit::KeysConfig (optional)
/// limit = { quota = 10, period = "1s" }   # degrade_ratelimit::RateLimitConfig, per key
/// ```
///
/// The `limit` reloads live like a plain limit's quota; `key` and `keys` shape the key store
/// and require a restart.
///
/// ```
/// use degrade::config::StackConfig;
/// let file = "[keyed_limits.per_client]\nkey = { header = \"x-api-key\" }\nlimit = { quota = 1, period = \"1m\" }";
/// let stack = StackConfig::from_toml(file).unwrap().build().unwrap();
/// assert_eq!(stack.keyed_limits["per_client"].quota_handle().get().quota, 1);
///
/// let bad = StackConfig::from_toml("[keyed_limits.x]\nkey = { header = \"no spaces\" }\nlimit = { quota = 1 }");
/// assert_eq!(bad.unwrap_err().field(), "keyed_limits.x.key.header");
/// let bad = StackConfig::from_toml("[keyed_limits.x]\nkey = { peer = { ipv6_prefix = 200 } }\nlimit = { quota = 1 }");
/// assert_eq!(bad.unwrap_err().field(), "keyed_limits.x.key.peer.ipv6_prefix");
/// let bad = StackConfig::from_toml("[keyed_limits.x]\nkey = { cookie = \"id\" }\nlimit = { quota = 1 }");
/// assert_eq!(bad.unwrap_err().field(), "keyed_limits.x.key");
/// ```
#[cfg(all(feature = "ratelimit", feature = "http"))]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KeyedLimitConfig {
    /// Where the key comes from.
    pub key: KeyBy,
    /// The key store's bounds.
    #[serde(default)]
    pub keys: degrade_ratelimit::KeysConfig,
    /// The limit of each key.
    pub limit: degrade_ratelimit::RateLimitConfig,
}

#[cfg(all(feature = "ratelimit", feature = "http"))]
impl KeyedLimitConfig {
    /// Checks every field; the error names it (`key.header`, `limit.quota`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.key.build().map_err(|e| e.within("key"))?;
        self.keys.validate().map_err(|e| e.within("keys"))?;
        self.limit.validate().map_err(|e| e.within("limit"))
    }

    fn build(&self) -> Result<degrade_ratelimit::RateLimitLayer<FileKey>, ConfigError> {
        let key = self.key.build().map_err(|e| e.within("key"))?;
        degrade_ratelimit::RateLimitLayer::builder(self.limit.clone())
            .keyed(key, self.keys)
            .build()
            .map_err(|e| e.within("limit"))
    }
}

/// Where a keyed limit takes a request's key from: the value of a header (an API key, a
/// tenant), or the client's address (the TCP peer, or behind trusted proxies the forwarded
/// client). In TOML: `{ header = "x-api-key" }` or `{ peer = { … } }`.
#[cfg(all(feature = "ratelimit", feature = "http"))]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum KeyBy {
    /// The value of this header ([`degrade_core::key::HeaderKey`]); a request without it
    /// shares the keyless budget.
    Header(String),
    /// The client's address ([`degrade_core::key::PeerIp`]).
    Peer(degrade_core::key::PeerIpConfig),
}

#[cfg(all(feature = "ratelimit", feature = "http"))]
impl KeyBy {
    fn build(&self) -> Result<FileKey, ConfigError> {
        Ok(match self {
            KeyBy::Header(name) => FileKey::Header(degrade_core::key::HeaderKey::new(name)?),
            KeyBy::Peer(c) => FileKey::Peer(
                degrade_core::key::PeerIp::from_config(c).map_err(|e| e.within("peer"))?,
            ),
        })
    }
}

/// The key extractor a [`KeyBy`] builds: the header's or the peer's extractor of
/// `degrade_core::key`, chosen by the file.
#[cfg(all(feature = "ratelimit", feature = "http"))]
#[derive(Debug, Clone)]
pub enum FileKey {
    /// By header.
    Header(degrade_core::key::HeaderKey),
    /// By client address.
    Peer(degrade_core::key::PeerIp),
}

/// A key found by a [`FileKey`].
#[cfg(all(feature = "ratelimit", feature = "http"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKeyValue {
    /// A header's value, hashed.
    Header(degrade_core::key::HashedKey),
    /// A client's network.
    Peer(std::net::IpAddr),
}

#[cfg(all(feature = "ratelimit", feature = "http"))]
impl degrade_core::key::Keyed for FileKey {
    type Key = FileKeyValue;
}

#[cfg(all(feature = "ratelimit", feature = "http"))]
impl<B> degrade_core::key::KeyExtractor<http::Request<B>> for FileKey {
    #[inline]
    fn extract(&self, req: &http::Request<B>) -> Option<FileKeyValue> {
        match self {
            FileKey::Header(k) => k.extract(req).map(FileKeyValue::Header),
            FileKey::Peer(k) => k.extract(req).map(FileKeyValue::Peer),
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .map_err(|e| ConfigError::new("file", format!("{}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| ConfigError::new("file", format!("{}: {e}", path.display())))?;
    if text.len() as u64 > MAX_FILE {
        return Err(ConfigError::new("file", "larger than 1 MiB"));
    }
    Ok(text)
}

/// The layers a [`StackConfig`] describes. Stack them as usual (`stack.admission.clone()`,
/// `stack.limits["api"].clone()`: clones share their state) and register them with the admin
/// router or the metrics registry like any layer.
#[derive(Debug)]
#[non_exhaustive]
pub struct Stack {
    /// The level controller (the `Monitor` and the admin router take it).
    pub controller: Controller,
    /// The admission layer, under `policy`.
    pub admission: DegradeLayer,
    /// The rate limits by name.
    #[cfg(feature = "ratelimit")]
    pub limits: BTreeMap<String, degrade_ratelimit::RateLimitLayer>,
    /// The breakers by name.
    #[cfg(feature = "breaker")]
    pub breakers: BTreeMap<String, degrade_breaker::BreakerLayer>,
    /// The keyed rate limits by name (use `.http()` on an axum router).
    #[cfg(all(feature = "ratelimit", feature = "http"))]
    pub keyed_limits: BTreeMap<String, degrade_ratelimit::RateLimitLayer<FileKey>>,
    /// The canary configurations by name, validated. A canary routes between two services
    /// of your code, so the stack does not build it: give the configuration to its
    /// controller (`CanaryController::builder(stack.canaries["v2"].clone(), canary.handle())`).
    #[cfg(feature = "canary")]
    pub canaries: BTreeMap<String, degrade_canary::CanaryConfig>,
    applied: Arc<Mutex<StackConfig>>,
}

impl Stack {
    /// The configuration in force.
    pub fn config(&self) -> StackConfig {
        lock(&self.applied).clone()
    }

    /// Puts `new` in force, or changes nothing and names the field that stops it: a field
    /// that fails its layer's rules, or one that cannot change while the service runs.
    pub fn reload(&self, new: &StackConfig) -> Result<(), ConfigError> {
        self.reloader().reload(new)
    }

    /// A cloneable handle that reloads this stack (for the admin router, a signal handler).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            applied: Arc::clone(&self.applied),
            controller: self.controller.clone(),
            admission: self.admission.clone(),
            #[cfg(feature = "breaker")]
            breakers: self
                .breakers
                .iter()
                .map(|(n, b)| (n.clone(), b.handle()))
                .collect(),
            #[cfg(feature = "ratelimit")]
            quotas: self
                .limits
                .iter()
                .map(|(n, l)| (n.clone(), l.quota_handle()))
                .collect(),
            #[cfg(all(feature = "ratelimit", feature = "http"))]
            keyed_quotas: self
                .keyed_limits
                .iter()
                .map(|(n, l)| (n.clone(), l.quota_handle()))
                .collect(),
        }
    }

    /// Reloads the file at `path` whenever its contents change, checking every `interval`
    /// (250 ms is a good default: a change is in force within that). Each attempt is a
    /// `tracing` event (target `degrade::config`) and is published on the returned watcher;
    /// a file that fails changes nothing. The task ends when the [`ConfigWatch`] is dropped.
    ///
    /// Replace the file atomically (write a new one, then rename it over the old), as editors
    /// and Kubernetes config maps do: a file caught half-written is refused like a bad one,
    /// and applied once it is whole.
    pub fn watch(&self, path: impl Into<PathBuf>, interval: Duration) -> ConfigWatch {
        let path = path.into();
        let reloader = self.reloader();
        let (tx, rx) = tokio::sync::watch::channel(None);
        // Read now, not in the task: a change made right after `watch` returns is a change.
        let mut last = read(&path).ok();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let text = read(&path);
                match (&text, &last) {
                    (Ok(t), Some(l)) if t == l => continue,
                    (Err(_), None) => continue, // still unreadable: reported once already
                    _ => {}
                }
                last = text.as_ref().ok().cloned();
                let result = text.and_then(|t| reloader.reload_toml(&t));
                match &result {
                    Ok(()) => {
                        tracing::info!(target: "degrade::config", path = %path.display(), "configuration reloaded")
                    }
                    Err(e) => {
                        tracing::warn!(target: "degrade::config", path = %path.display(), field = e.field(), error = %e, "configuration refused; the previous one stays in force")
                    }
                }
                if tx.send(Some(result)).is_err() {
                    return;
                }
            }
        });
        ConfigWatch { rx, task }
    }
}

/// Reloads a [`Stack`]; from [`Stack::reloader`]. Clones reload the same stack, one reload at
/// a time.
///
/// ```
/// use degrade::config::StackConfig;
/// let stack = StackConfig::from_toml("[limits.api]\nquota = 100\nperiod = \"1s\"").unwrap().build().unwrap();
/// let reloader = stack.reloader();
/// let err = reloader.reload_toml("[limits.api]\nquota = 0\nperiod = \"1s\"").unwrap_err();
/// assert_eq!(err.field(), "limits.api.quota");
/// reloader.reload_toml("[limits.api]\nquota = 50\nperiod = \"1s\"").unwrap();
/// assert_eq!(stack.limits["api"].quota_handle().get().quota, 50);
/// ```
#[derive(Debug, Clone)]
pub struct Reloader {
    applied: Arc<Mutex<StackConfig>>,
    controller: Controller,
    admission: DegradeLayer,
    #[cfg(feature = "breaker")]
    breakers: BTreeMap<String, degrade_breaker::BreakerHandle>,
    #[cfg(feature = "ratelimit")]
    quotas: BTreeMap<String, degrade_ratelimit::QuotaHandle>,
    #[cfg(all(feature = "ratelimit", feature = "http"))]
    keyed_quotas: BTreeMap<String, degrade_ratelimit::QuotaHandle>,
}

impl Reloader {
    /// See [`Stack::reload`].
    pub fn reload(&self, new: &StackConfig) -> Result<(), ConfigError> {
        self.apply(new)
    }

    /// Parses, validates and reloads a TOML document.
    pub fn reload_toml(&self, text: &str) -> Result<(), ConfigError> {
        self.reload(&StackConfig::from_toml(text)?)
    }
}

/// A running [`Stack::watch`]: the latest reload attempt, and the task (stopped on drop).
#[derive(Debug)]
pub struct ConfigWatch {
    rx: tokio::sync::watch::Receiver<Option<Result<(), ConfigError>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConfigWatch {
    /// Waits for the next reload attempt and returns its result.
    pub async fn next(&mut self) -> Option<Result<(), ConfigError>> {
        self.rx.changed().await.ok()?;
        self.rx.borrow_and_update().clone()
    }
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn restart(field: impl Into<String>) -> ConfigError {
    ConfigError::new(
        field.into(),
        "requires a restart: it cannot change while the service runs; nothing was reloaded",
    )
}

impl Reloader {
    fn apply(&self, new: &StackConfig) -> Result<(), ConfigError> {
        new.validate()?;
        // One reload at a time: check against, then replace, the configuration in force.
        let mut current = lock(&self.applied);
        // First every check, so that a refused file changes nothing at all.
        let (a, b) = (&current.admission, &new.admission);
        if a.mode != b.mode {
            return Err(restart("admission.mode"));
        }
        if a.limit != b.limit {
            return Err(restart("admission.limit"));
        }
        if a.retry_after != b.retry_after {
            return Err(restart("admission.retry_after"));
        }
        #[cfg(feature = "ratelimit")]
        if let Some(name) = added_or_removed(&current.limits, &new.limits) {
            return Err(restart(format!("limits.{name}")));
        }
        #[cfg(feature = "breaker")]
        {
            if let Some(name) = added_or_removed(&current.breakers, &new.breakers) {
                return Err(restart(format!("breakers.{name}")));
            }
            for (name, config) in &new.breakers {
                if let Some(old) = current.breakers.get(name) {
                    old.live_change(config)
                        .map_err(|e| e.within(&format!("breakers.{name}")))?;
                }
            }
        }
        #[cfg(all(feature = "ratelimit", feature = "http"))]
        {
            if let Some(name) = added_or_removed(&current.keyed_limits, &new.keyed_limits) {
                return Err(restart(format!("keyed_limits.{name}")));
            }
            for (name, config) in &new.keyed_limits {
                if let Some(old) = current.keyed_limits.get(name) {
                    if old.key != config.key {
                        return Err(restart(format!("keyed_limits.{name}.key")));
                    }
                    if old.keys != config.keys {
                        return Err(restart(format!("keyed_limits.{name}.keys")));
                    }
                }
            }
        }
        #[cfg(feature = "canary")]
        {
            if let Some(name) = added_or_removed(&current.canaries, &new.canaries) {
                return Err(restart(format!("canaries.{name}")));
            }
            for (name, config) in &new.canaries {
                if let Some(old) = current.canaries.get(name)
                    && let Some(field) = canary_change(old, config)
                {
                    return Err(restart(format!("canaries.{name}.{field}")));
                }
            }
        }
        // Then the changes. Everything was validated and checked above, so none of these can
        // fail and leave a half-applied reload; an error here would be a bug, still reported.
        if new.ladder != current.ladder {
            self.controller.reconfigure(new.ladder.clone())?;
        }
        if new.policy != current.policy {
            self.admission.set_policy(&new.policy)?;
        }
        #[cfg(feature = "breaker")]
        for (name, config) in &new.breakers {
            if current.breakers.get(name) != Some(config)
                && let Some(h) = self.breakers.get(name)
            {
                h.reconfigure(config.clone())
                    .map_err(|e| e.within(&format!("breakers.{name}")))?;
            }
        }
        #[cfg(feature = "ratelimit")]
        for (name, config) in &new.limits {
            if current.limits.get(name) != Some(config)
                && let Some(q) = self.quotas.get(name)
            {
                q.set(config.clone())
                    .map_err(|e| e.within(&format!("limits.{name}")))?;
            }
        }
        #[cfg(all(feature = "ratelimit", feature = "http"))]
        for (name, config) in &new.keyed_limits {
            if current.keyed_limits.get(name).map(|c| &c.limit) != Some(&config.limit)
                && let Some(q) = self.keyed_quotas.get(name)
            {
                q.set(config.limit.clone())
                    .map_err(|e| e.within(&format!("keyed_limits.{name}.limit")))?;
            }
        }
        *current = new.clone();
        Ok(())
    }
}

/// The first section of a canary's configuration that differs (a running rollout's steps and
/// judge are its plan: a new plan is a new rollout).
#[cfg(feature = "canary")]
fn canary_change(
    a: &degrade_canary::CanaryConfig,
    b: &degrade_canary::CanaryConfig,
) -> Option<&'static str> {
    if a.steps != b.steps {
        Some("steps")
    } else if a.analysis_interval != b.analysis_interval {
        Some("analysis_interval")
    } else if a.inconclusive_limit != b.inconclusive_limit {
        Some("inconclusive_limit")
    } else if a.judge != b.judge {
        Some("judge")
    } else {
        None
    }
}

/// The first name in one map and not the other.
#[cfg(any(feature = "ratelimit", feature = "breaker", feature = "canary"))]
fn added_or_removed<'a, V>(
    a: &'a BTreeMap<String, V>,
    b: &'a BTreeMap<String, V>,
) -> Option<&'a str> {
    a.keys()
        .chain(b.keys())
        .find(|k| a.contains_key(*k) != b.contains_key(*k))
        .map(String::as_str)
}
