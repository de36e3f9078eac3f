//! The async driver of a rollout: analyses at every interval, moves the router's weight, runs
//! the promote and rollback hooks, persists its state, and takes manual gates.

use crate::error::{CanaryError, StoreError};
use crate::judge::{Judge, Judgement};
use crate::machine::{CanaryAction, CanaryConfig, CanaryEvent, CanaryMachine, CanaryState};
use crate::service::CanaryHandle;
use crate::store::{MemoryStore, StateStore};
use degrade_core::counter::TimingSampler;
use degrade_core::{Clock, TokioClock};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

type Hook = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A manual gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Promote now.
    Promote,
    /// Roll back now.
    Abort,
    /// Hold the current step (a Fail still rolls back).
    Pause,
    /// Continue; the step's bake time starts over.
    Resume,
}

impl From<Gate> for CanaryEvent {
    fn from(g: Gate) -> Self {
        match g {
            Gate::Promote => CanaryEvent::Promote,
            Gate::Abort => CanaryEvent::Abort,
            Gate::Pause => CanaryEvent::Pause,
            Gate::Resume => CanaryEvent::Resume,
        }
    }
}

/// Builds a [`CanaryController`]; from [`CanaryController::builder`].
///
/// ```
/// use degrade_canary::{Canary, CanaryConfig, CanaryController, FileStore};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
/// let path = std::env::temp_dir().join(format!("canary-builder-{}.json", std::process::id()));
/// let c = CanaryController::builder(CanaryConfig::default(), router.handle())
///     .store(FileStore::new(&path))
///     .on_promote(|| async { /* make v2 the new stable */ })
///     .on_rollback(|| async { /* page someone */ })
///     .build()
///     .unwrap();
/// assert_eq!(c.state().step, 0);
/// assert!(path.exists()); // the starting state is on disk before any traffic moves
/// # std::fs::remove_file(&path).unwrap();
/// # }
/// ```
pub struct CanaryControllerBuilder<Clk = TokioClock> {
    cfg: CanaryConfig,
    handle: CanaryHandle,
    store: Box<dyn StateStore>,
    clock: Clk,
    on_promote: Option<Hook>,
    on_rollback: Option<Hook>,
}

impl<Clk> fmt::Debug for CanaryControllerBuilder<Clk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanaryControllerBuilder")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<Clk: Clock> CanaryControllerBuilder<Clk> {
    /// Persists the rollout in `store` (default: in memory only).
    #[must_use]
    pub fn store(mut self, store: impl StateStore) -> Self {
        self.store = Box::new(store);
        self
    }

    /// Reads bake times from `clock` (default: the tokio clock).
    pub fn clock<C2: Clock>(self, clock: C2) -> CanaryControllerBuilder<C2> {
        CanaryControllerBuilder {
            cfg: self.cfg,
            handle: self.handle,
            store: self.store,
            clock,
            on_promote: self.on_promote,
            on_rollback: self.on_rollback,
        }
    }

    /// Runs `hook` after a promotion (the weight is then the last step's), e.g. to make the
    /// candidate the new stable.
    #[must_use]
    pub fn on_promote<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_promote = Some(Box::new(move || Box::pin(hook())));
        self
    }

    /// Runs `hook` after a rollback (the weight is then 0).
    #[must_use]
    pub fn on_rollback<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_rollback = Some(Box::new(move || Box::pin(hook())));
        self
    }

    /// Validates the configuration, resumes the persisted rollout if the store holds one (at
    /// its step and weight; the step's bake time and the judge's evidence start over) or
    /// starts a new one at the first step, and sets the router's weight accordingly.
    ///
    /// # Errors
    ///
    /// [`CanaryError::Config`] for an invalid configuration (or a saved state that does not
    /// fit it), [`CanaryError::Load`] when the store cannot be read, and
    /// [`CanaryError::Store`] when it cannot save the starting state: the weight is then set
    /// to 0, so no traffic reaches a candidate no controller judges.
    ///
    /// ```
    /// # use degrade_canary::{Canary, CanaryConfig, CanaryController};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// let c = CanaryController::builder(CanaryConfig::default(), router.handle()).build().unwrap();
    /// assert_eq!(router.weight().get(), 100); // the first step: 1 %
    /// assert_eq!(c.state().step, 0);
    /// # }
    /// ```
    pub fn build(self) -> Result<CanaryController<Clk>, CanaryError> {
        self.cfg.validate()?;
        let now = self.clock.now();
        let rollout = match self.store.load().map_err(CanaryError::Load)? {
            Some(saved) => {
                tracing::info!(step = saved.step, weight_bp = saved.weight_bp, phase = ?saved.phase, "rollout resumed from store");
                CanaryMachine::resume(self.cfg.clone(), saved, now)?
            }
            None => CanaryMachine::new(self.cfg.clone(), now)?,
        };
        let mut judge = Judge::new(self.cfg.judge.clone())?;
        judge.start(&self.handle.snapshot());
        // A new rollout times every call until its judge has read a window.
        let timing_reader = TimingSampler::new_reader();
        self.handle.window_saw(timing_reader, 0, 1);
        let rollout_state = rollout.state();
        if let Err(err) = self.store.save(&rollout_state) {
            let _ = self.handle.weight().set(0);
            let mut state = rollout_state;
            state.phase = crate::machine::CanaryPhase::RolledBack;
            state.weight_bp = 0;
            tracing::error!(error = %err, "canary state store failed at start: weight 0");
            return Err(CanaryError::Store(StoreError::new(state, err)));
        }
        self.handle.weight().set(rollout_state.weight_bp)?;
        Ok(CanaryController {
            interval: self.cfg.analysis_interval,
            rollout,
            judge,
            handle: self.handle,
            store: self.store,
            clock: self.clock,
            on_promote: self.on_promote,
            on_rollback: self.on_rollback,
            last: None,
            saved: rollout_state,
            timing_reader,
        })
    }
}

