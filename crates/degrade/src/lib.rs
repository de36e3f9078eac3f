//! # degrade
//!
//! One dependency for the whole [degrade](https://example.invalid/degrade) family: tower
//! middleware that keeps services alive under overload and through bad releases. The shared
//! vocabulary of `degrade-core` (levels, the ladder, priorities, outcomes, rejections, the
//! [`DegradeLayer`] admission middleware) is re-exported at the root; each policy crate is a
//! module behind a cargo feature of the same name.
//!
//! | feature | module | what it is |
//! |---|---|---|
//! | *(always)* | the root | `degrade-core`: [`Clock`], [`Level`], [`ladder`], [`Policy`], [`Priority`], [`Classifier`], [`rejection`], [`DegradeLayer`] |
//! | `ratelimit` | `ratelimit` | GCRA rate limiting, keyed limits in bounded memory, fleet limits in Redis (`redis`) |
//! | `breaker` | `breaker` | the circuit breaker and keyed breakers |
//! | `canary` | `canary` | canary releases: sticky weighted routing, a sequential judge, a controller, one rollout across a fleet in Redis (`redis`) |
//! | `rollout` | `rollout` | rolling upgrades in batches with health gates and automatic rollback |
//! | `triggers` | `triggers` | the signals (CPU, memory, PSI, latency, errors) and the `Monitor` that drive the level |
//! | `otel` | `otel` | a level-following sampler and export protection for OpenTelemetry |
//! | `metrics` | `otel::metrics` | metrics by registration: OTel instruments that read every registered layer |
//! | `config` | `config` | the whole stack from one TOML file, field-path errors, live reload of triggers, policy, quotas and breaker thresholds |
//! | `admin` | `admin` | an axum router to read and steer every registered layer at run time, under your auth |
//! | `http`, `grpc` | | HTTP and gRPC answer modes, classifiers and keys in every enabled policy |
//! | `redis` | | the Redis backends of the enabled policies: `ratelimit`'s fleet limits, `canary::fleet` (one rollout across a fleet; its gates through `admin`, its instruments through `metrics`) |
//! | `test-util` | | `ManualClock` |
//! | `full` | | all of the above |
//!
//! Every policy is a `tower::Layer`; they stack in any order. A request one layer refuses is
//! never counted as a failure of the service by another (see
//! [`rejection`](crate::rejection#local-rejections-are-marked)).
//!
//! ```
//! use degrade::{Controller, DegradeLayer, Level, Priority, Shed};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let controller = Controller::new(Default::default()).unwrap();
//! let mut svc = ServiceBuilder::new()
//!     .layer(
//!         DegradeLayer::builder(controller.handle())
//!             .admission(degrade::degrade::Admission::LevelShares) // a pinned level sheds
//!             .prioritize(|path: &&str| if *path == "/pay" { Priority::Critical } else { Priority::Low })
//!             .build()
//!             .unwrap(),
//!     )
//!     .service_fn(|_: &str| async { Ok::<_, std::convert::Infallible>("ok") });
//!
//! controller.pin(Level::Emergency);
//! assert!(svc.ready().await.unwrap().call("/pay").await.is_ok());
//! assert!(svc.ready().await.unwrap().call("/feed").await.unwrap_err().is::<Shed>());
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;

#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "config")]
pub mod config;

pub use builder::ServiceBuilderExt;
pub use degrade_core::*;

/// The names most stacks use, from every enabled policy: `use degrade::prelude::*;`.
///
/// ```
/// use degrade::prelude::*;
/// let controller = Controller::new(Default::default()).unwrap();
/// let layer = DegradeLayer::new(controller.handle(), Policy::default()).unwrap();
/// assert!(layer.snapshot().balanced()); // Accounting is in the prelude
/// ```
pub mod prelude {
    pub use crate::ServiceBuilderExt;
    pub use degrade_core::answer::{Errors, GrpcResponses, HttpResponses};
    pub use degrade_core::key::{Global, KeyExtractor, from_fn};
    pub use degrade_core::snapshot::Accounting;
    pub use degrade_core::{
        BoxError, Clock, ConfigError, Controller, DegradeLayer, Level, Policy, Priority, Rejection,
        Shed, TokioClock,
    };

    #[cfg(feature = "breaker")]
    pub use degrade_breaker::{BreakerConfig, BreakerLayer, CircuitOpen, KeyedBreakerLayer};
    #[cfg(feature = "canary")]
    pub use degrade_canary::{Canary, CanaryConfig, CanaryController, Weight};
    #[cfg(feature = "otel")]
    pub use degrade_otel::{LevelFilter, LevelSampler};
    #[cfg(feature = "ratelimit")]
    pub use degrade_ratelimit::{RateLimitConfig, RateLimitLayer, RateLimited};
    #[cfg(feature = "rollout")]
    pub use degrade_rollout::{RolloutConfig, RolloutController};
    #[cfg(feature = "triggers")]
    pub use degrade_triggers::{Monitor, ObserveLayer};
}

