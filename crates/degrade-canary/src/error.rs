//! The controller's runtime error.

use crate::machine::CanaryState;
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
/// use degrade_canary::{Canary, CanaryConfig, CanaryController, CanaryState, StateStore};
/// use std::io;
///
/// struct Full;
/// impl StateStore for Full {
///     fn load(&self) -> io::Result<Option<CanaryState>> { Ok(None) }
///     fn save(&self, _: &CanaryState) -> io::Result<()> { Err(io::Error::other("disk full")) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let router = Canary::builder().build(
///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
/// );
/// let err = CanaryController::builder(CanaryConfig::default(), router.handle())
///     .store(Full)
///     .start()
///     .unwrap_err();
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

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
