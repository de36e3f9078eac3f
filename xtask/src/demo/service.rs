//! The service under test: a backend with a fixed capacity and two versions, and the three ways
//! the demo puts it on the network (behind the full degrade stack, behind tower's
//! `ConcurrencyLimit` + `LoadShed`, and bare).

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use degrade_breaker::{BreakerConfig, BreakerHandle, BreakerLayer, WindowConfig};
use degrade_canary::{Canary, CanaryHandle};
use degrade_core::degrade::DegradeSnapshot;
use degrade_core::ladder::LadderConfig;
use degrade_core::limit::LimitConfig;
use degrade_core::priority::HeaderPriority;
use degrade_core::{BoxError, Controller, DegradeLayer, HttpClassifier, Priority};
use degrade_ratelimit::key::HeaderKey;
use degrade_ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer, RateLimitSnapshot};
use http::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;

/// Requests the backend serves at once by default (its fixed capacity in concurrency); the
/// overload bench's `--backend` sets another ([`set_shape`]).
pub(crate) const PERMITS: usize = 8;
/// Work per request once it holds a permit. 40 ms makes the capacity 200 req/s, so the peak of
/// 3x capacity is 600 req/s: the client and the server share this process and, in a debug
/// build, each request costs them about half a millisecond of CPU together, rejected or not.
/// At 20 ms (1,200 req/s at the peak) a 2-core machine doing anything else falls behind its own
/// schedule, and the demo measures the machine instead of the server.
pub(crate) const SERVICE_TIME: Duration = Duration::from_millis(40);
/// The extra latency of the bad candidate version.
const BAD_EXTRA: Duration = Duration::from_millis(20);
/// One request in this many fails on the bad candidate version.
const BAD_ERROR_EVERY: u64 = 4;
pub(crate) const PRIORITY_HEADER: &str = "x-priority";
pub(crate) const CLIENT_HEADER: &str = "x-client";
/// The backend's shape when not the default: permits and service time, set once before
/// anything runs (the overload bench's `--backend PxMS`).
static SHAPE: std::sync::OnceLock<(usize, Duration)> = std::sync::OnceLock::new();

/// Gives the backend `permits` permits of `service_time` each instead of the default
/// [`PERMITS`] × [`SERVICE_TIME`]. Once per process, before any backend or report is made.
pub(crate) fn set_shape(permits: usize, service_time: Duration) -> Result<(), String> {
    if !(1..=1024).contains(&permits) {
        return Err(format!("backend permits must be 1..=1024, not {permits}"));
    }
    if service_time < Duration::from_millis(1) || service_time > Duration::from_secs(10) {
        return Err(format!(
            "backend service time must be 1 ms..=10 s, not {service_time:?}"
        ));
    }
    SHAPE
        .set((permits, service_time))
        .map_err(|_| "the backend's shape is already set".to_string())
}

/// degrade's [`LimitConfig::queue_delay`] when `--queue-delay` (of `bench overload` or of
/// `serve`) sets one (`None`: the default). Set once per process, before any layer is built.
static QUEUE_DELAY: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Reads the value of a `--queue-delay` flag: a number of baselines that
/// [`LimitConfig::validate`] accepts (checked as the layer's builder checks it).
pub(crate) fn parse_queue_delay(value: &str) -> Result<f64, String> {
    let queue_delay: f64 = value
        .parse()
        .map_err(|_| format!("`--queue-delay {value}`: expected a number, e.g. 0.3"))?;
    LimitConfig {
        queue_delay,
        ..LimitConfig::default()
    }
    .validate()
    .map_err(|err| format!("`--queue-delay {value}`: {err}"))?;
    Ok(queue_delay)
}

/// Runs degrade's adaptive limit with `queue_delay` (in baselines, as read by
/// [`parse_queue_delay`]) instead of the default: how long a request may wait for a slot, the
/// one trade of latency for goodput its configuration offers. Once per process, before any
/// layer is built.
pub(crate) fn set_queue_delay(queue_delay: f64) -> Result<(), String> {
    QUEUE_DELAY
        .set(queue_delay)
        .map_err(|_| "the queue delay is already set".to_string())
}

