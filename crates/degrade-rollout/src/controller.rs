//! The controller: runs the [`RolloutMachine`]'s actions against a [`Driver`] and a [`Pool`], with a
//! journal, controls and a status stream.

use crate::config::RolloutConfig;
use crate::discover::Pool;
use crate::driver::Driver;
use crate::error::{DriverError, RolloutError};
use crate::instance::{Instance, Key};
use crate::journal::{self, Appender, Header, Loaded, Opening};
use crate::plan::{
    Record, RolloutAction, RolloutEvent, RolloutMachine, RolloutOutcome, RolloutPhase, StepKind,
};
use degrade_canary::stats::CanarySnapshot;
use degrade_canary::{Judge, Verdict};
use degrade_core::{Clock, ConfigError, TokioClock};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A snapshot of a rollout, published on every change.
///
/// ```
/// use degrade_rollout::RolloutStatus;
/// let s = RolloutStatus::default();
/// assert!(s.outcome.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RolloutStatus {
    /// Upgrading, failing, rolling back or finished (`None` before the first step).
    pub phase: Option<RolloutPhase>,
    /// The batch in progress, in the current direction.
    pub batch: Option<usize>,
    /// Upgrade batches in the plan.
    pub batches: usize,
    /// Whether new batches are held.
    pub paused: bool,
    /// Every instance with its version and state.
    pub instances: Vec<Instance>,
    /// Why the rollout failed, once it has.
    pub failure: Option<String>,
    /// How it ended, once it has.
    pub outcome: Option<RolloutOutcome>,
    /// Driver steps completed by this controller.
    pub steps: u64,
}

/// The end of a rollout.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RolloutReport {
    /// How it ended.
    pub outcome: RolloutOutcome,
    /// Why it failed, if it did.
    pub failure: Option<String>,
    /// Driver errors met by this controller, each naming its instance.
    pub errors: Vec<DriverError>,
    /// Every instance at the end.
    pub instances: Vec<Instance>,
    /// Time this controller ran.
    pub elapsed: Duration,
}

/// Pause, resume, abort and watch a running [`RolloutController`]. Clones control the same rollout.
///
/// ```
/// # use degrade_rollout::{Instance, RolloutController, RolloutConfig, discover::Pool, ProcessDriver, driver::CommandSpec};
/// let driver = ProcessDriver::builder().version("v1", CommandSpec::new("x")).version("v2", CommandSpec::new("x")).build().unwrap();
/// let pool = Pool::new(|i: &Instance| i.address);
/// let a = Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1");
/// let rollout = RolloutController::builder(driver, pool)
///     .instances(vec![a])
///     .target("v2")
///     .build()
///     .unwrap();
/// let handle = rollout.handle();
/// handle.pause();
/// assert!(handle.status().outcome.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct RolloutHandle {
    controls: mpsc::UnboundedSender<RolloutEvent>,
    status: watch::Receiver<RolloutStatus>,
}

impl RolloutHandle {
    /// Starts no new batch until [`resume`](Self::resume) (the current batch finishes).
    pub fn pause(&self) {
        let _ = self.controls.send(RolloutEvent::Pause);
    }

    /// Starts batches again.
    pub fn resume(&self) {
        let _ = self.controls.send(RolloutEvent::Resume);
    }

    /// Stops after the current batch (outcome [`RolloutOutcome::Aborted`]).
    pub fn abort(&self) {
        let _ = self.controls.send(RolloutEvent::Abort);
    }

    /// The latest status.
    pub fn status(&self) -> RolloutStatus {
        self.status.borrow().clone()
    }

    /// A stream of status changes (a `watch` receiver).
    pub fn subscribe(&self) -> watch::Receiver<RolloutStatus> {
        self.status.clone()
    }
}

