//! The instances a rollout upgrades.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// Where an instance is in its life cycle.
///
/// ```
/// use degrade_rollout::InstanceState;
/// assert_eq!(InstanceState::Draining.to_string(), "draining");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Serving, not part of the current batch.
    Running,
    /// Taken out of the balancer; waiting for its in-flight requests to finish.
    Draining,
    /// Stopped by the driver.
    Stopped,
    /// The driver is installing a version.
    Installing,
    /// Started, not yet healthy enough to serve.
    Starting,
    /// Passed its health gate and serves; baking (min ready time) before it counts as done.
    Ready,
    /// A driver step or the health gate failed.
    Failed,
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstanceState::Running => "running",
            InstanceState::Draining => "draining",
            InstanceState::Stopped => "stopped",
            InstanceState::Installing => "installing",
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Failed => "failed",
        })
    }
}

/// One instance of the service: a stable id, the address it listens on, the version it runs
/// and its state.
///
/// During a surge upgrade the same id briefly has two instances (the old one and its
/// replacement on a spare address); the replacement takes over the id when the old one is
/// retired, so an id may change its address across a rollout.
///
/// ```
/// use degrade_rollout::{Instance, InstanceState};
/// let i = Instance::new("web-1", "127.0.0.1:8081".parse().unwrap(), "v1");
/// assert_eq!(i.state, InstanceState::Running);
/// assert_eq!(i.to_string(), "web-1@127.0.0.1:8081 (v1, running)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Instance {
    /// Stable identifier, unique in the set.
    pub id: String,
    /// The address the instance listens on.
    pub address: SocketAddr,
    /// The version it runs (or is being given).
    pub version: String,
    /// Its state.
    pub state: InstanceState,
}

impl Instance {
    /// A running instance.
    ///
    /// ```
    /// # use degrade_rollout::Instance;
    /// let i = Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1");
    /// assert_eq!(i.version, "v1");
    /// ```
    pub fn new(id: impl Into<String>, address: SocketAddr, version: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            address,
            version: version.into(),
            state: InstanceState::Running,
        }
    }

    /// The key of this instance in the discover stream.
    ///
    /// ```
    /// # use degrade_rollout::Instance;
    /// let i = Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1");
    /// assert_eq!(i.key().id, "a");
    /// ```
    pub fn key(&self) -> Key {
        Key {
            id: self.id.clone(),
            address: self.address,
        }
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} ({}, {})",
            self.id, self.address, self.version, self.state
        )
    }
}

/// The key of an endpoint in the discover stream: the id and the address (an id has two
/// endpoints while a surge replacement and the instance it replaces both serve).
///
/// ```
/// use degrade_rollout::Key;
/// let k = Key { id: "a".into(), address: "127.0.0.1:1".parse().unwrap() };
/// assert_eq!(k.to_string(), "a@127.0.0.1:1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// The instance id.
    pub id: String,
    /// The address.
    pub address: SocketAddr,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.address)
    }
}
