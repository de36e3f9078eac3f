//! The Redis connection every fleet part shares lives in degrade-core
//! ([`degrade_core::fleet`]), so the fleet canary uses the same one; these names keep the
//! fleet modules of this crate reading as before.

use degrade_core::ConfigError;

pub(crate) use degrade_core::fleet::{
    DEFAULT_REDIS_URL as DEFAULT_URL, RedisConn as Conn, RedisTarget as Target,
};

/// Checks `url` and `cluster` ([`Target::parse`]).
pub(crate) fn target(url: &str, cluster: &[String]) -> Result<Target, ConfigError> {
    Target::parse(url, cluster)
}
