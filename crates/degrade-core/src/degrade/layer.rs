//! The [`DegradeLayer`] and its builder.

use super::{Admission, Degrade, Gate, Shared};
use crate::answer::Errors;
#[cfg(feature = "grpc")]
use crate::answer::GrpcResponses;
#[cfg(feature = "http")]
use crate::answer::HttpResponses;
use crate::config::ConfigError;
use crate::degrade::DegradeSnapshot;
use crate::handle::LevelHandle;
use crate::limit::LimitConfig;
use crate::policy::Policy;
use crate::priority::Fixed;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

/// Admission by an adaptive concurrency limit, highest priority first (and, if chosen, by the
/// level's shares); see the [`degrade`](crate::degrade) module.
///
/// Cloning the layer shares its state: every service made from it, by any clone, counts into
/// the same counters.
///
/// ```
/// use degrade_core::{Controller, DegradeLayer, Policy};
/// let c = Controller::new(Default::default()).unwrap();
/// let layer = DegradeLayer::new(c.handle(), Policy::default()).unwrap();
/// let router_layer = layer.clone(); // same counters
/// assert_eq!(router_layer.snapshot(), layer.snapshot());
/// ```
pub struct DegradeLayer<P = Fixed, M = Errors> {
    shared: Arc<Shared<P>>,
    _mode: PhantomData<fn() -> M>,
}

impl<P, M> Clone for DegradeLayer<P, M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<P, M> fmt::Debug for DegradeLayer<P, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DegradeLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl DegradeLayer {
    /// An adaptive layer whose level (from `handle`) carries `policy`; every request gets
    /// [`Priority::Normal`](crate::Priority::Normal) until a classifier is set with
    /// [`builder`](DegradeLayer::builder). Fails if the policy is invalid. The policy's admit
    /// shares apply only with [`Admission::LevelShares`] or [`Admission::Both`].
    ///
    /// ```
    /// use degrade_core::{Controller, DegradeLayer, Policy};
    /// let c = Controller::new(Default::default()).unwrap();
    /// let mut bad = Policy::default();
    /// bad.light.sampling = 7.0;
    /// let err = DegradeLayer::new(c.handle(), bad).unwrap_err();
    /// assert_eq!(err.field(), "policy.light.sampling");
    /// ```
    pub fn new(handle: LevelHandle, policy: Policy) -> Result<Self, ConfigError> {
        DegradeLayer::builder(handle).policy(policy).build()
    }

    /// A builder, to set the priority classifier, the admission mode, the policy and the retry
    /// hint. With nothing else set, the layer admits by the adaptive limit.
    ///
    /// ```
    /// use degrade_core::{Controller, DegradeLayer, Priority};
    /// use std::time::Duration;
    /// let c = Controller::new(Default::default()).unwrap();
    /// let layer = DegradeLayer::builder(c.handle())
    ///     .prioritize(|_: &()| Priority::High)
    ///     .retry_after(Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn builder(handle: LevelHandle) -> DegradeBuilder {
        DegradeBuilder {
            handle,
            policy: Policy::default(),
            prioritizer: Fixed::default(),
            retry_after: Duration::from_secs(1),
            admission: Admission::default(),
            limit: LimitConfig::default(),
        }
    }
}

impl<P, M> DegradeLayer<P, M> {
    /// The same layer (same shared state) answering shed HTTP requests itself with 503 and
    /// `Retry-After` (feature `http`).
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer, Policy};
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let http_layer = DegradeLayer::new(c.handle(), Policy::default()).unwrap().http();
    /// # let _ = http_layer;
    /// ```
    #[cfg(feature = "http")]
    pub fn http(self) -> DegradeLayer<P, HttpResponses> {
        DegradeLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }

    /// The same layer (same shared state) answering shed gRPC calls itself with UNAVAILABLE
    /// and `RetryInfo` (feature `grpc`).
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer, Policy};
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let grpc_layer = DegradeLayer::new(c.handle(), Policy::default()).unwrap().grpc();
    /// # let _ = grpc_layer;
    /// ```
    #[cfg(feature = "grpc")]
    pub fn grpc(self) -> DegradeLayer<P, GrpcResponses> {
        DegradeLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }

    /// The same layer (same shared state) returning rejections as `BoxError`s.
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer, Policy};
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let layer = DegradeLayer::new(c.handle(), Policy::default()).unwrap().errors();
    /// # let _ = layer;
    /// ```
    pub fn errors(self) -> DegradeLayer<P, Errors> {
        DegradeLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }

    /// The counters shared by every service of this layer.
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer, Policy};
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let layer = DegradeLayer::new(c.handle(), Policy::default()).unwrap();
    /// assert_eq!(layer.snapshot().offered(), 0);
    /// ```
    pub fn snapshot(&self) -> DegradeSnapshot {
        self.shared.snapshot()
    }

    /// Puts a new [`Policy`] in force while the service runs, or changes nothing and returns
    /// the [`ConfigError`] naming the field (`policy.light.admit.low`).
    ///
    /// The policy's admit shares apply in [`Admission::LevelShares`] and [`Admission::Both`]
    /// modes. The new shares are in force for every request decided after this returns (a
    /// request in flight keeps the decision it got); each (level, priority) share is one atomic
    /// word, so the request path takes no lock, allocates nothing and reads the share with the
    /// same load as before. While the 25 words are being stored, requests of different
    /// priorities or levels may see old and new shares side by side, each valid on its own.
    /// The per-priority sequence of fractional shares carries on, so a share changed from ½ to
    /// ¼ admits one request in four from the next one on.
    ///
    /// ```
    /// use degrade_core::degrade::Admission;
    /// use degrade_core::{Controller, DegradeLayer, Level, Policy};
    /// use tower::{Service, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let c = Controller::new(Default::default()).unwrap();
    /// let layer = DegradeLayer::builder(c.handle()).admission(Admission::LevelShares).build().unwrap();
    /// let mut svc = tower::ServiceBuilder::new()
    ///     .layer(layer.clone())
    ///     .service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) });
    /// c.pin(Level::Moderate); // the default Moderate admits half of Normal
    /// let mut admitted = 0;
    /// for _ in 0..10 { admitted += svc.ready().await.unwrap().call(()).await.is_ok() as u32; }
    /// assert_eq!(admitted, 5);
    ///
    /// let mut policy = Policy::default();
    /// policy.moderate.admit.normal = 1.0; // Moderate now admits all of Normal
    /// layer.set_policy(&policy).unwrap();
    /// for _ in 0..10 { assert!(svc.ready().await.unwrap().call(()).await.is_ok()); }
    ///
    /// policy.moderate.admit.normal = 7.0;
    /// assert_eq!(layer.set_policy(&policy).unwrap_err().field(), "policy.moderate.admit.normal");
    /// assert!(svc.ready().await.unwrap().call(()).await.is_ok()); // unchanged
    /// # }
    /// ```
    pub fn set_policy(&self, policy: &Policy) -> Result<(), ConfigError> {
        policy.validate().map_err(|e| e.within("policy"))?;
        self.shared.gate().set_table(policy.admit_table());
        Ok(())
    }
}

