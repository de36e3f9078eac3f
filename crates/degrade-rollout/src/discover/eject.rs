//! Passive ejection's settings, the default judgement of a transport failure, and the
//! re-probe of an ejected endpoint.

use crate::instance::Instance;
use degrade_core::{BoxError, ConfigError};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::error::Error;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

/// Passive ejection of endpoints whose calls fail at the transport (Envoy's outlier detection
/// for locally originated failures): see [the module documentation](crate::discover#passive-ejection).
///
/// ```
/// use degrade_rollout::discover::EjectionConfig;
/// let c: EjectionConfig = serde_json::from_str(r#"{"reprobe_interval": "250ms", "reprobe_max": "10s"}"#).unwrap();
/// assert_eq!(c.consecutive_failures, 1);
/// assert!(c.validate().is_ok());
/// let bad = EjectionConfig { max_ejected_percent: 150, ..c };
/// assert_eq!(bad.validate().unwrap_err().field(), "max_ejected_percent");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EjectionConfig {
    /// Whether endpoints are ejected at all. Default true.
    pub enabled: bool,
    /// Consecutive calls failing at the transport that eject an endpoint. Default 1: a
    /// refused or reset connection is not a matter of statistics, and each balancer then
    /// stops routing to a dead endpoint after one failed call.
    pub consecutive_failures: u32,
    /// Most endpoints ejected at once, as a percentage of the pool (rounded down, but at
    /// least one). Default 100: an ejected endpoint comes back as soon as it passes a health
    /// check, so ejecting a live one by mistake costs little, while routing to dead ones fails
    /// every call sent there.
    pub max_ejected_percent: u32,
    /// Time from an ejection to the first re-probe, doubled after each failed one. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub reprobe_interval: Duration,
    /// Longest time between re-probes. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub reprobe_max: Duration,
    /// Longest wait for one re-probe. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 1,
            max_ejected_percent: 100,
            reprobe_interval: Duration::from_secs(1),
            reprobe_max: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(2),
        }
    }
}

impl EjectionConfig {
    /// Ejection turned off: endpoints leave the pool only when drained.
    ///
    /// ```
    /// # use degrade_rollout::discover::EjectionConfig;
    /// assert!(!EjectionConfig::disabled().enabled);
    /// ```
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Checks every field; the error names the first bad one.
    ///
    /// ```
    /// # use degrade_rollout::discover::EjectionConfig;
    /// let c = EjectionConfig { consecutive_failures: 0, ..Default::default() };
    /// assert_eq!(c.validate().unwrap_err().field(), "consecutive_failures");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.consecutive_failures == 0 {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be at least 1",
            ));
        }
        if self.max_ejected_percent > 100 {
            return Err(ConfigError::new(
                "max_ejected_percent",
                "must be at most 100",
            ));
        }
        for (field, d) in [
            ("reprobe_interval", self.reprobe_interval),
            ("reprobe_max", self.reprobe_max),
            ("probe_timeout", self.probe_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
        }
        if self.reprobe_max < self.reprobe_interval {
            return Err(ConfigError::new(
                "reprobe_max",
                "must be at least reprobe_interval",
            ));
        }
        Ok(())
    }

    /// Most endpoints ejected at once out of `members`.
    pub(super) fn max_ejected(&self, members: usize) -> usize {
        let share = members as u128 * u128::from(self.max_ejected_percent.min(100)) / 100;
        usize::try_from(share).unwrap_or(usize::MAX).max(1)
    }
}

/// The default judgement of a failed call: did it fail at the transport — the endpoint could
/// not be reached, or the connection died under the call — rather than with an answer?
///
/// It walks the error's `source()` chain (so wrappers such as hyper-util's client error are
/// seen through) and says yes for
///
/// * a [`std::io::Error`] of kind `ConnectionRefused`, `ConnectionReset`,
///   `ConnectionAborted`, `NotConnected`, `BrokenPipe`, `UnexpectedEof`,
///   `AddrNotAvailable`, `HostUnreachable` or `NetworkUnreachable` (a process gone, a port
///   closed, a peer reset);
/// * a [`hyper::Error`] whose connection closed before the message completed
///   (`is_incomplete_message`), whose connection task is gone (`is_closed`) or that was
///   canceled because its connection went away (`is_canceled`).
///
/// Timeouts are not transport failures: a slow endpoint is not a dead one (the rollout's
/// health checks see a hung one). An HTTP 5xx is not one either: the endpoint answered.
///
/// ```
/// use degrade_rollout::discover::is_transport_failure;
/// use std::io::{Error, ErrorKind};
///
/// let refused = Error::from(ErrorKind::ConnectionRefused);
/// assert!(is_transport_failure(&refused));
/// // Wrapped, as clients do: seen through the source chain.
/// let wrapped = Error::other(refused);
/// assert!(is_transport_failure(&wrapped));
/// assert!(!is_transport_failure(&Error::from(ErrorKind::TimedOut)));
/// let answer: degrade_core::BoxError = "status 500".into();
/// assert!(!is_transport_failure(&*answer));
/// ```
pub fn is_transport_failure(error: &(dyn Error + 'static)) -> bool {
    // Bounded: a source chain is finite in practice, but nothing guarantees it.
    let mut next = Some(error);
    for _ in 0..32 {
        let Some(e) = next else { break };
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::NotConnected
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
            ) {
                return true;
            }
            // An io::Error wrapping another error names it by `get_ref`, not as its source.
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
                continue;
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_closed() || h.is_canceled())
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The judgement of a transport failure a pool uses.
pub(super) type Classify = Arc<dyn Fn(&(dyn Error + 'static)) -> bool + Send + Sync>;

/// A health check of an ejected endpoint.
pub(super) type HealthCheck =
    Arc<dyn Fn(&Instance) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// The re-probe without a configured check: a TCP connection to the instance's address.
pub(super) async fn tcp_probe(instance: Instance) -> Result<(), BoxError> {
    tokio::net::TcpStream::connect(instance.address).await?;
    Ok(())
}