/// Drives a [`CanaryMachine`] against a live [`Canary`](crate::Canary) router.
///
/// Call [`tick`](Self::tick) at each analysis (tests do, with a `ManualClock`), or
/// [`spawn`](Self::spawn) it to analyse every `analysis_interval` and take gates from a
/// [`Gates`] handle.
///
/// ```
/// use degrade_canary::{Canary, CanaryPhase, CanaryConfig, CanaryController, Gate};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let router = Canary::new(
///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
/// );
/// let mut c = CanaryController::builder(CanaryConfig::default(), router.handle()).build().unwrap();
/// c.gate(Gate::Abort).await.unwrap();
/// assert_eq!(c.state().phase, CanaryPhase::RolledBack);
/// assert_eq!(router.weight().get(), 0);
/// # }
/// ```
pub struct CanaryController<Clk = TokioClock> {
    rollout: CanaryMachine,
    judge: Judge,
    handle: CanaryHandle,
    store: Box<dyn StateStore>,
    clock: Clk,
    interval: Duration,
    on_promote: Option<Hook>,
    on_rollback: Option<Hook>,
    last: Option<Judgement>,
    saved: CanaryState,
    /// This controller's id as a reader of the router's timing.
    timing_reader: u64,
}

impl<Clk> fmt::Debug for CanaryController<Clk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanaryController")
            .field("state", &self.rollout.state())
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl CanaryController {
    /// A builder over the router behind `handle`.
    pub fn builder(cfg: CanaryConfig, handle: CanaryHandle) -> CanaryControllerBuilder {
        CanaryControllerBuilder {
            cfg,
            handle,
            store: Box::new(MemoryStore::default()),
            clock: TokioClock,
            on_promote: None,
            on_rollback: None,
        }
    }
}

impl<Clk: Clock> CanaryController<Clk> {
    /// The rollout's state.
    ///
    /// ```
    /// # use degrade_canary::{Canary, CanaryPhase, CanaryConfig, CanaryController};
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let c = CanaryController::builder(CanaryConfig::default(), router.handle()).build().unwrap();
    /// assert_eq!(c.state().phase, CanaryPhase::Progressing);
    /// # });
    /// ```
    pub fn state(&self) -> CanaryState {
        self.rollout.state()
    }

    /// The judgement of the last analysis.
    ///
    /// ```
    /// # use degrade_canary::{Canary, CanaryConfig, CanaryController};
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let c = CanaryController::builder(CanaryConfig::default(), router.handle()).build().unwrap();
    /// assert!(c.last_judgement().is_none());
    /// # });
    /// ```
    pub fn last_judgement(&self) -> Option<&Judgement> {
        self.last.as_ref()
    }

