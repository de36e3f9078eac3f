//! `ServiceBuilder` methods for degrade's layers.

use crate::degrade::DegradeLayer;
use tower::ServiceBuilder;
use tower::layer::util::Stack;

mod sealed {
    #[allow(unreachable_pub)]
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds degrade's layers to a [`tower::ServiceBuilder`] by name, as tower-http's
/// `ServiceBuilderExt` does. Sealed: implemented for `ServiceBuilder` only.
///
/// ```
/// use degrade_core::{Controller, DegradeLayer, Policy, ServiceBuilderExt};
/// use tower::ServiceBuilder;
///
/// let c = Controller::new(Default::default()).unwrap();
/// let svc = ServiceBuilder::new()
///     .degrade(DegradeLayer::new(c.handle(), Policy::default()).unwrap())
///     .service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) });
/// # let _ = svc;
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds a [`DegradeLayer`].
    fn degrade<P, M>(
        self,
        layer: DegradeLayer<P, M>,
    ) -> ServiceBuilder<Stack<DegradeLayer<P, M>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn degrade<P, M>(
        self,
        layer: DegradeLayer<P, M>,
    ) -> ServiceBuilder<Stack<DegradeLayer<P, M>, L>> {
        self.layer(layer)
    }
}