/// The `queue_delay` set by [`set_queue_delay`], if any.
pub(crate) fn queue_delay() -> Option<f64> {
    QUEUE_DELAY.get().copied()
}

/// Requests the backend serves at once.
pub(crate) fn permits() -> usize {
    SHAPE.get().map_or(PERMITS, |s| s.0)
}

/// Work per request once it holds a permit.
pub(crate) fn service_time() -> Duration {
    SHAPE.get().map_or(SERVICE_TIME, |s| s.1)
}

/// tower's `ConcurrencyLimit` in the comparison run: the backend's permits plus as many
/// waiting, which bounds the queueing delay to one service time.
pub(crate) fn tower_limit() -> usize {
    2 * permits()
}

/// The backend's capacity in requests per second: [`permits`] requests every
/// [`service_time`].
pub(crate) fn capacity() -> f64 {
    permits() as f64 / service_time().as_secs_f64()
}

/// In [`Model::Mixed`], one request in this many costs [`COSTLY`] service times.
const COSTLY_EVERY: u64 = 10;
/// What a costly request of [`Model::Mixed`] costs, in service times.
const COSTLY: u32 = 10;

/// The backend's capacity in requests per second under `model`: [`capacity`], and in
/// [`Model::Mixed`] that of its mean cost (nine requests of one service time and one of ten:
/// 1.9 on average).
pub(crate) fn capacity_of(model: Model) -> f64 {
    match model {
        Model::Mixed => {
            let mean = (COSTLY_EVERY - 1 + u64::from(COSTLY)) as f64 / COSTLY_EVERY as f64;
            capacity() / mean
        }
        Model::Slots | Model::Cpu => capacity(),
    }
}

/// The version deployed as the canary candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Candidate {
    /// Nothing deployed: the candidate arm answers like v1 (its weight is 0 anyway).
    None,
    /// v2 with a bug: one request in four fails, and it is 20 ms slower.
    Bad,
    /// v2 fixed: as fast and as reliable as v1.
    Good,
}

/// How the backend's capacity is limited (the overload benchmark's scenarios).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Model {
    /// [`permits`] permits, [`service_time`] each (a pool of workers or connections).
    Slots,
    /// CPU-bound: [`permits`] virtual cores shared equally by every request in the backend
    /// (processor sharing), [`service_time`] of work each: capacity set by CPU, not by a number
    /// of slots, so every request more slows all of them.
    Cpu,
    /// Slots, and one request in ten costs ten times as much.
    Mixed,
}

/// The backend: a fixed number of permits, the requests in it (waiting for a permit or holding
/// one: the queue signal), an outage switch and the candidate version.
#[derive(Debug)]
pub(crate) struct Backend {
    model: Model,
    /// Service time multiplier in per mille (1000: nominal; 2000: capacity halved).
    slowdown: AtomicU64,
    cpu: Cpu,
    permits: Semaphore,
    in_system: AtomicUsize,
    outage: AtomicBool,
    candidate: AtomicU8,
    /// Calls that reached the backend (past every protection).
    pub(crate) calls: AtomicU64,
    bad_calls: AtomicU64,
}

impl Backend {
    /// The demo's backend: a pool of [`permits`] slots.
    pub(crate) fn new() -> Arc<Self> {
        Self::with_model(Model::Slots)
    }

    /// A backend of `model` (must run inside the tokio runtime: the CPU model keeps its books
    /// on a task).
    pub(crate) fn with_model(model: Model) -> Arc<Self> {
        let backend = Arc::new(Self {
            model,
            slowdown: AtomicU64::new(1000),
            cpu: Cpu::new(permits()),
            permits: Semaphore::new(permits()),
            in_system: AtomicUsize::new(0),
            outage: AtomicBool::new(false),
            candidate: AtomicU8::new(0),
            calls: AtomicU64::new(0),
            bad_calls: AtomicU64::new(0),
        });
        if model == Model::Cpu {
            tokio::spawn(cpu_scheduler(Arc::downgrade(&backend)));
        }
        backend
    }