/// GCRA rate limiting (feature `ratelimit`): the `degrade-ratelimit` crate.
///
/// ```
/// use degrade::ratelimit::{RateLimitConfig, RateLimitLayer, RateLimited};
/// use std::time::Duration;
/// use tower::{Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = RateLimitLayer::new(RateLimitConfig::per(1, Duration::from_secs(60))).unwrap();
/// let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
/// assert!(svc.ready().await.unwrap().call(()).await.is_ok());
/// let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
/// assert!(err.is::<RateLimited>());
/// # }
/// ```
#[cfg(feature = "ratelimit")]
pub use degrade_ratelimit as ratelimit;

/// The circuit breaker (feature `breaker`): the `degrade-breaker` crate.
///
/// ```
/// use degrade::breaker::{BreakerConfig, BreakerLayer, CircuitOpen, WindowConfig};
/// use tower::{Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut config = BreakerConfig::default();
/// config.window = WindowConfig::Consecutive { failures: 1 };
/// let layer = BreakerLayer::new(config).unwrap();
/// let mut svc = layer.layer(tower::service_fn(|()| async { Err::<(), _>("down") }));
/// assert!(!svc.ready().await.unwrap().call(()).await.unwrap_err().is::<CircuitOpen>());
/// assert!(svc.ready().await.unwrap().call(()).await.unwrap_err().is::<CircuitOpen>());
/// # }
/// ```
#[cfg(feature = "breaker")]
pub use degrade_breaker as breaker;

/// Canary releases (feature `canary`): the `degrade-canary` crate.
///
/// ```
/// use degrade::canary::{Canary, Weight};
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut svc = Canary::builder(
///     tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>("v1") }),
///     tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>("v2") }),
/// ).weight(Weight::new(5_000).unwrap()).build().unwrap();
/// let a = svc.ready().await.unwrap().call(()).await.unwrap();
/// let b = svc.ready().await.unwrap().call(()).await.unwrap();
/// assert_ne!(a, b); // the unkeyed split alternates at 50 %
/// # }
/// ```
///
/// With `redis` as well, `degrade::canary::fleet` runs one rollout across a
/// fleet of instances (state, statistics and a leader's lease in Redis); its configuration is
/// checked before anything connects:
///
/// ```
/// # #[cfg(feature = "redis")] {
/// use degrade::canary::Canary;
/// use degrade::canary::fleet::{FleetCanary, FleetCanaryConfig};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let arm = || tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) });
/// let router = Canary::new(arm(), arm());
/// let mut cfg = FleetCanaryConfig::default();
/// cfg.instance = "checkout-1".into();
/// cfg.lease = std::time::Duration::from_millis(100); // shorter than 3 × (poll + timeout)
/// let err = FleetCanary::new(cfg, router.handle()).unwrap_err();
/// assert_eq!(err.field(), "lease");
/// # }
/// # main() }
/// ```
#[cfg(feature = "canary")]
pub use degrade_canary as canary;

/// Rolling upgrades (feature `rollout`): the `degrade-rollout` crate.
#[cfg(feature = "rollout")]
pub use degrade_rollout as rollout;

/// The signals and the `Monitor` that drive the level (feature `triggers`): the
/// `degrade-triggers` crate.
///
/// ```
/// use degrade::triggers::ObserveLayer;
/// use tower::{Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let observe = ObserveLayer::new();
/// let mut svc = observe.layer(tower::service_fn(|ok: bool| async move { if ok { Ok(()) } else { Err("boom") } }));
/// let _ = svc.ready().await.unwrap().call(true).await;
/// let _ = svc.ready().await.unwrap().call(false).await;
/// assert_eq!((observe.snapshot().calls, observe.snapshot().failures), (2, 1));
/// # }
/// ```
#[cfg(feature = "triggers")]
pub use degrade_triggers as triggers;

/// OpenTelemetry sampling and export protection (feature `otel`): the `degrade-otel` crate.
#[cfg(feature = "otel")]
pub use degrade_otel as otel;

// The README's example is compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(all(
    doctest,
    feature = "breaker",
    feature = "ratelimit",
    feature = "http",
    feature = "admin",
    feature = "config"
))]
pub struct ReadmeDoctests;

// The workspace README's quick example uses the facade.
#[doc = include_str!("../../../README.md")]
#[cfg(all(doctest, feature = "breaker", feature = "ratelimit", feature = "http"))]
pub struct WorkspaceReadmeDoctests;
