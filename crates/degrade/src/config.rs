//! One file for a service's protection (feature `config`): the ladder, the level policy, the
//! rate limits and the breakers in TOML, built into layers, and reloaded while the service
//! runs.
//!
//! ```toml
//! [ladder]                 # degrade_core::LadderConfig
//! escalate_after = 2
//!
//! [policy]                 # degrade_core::Policy (the level's actions)
//!
//! [limits.api]             # a degrade_ratelimit::RateLimitConfig per name (feature ratelimit)
//! quota = 100
//! period = "1s"
//!
//! [breakers.backend]       # a degrade_breaker::BreakerConfig per name (feature breaker)
//! wait = "5s"
//! ```
//!
//! Every section is the serde form of the layer's own config, so the field names and rules are
//! the ones documented there; an error names the path from the file's root
//! (`limits.api.quota: must be greater than zero`), whether it is a type error found while
//! parsing or a rule found by the layer's `validate()`.
//!
//! **Live reload.** [`Stack::reload`] validates a whole new file before it changes anything,
//! then puts the limits' quotas in force through their `QuotaHandle`s (the next request is
//! decided under the new quota; the budget already spent carries over). The ladder, the policy
//! and the breakers are not live yet: a reload that changes them, or adds or removes a limit,
//! is refused with the field named and nothing changes — restart to apply those.
//! [`Stack::watch`] polls the file and reloads on every change.
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
//! ```

use degrade_core::{ConfigError, Controller, DegradeLayer, LadderConfig, Policy};
use serde::Deserialize;
#[cfg(any(feature = "ratelimit", feature = "breaker"))]
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
    /// Rate limits by name.
    #[cfg(feature = "ratelimit")]
    pub limits: BTreeMap<String, degrade_ratelimit::RateLimitConfig>,
    /// Breakers by name.
    #[cfg(feature = "breaker")]
    pub breakers: BTreeMap<String, degrade_breaker::BreakerConfig>,
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
        Ok(())
    }

    /// Builds the layers.
    pub fn build(&self) -> Result<Stack, ConfigError> {
        self.validate()?;
        let controller = Controller::new(self.ladder.clone())?;
        let admission = DegradeLayer::new(controller.handle(), self.policy.clone())
            .map_err(|e| e.within("policy"))?;
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
        Ok(Stack {
            controller,
            admission,
            #[cfg(feature = "ratelimit")]
            limits,
            #[cfg(feature = "breaker")]
            breakers,
            applied: Arc::new(Mutex::new(self.clone())),
        })
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
            #[cfg(feature = "ratelimit")]
            quotas: self
                .limits
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
    #[cfg(feature = "ratelimit")]
    quotas: BTreeMap<String, degrade_ratelimit::QuotaHandle>,
}

impl Reloader {
    /// See [`Stack::reload`].
    pub fn reload(&self, new: &StackConfig) -> Result<(), ConfigError> {
        reload(
            &self.applied,
            #[cfg(feature = "ratelimit")]
            &self.quotas,
            new,
        )
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
        "cannot change while the service runs (restart to apply); nothing was reloaded",
    )
}

fn reload(
    applied: &Mutex<StackConfig>,
    #[cfg(feature = "ratelimit")] quotas: &BTreeMap<String, degrade_ratelimit::QuotaHandle>,
    new: &StackConfig,
) -> Result<(), ConfigError> {
    new.validate()?;
    // One reload at a time: check against, then replace, the configuration in force.
    let mut current = lock(applied);
    if new.ladder != current.ladder {
        return Err(restart("ladder"));
    }
    if new.policy != current.policy {
        return Err(restart("policy"));
    }
    #[cfg(feature = "breaker")]
    if let Some(name) = changed_keys(&current.breakers, &new.breakers) {
        return Err(restart(format!("breakers.{name}")));
    }
    #[cfg(feature = "ratelimit")]
    {
        for name in current.limits.keys().chain(new.limits.keys()) {
            if current.limits.contains_key(name) != new.limits.contains_key(name) {
                return Err(restart(format!("limits.{name}")));
            }
        }
        // Validated above, so no `set` below can fail and leave a half-applied reload.
        for (name, config) in &new.limits {
            if current.limits.get(name) != Some(config)
                && let Some(q) = quotas.get(name)
            {
                q.set(config.clone())
                    .map_err(|e| e.within(&format!("limits.{name}")))?;
            }
        }
    }
    *current = new.clone();
    Ok(())
}

#[cfg(feature = "breaker")]
fn changed_keys<'a, V: PartialEq>(
    a: &'a BTreeMap<String, V>,
    b: &'a BTreeMap<String, V>,
) -> Option<&'a str> {
    a.keys()
        .chain(b.keys())
        .find(|k| a.get(*k) != b.get(*k))
        .map(String::as_str)
}