    /// Requests waiting for or holding a permit.
    pub(crate) fn in_system(&self) -> usize {
        self.in_system.load(Ordering::Relaxed)
    }

    /// Every request takes `factor` times as long from now on (2.0 halves the capacity).
    pub(crate) fn set_slowdown(&self, factor: f64) {
        self.slowdown
            .store((factor * 1000.0).round() as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_outage(&self, on: bool) {
        self.outage.store(on, Ordering::Relaxed);
    }

    pub(crate) fn deploy(&self, candidate: Candidate) {
        self.candidate.store(candidate as u8, Ordering::Relaxed);
    }

    fn candidate(&self) -> Candidate {
        match self.candidate.load(Ordering::Relaxed) {
            1 => Candidate::Bad,
            2 => Candidate::Good,
            _ => Candidate::None,
        }
    }

    /// Serves one request as `version` ("v1" or "v2"); the body starts with the version.
    pub(crate) async fn serve(&self, v2: bool) -> Response<Body> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let version = if v2 { "v2" } else { "v1" };
        if self.outage.load(Ordering::Relaxed) {
            // The backend's dependency is down: every call fails at once.
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                version,
                "dependency down",
            );
        }
        let _counted = InSystem::enter(&self.in_system);
        let bad = v2 && self.candidate() == Candidate::Bad;
        let nominal = if bad {
            service_time() + BAD_EXTRA
        } else {
            service_time()
        };
        let mut work = nominal.mul_f64(self.slowdown.load(Ordering::Relaxed) as f64 / 1000.0);
        if self.model == Model::Mixed
            && self
                .calls
                .load(Ordering::Relaxed)
                .is_multiple_of(COSTLY_EVERY)
        {
            work *= COSTLY;
        }
        if self.model == Model::Cpu {
            self.cpu.run(work).await;
        } else {
            // Waiting here is the backend's queue: over capacity, latency rises with it.
            let Ok(_permit) = self.permits.acquire().await else {
                return answer(StatusCode::INTERNAL_SERVER_ERROR, version, "closed");
            };
            // This sleep models the backend's work (CPU, a database call) while it holds one
            // of its few permits; it is not used as a clock.
            tokio::time::sleep(work).await;
        }
        if bad
            && self
                .bad_calls
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(BAD_ERROR_EVERY)
        {
            return answer(StatusCode::INTERNAL_SERVER_ERROR, version, "bug");
        }
        answer(StatusCode::OK, version, "ok")
    }
}

/// Processor sharing over `cores` virtual cores: each request has an amount of work; while `n`
/// requests are in, each progresses at `min(1, cores / n)` of real time. One task keeps the
/// books and wakes each request when its work is done; a request waits on a channel.
#[derive(Debug)]
struct Cpu {
    cores: usize,
    jobs: std::sync::Mutex<CpuJobs>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct CpuJobs {
    /// Remaining work (seconds) and the channel to wake the request.
    running: Vec<(f64, Option<tokio::sync::oneshot::Sender<()>>)>,
    last: Option<tokio::time::Instant>,
}

impl Cpu {
    fn new(cores: usize) -> Self {
        Self {
            cores,
            jobs: std::sync::Mutex::new(CpuJobs::default()),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CpuJobs> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies the progress since the last update; returns the time to the next completion.
    fn advance(&self, jobs: &mut CpuJobs, now: tokio::time::Instant) -> Option<Duration> {
        let n = jobs.running.len();
        if let Some(last) = jobs.last
            && n > 0
        {
            let rate = (self.cores as f64 / n as f64).min(1.0);
            let dt = now.saturating_duration_since(last).as_secs_f64() * rate;
            for job in &mut jobs.running {
                job.0 -= dt;
            }
        }
        jobs.last = Some(now);
        jobs.running.retain_mut(|job| {
            if job.0 <= 1e-6 {
                if let Some(tx) = job.1.take() {
                    let _ = tx.send(());
                }
                false
            } else {
                true
            }
        });
        let n = jobs.running.len();
        let rate = (self.cores as f64 / n.max(1) as f64).min(1.0);
        jobs.running
            .iter()
            .map(|j| j.0)
            .reduce(f64::min)
            .map(|w| Duration::from_secs_f64(w / rate))
    }

    /// Runs `work` of CPU among the others.
    async fn run(&self, work: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut jobs = self.lock();
            self.advance(&mut jobs, tokio::time::Instant::now());
            jobs.running.push((work.as_secs_f64(), Some(tx)));
        }
        self.changed.notify_one();
        let _ = rx.await;
    }
}

/// Keeps the processor-sharing books of `backend` until it is dropped.
async fn cpu_scheduler(backend: std::sync::Weak<Backend>) {
    loop {
        let Some(b) = backend.upgrade() else { return };
        let next = {
            let mut jobs = b.cpu.lock();
            b.cpu.advance(&mut jobs, tokio::time::Instant::now())
        };
        // Without work, look again at the next arrival (or in a second, to notice a drop).
        let wait = next.unwrap_or(Duration::from_secs(1));
        let changed = b.cpu.changed.notified();

        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed => {}
        }
    }
}

fn answer(status: StatusCode, version: &'static str, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{version} {text}")));
    *response.status_mut() = status;
    response
}

/// Counts a request in the backend for as long as its future lives, including when the client
/// gives up and hyper drops the future mid-wait.
struct InSystem<'a>(&'a AtomicUsize);

