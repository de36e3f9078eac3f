//! One accounting vocabulary for every layer's counters: **offered**, **admitted**,
//! **rejected** (by reason).
//!
//! Every request a layer sees is offered; it is admitted or rejected, never both, never
//! neither: offered = admitted + rejected, exactly, at every snapshot. Each layer's snapshot
//! (`DegradeSnapshot`, `RateLimitSnapshot`, `FleetSnapshot`, `BreakerSnapshot`) has inherent
//! `offered()` / `rejected()` methods in these words and implements
//! [`Accounting`], so one check serves them all.
//!
//! ```
//! use degrade_core::snapshot::Accounting;
//! use degrade_core::degrade::Admission;
//! use degrade_core::{Controller, DegradeLayer, Level};
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let c = Controller::new(Default::default()).unwrap();
//! let layer = DegradeLayer::builder(c.handle())
//!     .admission(Admission::LevelShares) // the level's shares: a pinned level sheds
//!     .build()
//!     .unwrap();
//! let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
//! c.pin(Level::Emergency); // the default priority is shed
//! for _ in 0..3 {
//!     let _ = svc.ready().await.unwrap().call(()).await;
//! }
//! let snap = layer.snapshot();
//! assert_eq!((snap.offered(), snap.admitted(), snap.rejected()), (3, 0, 3));
//! assert!(Accounting::balanced(&snap));
//! # }
//! ```

/// The counters every layer's snapshot has in the same words. `offered = admitted + rejected`
/// holds exactly; [`balanced`](Accounting::balanced) checks it.
pub trait Accounting {
    /// Requests the layer saw.
    fn offered(&self) -> u64;
    /// Requests it let through.
    fn admitted(&self) -> u64;
    /// Requests it refused, whatever the reason.
    fn rejected(&self) -> u64;
    /// Whether offered = admitted + rejected.
    ///
    /// ```
    /// use degrade_core::snapshot::Accounting;
    /// struct Counts(u64, u64, u64);
    /// impl Accounting for Counts {
    ///     fn offered(&self) -> u64 { self.0 }
    ///     fn admitted(&self) -> u64 { self.1 }
    ///     fn rejected(&self) -> u64 { self.2 }
    /// }
    /// assert!(Counts(5, 3, 2).balanced());
    /// assert!(!Counts(5, 3, 1).balanced());
    /// ```
    fn balanced(&self) -> bool {
        self.admitted().checked_add(self.rejected()) == Some(self.offered())
    }
}