    /// One analysis: the judge looks at the router's statistics and the rollout acts on the
    /// verdict. Returns the judgement. An error means the state could not be persisted: the
    /// controller has then rolled back (weight 0, rollback hook run, see [`StoreError`]).
    ///
    /// ```
    /// # use degrade_canary::{Canary, CanaryConfig, CanaryController, Verdict};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// let mut c = CanaryController::builder(CanaryConfig::default(), router.handle()).build().unwrap();
    /// assert_eq!(c.tick().await.unwrap().verdict, Verdict::Inconclusive); // no data yet
    /// # }
    /// ```
    pub async fn tick(&mut self) -> Result<Judgement, StoreError> {
        let weight = self.handle.weight().get();
        let judgement = self.judge.look(&self.handle.snapshot());
        tracing::debug!(
            verdict = %judgement.verdict,
            reason = judgement.reason,
            stable_samples = judgement.samples.0,
            canary_samples = judgement.samples.1,
            error_llr = judgement.error_llr,
            latency_llr = judgement.latency_llr,
            "canary analysis"
        );
        let actions = self
            .rollout
            .on(CanaryEvent::Analysis(judgement.verdict), self.clock.now());
        self.last = Some(judgement.clone());
        self.apply(actions).await?;
        // Under heavy traffic on both arms, time only as many calls as the judge needs; after
        // a weight change (the arms' shares move) time every call until the next look.
        let (calls, timed) = self.judge.timing_window();
        let calls = if self.handle.weight().get() == weight {
            calls
        } else {
            0
        };
        self.handle.window_saw(self.timing_reader, calls, timed);
        Ok(judgement)
    }

    /// Applies a manual gate.
    ///
    /// ```
    /// # use degrade_canary::{Canary, Gate, CanaryPhase, PauseReason, CanaryConfig, CanaryController};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// let mut c = CanaryController::builder(CanaryConfig::default(), router.handle()).build().unwrap();
    /// c.gate(Gate::Pause).await.unwrap();
    /// assert_eq!(c.state().phase, CanaryPhase::Paused(PauseReason::Manual));
    /// # }
    /// ```
    pub async fn gate(&mut self, gate: Gate) -> Result<(), StoreError> {
        let actions = self.rollout.on(gate.into(), self.clock.now());
        self.apply(actions).await
    }

