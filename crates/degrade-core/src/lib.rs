//! # degrade-core
//!
//! The shared vocabulary of [degrade](https://example.invalid/degrade): the pieces every policy
//! crate (triggers, rate limiting, breaker, canary, rollout, OpenTelemetry) builds on, and the
//! [`DegradeLayer`] admission middleware.
//!
//! | piece | what it is |
//! |---|---|
//! | [`Clock`], [`TokioClock`], `ManualClock` | one clock for all policy code; reads `tokio::time::Instant`, so paused tokio time and `ManualClock` both drive it |
//! | [`Level`] | Normal, Light, Moderate, Heavy, Emergency |
//! | [`ladder`] | the pure level controller: enter/exit thresholds, dwell, stepwise recovery, pin |
//! | [`LevelHandle`], [`Controller`] | the published level (an atomic for the hot path, a `watch` for subscribers, a bounded history) and the driver that feeds the ladder |
//! | [`Policy`] | what each level means, as data: admit share per priority, sampling ratio, errors-only, critical-only, batch hints |
//! | [`Priority`], [`priority`] | request priority and the classifiers that assign it |
//! | [`Outcome`], [`Classifier`] | success / failure / slow / ignored, shared by breaker, canary and triggers |
//! | [`window`], [`counter`] | lock-free windowed counters (consecutive, last N, time buckets) and sharded totals |
//! | [`answer`] | the answer modes every layer shares: [`Errors`], [`HttpResponses`], [`GrpcResponses`] |
//! | [`key`] | the key extractors every keyed layer shares: closure, header, gRPC metadata, cookie, peer IP |
//! | [`snapshot`] | [`Accounting`](snapshot::Accounting): offered, admitted, rejected in the same words for every layer's counters |
//! | [`rejection`] | the [`Rejection`] trait, [`Shed`], the single HTTP / gRPC mapping of every crate's rejections, and the mark that keeps one layer's refusals out of another's failure counts |
//! | [`limit`] | the adaptive concurrency limit: its pure control law, its wait queue, its snapshot |
//! | [`DegradeLayer`] | admission by the adaptive limit, highest priority first (or by level shares) |
//!
//! ## A first stack
//!
//! ```
//! use degrade_core::degrade::Admission;
//! use degrade_core::{Controller, DegradeLayer, Level, Policy, Priority};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let controller = Controller::new(Default::default()).unwrap();
//! // The adaptive limit, and the level's shares before it so an operator can pin a level.
//! let layer = DegradeLayer::builder(controller.handle())
//!     .admission(Admission::Both)
//!     .policy(Policy::default())
//!     .prioritize(|req: &&str| if req.starts_with("/pay") { Priority::Critical } else { Priority::Low })
//!     .build()
//!     .unwrap();
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_req: &str| async { Ok::<_, std::convert::Infallible>("ok") });
//!
//! controller.pin(Level::Emergency); // Emergency admits critical requests only
//! assert!(svc.ready().await.unwrap().call("/pay").await.is_ok());
//! let err = svc.ready().await.unwrap().call("/search").await.unwrap_err();
//! assert!(err.is::<degrade_core::Shed>());
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod accessors;
pub mod answer;
pub mod clock;
mod config;
pub mod counter;
pub mod degrade;
pub mod durable;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod fleet;
mod handle;
pub mod histogram;
pub mod key;
pub mod ladder;
mod level;
pub mod limit;
mod outcome;
mod per;
pub mod policy;
pub mod priority;
pub mod recycle;
pub mod rejection;
pub mod snapshot;
mod sync;
pub mod window;

pub use answer::{Errors, GrpcResponses, HttpResponses};
#[cfg(feature = "fast-clock")]
pub use clock::FastClock;
#[cfg(feature = "test-util")]
pub use clock::ManualClock;
pub use clock::{Clock, TokioClock};
pub use config::ConfigError;
pub use degrade::DegradeLayer;
pub use handle::{Controller, LevelHandle};
pub use ladder::{LadderConfig, LevelTransition};
pub use level::{Level, ParseLevelError};
#[cfg(feature = "grpc")]
pub use outcome::GrpcClassifier;
#[cfg(feature = "http")]
pub use outcome::HttpClassifier;
pub use outcome::{Classifier, DefaultClassifier, Outcome};
pub use per::{PerLevel, PerPriority};
pub use policy::Policy;
pub use priority::{Prioritize, Priority};
pub use rejection::{Rejection, RejectionKind, Shed};

/// The error type of every degrade service: callers downcast it to a rejection type
/// (`err.is::<degrade_core::Shed>()`) or to their inner service's error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

// The README's examples are compiled and run as doc tests (they use the HTTP classifier: a
// `cargo test -p degrade-core` without the `http` feature skips them rather than fail).
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "http"))]
pub struct ReadmeDoctests;
