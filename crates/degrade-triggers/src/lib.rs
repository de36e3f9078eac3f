//! # degrade-triggers
//!
//! The signals that drive [degrade](https://example.invalid/degrade)'s ladder, and the
//! [`Monitor`] that samples them.
//!
//! ## Example
//!
//! ```
//! use degrade_core::{Controller, DegradeLayer, Policy, ladder::LadderConfig};
//! use degrade_triggers::{ObserveLayer, TriggersConfig};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let controller = Controller::new(LadderConfig::default())?;
//! let observe = ObserveLayer::new();
//! let service = ServiceBuilder::new()
//!     .layer(DegradeLayer::new(controller.handle(), Policy::default())?)
//!     .layer(observe.clone()) // inside: it times the requests actually served
//!     .service_fn(|req: String| async move { Ok::<_, std::convert::Infallible>(req) });
//!
//! // CPU and memory (cgroup-aware), p99 latency, error and timeout rates, every second.
//! let config: TriggersConfig = serde_json::from_str(r#"{ "latency": { "sla": "250ms" } }"#)?;
//! let monitor = config.monitor_with(controller.clone(), &observe)?.spawn()?;
//! # let _ = service;
//! monitor.subscribe().changed().await?; // a tick
//! let snapshot = monitor.snapshot();
//! assert!(snapshot.signal("cpu").is_some() && snapshot.signal("latency").is_some());
//! // ... serve; on shutdown:
//! monitor.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Why these signals, and why this shape
//!
//! A service degrades for one of two reasons: the machine runs out of something (CPU, memory,
//! I/O), or something it waits on slows down (a database, a backend). The first shows in
//! resource figures, the second only in the requests themselves: a slow backend leaves the CPU
//! idle while latency and in-flight requests climb. So the crate reads both:
//!
//! | signal | raw unit | where it comes from |
//! |---|---|---|
//! | [`os::CpuSignal`] | % of the available CPU | cgroup v2 `cpu.max` quota + `cpu.stat` (usage and throttling); host usage through `sysinfo` without a quota; or the process's own usage |
//! | [`os::MemorySignal`] | % of the limit | cgroup v2 `memory.current` against `memory.max` (or `memory.high`); host used / total; or the process's RSS against a limit |
//! | [`os::PsiSignal`] | % of time stalled | Linux PSI `some` / `full` `avg10`, the cgroup's own `*.pressure` or `/proc/pressure/*` |
//! | [`ObserveLayer`] signals | ms, % of calls, calls | p50 / p99 / mean latency, error rate, timeout rate, slow rate, in-flight, recorded per request by a tower layer |
//! | [`Gauge`] | anything | a closure: an exporter's backlog, a queue's depth |
//! | [`SchedulingDelay`] | ms | how late a periodic tokio timer fires |
//! | [`AdmissionSignal`] | % refused | the share of requests a `DegradeLayer`'s adaptive limit refused: no per-service threshold |
//!
//! Host-wide figures mislead inside containers (a pod limited to 2 CPUs on a 64-CPU node reads
//! 3 % busy while saturated), so the OS readers look for the process's cgroup first and fall
//! back to the host only where no limit applies (see [`os`]).
//!
//! ### Pressures, and what "CPU 80 %" means
//!
//! The ladder in degrade-core takes pressures in `[0, 1]`, one per signal, and acts on the
//! worst. Each signal maps its raw value through a [`Scale`]: per-level raw thresholds
//! ([`LevelThresholds`]) are pinned to the ladder's `enter` thresholds (0.70 / 0.80 / 0.90 /
//! 0.95 by default) and the map is piecewise-linear in between. With the seed CPU thresholds
//! 70 / 80 / 90 / 95 %, CPU at 80 % is pressure 0.80 and enters Moderate, exactly.
//!
//! ### Reading apart from the math
//!
//! A [`Signal`] is a named source sampled at `now`. The reading of the OS (a file, a syscall)
//! is kept apart from the arithmetic (parsing, rates, scaling, smoothing), so the arithmetic is
//! tested without a machine and the readers against fixture trees (every reader takes a root
//! directory). No signal sleeps: rates are computed from the previous sample and `now`.
//!
//! ### The monitor
//!
//! The [`Monitor`] samples every signal on an interval (a tokio task on
//! `tokio::time::interval` with `MissedTickBehavior::Skip`), smooths each with its own
//! [`Smoothing`] (time-based EWMA; unknown after N ticks without a fresh sample), and feeds the
//! pressures to a [`Controller`](degrade_core::Controller), which moves and publishes the
//! level. A failing reader is logged once and reads as unknown; a panicking one is caught. The
//! monitor's own cost is measured and published ([`MonitorSnapshot::busy_per_tick`]).
//!
//! ## Modules
//!
//! * [`observe`]: the [`ObserveLayer`], its histogram and its signals.
//! * [`os`]: CPU, memory and PSI readers.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admission;
mod config;
mod lag;
mod monitor;
pub mod observe;
pub mod os;
mod scale;
mod signal;

pub use admission::AdmissionSignal;
pub use config::TriggersConfig;
pub use lag::{LagConfig, SchedulingDelay};
pub use monitor::{Monitor, MonitorHandle, MonitorSnapshot, SignalReport};
pub use observe::{ObserveLayer, ObserveSnapshot};
pub use scale::{LevelThresholds, Scale};
pub use signal::{Gauge, Sample, Signal, SignalError, Smoothing};

// The README's examples are compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