impl<'a> InSystem<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InSystem<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How the backend is put on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Protection {
    /// DegradeLayer (the adaptive limit; the level driven by degrade-triggers) → keyed
    /// RateLimitLayer → BreakerLayer → Canary → backend.
    Degrade,
    /// The overload benchmark's degrade: the same stack without the demo's per-client quota,
    /// so only the default `DegradeLayer` refuses (the peers have no quota either).
    DegradeLayer,
    /// tower's `GlobalConcurrencyLimitLayer` + `LoadShed`, answered 503 by axum's
    /// `HandleErrorLayer`.
    Tower,
    /// The backend alone.
    Unprotected,
    /// tower-resilience's bulkhead: the backend's permits, a wait of at most one service time,
    /// answered 503 by axum's `HandleErrorLayer` (overload benchmark only).
    Bulkhead,
    /// tower-acc's adaptive `ConcurrencyLimit` with its `Gradient2` defaults, + `LoadShed`
    /// (overload benchmark only).
    AccGradient2,
    /// tower-acc with its `Vegas` defaults, + `LoadShed` (overload benchmark only).
    AccVegas,
    /// tower-resilience-adaptive's limiter with its AIMD defaults, + `LoadShed`.
    AdaptiveAimd,
    /// tower-resilience-adaptive's limiter with its Vegas defaults, + `LoadShed`.
    AdaptiveVegas,
}

impl Protection {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protection::Degrade => "degrade",
            Protection::DegradeLayer => "degrade (default DegradeLayer)",
            Protection::Tower => "tower ConcurrencyLimit+LoadShed",
            Protection::Unprotected => "unprotected",
            Protection::Bulkhead => "tower-resilience bulkhead",
            Protection::AccGradient2 => "tower-acc Gradient2+LoadShed",
            Protection::AccVegas => "tower-acc Vegas+LoadShed",
            Protection::AdaptiveAimd => "tower-resilience-adaptive AIMD+LoadShed",
            Protection::AdaptiveVegas => "tower-resilience-adaptive Vegas+LoadShed",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Protection::Degrade => "degrade-stack",
            Protection::DegradeLayer => "degrade",
            Protection::Tower => "tower",
            Protection::Unprotected => "unprotected",
            Protection::Bulkhead => "bulkhead",
            Protection::AccGradient2 => "acc-gradient2",
            Protection::AccVegas => "acc-vegas",
            Protection::AdaptiveAimd => "adaptive-aimd",
            Protection::AdaptiveVegas => "adaptive-vegas",
        }
    }
}