impl<S, P, M> Layer<S> for DegradeLayer<P, M> {
    type Service = Degrade<S, P, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Degrade::new(inner, Arc::clone(&self.shared))
    }
}

/// Builds a [`DegradeLayer`]; see [`DegradeLayer::builder`].
///
/// ```
/// use degrade_core::{Controller, DegradeLayer, Policy};
/// let c = Controller::new(Default::default()).unwrap();
/// let layer = DegradeLayer::builder(c.handle()).policy(Policy::default()).build().unwrap();
/// # let _ = layer;
/// ```
pub struct DegradeBuilder<P = Fixed> {
    handle: LevelHandle,
    policy: Policy,
    prioritizer: P,
    retry_after: Duration,
    admission: Admission,
    limit: LimitConfig,
}

impl<P> fmt::Debug for DegradeBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DegradeBuilder")
            .field("policy", &self.policy)
            .field("retry_after", &self.retry_after)
            .field("admission", &self.admission)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<P> DegradeBuilder<P> {
    /// How requests are admitted (default [`Admission::Adaptive`]).
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer, degrade::Admission};
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let layer = DegradeLayer::builder(c.handle()).admission(Admission::LevelShares).build().unwrap();
    /// assert!(layer.snapshot().limit.is_none()); // no limit in this mode
    /// ```
    #[must_use]
    pub fn admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// The adaptive limit's configuration (default [`LimitConfig::default`], meant to be kept).
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer, limit::LimitConfig};
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let mut limit = LimitConfig::default();
    /// limit.max = 64;
    /// limit.initial = 8;
    /// let layer = DegradeLayer::builder(c.handle()).limit(limit).build().unwrap();
    /// assert_eq!(layer.snapshot().limit.unwrap().limit, 8);
    /// ```
    #[must_use]
    pub fn limit(mut self, limit: LimitConfig) -> Self {
        self.limit = limit;
        self
    }

    /// The level → admit-share table (default [`Policy::default`]).
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer, Policy};
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let _ = DegradeLayer::builder(c.handle()).policy(Policy::default());
    /// ```
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// How requests get their priority: a closure `Fn(&Request) -> Priority` or any
    /// [`Prioritize`](crate::Prioritize) (such as
    /// `HeaderPriority` or `RoutePriority` with feature `http`).
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer, Priority};
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let _ = DegradeLayer::builder(c.handle()).prioritize(|n: &u8| Priority::from_scale(*n));
    /// ```
    pub fn prioritize<Q>(self, prioritizer: Q) -> DegradeBuilder<Q> {
        DegradeBuilder {
            handle: self.handle,
            policy: self.policy,
            prioritizer,
            retry_after: self.retry_after,
            admission: self.admission,
            limit: self.limit,
        }
    }

    /// The `retry_after` given with every rejection (default 1 s).
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer}; use std::time::Duration;
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let err = DegradeLayer::builder(c.handle()).retry_after(Duration::ZERO).build().unwrap_err();
    /// assert_eq!(err.field(), "retry_after");
    /// ```
    #[must_use]
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Validates and builds the layer.
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer};
    /// # let c = Controller::new(Default::default()).unwrap();
    /// assert!(DegradeLayer::builder(c.handle()).build().is_ok());
    /// ```
    pub fn build(self) -> Result<DegradeLayer<P>, ConfigError> {
        self.policy.validate().map_err(|e| e.within("policy"))?;
        if self.retry_after.is_zero() {
            return Err(ConfigError::new("retry_after", "must be greater than zero"));
        }
        self.limit.validate().map_err(|e| e.within("limit"))?;
        let gate = Gate::new(
            self.handle,
            self.policy.admit_table(),
            self.retry_after,
            self.admission,
            self.limit,
        );
        Ok(DegradeLayer {
            shared: Arc::new(Shared::new(gate, self.prioritizer)),
            _mode: PhantomData,
        })
    }
}
