//! # degrade-canary
//!
//! Canary releases for tower: a router that sends a live, sticky share of traffic to a
//! candidate, a judge that compares the candidate with stable by sequential tests, and a
//! controller that walks the weight up in steps and promotes or rolls back on its own.
//!
//! ## Example
//!
//! ```
//! use degrade_canary::{Arm, Canary, CanaryConfig, CanaryController, key::from_fn};
//! use tower::{Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let router = Canary::builder(
//!     service_fn(|_: u64| async { Ok::<_, std::convert::Infallible>("v1") }),
//!     service_fn(|_: u64| async { Ok::<_, std::convert::Infallible>("v2") }),
//! )
//! .key(from_fn(|user: &u64| Some(*user)))
//! .build()
//! .unwrap();
//! let mut controller = CanaryController::builder(CanaryConfig::default(), router.handle())
//!     .on_rollback(|| async { /* alert */ })
//!     .build()
//!     .unwrap();
//! assert_eq!(router.weight().get(), 100); // step 1: 1 %
//!
//! let mut svc = router.clone();
//! for user in 0..1_000u64 {
//!     svc.ready().await.unwrap().call(user).await.unwrap();
//! }
//! let snap = router.snapshot();
//! assert_eq!(snap.stable.routed + snap.canary.routed, 1_000);
//! // Too few samples for a verdict: the controller holds the step.
//! controller.tick().await.unwrap();
//! assert_eq!(controller.state().step, 0);
//! # }
//! ```
//!
//! In a real service, `controller.spawn()` analyses every `analysis_interval` and returns a
//! [`Gates`] handle for promote / abort / pause / resume.
//!
//! ## Why not just two weights and a threshold
//!
//! The usual canary raises a weight on a timer and compares averages against fixed thresholds.
//! That rolls back good releases (with a 0.1 % baseline error rate, "any error fails" is a
//! false alarm 63 % of the time at 1 000 requests; one failed check out of 25 rolls back about
//! 40 % of good releases) and, by re-testing every interval, inflates its own false-positive
//! rate. It also moves users between versions when the weight changes, and judges "no data"
//! as a pass. This crate:
//!
//! * **routes stickily and monotonically** ([`Canary`]): a key hashes to a fixed bucket in
//!   `0..10 000`, and a request goes to the canary iff its bucket is below the weight (in basis
//!   points). Raising the weight only adds buckets, so a user on the canary stays there; a
//!   rollback (weight 0) returns everyone to stable. Unkeyed requests are split by a
//!   deterministic stride per thread, within one request of the exact weight. The arm is chosen in
//!   `call`, never from readiness, and the arm actually taken is recorded;
//! * **judges relative to stable, on the units that were randomised** ([`Judge`]): sticky
//!   routing puts whole users on one arm, so the judge's unit is the sticky-key group, not the
//!   request. It compares failure rates and latency ranks (Mann–Whitney) within each analysis
//!   window, so outages and load cycles that hit both arms cancel; takes the variance from the
//!   data across key groups (cluster-robust, with a small-sample correction, so one heavy or
//!   broken client cannot decide a verdict, and caps each group's share); and decides by an
//!   always-valid mixture sequential test, so looking every 30 s keeps its error rate. A
//!   cancelled call (a caller's timeout) counts as a failure; forced requests are never judged.
//!   A minimum sample count per arm comes before any Pass; "no data" is Inconclusive. Why this
//!   method: [`judge`];
//! * **controls the rollout** ([`CanaryMachine`], [`CanaryController`]): steps of weight and bake
//!   time (1, 5, 10, 25, 50, 100 % by default), automatic promotion or rollback, a pause after
//!   too many inconclusive analyses, manual gates, hooks, and a [`StateStore`] so a restarted
//!   controller resumes at the same step. A store that fails to save fails safe: weight 0 and
//!   a [`StoreError`].
//!
//! The simulator that measures the judge (`sim`, `examples/judge_sim.rs`) is behind the `sim`
//! feature.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod arm;
mod controller;
mod error;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod fleet;
pub mod future;
pub mod hash;
pub mod judge;
pub mod key;
pub mod machine;
pub mod service;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
pub mod stats;
mod store;

pub use arm::{Arm, FULL_BP, ParseArmError, Weight};
pub use controller::{CanaryController, CanaryControllerBuilder, Gate, Gates};
pub use error::{CanaryError, StoreError};
pub use judge::{Judge, JudgeConfig, Judgement, Verdict};
pub use machine::{
    CanaryAction, CanaryConfig, CanaryEvent, CanaryMachine, CanaryPhase, CanaryState, CanaryStep,
    PauseReason,
};
pub use service::{Canary, CanaryBuilder, CanaryHandle};
pub use store::{CorruptState, FileStore, MemoryStore, StateStore};

/// The error type of the [`Canary`] service: the arms' own errors, boxed.
pub use degrade_core::BoxError;

// The README's examples are compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