/// The per-client quota: above what any application client sends at 3x (60 % of 600 req/s over
/// 12 clients = 30/s), below what the bulk client sends from the warm-up on (40 % of 120 req/s =
/// 48/s).
pub(crate) fn rate_limit() -> RateLimitConfig {
    let mut config = RateLimitConfig::default();
    config.quota = 40;
    config.period = Duration::from_secs(1);
    config.burst = Some(20);
    config
}

/// Opens when half of the last 50 calls failed (at least 20), waits 1 s (doubling while the
/// outage lasts, up to 4 s), then lets 2 probes at a time through.
pub(crate) fn breaker() -> BreakerConfig {
    let mut config = BreakerConfig::default();
    config.window = WindowConfig::Count { size: 50 };
    config.minimum_calls = 20;
    config.failure_rate = 0.5;
    config.wait = Duration::from_secs(1);
    config.backoff.multiplier = 2.0;
    config.backoff.max_wait = Duration::from_secs(4);
    config.half_open.permits = 2;
    config.half_open.successes = 3;
    config
}

/// A peer limiter that waits in `poll_ready`, made to refuse at once by tower's `LoadShed` (the
/// way tower's own `ConcurrencyLimit` is used), answered 503 by axum's `HandleErrorLayer`. The
/// service is built once, so every connection's clone shares the peer's limit.
fn shed_peer<L, S>(limit: L, svc: S) -> Router
where
    L: tower::Layer<S>,
    L::Service:
        tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
    <L::Service as tower::Service<Request<Body>>>::Error: Into<BoxError>,
    <L::Service as tower::Service<Request<Body>>>::Future: Send + 'static,
{
    let svc = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|err: BoxError| async move {
            let status = if err.is::<tower::load_shed::error::Overloaded>() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            (status, err.to_string())
        }))
        .load_shed()
        .layer(limit)
        .service(svc);
    Router::new().route_service("/work", svc)
}

/// The protected run's handles: what the control loop drives and what the report reads.
#[derive(Debug, Clone)]
pub(crate) struct Parts {
    pub(crate) controller: Controller,
    pub(crate) degrade: DegradeLayer<HeaderPriority>,
    pub(crate) rate_limit: RateLimitLayer<HeaderKey>,
    pub(crate) breaker: BreakerHandle<HttpClassifier>,
    pub(crate) canary: CanaryHandle,
}

impl Parts {
    pub(crate) fn degrade_snapshot(&self) -> DegradeSnapshot {
        self.degrade.snapshot()
    }

    pub(crate) fn rate_limit_snapshot(&self) -> RateLimitSnapshot {
        self.rate_limit.snapshot()
    }
}

/// The overload bench's DegradeLayer (returning rejections as errors; `.http()` or `.grpc()`
/// answers them): the default adaptive limit, highest priority first, the priority read from
/// the `x-priority` header (gRPC metadata are headers too). Nothing of the backend (its
/// permits, its service time) is configured; `--queue-delay` sets the wait for a slot.
pub(crate) fn degrade_layer(
    controller: &Controller,
) -> Result<DegradeLayer<HeaderPriority>, String> {
    let mut degrade = DegradeLayer::builder(controller.handle())
        .prioritize(
            HeaderPriority::new(PRIORITY_HEADER, Priority::Normal)
                .map_err(|err| format!("priority header: {err}"))?,
        )
        .retry_after(Duration::from_secs(1));
    if let Some(queue_delay) = queue_delay() {
        degrade = degrade.limit(LimitConfig {
            queue_delay,
            ..LimitConfig::default()
        });
    }
    degrade
        .build()
        .map_err(|err| format!("degrade layer: {err}"))
}

