//! The controller's errors: why it could not be built ([`CanaryError`]) and why its state could
//! not be persisted ([`StoreError`]).

use crate::machine::CanaryState;
use degrade_core::ConfigError;
use std::error::Error;
use std::fmt;
use std::io;

/// The rollout's state could not be persisted by the [`StateStore`](crate::StateStore).
///
/// The controller fails safe before it returns this: a rollout whose state cannot be written
/// would resume after a restart at a step nobody judged, so the router's weight is set to 0
/// (all traffic on stable), the rollout is rolled back, the rollback hook runs, and a `tracing`
/// error event is emitted. (A promotion, already judged, stands; only its record is missing.)
/// [`state`](Self::state) is the state the controller ended in.
///
/// ```
/// use degrade_canary::{Canary, CanaryConfig, CanaryController, CanaryError, CanaryState, StateStore};
/// use std::io;
///
/// struct Full;
/// impl StateStore for Full {
///     fn load(&self) -> io::Result<Option<CanaryState>> { Ok(None) }
///     fn save(&self, _: &CanaryState) -> io::Result<()> { Err(io::Error::other("disk full")) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let router = Canary::new(
///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
/// );
/// let err = CanaryController::builder(CanaryConfig::default(), router.handle())
///     .store(Full)
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, CanaryError::Store(_)));
/// assert!(err.to_string().contains("disk full"));
/// assert_eq!(router.weight().get(), 0); // never left on an unjudged candidate
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct StoreError {
    /// The rollout's state after failing safe (rolled back, weight 0).
    pub state: CanaryState,
    source: io::Error,
}

impl StoreError {
    pub(crate) fn new(state: CanaryState, source: io::Error) -> Self {
        Self { state, source }
    }

    /// The store's own error.
    pub fn io(&self) -> &io::Error {
        &self.source
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "canary state store failed ({}): rolled back, weight 0",
            self.source
        )
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Why a [`CanaryController`](crate::CanaryController) could not be built.
///
/// ```
/// use degrade_canary::{Canary, CanaryConfig, CanaryController, CanaryError};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let router = Canary::new(
///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
/// );
/// let mut cfg = CanaryConfig::default();
/// cfg.steps.clear();
/// let err = CanaryController::builder(cfg, router.handle()).build().unwrap_err();
/// let CanaryError::Config(e) = err else { panic!("a config error") };
/// assert_eq!(e.field(), "steps");
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum CanaryError {
    /// The configuration (steps, judge, analysis interval) is invalid, or the saved state does
    /// not fit it.
    Config(ConfigError),
    /// The store could not be read; the router's weight was not changed.
    Load(io::Error),
    /// The store could not save the starting state; the router's weight was set to 0.
    Store(StoreError),
}

impl fmt::Display for CanaryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CanaryError::Config(e) => e.fmt(f),
            CanaryError::Load(e) => write!(f, "canary state store could not be read: {e}"),
            CanaryError::Store(e) => e.fmt(f),
        }
    }
}

impl Error for CanaryError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            CanaryError::Config(e) => Some(e),
            CanaryError::Load(e) => Some(e),
            CanaryError::Store(e) => Some(e),
        }
    }
}

impl From<ConfigError> for CanaryError {
    fn from(e: ConfigError) -> Self {
        CanaryError::Config(e)
    }
}

impl From<StoreError> for CanaryError {
    fn from(e: StoreError) -> Self {
        CanaryError::Store(e)
    }
}