/// Builds a [`RolloutController`].
///
/// ```
/// # use degrade_rollout::{Instance, RolloutController, RolloutConfig, discover::Pool, ProcessDriver, driver::CommandSpec};
/// let driver = ProcessDriver::builder().version("v1", CommandSpec::new("x")).build().unwrap();
/// let pool = Pool::new(|i: &Instance| i.address);
/// let a = Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1");
/// let err = RolloutController::builder(driver, pool)
///     .instances(vec![a])
///     .target("v9")
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().contains("unknown version `v9`"));
/// ```
#[derive(Debug)]
pub struct RolloutControllerBuilder<D, S, C = TokioClock> {
    driver: D,
    pool: Pool<S>,
    config: RolloutConfig,
    instances: Vec<Instance>,
    target: String,
    journal: Option<PathBuf>,
    clock: C,
}

impl<D: Driver, S: Clone + Send + 'static> RolloutControllerBuilder<D, S, TokioClock> {
    /// The settings (default [`RolloutConfig::default`]).
    #[must_use]
    pub fn config(mut self, config: RolloutConfig) -> Self {
        self.config = config;
        self
    }

    /// The instances to upgrade (required: an empty set is refused, field `instances`).
    /// Instances already on the target version are left alone.
    #[must_use]
    pub fn instances(mut self, instances: Vec<Instance>) -> Self {
        self.instances = instances;
        self
    }

    /// The version to move every instance to (required: field `target`).
    #[must_use]
    pub fn target(mut self, version: impl Into<String>) -> Self {
        self.target = version.into();
        self
    }

    /// Journal the rollout to `path` (JSON lines, fsync'd per step). When the file already
    /// holds this rollout, [`build`](Self::build) resumes it instead of starting anew.
    ///
    /// A torn last line (the controller died while appending) is dropped with a warning: it
    /// described a step not yet acted on. Any other damage is refused with
    /// [`RolloutError::CorruptJournal`] naming the line, and the file is never truncated or
    /// overwritten on the way. A new journal is created with a temporary file, fsync, rename
    /// and a fsync of the directory, so a crash never leaves half a header. Lines are at most
    /// 16 MiB.
    #[must_use]
    pub fn journal(mut self, path: impl AsRef<Path>) -> Self {
        self.journal = Some(path.as_ref().to_path_buf());
        self
    }

    /// Validates and makes the controller and its handle (resuming from the journal when it
    /// holds this rollout).
    ///
    /// # Errors
    ///
    /// [`RolloutError::Config`] for a bad configuration, an empty instance set, duplicate ids,
    /// a version the driver does not know, or a journal holding another rollout (another
    /// target or another set of instance ids; field `journal`);
    /// [`RolloutError::CorruptJournal`] for a journal with a bad line before its last;
    /// [`RolloutError::Journal`] when the journal cannot be read.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutController, RolloutError, discover::Pool, ProcessDriver, driver::CommandSpec};
    /// # let driver = ProcessDriver::builder().version("v1", CommandSpec::new("x")).build().unwrap();
    /// let err = RolloutController::builder(driver, Pool::new(|i: &Instance| i.address))
    ///     .target("v1")
    ///     .build()
    ///     .unwrap_err();
    /// assert!(matches!(err, RolloutError::Config(ref e) if e.field() == "instances"));
    /// ```
    pub fn build(self) -> Result<RolloutController<D, S, TokioClock>, RolloutError> {
        let (instances, target) = (self.instances, self.target);
        if target.trim().is_empty() {
            return Err(ConfigError::new("target", "must not be empty").into());
        }
        self.driver.check_version(&target)?;
        for i in &instances {
            self.driver.check_version(&i.version).map_err(|e| {
                ConfigError::new(format!("instances.{}.version", i.id), e.rule().to_owned())
            })?;
        }
        self.config.validate()?;
        let (planner, opening) = match &self.journal {
            None => (
                RolloutMachine::new(self.config.clone(), instances, target)?,
                None,
            ),
            Some(path) => match journal::load(path, &target, &instances)? {
                Loaded::Fresh { len } => {
                    let header = Header {
                        target: target.clone(),
                        config: self.config.clone(),
                        instances: instances.clone(),
                    };
                    let planner = RolloutMachine::new(self.config.clone(), instances, target)?;
                    let header = journal::header_line(&header)?;
                    (planner, Some(Opening::Create { header, seen: len }))
                }
                Loaded::Resume {
                    planner,
                    len,
                    valid_len,
                } => {
                    if planner.config() != &self.config {
                        tracing::info!(journal = %path.display(), "resuming with the settings in the journal, not the ones given");
                    }
                    let opening = Opening::Append {
                        seen: len,
                        valid_len,
                    };
                    (*planner, Some(opening))
                }
            },
        };
        let (controls, controls_rx) = mpsc::unbounded_channel();
        // Receivers come from `handle()`; `send_replace` needs none.
        let (status_tx, _) = watch::channel(RolloutStatus::default());
        let driver = Arc::new(self.driver);
        // Endpoints the pool ejects come back once the driver finds them healthy again.
        self.pool.health_fallback(driver.clone());
        let rollout = RolloutController {
            driver,
            pool: self.pool,
            planner,
            journal: self.journal.zip(opening),
            controls: controls_rx,
            status: status_tx,
            clock: self.clock,
            errors: Vec::new(),
            steps: 0,
            controls_tx: controls,
        };
        Ok(rollout)
    }
}