    /// Sets the weight, persists the new state, then runs the hooks: a crash during a hook
    /// never undoes a rollback. A state that cannot be persisted fails safe: the rollout is
    /// aborted (weight 0, rollback hook) and the error returned.
    async fn apply(&mut self, mut actions: Vec<CanaryAction>) -> Result<(), StoreError> {
        for action in &actions {
            if let CanaryAction::SetWeight(bp) = *action {
                // The rollout only produces checked weights.
                let _ = self.handle.weight().set(bp);
            }
        }
        let state = self.rollout.state();
        let mut failure = None;
        if self.saved != state {
            match self.store.save(&state) {
                Ok(()) => self.saved = state,
                // A promotion was judged: it stands, only its record is missing.
                Err(err) if state.phase == crate::machine::CanaryPhase::Promoted => {
                    tracing::error!(error = %err, "canary state store failed after promotion");
                    failure = Some(StoreError::new(state, err));
                }
                Err(err) => {
                    tracing::error!(
                        error = %err,
                        step = state.step,
                        weight_bp = state.weight_bp,
                        "canary state store failed: rolling back to weight 0"
                    );
                    let _ = self.handle.weight().set(0);
                    let abort = self.rollout.on(CanaryEvent::Abort, self.clock.now());
                    let _ = self.handle.weight().set(0);
                    // The rollback itself is worth recording if the store recovers.
                    if self.store.save(&self.rollout.state()).is_ok() {
                        self.saved = self.rollout.state();
                    }
                    if !actions.contains(&CanaryAction::RollBack) {
                        actions.extend(abort.into_iter().filter(|a| *a == CanaryAction::RollBack));
                    }
                    failure = Some(StoreError::new(self.rollout.state(), err));
                }
            }
        }
        for action in actions {
            let hook = match action {
                CanaryAction::Promote => &self.on_promote,
                CanaryAction::RollBack => &self.on_rollback,
                CanaryAction::SetWeight(_) => continue,
            };
            if let Some(hook) = hook {
                hook().await;
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

impl<Clk: Clock> CanaryController<Clk> {
    /// Runs the controller on the tokio runtime: an analysis every `analysis_interval` (the
    /// first one interval from now), gates as they arrive, until the rollout is promoted or
    /// rolled back. The task returns the final state, or the store's error after failing safe
    /// (weight 0).
    ///
    /// ```
    /// use degrade_canary::{Canary, CanaryPhase, CanaryConfig, CanaryController};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// let c = CanaryController::builder(CanaryConfig::default(), router.handle()).build().unwrap();
    /// let (task, gates) = c.spawn();
    /// gates.promote();
    /// assert_eq!(task.await.unwrap().unwrap().phase, CanaryPhase::Promoted);
    /// # }
    /// ```
    pub fn spawn(mut self) -> (JoinHandle<Result<CanaryState, StoreError>>, Gates) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel((self.state(), self.last.clone()));
        let task = tokio::spawn(async move {
            // Published after every analysis and gate, for `Gates::state` / `last_judgement`.
            let publish = |c: &Self| {
                status_tx.send_replace((c.state(), c.last.clone()));
            };
            // A configured "forever" (up to `Duration::MAX`) must not overflow the first tick.
            let now = tokio::time::Instant::now();
            let start = now
                .checked_add(self.interval)
                .unwrap_or(now + std::time::Duration::from_secs(100 * 365 * 24 * 3600));
            let mut interval = tokio::time::interval_at(start, self.interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !self.state().phase.is_terminal() {
                tokio::select! {
                    _ = interval.tick() => { self.tick().await?; }
                    gate = rx.recv() => match gate {
                        Some(gate) => self.gate(gate).await?,
                        // Every Gates handle is gone: keep analysing.
                        None => { interval.tick().await; self.tick().await?; }
                    },
                }
                publish(&self);
            }
            Ok(self.state())
        });
        (task, Gates { tx, status })
    }
}

/// Sends manual gates to a [`spawn`](CanaryController::spawn)ed controller. Clones send to
/// the same controller; a gate sent after the rollout ended is dropped.
///
/// ```
/// # use degrade_canary::{Canary, CanaryConfig, CanaryController};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
/// let (task, gates) = CanaryController::builder(CanaryConfig::default(), router.handle())
///     .build().unwrap().spawn();
/// gates.abort();
/// task.await.unwrap().unwrap();
/// assert_eq!(router.weight().get(), 0);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Gates {
    tx: mpsc::UnboundedSender<Gate>,
    status: watch::Receiver<(CanaryState, Option<Judgement>)>,
}

impl Gates {
    /// The controller's state after its latest analysis or gate (an admin page, a metric).
    ///
    /// ```
    /// # use degrade_canary::{Canary, CanaryConfig, CanaryController, CanaryPhase};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// let (task, gates) = CanaryController::builder(CanaryConfig::default(), router.handle())
    ///     .build().unwrap().spawn();
    /// assert_eq!(gates.state().phase, CanaryPhase::Progressing);
    /// gates.abort();
    /// task.await.unwrap().unwrap();
    /// assert_eq!(gates.state().phase, CanaryPhase::RolledBack);
    /// # }
    /// ```
    pub fn state(&self) -> CanaryState {
        self.status.borrow().0
    }

    /// The controller's latest judgement, if it has analysed yet.
    ///
    /// ```
    /// # use degrade_canary::{Canary, CanaryConfig, CanaryController};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// let (_task, gates) = CanaryController::builder(CanaryConfig::default(), router.handle())
    ///     .build().unwrap().spawn();
    /// assert!(gates.last_judgement().is_none()); // no analysis yet
    /// # }
    /// ```
    pub fn last_judgement(&self) -> Option<Judgement> {
        self.status.borrow().1.clone()
    }

    /// Sends `gate`.
    ///
    /// ```
    /// # use degrade_canary::{Canary, CanaryPhase, Gate, CanaryConfig, CanaryController};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # let (task, gates) = CanaryController::builder(CanaryConfig::default(), router.handle()).build().unwrap().spawn();
    /// gates.send(Gate::Promote);
    /// let end = task.await.unwrap().unwrap(); // a promotion ends the rollout
    /// assert_eq!(end.phase, CanaryPhase::Promoted);
    /// # }
    /// ```
    pub fn send(&self, gate: Gate) {
        let _ = self.tx.send(gate);
    }

    /// Promote now.
    ///
    /// ```
    /// # use degrade_canary::{Canary, CanaryConfig, CanaryController, CanaryPhase};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # let (task, gates) = CanaryController::builder(CanaryConfig::default(), router.handle()).build().unwrap().spawn();
    /// gates.promote();
    /// assert_eq!(task.await.unwrap().unwrap().phase, CanaryPhase::Promoted);
    /// # }
    /// ```
    pub fn promote(&self) {
        self.send(Gate::Promote);
    }

    /// Roll back now.
    ///
    /// ```
    /// # use degrade_canary::{Canary, CanaryConfig, CanaryController, CanaryPhase};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # let (task, gates) = CanaryController::builder(CanaryConfig::default(), router.handle()).build().unwrap().spawn();
    /// gates.abort();
    /// assert_eq!(task.await.unwrap().unwrap().phase, CanaryPhase::RolledBack);
    /// assert_eq!(router.weight().get(), 0);
    /// # }
    /// ```
    pub fn abort(&self) {
        self.send(Gate::Abort);
    }

    /// Hold the current step.
    pub fn pause(&self) {
        self.send(Gate::Pause);
    }

    /// Continue after a pause.
    pub fn resume(&self) {
        self.send(Gate::Resume);
    }
}
