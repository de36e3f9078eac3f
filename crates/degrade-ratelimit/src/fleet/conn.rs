//! The one way every fleet part talks to Redis: a single node through redis-rs's
//! `ConnectionManager`, or a Redis Cluster through redis-rs's cluster client (each key's
//! command routed to the node that owns its slot, `MOVED` / `ASK` followed). Both connect
//! lazily (a layer builds while Redis is down) and reconnect by themselves; both are bounded by
//! the same timeout, and every caller also bounds each call with `tokio::time::timeout`.

use degrade_core::ConfigError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::fmt;
use std::time::Duration;

/// Where Redis is, checked: one node, or the seed nodes of a cluster.
pub(crate) enum Target {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClientBuilder>, usize),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(_) => f.write_str("Single"),
            Self::Cluster(_, n) => write!(f, "Cluster({n} seeds)"),
        }
    }
}

/// The default `url`, which `cluster` may leave as it is.
pub(crate) const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Checks `url` and `cluster` (the two fields every fleet configuration spells the same way):
/// with `cluster` empty, one Redis at `url`; otherwise a Redis Cluster reached through these
/// seed nodes, and `url` must be left at its default.
pub(crate) fn target(url: &str, cluster: &[String]) -> Result<Target, ConfigError> {
    if cluster.is_empty() {
        let client = redis::Client::open(url)
            .map_err(|e| ConfigError::new("url", format!("is not a Redis URL: {e}")))?;
        return Ok(Target::Single(client));
    }
    if url != DEFAULT_URL {
        return Err(ConfigError::new(
            "url",
            "must be left unset when `cluster` names the cluster's nodes",
        ));
    }
    for (i, node) in cluster.iter().enumerate() {
        redis::Client::open(node.as_str()).map_err(|e| {
            ConfigError::new(format!("cluster[{i}]"), format!("is not a Redis URL: {e}"))
        })?;
    }
    Ok(Target::Cluster(
        Box::new(redis::cluster::ClusterClientBuilder::new(
            cluster.iter().map(String::as_str),
        )),
        cluster.len(),
    ))
}

/// A connection to a single Redis or to a cluster; clones share it.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Conn::Single",
            Self::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl Conn {
    /// Opens `target` lazily: nothing is sent until the first command. Needs a tokio runtime
    /// (both clients spawn their connection task on it).
    pub(crate) fn open(target: Target, timeout: Duration) -> Result<Self, ConfigError> {
        match target {
            Target::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(100));
                ConnectionManager::new_lazy_with_config(client, cfg)
                    .map(Self::Single)
                    .map_err(|e| ConfigError::new("url", format!("cannot be used: {e}")))
            }
            Target::Cluster(builder, _) => {
                // One retry, waiting at most 100 ms: the caller's timeout bounds the call
                // anyway, and a retry after a `MOVED` must not cost a request its budget.
                let client = builder
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .min_retry_wait(1)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|e| ConfigError::new("cluster", format!("cannot be used: {e}")))?;
                Ok(Self::Cluster(
                    client.get_pending_async_connection_with_config(
                        redis::cluster::ClusterConfig::new()
                            .set_connection_timeout(timeout)
                            .set_response_timeout(timeout),
                    ),
                ))
            }
        }
    }

    /// Runs one command. On a cluster, a single-key command goes to the node that owns the
    /// key's slot (following `MOVED` after a failover).
    pub(crate) async fn query(&self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            Self::Single(m) => cmd.query_async(&mut m.clone()).await,
            Self::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}
