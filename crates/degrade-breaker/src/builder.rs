//! `ServiceBuilder` methods for the breaker.

use crate::layer::BreakerLayer;
use tower::ServiceBuilder;
use tower::layer::util::Stack;

mod sealed {
    #[allow(unreachable_pub)]
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds `.breaker(layer)` to `tower::ServiceBuilder` (sealed: implemented for
/// `ServiceBuilder` only).
///
/// ```
/// use degrade_breaker::{BreakerConfig, BreakerLayer, ServiceBuilderExt};
/// use tower::ServiceBuilder;
///
/// let layer = BreakerLayer::new(BreakerConfig::default())?;
/// let svc = ServiceBuilder::new()
///     .breaker(layer)
///     .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) });
/// # let _ = svc;
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds a [`BreakerLayer`].
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, ServiceBuilderExt};
    /// let b = tower::ServiceBuilder::new().breaker(BreakerLayer::new(BreakerConfig::default())?);
    /// # let _ = b;
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    fn breaker<C, K, M>(
        self,
        layer: BreakerLayer<C, K, M>,
    ) -> ServiceBuilder<Stack<BreakerLayer<C, K, M>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn breaker<C, K, M>(
        self,
        layer: BreakerLayer<C, K, M>,
    ) -> ServiceBuilder<Stack<BreakerLayer<C, K, M>, L>> {
        self.layer(layer)
    }
}