/// The app for `protection`, and the protected run's handles.
pub(crate) fn app(
    protection: Protection,
    backend: &Arc<Backend>,
    ladder: &LadderConfig,
) -> Result<(Router, Option<Parts>), String> {
    let version = |v2: Option<bool>| {
        let backend = Arc::clone(backend);
        tower::service_fn(move |_: Request<Body>| {
            let backend = Arc::clone(&backend);
            async move {
                // `None`: the candidate arm, v2 once a candidate is deployed.
                let v2 = v2.unwrap_or_else(|| backend.candidate() != Candidate::None);
                Ok::<_, Infallible>(backend.serve(v2).await)
            }
        })
    };
    match protection {
        Protection::Unprotected => Ok((
            Router::new().route_service("/work", version(Some(false))),
            None,
        )),
        Protection::Tower => {
            let svc = ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|err: BoxError| async move {
                    let status = if err.is::<tower::load_shed::error::Overloaded>() {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    };
                    (status, err.to_string())
                }))
                .load_shed()
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(tower_limit()))
                .service(version(Some(false)));
            Ok((Router::new().route_service("/work", svc), None))
        }
        Protection::Bulkhead => {
            let bulkhead = tower_resilience_bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(permits())
                .max_wait_duration(service_time())
                .name("backend")
                .build()
                .map_err(|err| format!("bulkhead: {err}"))?;
            let svc = ServiceBuilder::new()
                .layer(HandleErrorLayer::new(
                    |err: tower_resilience_bulkhead::BulkheadServiceError<Infallible>| async move {
                        (StatusCode::SERVICE_UNAVAILABLE, err.to_string())
                    },
                ))
                .layer(bulkhead)
                .service(version(Some(false)));
            Ok((Router::new().route_service("/work", svc), None))
        }
        Protection::AccGradient2 => Ok((
            shed_peer(
                tower_acc::ConcurrencyLimitLayer::new(tower_acc::Gradient2::default()),
                version(Some(false)),
            ),
            None,
        )),
        Protection::AccVegas => Ok((
            shed_peer(
                tower_acc::ConcurrencyLimitLayer::new(tower_acc::Vegas::default()),
                version(Some(false)),
            ),
            None,
        )),
        Protection::AdaptiveAimd => {
            let aimd = tower_resilience_adaptive::Aimd::builder()
                .build()
                .map_err(|err| format!("aimd: {err:?}"))?;
            Ok((
                shed_peer(
                    tower_resilience_adaptive::AdaptiveLimiterLayer::new(aimd),
                    version(Some(false)),
                ),
                None,
            ))
        }
        Protection::AdaptiveVegas => {
            let vegas = tower_resilience_adaptive::Vegas::builder()
                .build()
                .map_err(|err| format!("vegas: {err:?}"))?;
            Ok((
                shed_peer(
                    tower_resilience_adaptive::AdaptiveLimiterLayer::new(vegas),
                    version(Some(false)),
                ),
                None,
            ))
        }
        Protection::Degrade | Protection::DegradeLayer => {
            let quota = protection == Protection::Degrade;
            let controller =
                Controller::new(ladder.clone()).map_err(|err| format!("ladder: {err}"))?;
            let degrade = degrade_layer(&controller)?;
            let rate_limit = RateLimitLayer::builder(rate_limit())
                .keyed(
                    HeaderKey::new(CLIENT_HEADER).map_err(|err| format!("client key: {err}"))?,
                    KeysConfig::default(),
                )
                .build()
                .map_err(|err| format!("rate limit: {err}"))?;
            let breaker = BreakerLayer::builder(breaker())
                .classifier(HttpClassifier::default())
                .name("backend")
                .build()
                .map_err(|err| format!("breaker: {err}"))?;
            let canary = Canary::builder(version(Some(false)), version(None))
                .classifier(HttpClassifier::default())
                .build()
                .map_err(|err| format!("canary: {err}"))?;
            let parts = Parts {
                controller,
                degrade: degrade.clone(),
                rate_limit: rate_limit.clone(),
                breaker: breaker.handle(),
                canary: canary.handle(),
            };
            let svc = ServiceBuilder::new()
                // The canary's error type is `BoxError`; every layer above answers its own
                // rejections, so an error here is a bug in the demo, answered 500.
                .layer(HandleErrorLayer::new(|err: BoxError| async move {
                    (StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
                }))
                .layer(degrade.http())
                .option_layer(quota.then(|| rate_limit.http()))
                .layer(breaker.http())
                .service(canary);
            Ok((Router::new().route_service("/work", svc), Some(parts)))
        }
    }
}