/// Runs a rolling upgrade. See the [crate documentation](crate) for a full example.
#[derive(Debug)]
pub struct RolloutController<D, S, C = TokioClock> {
    driver: Arc<D>,
    pool: Pool<S>,
    planner: RolloutMachine,
    journal: Option<(PathBuf, Opening)>,
    controls: mpsc::UnboundedReceiver<RolloutEvent>,
    status: watch::Sender<RolloutStatus>,
    clock: C,
    errors: Vec<DriverError>,
    steps: u64,
    /// Handed out (cloned) by [`handle`](RolloutController::handle).
    controls_tx: mpsc::UnboundedSender<RolloutEvent>,
}

impl RolloutController<(), ()> {
    /// A builder for a rollout driving `driver`, routing through `pool`.
    pub fn builder<D: Driver, S: Clone + Send + 'static>(
        driver: D,
        pool: Pool<S>,
    ) -> RolloutControllerBuilder<D, S, TokioClock> {
        RolloutControllerBuilder {
            driver,
            pool,
            config: RolloutConfig::default(),
            instances: Vec::new(),
            target: String::new(),
            journal: None,
            clock: TokioClock,
        }
    }
}

impl<D: Driver, S: Clone + Send + 'static, C: Clock> RolloutController<D, S, C> {
    /// A handle to pause, resume, abort and watch this rollout (clones control the same
    /// rollout; take it before [`run`](Self::run), which consumes the controller).
    pub fn handle(&self) -> RolloutHandle {
        RolloutHandle {
            controls: self.controls_tx.clone(),
            status: self.status.subscribe(),
        }
    }

    /// The pure state machine it drives (read-only).
    pub fn machine(&self) -> &RolloutMachine {
        &self.planner
    }

    async fn open_journal(&mut self) -> Result<Option<Appender>, RolloutError> {
        let Some((path, opening)) = self.journal.take() else {
            return Ok(None);
        };
        let appender = Appender::open(path, opening).await?;
        Ok(Some(appender))
    }

    fn publish(&self) {
        let p = &self.planner;
        let outcome = match p.phase() {
            RolloutPhase::Finished(o) => Some(o),
            _ => None,
        };
        self.status.send_replace(RolloutStatus {
            phase: Some(p.phase()),
            batch: p.current_batch(),
            batches: p.batch_count(),
            paused: p.paused(),
            instances: p.instances(),
            failure: p.failure().map(str::to_owned),
            outcome,
            steps: self.steps,
        });
    }

    fn report(&self, outcome: RolloutOutcome, started: tokio::time::Instant) -> RolloutReport {
        RolloutReport {
            outcome,
            failure: self.planner.failure().map(str::to_owned),
            errors: self.errors.clone(),
            instances: self.planner.instances(),
            elapsed: started.elapsed(),
        }
    }

    /// Runs the rollout to its end: completed, aborted, rolled back, or rollback failed.
    /// Dropping the future stops the controller between steps; a controller built later
    /// from the same journal carries on.
    ///
    /// # Errors
    ///
    /// Only journal I/O: a failed rollout is a [`RolloutOutcome`], not an error.
    ///
    /// ```
    /// use degrade_rollout::{Instance, RolloutController, RolloutOutcome, discover::Pool};
    /// # use degrade_rollout::Driver;
    /// # use degrade_core::BoxError;
    /// # #[derive(Debug)]
    /// # struct Noop;
    /// # impl Driver for Noop {
    /// #     async fn stop(&self, _: &Instance) -> Result<(), BoxError> { Ok(()) }
    /// #     async fn install(&self, _: &Instance, _: &str) -> Result<(), BoxError> { Ok(()) }
    /// #     async fn start(&self, _: &Instance) -> Result<(), BoxError> { Ok(()) }
    /// #     async fn health(&self, _: &Instance) -> Result<(), BoxError> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), degrade_rollout::RolloutError> {
    /// // Already on the target: nothing to upgrade, the rollout completes at once.
    /// let a = Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v2");
    /// let rollout = RolloutController::builder(Noop, Pool::new(|i: &Instance| i.address))
    ///     .instances(vec![a])
    ///     .target("v2")
    ///     .build()?;
    /// let mut status = rollout.handle().subscribe();
    /// let report = rollout.run().await?;
    /// assert_eq!(report.outcome, RolloutOutcome::Completed);
    /// assert!(report.errors.is_empty());
    /// assert_eq!(status.borrow_and_update().outcome, Some(RolloutOutcome::Completed));
    /// # Ok(()) }
    /// ```
    pub async fn run(mut self) -> Result<RolloutReport, RolloutError> {
        let started = tokio::time::Instant::now();
        let mut journal = self.open_journal().await?;
        if let RolloutPhase::Finished(o) = self.planner.phase() {
            self.publish();
            return Ok(self.report(o, started));
        }
        // A resumed controller restores the balancer's view before acting.
        for i in self.planner.serving() {
            self.pool.insert(&i);
        }
        let limits = self.planner.limits();
        tracing::info!(
            target_version = self.planner.target(),
            batches = self.planner.batch_count(),
            surge = limits.surge,
            unavailable = limits.unavailable,
            "rollout starting"
        );
        let mut tasks: FuturesUnordered<BoxFuture<'static, (RolloutEvent, Option<DriverError>)>> =
            FuturesUnordered::new();
        // The process watches of the instances started on the target version: pending until
        // one exits, dropped (not awaited) when the rollout ends.
        let mut exits: FuturesUnordered<BoxFuture<'static, RolloutEvent>> = FuturesUnordered::new();
        let mut controls_open = true;
        let mut actions = self.planner.handle(RolloutEvent::Tick, self.clock.now());
        loop {
            let mut finished = None;
            for a in actions.drain(..) {
                match a {
                    RolloutAction::Record(r) => {
                        log_record(&r);
                        if let Some(j) = journal.as_mut() {
                            j.append(&r).await?;
                        }
                    }
                    RolloutAction::Drive {
                        step,
                        instance,
                        version,
                    } => tasks.push(self.drive(step.kind, step, instance, version)),
                    RolloutAction::Health {
                        id,
                        target,
                        instance,
                        check,
                    } => {
                        let driver = self.driver.clone();
                        let timeout = self.planner.config().health_timeout;
                        tasks.push(Box::pin(async move {
                            let healthy = match tokio::time::timeout(
                                timeout,
                                driver.health(&instance),
                            )
                            .await
                            {
                                Ok(Ok(())) => true,
                                Ok(Err(e)) => {
                                    tracing::debug!(instance = %instance, error = %e, "unhealthy");
                                    false
                                }
                                Err(_) => {
                                    tracing::debug!(instance = %instance, "health check timed out");
                                    false
                                }
                            };
                            (
                                RolloutEvent::Health {
                                    id,
                                    target,
                                    healthy,
                                    check,
                                },
                                None,
                            )
                        }));
                    }
                    RolloutAction::Serve { instance } => {
                        tracing::info!(instance = %instance, "instance ready: in service");
                        self.pool.insert(&instance);
                    }
                    RolloutAction::Watch { instance } => {
                        let driver = self.driver.clone();
                        exits.push(Box::pin(async move {
                            let error = driver.exited(&instance).await;
                            tracing::warn!(instance = %instance, error = %error, "watched instance exited");
                            RolloutEvent::Exited {
                                id: instance.id,
                                address: instance.address,
                                error: error.to_string(),
                            }
                        }));
                    }
                    RolloutAction::Analyze {
                        batch,
                        upgraded,
                        baseline,
                    } => tasks.push(self.analyze(batch, upgraded, baseline)),
                    RolloutAction::Finished(o) => finished = Some(o),
                }
            }
            self.publish();
            if let Some(outcome) = finished {
                // Let steps still running end before reporting (each is bounded).
                while tasks.next().await.is_some() {}
                let report = self.report(outcome, started);
                tracing::info!(outcome = %outcome, failure = ?report.failure, elapsed = ?report.elapsed, "rollout finished");
                return Ok(report);
            }
            let wake = self.planner.next_wake();
            let event = tokio::select! {
                Some((ev, err)) = tasks.next(), if !tasks.is_empty() => {
                    if let Some(err) = err {
                        self.errors.push(err);
                    }
                    if matches!(ev, RolloutEvent::StepOk { .. } | RolloutEvent::StepErr { .. }) {
                        self.steps += 1;
                    }
                    ev
                }
                Some(ev) = exits.next(), if !exits.is_empty() => ev,
                ctrl = self.controls.recv(), if controls_open => match ctrl {
                    Some(ev) => ev,
                    None => { controls_open = false; RolloutEvent::Tick }
                },
                _ = sleep_until_opt(wake) => RolloutEvent::Tick,
            };
            actions = self.planner.handle(event, self.clock.now());
        }
    }

    fn drive(
        &mut self,
        kind: StepKind,
        step: crate::plan::RolloutStep,
        instance: Instance,
        version: String,
    ) -> BoxFuture<'static, (RolloutEvent, Option<DriverError>)> {
        let driver = self.driver.clone();
        let pool = self.pool.clone();
        let cfg = self.planner.config().clone();
        let id = instance.id.clone();
        Box::pin(async move {
            tracing::debug!(instance = %instance, step = %step, "step");
            let work = async {
                match kind {
                    StepKind::Allocate => driver.allocate(&instance).await.map(Some),
                    StepKind::Drain => {
                        let report = pool.drain(&instance.key(), cfg.drain_timeout).await;
                        tracing::info!(instance = %instance, waited = ?report.waited, left_in_flight = report.in_flight, "drained");
                        driver.drain(&instance).await.map(|()| None)
                    }
                    StepKind::Stop => driver.stop(&instance).await.map(|()| None),
                    StepKind::Install => driver.install(&instance, &version).await.map(|()| None),
                    StepKind::Start => driver.start(&instance).await.map(|()| None),
                    StepKind::Release => driver.release(&instance).await.map(|()| None),
                    StepKind::Probe | StepKind::Bake | StepKind::Swap => Ok(None),
                }
            };
            let result = match tokio::time::timeout(cfg.progress_deadline, work).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", cfg.progress_deadline).into()),
            };
            match result {
                Ok(address) => (RolloutEvent::StepOk { id, step, address }, None),
                Err(e) => {
                    let err = DriverError::new(id.clone(), kind, e);
                    tracing::warn!(error = %err, "driver step failed");
                    let ev = RolloutEvent::StepErr {
                        id,
                        step,
                        error: err.source.to_string(),
                    };
                    (ev, Some(err))
                }
            }
        })
    }

    fn analyze(
        &self,
        batch: usize,
        upgraded: Vec<Instance>,
        baseline: Vec<Instance>,
    ) -> BoxFuture<'static, (RolloutEvent, Option<DriverError>)> {
        let pool = self.pool.clone();
        let cfg = self.planner.config().analysis.clone().unwrap_or_default();
        Box::pin(async move {
            (
                Self::judge(pool, cfg, batch, upgraded, baseline).await,
                None,
            )
        })
    }

    async fn judge(
        pool: Pool<S>,
        cfg: crate::config::AnalysisConfig,
        batch: usize,
        upgraded: Vec<Instance>,
        baseline: Vec<Instance>,
    ) -> RolloutEvent {
        {
            let up: Vec<Key> = upgraded.iter().map(Instance::key).collect();
            let base: Vec<Key> = baseline.iter().map(Instance::key).collect();
            let snap = || {
                let mut s = CanarySnapshot::default();
                s.stable = pool.outcomes(&base);
                s.canary = pool.outcomes(&up);
                s
            };
            let mut judge = match Judge::new(cfg.judge.clone()) {
                Ok(j) => j,
                Err(e) => {
                    return RolloutEvent::Analysis {
                        batch,
                        pass: false,
                        reason: e.to_string(),
                    };
                }
            };
            if !cfg.warmup.is_zero() {
                // The batch warms up: its calls count for neither arm (tokio saturates a
                // deadline past its far future, so `Duration::MAX` waits forever).
                tracing::debug!(batch, warmup = ?cfg.warmup, "analysis waits out the warm-up");
                tokio::time::sleep(cfg.warmup).await;
            }
            judge.start(&snap());
            let started = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(cfg.interval).await;
                let j = judge.look(&snap());
                tracing::debug!(batch, verdict = %j.verdict, reason = j.reason, samples = ?j.samples, "analysis look");
                let done =
                    crate::deadline::elapsed(started, tokio::time::Instant::now(), cfg.duration);
                match j.verdict {
                    Verdict::Fail => {
                        return RolloutEvent::Analysis {
                            batch,
                            pass: false,
                            reason: j.reason.to_owned(),
                        };
                    }
                    Verdict::Pass => {
                        return RolloutEvent::Analysis {
                            batch,
                            pass: true,
                            reason: j.reason.to_owned(),
                        };
                    }
                    Verdict::Inconclusive if done => {
                        let pass = !cfg.require_pass;
                        tracing::info!(batch, pass, "analysis inconclusive at its end");
                        return RolloutEvent::Analysis {
                            batch,
                            pass,
                            reason: "inconclusive".to_owned(),
                        };
                    }
                    Verdict::Inconclusive => {}
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn log_record(r: &Record) {
    match r {
        Record::BatchStarted { direction, batch } => {
            tracing::info!(%direction, batch, "batch started");
        }
        Record::StepDone { id, step, .. } => tracing::debug!(instance = %id, %step, "step done"),
        Record::Failed { id, target, reason } => {
            tracing::warn!(instance = ?id, target = ?target, reason = %reason, "rollout failed")
        }
        Record::WatchStarted { outcome } => {
            tracing::info!(%outcome, "every batch done: watching the upgraded instances before the end");
        }
        Record::RollbackStarted => tracing::warn!("rolling back"),
        Record::AnalysisPassed { batch } => tracing::info!(batch, "analysis passed"),
        Record::Paused => tracing::info!("paused"),
        Record::Resumed => tracing::info!("resumed"),
        Record::AbortRequested => tracing::info!("abort requested"),
        Record::Finished { outcome } => tracing::info!(%outcome, "finished"),
    }
}
