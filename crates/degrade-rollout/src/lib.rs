//! # degrade-rollout
//!
//! Rolling upgrades of real instances, with Kubernetes `RollingUpdate` semantics, an exact
//! drain, health gates, optional canary analysis, a watch on everything it upgraded, a true
//! rollback and a crash-safe journal.
//!
//! ## Example
//!
//! ```no_run
//! use degrade_rollout::{Instance, ProcessDriver, RolloutController, RolloutConfig, RolloutOutcome};
//! use degrade_rollout::discover::Pool;
//! use degrade_rollout::driver::{CommandSpec, HealthCheck};
//! use tower::balance::p2c::Balance;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let server = |v: &str| CommandSpec::new("./server").args(["--port", "{port}", "--version", v]);
//! let driver = ProcessDriver::builder()
//!     .version("v1", server("v1"))
//!     .version("v2", server("v2"))
//!     .health(HealthCheck::http("/healthz", 200))
//!     .build()?;
//! let instances: Vec<Instance> = (0..4)
//!     .map(|k| Instance::new(format!("web-{k}"), format!("127.0.0.1:{}", 8000 + k).parse().unwrap(), "v1"))
//!     .collect();
//!
//! // The balancer's view of the fleet: one client service per instance (here a stand-in
//! // answering with the address; in real code an HTTP client for `i.address`).
//! let pool = Pool::new(|i: &Instance| {
//!     let addr = i.address;
//!     tower::service_fn(move |_req: ()| async move { Ok::<_, std::convert::Infallible>(addr) })
//! });
//! for i in &instances {
//!     pool.insert(i);
//! }
//! let balancer: Balance<_, ()> = Balance::new(pool.discover());
//! # let _ = balancer;
//!
//! let rollout = RolloutController::builder(driver, pool.clone())
//!     .config(RolloutConfig::default())
//!     .journal("rollout.jsonl")
//!     .instances(instances)
//!     .target("v2")
//!     .build()?;
//! let handle = rollout.handle();
//! let report = rollout.run().await?;
//! assert_eq!(report.outcome, RolloutOutcome::Completed);
//! # let _ = handle;
//! # Ok(()) }
//! ```
//!
//! `tests/process.rs` runs this against real child processes under continuous load, and
//! `examples/rolling-upgrade` is a runnable demo.
//!
//! ## The watch: a rollout is not complete while what it upgraded may be down
//!
//! An instance that passes its health gate and its bake can still die a few seconds later.
//! So every instance the rollout changes stays watched until the rollout ends: its process
//! from its start ([`Driver::exited`]; [`ProcessDriver`] reports a child's exit the moment it
//! happens) and its health every `health_interval` from the end of its bake. After the last
//! batch the rollout is [`Watching`](plan::RolloutPhase::Watching) for
//! [`post_watch`](RolloutConfig::post_watch) (default 1 min) and completes only once every
//! watched instance has passed a check since then. A failure of a watched instance — an exit,
//! or `failure_threshold` failed checks — at any point, during the batches or the watch,
//! fails the rollout and rolls every changed instance back to its previous version, the way a
//! Kubernetes Deployment whose updated pods go unready is rolled back (here without an
//! operator). The watch is journaled: a controller resumed during it keeps watching (for a
//! full `post_watch` again).
//!
//! ```
//! use degrade_rollout::plan::{RolloutAction, RolloutEvent, RolloutMachine, RolloutPhase};
//! use degrade_rollout::{Instance, RolloutConfig, RolloutOutcome};
//! use std::time::Duration;
//!
//! let cfg = RolloutConfig { min_ready: Duration::ZERO, healthy_threshold: 1, ..Default::default() };
//! let mut m = RolloutMachine::new(cfg, vec![Instance::new("a", "127.0.0.1:8001".parse().unwrap(), "v1")], "v2").unwrap();
//! // Run the upgrade: every driver step succeeds, every check passes.
//! let now = tokio::time::Instant::now();
//! let mut todo = m.handle(RolloutEvent::Tick, now);
//! while let Some(a) = todo.pop() {
//!     todo.extend(match a {
//!         RolloutAction::Drive { step, instance, .. } => m.handle(RolloutEvent::StepOk { id: instance.id, step, address: None }, now),
//!         RolloutAction::Health { id, target, check, .. } => m.handle(RolloutEvent::Health { id, target, healthy: true, check }, now),
//!         _ => vec![],
//!     });
//! }
//! assert_eq!(m.phase(), RolloutPhase::Watching); // upgraded, not yet completed
//! // The upgraded process dies during the watch: the rollout rolls back.
//! let a = m.instances()[0].clone();
//! let out = m.handle(RolloutEvent::Exited { id: "a".into(), address: a.address, error: "exit status: 3".into() }, now);
//! assert!(out.iter().any(|a| matches!(a, RolloutAction::Drive { .. })));
//! assert_eq!(m.phase(), RolloutPhase::RollingBack);
//! ```
//!
//! ## Passive ejection: balancers stop routing to a dead instance after one failed call
//!
//! The watch rolls a dead instance back, which takes a drain, a start and a health gate;
//! meanwhile the balancers must not keep sending it requests. The [`discover::Pool`] ejects an
//! endpoint the moment a call to it fails at the transport — connection refused, reset, or
//! closed under the call, as judged by [`discover::is_transport_failure`] or a classifier of
//! yours — by sending `Change::Remove` to every balancer, and brings it back with
//! `Change::Insert` once it passes a health check again (the rollout's [`Driver::health`],
//! re-probed with backoff), as Envoy's outlier detection does. A call that gets an answer,
//! even an error, is no transport failure. Ejections and returns are counted in
//! [`discover::Pool::snapshot`] and logged. See [the `discover` module](discover#passive-ejection).
//!
//! ## Why not sleeps and a "failed" flag
//!
//! A rollout script that drains by sleeping, stops, starts and marks an instance failed when
//! it does not come back loses requests (the balancer still routes to a stopping instance),
//! leaves a half-upgraded fleet behind (Kubernetes itself has no automatic rollback: a missed
//! progress deadline just stops), and starts from scratch — upgrading some instances twice —
//! when its own process dies. This crate:
//!
//! * **plans** like Kubernetes ([`plan::RolloutMachine`], a pure state machine): max surge (rounded
//!   up) and max unavailable (rounded down) as counts or percentages, a min-ready bake time, a
//!   progress deadline, N consecutive healthy checks to be ready and a failure threshold;
//!   property-tested never to exceed its bounds and always to terminate;
//! * **drains exactly** ([`discover::Pool`]): the balancers read the instance set as a
//!   `tower::discover::Discover` stream; an instance is removed from every balancer, and the
//!   requests routed to it (counted per endpoint by [`discover::InFlight`]) finish, before the
//!   driver stops it;
//! * **drives real instances** through a [`Driver`] you implement for your platform;
//!   [`ProcessDriver`] runs local processes (SIGTERM, then SIGKILL after a grace period; HTTP
//!   or TCP health checks; spare addresses for surges);
//! * **watches what it upgraded**: health checks and a process-exit watch on every changed
//!   instance until the end and for `post_watch` after the last batch; a script or a
//!   Deployment that reports "complete" once the last instance passed its gate reports it
//!   while a release that dies a minute later is still on every instance;
//! * **stops routing to a dead instance at once**: passive ejection from every balancer after
//!   one call failed at the transport, and back after a passing health check;
//! * **rolls back for real**: on a failure every changed instance returns to its previous
//!   version through the driver, batch by batch (those already down first), with the same
//!   drain;
//! * **analyses** each batch, optionally, with `degrade-canary`'s sequential judge (upgraded
//!   instances against those not yet upgraded);
//! * **survives its own crash**: every decision is journaled (JSON lines, fsync'd) before it
//!   is acted on, and a controller built from the same journal resumes without touching an
//!   instance twice; a line torn by the crash is dropped, any other damage is refused
//!   ([`RolloutError::CorruptJournal`], naming the line) rather than overwritten;
//! * is **controllable and observable**: [`RolloutHandle`] pauses, resumes, aborts (after the
//!   current batch) and streams [`RolloutStatus`]; `tracing` events mark every batch and step.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
mod controller;
mod deadline;
pub mod discover;
pub mod driver;
mod error;
pub mod instance;
mod journal;
pub mod plan;

pub use config::{Amount, AnalysisConfig, Limits, RolloutConfig};
pub use controller::{
    RolloutController, RolloutControllerBuilder, RolloutHandle, RolloutReport, RolloutStatus,
};
pub use driver::{Driver, ProcessDriver};
pub use error::{CorruptJournal, DriverError, RolloutError};
pub use instance::{Instance, InstanceState, Key};
pub use plan::RolloutOutcome;

pub use degrade_core::BoxError;
