//! The one way every fleet part of the family talks to Redis (feature `redis`): the fleet
//! rate limiter, the incident switch and the fleet canary all connect through [`RedisConn`].
//!
//! A single node goes through redis-rs's `ConnectionManager`, a Redis Cluster through its
//! cluster client (each key's command routed to the node that owns its slot, `MOVED` / `ASK`
//! followed). Both connect lazily (a layer builds while Redis is down) and reconnect by
//! themselves; both are bounded by the same timeout, and every caller also bounds each call
//! with `tokio::time::timeout`.
//!
//! ```
//! use degrade_core::fleet::{DEFAULT_REDIS_URL, RedisTarget};
//! assert!(RedisTarget::parse(DEFAULT_REDIS_URL, &[]).is_ok());
//! let err = RedisTarget::parse("not a url", &[]).unwrap_err();
//! assert_eq!(err.field(), "url");
//! ```

use crate::ConfigError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::fmt;
use std::time::Duration;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

/// The default Redis URL of every fleet configuration, which `cluster` may leave as it is.
///
/// ```
/// assert_eq!(degrade_core::fleet::DEFAULT_REDIS_URL, "redis://127.0.0.1:6379");
/// ```
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Where Redis is, checked: one node, or the seed nodes of a cluster.
///
/// ```
/// use degrade_core::fleet::RedisTarget;
/// let cluster = ["redis://127.0.0.1:7000".to_owned(), "redis://127.0.0.1:7001".to_owned()];
/// let t = RedisTarget::parse(degrade_core::fleet::DEFAULT_REDIS_URL, &cluster).unwrap();
/// assert_eq!(format!("{t:?}"), "Cluster(2 seeds)");
/// // A cluster and a URL of its own: which one is meant?
/// let err = RedisTarget::parse("redis://10.0.0.1", &cluster).unwrap_err();
/// assert_eq!(err.field(), "url");
/// ```
pub enum RedisTarget {
    /// One Redis.
    Single(redis::Client),
    /// The seed nodes of a Redis Cluster, and how many.
    Cluster(Box<redis::cluster::ClusterClientBuilder>, usize),
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(_) => f.write_str("Single"),
            Self::Cluster(_, n) => write!(f, "Cluster({n} seeds)"),
        }
    }
}

impl RedisTarget {
    /// Checks `url` and `cluster` (the two fields every fleet configuration spells the same
    /// way): with `cluster` empty, one Redis at `url`; otherwise a Redis Cluster reached
    /// through these seed nodes, and `url` must be left at [`DEFAULT_REDIS_URL`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `url` or `cluster[i]`.
    ///
    /// ```
    /// use degrade_core::fleet::{DEFAULT_REDIS_URL, RedisTarget};
    /// let err = RedisTarget::parse(DEFAULT_REDIS_URL, &["nope".to_owned()]).unwrap_err();
    /// assert_eq!(err.field(), "cluster[0]");
    /// ```
    pub fn parse(url: &str, cluster: &[String]) -> Result<Self, ConfigError> {
        if cluster.is_empty() {
            let client = redis::Client::open(url)
                .map_err(|e| ConfigError::new("url", format!("is not a Redis URL: {e}")))?;
            return Ok(Self::Single(client));
        }
        if url != DEFAULT_REDIS_URL {
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
        Ok(Self::Cluster(
            Box::new(redis::cluster::ClusterClientBuilder::new(
                cluster.iter().map(String::as_str),
            )),
            cluster.len(),
        ))
    }
}

/// A connection to a single Redis or to a cluster; clones share it.
///
/// ```
/// use degrade_core::fleet::{RedisConn, RedisTarget};
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Nothing listens on port 1: opening succeeds (lazily), the first command fails in time.
/// let target = RedisTarget::parse("redis://127.0.0.1:1", &[]).unwrap();
/// let conn = RedisConn::open(target, Duration::from_millis(100)).unwrap();
/// assert!(conn.query(&redis::cmd("PING")).await.is_err());
/// # }
/// ```
#[derive(Clone)]
pub enum RedisConn {
    /// One Redis.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConn::Single",
            Self::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl RedisConn {
    /// Opens `target` lazily: nothing is sent until the first command. Needs a tokio runtime
    /// (both clients spawn their connection task on it).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `url` or `cluster` when the client cannot be built.
    ///
    /// ```
    /// # use degrade_core::fleet::{RedisConn, RedisTarget};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let t = RedisTarget::parse(degrade_core::fleet::DEFAULT_REDIS_URL, &[]).unwrap();
    /// let conn = RedisConn::open(t, std::time::Duration::from_millis(200)).unwrap();
    /// assert_eq!(format!("{conn:?}"), "RedisConn::Single");
    /// # }
    /// ```
    pub fn open(target: RedisTarget, timeout: Duration) -> Result<Self, ConfigError> {
        match target {
            RedisTarget::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(100));
                ConnectionManager::new_lazy_with_config(client, cfg)
                    .map(Self::Single)
                    .map_err(|e| ConfigError::new("url", format!("cannot be used: {e}")))
            }
            RedisTarget::Cluster(builder, _) => {
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

    /// Runs one command. On a cluster, a single-key command (or a script whose keys share a
    /// hash tag) goes to the node that owns the key's slot (following `MOVED` after a
    /// failover).
    ///
    /// # Errors
    ///
    /// Redis's error, a connection error, or the client's timeout.
    ///
    /// ```
    /// # use degrade_core::fleet::{RedisConn, RedisTarget};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let conn = RedisConn::open(RedisTarget::parse("redis://127.0.0.1:1", &[]).unwrap(), std::time::Duration::from_millis(50)).unwrap();
    /// let reply = conn.query(&redis::cmd("GET").arg("k").to_owned()).await;
    /// assert!(reply.is_err()); // nothing listens on port 1
    /// # }
    /// ```
    pub async fn query(&self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            Self::Single(m) => cmd.query_async(&mut m.clone()).await,
            Self::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}
