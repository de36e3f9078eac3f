//! `ServiceBuilder` methods for every degrade layer, as tower-http's `ServiceBuilderExt`.

use tower::ServiceBuilder;
use tower::layer::util::Stack;

/// A `ServiceBuilder` with `Outer` added on top of `L`.
#[cfg(feature = "breaker")]
type Stacked<Outer, L> = ServiceBuilder<Stack<Outer, L>>;

mod sealed {
    #[allow(unreachable_pub)]
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds degrade's layers to a [`tower::ServiceBuilder`] by name; one method per layer, each
/// behind its policy's feature. Sealed: implemented for `ServiceBuilder` only.
///
/// ```
/// use degrade::prelude::*;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let controller = Controller::new(Default::default()).unwrap();
/// let mut svc = ServiceBuilder::new()
///     .degrade(
///         DegradeLayer::builder(controller.handle())
///             .admission(degrade::degrade::Admission::LevelShares) // a pinned level sheds
///             .build()
///             .unwrap(),
///     )
///     .service_fn(|()| async { Ok::<_, std::convert::Infallible>("ok") });
///
/// assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "ok");
/// controller.pin(Level::Emergency); // sheds the default priority
/// assert!(svc.ready().await.unwrap().call(()).await.unwrap_err().is::<Shed>());
/// # }
/// ```
///
/// With features `ratelimit` and `breaker`, `.rate_limit_shared(..)` and `.breaker(..)` stack the same
/// way (see the crate's README).
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds a [`DegradeLayer`](crate::DegradeLayer): admission by level and priority.
    fn degrade<P, M>(
        self,
        layer: crate::DegradeLayer<P, M>,
    ) -> ServiceBuilder<Stack<crate::DegradeLayer<P, M>, L>>;

    /// Adds a [`RateLimitLayer`](crate::ratelimit::RateLimitLayer) (feature `ratelimit`): one budget
    /// shared by every clone (tower's own `rate_limit` gives each clone its own).
    #[cfg(feature = "ratelimit")]
    fn rate_limit_shared<E, W, C, M>(
        self,
        layer: crate::ratelimit::RateLimitLayer<E, W, C, M>,
    ) -> ServiceBuilder<Stack<crate::ratelimit::RateLimitLayer<E, W, C, M>, L>>
    where
        E: crate::key::Keyed;

    /// Adds a fleet-wide [`FleetLayer`](crate::ratelimit::fleet::FleetLayer) (features
    /// `ratelimit` and `redis`).
    #[cfg(all(feature = "ratelimit", feature = "redis"))]
    fn fleet_rate_limit<E, W, M>(
        self,
        layer: crate::ratelimit::fleet::FleetLayer<E, W, M>,
    ) -> ServiceBuilder<Stack<crate::ratelimit::fleet::FleetLayer<E, W, M>, L>>
    where
        E: crate::key::Keyed;

    /// Adds a [`BreakerLayer`](crate::breaker::BreakerLayer) (feature `breaker`).
    #[cfg(feature = "breaker")]
    fn breaker<C, K, M>(
        self,
        layer: crate::breaker::BreakerLayer<C, K, M>,
    ) -> ServiceBuilder<Stack<crate::breaker::BreakerLayer<C, K, M>, L>>;

    /// Adds a [`KeyedBreakerLayer`](crate::breaker::KeyedBreakerLayer) (feature `breaker`).
    #[cfg(feature = "breaker")]
    fn keyed_breaker<E, Key, C, K, M>(
        self,
        layer: crate::breaker::KeyedBreakerLayer<E, Key, C, K, M>,
    ) -> Stacked<crate::breaker::KeyedBreakerLayer<E, Key, C, K, M>, L>;

    /// Adds an [`ObserveLayer`](crate::triggers::ObserveLayer) (feature `triggers`): latency,
    /// errors and in-flight for the level's signals.
    #[cfg(feature = "triggers")]
    fn observe<C, K>(
        self,
        layer: crate::triggers::ObserveLayer<C, K>,
    ) -> ServiceBuilder<Stack<crate::triggers::ObserveLayer<C, K>, L>>;

    /// Adds a [`CoalesceLayer`](crate::otel::CoalesceLayer) (feature `otel`): one export at a
    /// time, later batches merged while it runs.
    #[cfg(feature = "otel")]
    fn coalesce(
        self,
        layer: crate::otel::CoalesceLayer,
    ) -> ServiceBuilder<Stack<crate::otel::CoalesceLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn degrade<P, M>(
        self,
        layer: crate::DegradeLayer<P, M>,
    ) -> ServiceBuilder<Stack<crate::DegradeLayer<P, M>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "ratelimit")]
    fn rate_limit_shared<E, W, C, M>(
        self,
        layer: crate::ratelimit::RateLimitLayer<E, W, C, M>,
    ) -> ServiceBuilder<Stack<crate::ratelimit::RateLimitLayer<E, W, C, M>, L>>
    where
        E: crate::key::Keyed,
    {
        self.layer(layer)
    }

    #[cfg(all(feature = "ratelimit", feature = "redis"))]
    fn fleet_rate_limit<E, W, M>(
        self,
        layer: crate::ratelimit::fleet::FleetLayer<E, W, M>,
    ) -> ServiceBuilder<Stack<crate::ratelimit::fleet::FleetLayer<E, W, M>, L>>
    where
        E: crate::key::Keyed,
    {
        self.layer(layer)
    }

    #[cfg(feature = "breaker")]
    fn breaker<C, K, M>(
        self,
        layer: crate::breaker::BreakerLayer<C, K, M>,
    ) -> ServiceBuilder<Stack<crate::breaker::BreakerLayer<C, K, M>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "breaker")]
    fn keyed_breaker<E, Key, C, K, M>(
        self,
        layer: crate::breaker::KeyedBreakerLayer<E, Key, C, K, M>,
    ) -> Stacked<crate::breaker::KeyedBreakerLayer<E, Key, C, K, M>, L> {
        self.layer(layer)
    }

    #[cfg(feature = "triggers")]
    fn observe<C, K>(
        self,
        layer: crate::triggers::ObserveLayer<C, K>,
    ) -> ServiceBuilder<Stack<crate::triggers::ObserveLayer<C, K>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "otel")]
    fn coalesce(
        self,
        layer: crate::otel::CoalesceLayer,
    ) -> ServiceBuilder<Stack<crate::otel::CoalesceLayer, L>> {
        self.layer(layer)
    }
}
