//! # axum-gateway
//!
//! An axum gateway in front of a slow, sometimes failing backend, protected by the whole degrade
//! stack, and a built-in load that walks it through four phases.
//!
//! ```text
//! client ─► gateway (127.0.0.1:0) ───────────────────────────────────────────► backend (127.0.0.1:0)
//!           DegradeLayer ─► RateLimitLayer ─► ObserveLayer ─► BreakerLayer ─► proxy
//!           adaptive limit,  per x-api-key     latency,         503 when open
//!           by priority      429+Retry-After   errors
//!           503 refused
//!                │
//!                └─► AdmissionSignal ─► Monitor (100 ms) ─► Controller (ladder) ─► level
//! ```
//!
//! The backend serves four requests at a time, 20 ms each (200 requests/s); the rest queue. It
//! can be switched into an outage (every request answers 500).
//!
//! The `DegradeLayer` is the default one: an adaptive concurrency limit that learns the
//! backend's capacity from latency and fills it highest priority first; no threshold of this
//! backend is written anywhere. The level follows the share of requests the limit refuses.
//!
//! Why this order: the `DegradeLayer` is outermost so a shed request costs nothing further; the
//! rate limiter comes next so one tenant's flood never reaches the signals or the backend; the
//! `ObserveLayer` measures only the requests the gateway actually forwards (its in-flight count
//! is the gateway's queue); the breaker wraps the backend calls alone, so that only the
//! backend's own failures open it.
//!
//! Phases (their lengths scale with `--duration`; `--quick` is a 6 s run for CI):
//!
//! 1. **normal**: three tenants at 20 requests/s each. Everything passes.
//! 2. **burst**: tenant `mallory` floods over eight connections; only `mallory` gets 429s.
//! 3. **outage**: the backend fails every request for a while. The breaker opens (fast 503s,
//!    and the backend receives no call while it is open), probes, and closes once the backend
//!    is back.
//! 4. **overload**: 24 clients, six per priority (low, normal, high, and critical on the `/pay`
//!    route), each sending at a random point of its period, offer 2.4× what the backend can
//!    serve. The limit refuses low priority first and critical least; the level rises with the
//!    refused share.
//!
//! The exit status is 0 only if every check printed at the end holds.

use axum::Router;
use axum::body::Body;
use degrade::admin::{Admin, Operator};
use degrade::breaker::{BreakerConfig, BreakerHandle, BreakerLayer, State, WindowConfig};
use degrade::ladder::LadderConfig;
use degrade::otel::metrics::Registry;
use degrade::ratelimit::key::HeaderKey;
use degrade::ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer};
use degrade::triggers::{AdmissionSignal, Monitor, ObserveLayer, Smoothing};
use degrade::{Controller, DegradeLayer, HttpClassifier, Level, Priority};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::Encoder as _;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tower::ServiceBuilder;

thread_local! {
    /// The breaker's state as the request entered the breaker's `call` (see the proxy's
    /// forwarded-while-open check).
    static STATE_BEFORE_BREAKER: std::cell::Cell<Option<State>> = const { std::cell::Cell::new(None) };
}

type HttpClient = Client<HttpConnector, Body>;
type Error = Box<dyn std::error::Error + Send + Sync>;

/// Backend capacity: requests served at once, and the time each takes.
const BACKEND_SLOTS: usize = 4;
const BACKEND_WORK: Duration = Duration::from_millis(20);
/// Requests per second of one paced client.
const CLIENT_RATE: f64 = 20.0;

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Debug, Clone, Copy)]
struct Args {
    /// Total length of the four phases.
    duration: Duration,
    /// Where the ops listener (`/metrics`) binds.
    ops: SocketAddr,
}

const USAGE: &str = concat!(
    "usage: axum-gateway [--quick] [--duration <secs>] [--ops <addr>]\n",
    "  --quick            a short run (6 s), as in CI\n",
    "  --duration <secs>  total length of the four phases (default 16, at least 4)\n",
    "  --ops <addr>       where GET /metrics (Prometheus) and /admin/* listen (default 127.0.0.1:0)",
);

fn parse_args(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut duration = Duration::from_secs(16);
    let mut ops = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut args = args.skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => duration = Duration::from_secs(6),
            "--duration" => {
                let v = args.next().ok_or("--duration needs a value")?;
                let secs: f64 = v
                    .trim_end_matches('s')
                    .parse()
                    .map_err(|_| format!("--duration: `{v}` is not a number of seconds"))?;
                if !(4.0..=3600.0).contains(&secs) {
                    return Err("--duration must be between 4 and 3600 seconds".into());
                }
                duration = Duration::from_secs_f64(secs);
            }
            "--ops" => {
                let v = args.next().ok_or("--ops needs an address")?;
                ops = v
                    .parse()
                    .map_err(|_| format!("--ops: `{v}` is not an address like 127.0.0.1:9464"))?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(Args { duration, ops })
}

// ---------------------------------------------------------------------------------------------
// The backend

/// The backend's switches and counters, shared with the scenario.
#[derive(Debug)]
struct Backend {
    addr: SocketAddr,
    outage: AtomicBool,
    calls: AtomicU64,
    slots: Semaphore,
}

async fn serve(listener: TcpListener, app: Router) {
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("server stopped: {e}");
    }
}

async fn start_backend() -> Result<Arc<Backend>, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let backend = Arc::new(Backend {
        addr: listener.local_addr()?,
        outage: AtomicBool::new(false),
        calls: AtomicU64::new(0),
        slots: Semaphore::new(BACKEND_SLOTS),
    });
    let state = Arc::clone(&backend);
    let app = Router::new().fallback(move || {
        let state = Arc::clone(&state);
        async move {
            state.calls.fetch_add(1, Ordering::Relaxed);
            if state.outage.load(Ordering::Relaxed) {
                return (StatusCode::INTERNAL_SERVER_ERROR, "backend down");
            }
            // A fixed number of workers: beyond them requests queue, as in a real service.
            let Ok(_slot) = state.slots.acquire().await else {
                return (StatusCode::INTERNAL_SERVER_ERROR, "backend closed");
            };
            tokio::time::sleep(BACKEND_WORK).await;
            (StatusCode::OK, "ok")
        }
    });
    tokio::spawn(serve(listener, app));
    Ok(backend)
}

// ---------------------------------------------------------------------------------------------
// The gateway

/// What the scenario reads from the gateway.
struct Gateway {
    addr: SocketAddr,
    controller: Controller,
    degrade: DegradeLayer<PriorityOf, degrade::HttpResponses>,
    breaker: BreakerHandle<HttpClassifier>,
    /// Calls the proxy forwarded while the breaker read open (must stay 0).
    forwarded_while_open: Arc<AtomicU64>,
    /// `GET /metrics` and `/admin/*`: every layer's state, registered once.
    ops: SocketAddr,
    /// The bearer token of `/admin/*`.
    admin_token: String,
    _monitor: degrade::triggers::MonitorHandle,
    _metrics: SdkMeterProvider,
}

/// Priority by route, then by header: `/pay/...` is critical; otherwise `x-priority`
/// (`background`, `low`, `normal`, `high`, `critical`), normal when absent or unknown.
type PriorityOf = fn(&Request<Body>) -> Priority;

fn priority_of(req: &Request<Body>) -> Priority {
    if req.uri().path().starts_with("/pay") {
        return Priority::Critical;
    }
    req.headers()
        .get("x-priority")
        .and_then(|v| Priority::parse_bytes(v.as_bytes()))
        .unwrap_or(Priority::Normal)
}

fn bad_gateway() -> Response<Body> {
    let mut res = Response::new(Body::from("bad gateway"));
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

async fn start_gateway(
    backend: SocketAddr,
    breaker_wait: Duration,
    ops: SocketAddr,
) -> Result<Gateway, Error> {
    // The ladder: fast reactions for a short demo (two samples to escalate, 1 s dwell), one
    // level at a time so that the table shows each priority go in turn.
    let controller = Controller::new(LadderConfig {
        escalate_after: 2,
        recover_after: 3,
        dwell: Duration::from_secs(1),
        jump: false,
        ..LadderConfig::default()
    })?;

    let observe = ObserveLayer::builder()
        .classifier(HttpClassifier::default())
        .build()?;
    // The default DegradeLayer: an adaptive concurrency limit that learns the backend's
    // capacity and fills it highest priority first. Nothing of this backend (its four slots,
    // its 20 ms) is configured anywhere.
    let degrade = DegradeLayer::builder(controller.handle())
        .prioritize(priority_of as PriorityOf)
        .build()?
        .http();
    // The level follows the share of requests the limit refuses: no threshold of this service
    // in it either. The limit does the admission; the level the rest (sampling, batching).
    let monitor = Monitor::new(controller.clone())
        .interval(Duration::from_millis(100))
        .signal_with(AdmissionSignal::new(&degrade), Smoothing::none())
        .spawn()?;

    let rate_limit =
        RateLimitLayer::builder(RateLimitConfig::per(40, Duration::from_secs(1)).burst(20))
            .keyed(HeaderKey::new("x-api-key")?, KeysConfig::default())
            .build()?
            .http();

    let mut breaker_config = BreakerConfig::default();
    breaker_config.window = WindowConfig::Consecutive { failures: 5 };
    breaker_config.wait = breaker_wait;
    breaker_config.half_open.successes = 2;
    let breaker = BreakerLayer::builder(breaker_config)
        .classifier(HttpClassifier::default())
        .name("backend")
        .build()?
        .http();
    let breaker_handle = breaker.handle();

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let forwarded_while_open = Arc::new(AtomicU64::new(0));
    let proxy = {
        let handle = breaker_handle.clone();
        let counter = Arc::clone(&forwarded_while_open);
        tower::service_fn(move |mut req: Request<Body>| {
            // Runs in the breaker's `call`, right after it admitted the request. A call the
            // breaker admitted while it was open (open just before its `call` and still open
            // now) would be a breaker bug. Reading open only now is not: a call admitted while
            // closed races the failure that opens the breaker (the fifth in a row, completing
            // on another thread), and on a loaded host the read can come after it. With one
            // half-open permit no other call can reopen the breaker between the two reads.
            if handle.state() == State::Open && STATE_BEFORE_BREAKER.get() == Some(State::Open) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            let client = client.clone();
            async move {
                let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let Ok(uri) = format!("http://{backend}{path}").parse() else {
                    return Ok::<_, Infallible>(bad_gateway());
                };
                *req.uri_mut() = uri;
                Ok(match client.request(req).await {
                    Ok(res) => res.map(Body::new),
                    Err(_) => bad_gateway(),
                })
            }
        })
    };

    // Metrics by registration: one call per layer, and the Prometheus exporter reads them
    // at every scrape.
    let prometheus = prometheus::Registry::new();
    let provider = SdkMeterProvider::builder()
        .with_reader(
            opentelemetry_prometheus::exporter()
                .with_registry(prometheus.clone())
                .build()?,
        )
        .build();
    Registry::new(&provider.meter("axum-gateway"))
        .level(controller.handle())
        .monitor(&monitor)
        .admission("gateway", &degrade)
        .rate_limit("per_api_key", &rate_limit)
        .breaker("backend", breaker_handle.clone());

    let stack = ServiceBuilder::new()
        .layer(degrade.clone())
        .layer(rate_limit.clone()) // clones share one budget
        .layer(observe)
        .map_request({
            let handle = breaker_handle.clone();
            move |req: Request<Body>| {
                // The breaker's state just before its `call` (on this thread: `call` is
                // synchronous down to the proxy's check above).
                STATE_BEFORE_BREAKER.set(Some(handle.state()));
                req
            }
        })
        .layer(breaker)
        .service(proxy);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, Router::new().fallback_service(stack)));
    let admin = Admin::new()
        .controller(controller.clone())
        .monitor(&monitor)
        .admission("gateway", &degrade)
        .rate_limit("per_api_key", &rate_limit)
        .breaker("backend", breaker_handle.clone())
        .router();
    let admin_token = admin_token();
    let ops_listener = TcpListener::bind(ops).await?;
    let ops = ops_listener.local_addr()?;
    tokio::spawn(serve(
        ops_listener,
        ops_router(prometheus).nest(
            "/admin",
            admin.layer(axum::middleware::from_fn_with_state(
                Arc::new(admin_token.clone()),
                bearer_auth,
            )),
        ),
    ));
    Ok(Gateway {
        addr,
        controller,
        degrade,
        breaker: breaker_handle,
        forwarded_while_open,
        ops,
        admin_token,
        _monitor: monitor,
        _metrics: provider,
    })
}

/// The admin token: `DEGRADE_ADMIN_TOKEN`, or a fresh one printed at start.
fn admin_token() -> String {
    std::env::var("DEGRADE_ADMIN_TOKEN").unwrap_or_else(|_| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        format!("{:016x}", h.finish())
    })
}

/// The gateway's auth for `/admin`: one bearer token, whose holder is the operator `ops`.
/// A real service would map its own identities to `Operator`s here.
async fn bearer_auth(
    axum::extract::State(token): axum::extract::State<Arc<String>>,
    mut req: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(token.as_str()) {
        let mut res = Response::new(Body::from("unauthorized"));
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        return res;
    }
    req.extensions_mut().insert(Operator::new("ops"));
    next.run(req).await
}

/// The ops listener, apart from the protected stack (a scrape must not be shed): `GET
/// /metrics` in the Prometheus text format.
fn ops_router(prometheus: prometheus::Registry) -> Router {
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let prometheus = prometheus.clone();
            async move {
                let mut body = Vec::new();
                match prometheus::TextEncoder::new().encode(&prometheus.gather(), &mut body) {
                    Ok(()) => Response::builder()
                        .header("content-type", prometheus::TEXT_FORMAT)
                        .body(Body::from(body))
                        .unwrap_or_else(|_| bad_gateway()),
                    Err(e) => {
                        let mut res = Response::new(Body::from(e.to_string()));
                        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        res
                    }
                }
            }
        }),
    )
}

/// `GET /admin/status` of the ops listener with `token`: the status code and the body.
async fn admin_status(
    client: &HttpClient,
    ops: SocketAddr,
    token: &str,
) -> Result<(StatusCode, String), Error> {
    let req = Request::get(format!("http://{ops}/admin/status"))
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())?;
    let res = client.request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET /metrics` of the ops listener, as text.
async fn scrape(client: &HttpClient, ops: SocketAddr) -> Result<String, Error> {
    let req = Request::get(format!("http://{ops}/metrics")).body(Body::empty())?;
    let res = client.request(req).await?;
    let body = res.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

// ---------------------------------------------------------------------------------------------
// The load

/// How the gateway answered one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ok,
    RateLimited,
    Shed,
    CircuitOpen,
    BackendError,
    Other,
}

const KINDS: [Kind; 6] = [
    Kind::Ok,
    Kind::RateLimited,
    Kind::Shed,
    Kind::CircuitOpen,
    Kind::BackendError,
    Kind::Other,
];

#[derive(Debug, Clone, Copy)]
struct Sample {
    kind: Kind,
    latency: Duration,
    /// When the answer came, from the start of the phase.
    at: Duration,
}

/// One simulated client.
#[derive(Debug, Clone)]
struct Spec {
    group: &'static str,
    key: String,
    priority: Option<&'static str>,
    path: &'static str,
}

impl Spec {
    fn new(group: &'static str, key: impl Into<String>) -> Self {
        Self {
            group,
            key: key.into(),
            priority: None,
            path: "/api/items",
        }
    }
}

async fn send(client: &HttpClient, gateway: SocketAddr, spec: &Spec, phase: Instant) -> Sample {
    let start = Instant::now();
    let mut req =
        Request::get(format!("http://{gateway}{}", spec.path)).header("x-api-key", &spec.key);
    if let Some(p) = spec.priority {
        req = req.header("x-priority", p);
    }
    let kind = match req.body(Body::empty()) {
        Err(_) => Kind::Other,
        Ok(req) => match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
            Ok(Ok(res)) => {
                let status = res.status();
                let rejection = res
                    .headers()
                    .get("degrade-rejection")
                    .map(|v| v.as_bytes().to_vec());
                // Read the whole answer: the latency is the client's.
                let _ = res.into_body().collect().await;
                match (status.as_u16(), rejection.as_deref()) {
                    (200..=299, _) => Kind::Ok,
                    (429, _) => Kind::RateLimited,
                    (503, Some(b"shed")) => Kind::Shed,
                    (503, Some(b"circuit_open")) => Kind::CircuitOpen,
                    (500..=599, _) => Kind::BackendError,
                    _ => Kind::Other,
                }
            }
            _ => Kind::Other,
        },
    };
    Sample {
        kind,
        latency: start.elapsed(),
        at: phase.elapsed(),
    }
}

/// A client that sends `CLIENT_RATE` requests per second, one at a time, until `until`; its
/// first period starts `offset` after the phase starts. With a `jitter` seed, each request
/// leaves at a random point of its period (within its first 90 %) instead of at its start.
async fn paced(
    client: HttpClient,
    gateway: SocketAddr,
    spec: Spec,
    phase: Instant,
    until: Instant,
    offset: Duration,
    jitter: Option<u64>,
) -> (Spec, Vec<Sample>) {
    let period = Duration::from_secs_f64(1.0 / CLIENT_RATE);
    let mut tick = tokio::time::interval_at(phase + offset, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut samples = Vec::new();
    let mut random = jitter.unwrap_or(0);
    loop {
        tick.tick().await;
        if jitter.is_some() {
            // A 64-bit LCG (Knuth's constants): reproducible, and enough to spread arrivals.
            random = random
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let at = (random >> 11) as f64 / (1u64 << 53) as f64;
            tokio::time::sleep(period.mul_f64(0.9 * at)).await;
        }
        if Instant::now() >= until {
            break;
        }
        samples.push(send(&client, gateway, &spec, phase).await);
    }
    (spec, samples)
}

/// A client that sends as fast as answers come back until `until`.
async fn flood(
    client: HttpClient,
    gateway: SocketAddr,
    spec: Spec,
    phase: Instant,
    until: Instant,
) -> (Spec, Vec<Sample>) {
    let mut samples = Vec::new();
    while Instant::now() < until {
        samples.push(send(&client, gateway, &spec, phase).await);
    }
    (spec, samples)
}

/// The answers of one group of clients.
#[derive(Debug, Default, Clone)]
struct Row {
    group: &'static str,
    samples: Vec<Sample>,
}

impl Row {
    fn count(&self, kind: Kind) -> usize {
        self.samples.iter().filter(|s| s.kind == kind).count()
    }

    fn sent(&self) -> usize {
        self.samples.len()
    }

    fn quantile_ms(&self, kind: Option<Kind>, q: f64) -> Option<f64> {
        let mut l: Vec<Duration> = self
            .samples
            .iter()
            .filter(|s| kind.is_none_or(|k| s.kind == k))
            .map(|s| s.latency)
            .collect();
        if l.is_empty() {
            return None;
        }
        l.sort();
        let i = ((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1;
        Some(l[i].as_secs_f64() * 1000.0)
    }
}

/// Runs the tasks and groups their samples by the clients' group, in order of first
/// appearance.
async fn collect(
    tasks: Vec<tokio::task::JoinHandle<(Spec, Vec<Sample>)>>,
) -> Result<Vec<Row>, Error> {
    let mut rows: Vec<Row> = Vec::new();
    for task in tasks {
        let (spec, samples) = task.await?;
        match rows.iter_mut().find(|r| r.group == spec.group) {
            Some(row) => row.samples.extend(samples),
            None => rows.push(Row {
                group: spec.group,
                samples,
            }),
        }
    }
    Ok(rows)
}

fn print_table(rows: &[Row]) {
    println!(
        "  {:<10} {:>6} {:>6} {:>6} {:>9} {:>9} {:>6} {:>7} {:>7}",
        "client", "sent", "2xx", "429", "503 shed", "503 open", "5xx", "p50 ms", "p99 ms"
    );
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    for r in rows {
        let c: Vec<usize> = KINDS.iter().map(|k| r.count(*k)).collect();
        let other = if c[5] > 0 {
            format!("  ({} other)", c[5])
        } else {
            String::new()
        };
        println!(
            "  {:<10} {:>6} {:>6} {:>6} {:>9} {:>9} {:>6} {:>7} {:>7}{other}",
            r.group,
            r.sent(),
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            ms(r.quantile_ms(None, 0.5)),
            ms(r.quantile_ms(None, 0.99)),
        );
    }
}

fn row<'a>(rows: &'a [Row], group: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.group == group)
}

// ---------------------------------------------------------------------------------------------
// The scenario

struct Checks(Vec<(String, bool)>);

/// Whether the class shed `a.0` of `a.1` requests was shed no less than the one shed `b.0` of
/// `b.1`, unless chance explains the difference: its share may fall below the other's by at
/// most three standard errors of the difference of two binomial shares (pooled), so the check
/// fails when the data show an inversion, and never on noise between classes shed alike.
///
/// ```text
/// 187 of 252 vs 244 of 252 (74 % vs 97 %): an inversion, 7 standard errors.
/// 198 of 223 vs 202 of 223 (88.8 % vs 90.6 %): 0.6 standard errors, noise.
/// ```
fn shed_no_less(a: (u64, u64), b: (u64, u64)) -> bool {
    let (na, nb) = (a.1.max(1) as f64, b.1.max(1) as f64);
    let (pa, pb) = (a.0 as f64 / na, b.0 as f64 / nb);
    let pooled = (a.0 + b.0) as f64 / (na + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    pa - pb >= -3.0 * se
}

impl Checks {
    fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.0.push((what.into(), ok));
    }
}

struct Phases {
    normal: Duration,
    burst: Duration,
    outage: Duration,
    overload: Duration,
}

impl Phases {
    fn of(total: Duration) -> Self {
        Self {
            normal: total.mul_f64(0.15),
            burst: total.mul_f64(0.15),
            outage: total.mul_f64(0.35),
            overload: total.mul_f64(0.35),
        }
    }
}

async fn run(args: Args) -> Result<bool, Error> {
    let phases = Phases::of(args.duration);
    let backend = start_backend().await?;
    let breaker_wait = phases
        .outage
        .mul_f64(0.2)
        .clamp(Duration::from_millis(300), Duration::from_secs(2));
    let gw = start_gateway(backend.addr, breaker_wait, args.ops).await?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut checks = Checks(Vec::new());
    println!(
        "gateway http://{} -> backend http://{} ({} slots x {} ms)\nops: http://{}/metrics, http://{}/admin/status (authorization: Bearer {})",
        gw.addr,
        backend.addr,
        BACKEND_SLOTS,
        BACKEND_WORK.as_millis(),
        gw.ops,
        gw.ops,
        gw.admin_token
    );
    let scenario_start = Instant::now();

    // Phase 1: normal traffic.
    println!(
        "\nphase 1/4 normal: alice, bob, carol at {CLIENT_RATE} req/s each ({:.1} s)",
        phases.normal.as_secs_f64()
    );
    let start = Instant::now();
    let until = start + phases.normal;
    let tasks = ["alice", "bob", "carol"]
        .into_iter()
        .map(|k| {
            tokio::spawn(paced(
                client.clone(),
                gw.addr,
                Spec::new(k, k),
                start,
                until,
                Duration::ZERO,
                None,
            ))
        })
        .collect();
    let rows = collect(tasks).await?;
    print_table(&rows);
    let normal_ok = rows
        .iter()
        .all(|r| r.count(Kind::Ok) == r.sent() && r.sent() > 0);
    checks.check(
        "normal: every request of alice, bob and carol answered 2xx",
        normal_ok,
    );

    // Phase 2: mallory floods; the others keep their pace.
    println!(
        "\nphase 2/4 burst: mallory floods over 8 connections, alice and bob at {CLIENT_RATE} req/s (quota 40/s per x-api-key, burst 20) ({:.1} s)",
        phases.burst.as_secs_f64()
    );
    let start = Instant::now();
    let until = start + phases.burst;
    let mut tasks: Vec<_> = ["alice", "bob"]
        .into_iter()
        .map(|k| {
            tokio::spawn(paced(
                client.clone(),
                gw.addr,
                Spec::new(k, k),
                start,
                until,
                Duration::ZERO,
                None,
            ))
        })
        .collect();
    // Eight connections: even on a starved machine, where each admitted request takes 50 ms,
    // they offer several times the key's quota; with alice and bob they keep at most ten
    // requests in flight, below the in-flight threshold of Moderate (12).
    for _ in 0..8 {
        tasks.push(tokio::spawn(flood(
            client.clone(),
            gw.addr,
            Spec::new("mallory", "mallory"),
            start,
            until,
        )));
    }
    let rows = collect(tasks).await?;
    print_table(&rows);
    let limited = |g: &str| row(&rows, g).map_or(0, |r| r.count(Kind::RateLimited));
    let mallory_ok = row(&rows, "mallory").map_or(0, |r| r.count(Kind::Ok));
    println!(
        "  mallory: {} answered 429 with Retry-After, {} let through (about the key's quota)",
        limited("mallory"),
        mallory_ok
    );
    checks.check("burst: mallory got 429s", limited("mallory") > 0);
    checks.check(
        "burst: alice and bob got no 429",
        limited("alice") == 0 && limited("bob") == 0,
    );

    // Phase 3: backend outage.
    let outage_for = phases.outage.mul_f64(0.45);
    println!(
        "\nphase 3/4 outage: the backend answers 500 for {:.1} s, then recovers; breaker: 5 failures in a row open it for {} ms ({:.1} s)",
        outage_for.as_secs_f64(),
        breaker_wait.as_millis(),
        phases.outage.as_secs_f64()
    );
    let mut transitions = gw.breaker.subscribe();
    let start = Instant::now();
    let until = start + phases.outage;
    let calls_before = backend.calls.load(Ordering::Relaxed);
    backend.outage.store(true, Ordering::Relaxed);
    let tasks = ["alice", "bob", "carol"]
        .into_iter()
        .map(|k| {
            tokio::spawn(paced(
                client.clone(),
                gw.addr,
                Spec::new(k, k),
                start,
                until,
                Duration::ZERO,
                None,
            ))
        })
        .collect();
    tokio::time::sleep_until(start + outage_for).await;
    backend.outage.store(false, Ordering::Relaxed);
    let outage_calls = backend.calls.load(Ordering::Relaxed) - calls_before;
    let rows = collect(tasks).await?;
    print_table(&rows);
    let mut openings = 0;
    let mut log = Vec::new();
    while let Ok(t) = transitions.try_recv() {
        if t.to == State::Open {
            openings += 1;
        }
        log.push(format!(
            "{:.2}s {}->{}",
            t.at.saturating_duration_since(start).as_secs_f64(),
            t.from,
            t.to
        ));
    }
    println!("  breaker transitions: {}", log.join(", "));
    let all = Row {
        group: "all",
        samples: rows
            .iter()
            .flat_map(|r| r.samples.iter().copied())
            .collect(),
    };
    let open_503 = all.count(Kind::CircuitOpen);
    let failed = all.count(Kind::BackendError);
    let recovered_ok = all
        .samples
        .iter()
        .filter(|s| s.at > outage_for && s.kind == Kind::Ok)
        .count();
    let while_open = gw.forwarded_while_open.load(Ordering::Relaxed);
    println!(
        "  backend calls during the {:.1} s outage: {outage_calls} (of {} requests sent meanwhile); 503s from the breaker over the phase: {open_503}, p50 {} ms",
        outage_for.as_secs_f64(),
        all.samples.iter().filter(|s| s.at <= outage_for).count(),
        all.quantile_ms(Some(Kind::CircuitOpen), 0.5)
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
    );
    println!(
        "  backend calls forwarded while the breaker was open: {while_open}; 5xx passed through: {failed}; 2xx after the backend recovered: {recovered_ok}; breaker now {}",
        gw.breaker.state()
    );
    checks.check("outage: the breaker opened", openings > 0 && open_503 > 0);
    checks.check(
        "outage: the backend received 0 calls while the breaker was open",
        while_open == 0,
    );
    checks.check(
        "outage: the breaker closed again and requests succeed after recovery",
        gw.breaker.state() == State::Closed && recovered_ok > 0,
    );

    // Phase 4: overload by priority.
    println!(
        "\nphase 4/4 overload: 24 clients at {CLIENT_RATE} req/s (6 per priority; critical on /pay) = {:.0} req/s offered, backend capacity {:.0} req/s ({:.1} s)",
        24.0 * CLIENT_RATE,
        BACKEND_SLOTS as f64 / BACKEND_WORK.as_secs_f64(),
        phases.overload.as_secs_f64()
    );
    let level_at_start = gw.controller.level();
    let before = gw.degrade.snapshot();
    let start = Instant::now();
    let until = start + phases.overload;
    let mut tasks = Vec::new();
    let period = Duration::from_secs_f64(1.0 / CLIENT_RATE);
    for (class, (group, priority, path)) in [
        ("low", Some("low"), "/api/search"),
        ("normal", Some("normal"), "/api/search"),
        ("high", Some("high"), "/api/search"),
        ("critical", None, "/pay/checkout"),
    ]
    .into_iter()
    .enumerate()
    {
        for i in 0..6u32 {
            // The classes take turns over the period (low, normal, high, critical, low, …).
            let n = 4 * i + class as u32 + 1;
            let spec = Spec {
                group,
                key: format!("{group}-{i}"),
                priority,
                path,
            };
            tasks.push(tokio::spawn(paced(
                client.clone(),
                gw.addr,
                spec,
                start,
                until,
                // Real clients are not phase-locked: each request leaves at a random point of
                // its client's period. Phase-locked, a free slot goes to whichever class
                // arrives first after it frees, whatever its priority (the limit orders only
                // requests that wait at the same time): in blocks of six per class over the
                // period, normal was once shed 96.8 % and low 74.2 %; interleaved but still
                // each low request 2 ms before a normal one, low 84 % and normal 95 %. See
                // degrade-core's tests/priority_order.rs.
                period.mul_f64(f64::from(n) / 24.0),
                Some(u64::from(n)),
            )));
        }
    }
    // Halfway through the overload, scrape the metrics as Prometheus would.
    let scraped = {
        let client = client.clone();
        let ops = gw.ops;
        let half = start + phases.overload / 2;
        tokio::spawn(async move {
            tokio::time::sleep_until(half).await;
            scrape(&client, ops).await
        })
    };
    let rows = collect(tasks).await?;
    print_table(&rows);
    let scraped = scraped.await??;
    println!("  GET /metrics during the overload (level, pressure, limit, refusals):");
    for line in scraped.lines().filter(|l| {
        (l.starts_with("degrade_level")
            || l.starts_with("degrade_signal_pressure")
            || l.starts_with("degrade_admission_limit")
            || l.starts_with("degrade_admission_requests_total{decision=\"rejected\""))
            && !l.ends_with(" 0")
    }) {
        println!("    {line}");
    }
    let after = gw.degrade.snapshot();
    let history: Vec<String> = gw
        .controller
        .handle()
        .history()
        .iter()
        .filter(|t| t.at >= start)
        .map(|t| {
            format!(
                "{:.2}s {}->{}",
                t.at.saturating_duration_since(start).as_secs_f64(),
                t.from,
                t.to
            )
        })
        .collect();
    let level_now = gw.controller.level();
    let max_seen = gw
        .controller
        .handle()
        .history()
        .iter()
        .filter(|t| t.at >= start)
        .map(|t| t.to)
        .fold(level_at_start, Level::max);
    println!(
        "  level: {level_at_start} at the start, highest {max_seen}, {level_now} at the end; transitions: {}",
        if history.is_empty() {
            "none".to_owned()
        } else {
            history.join(", ")
        }
    );
    let shed_share = |p: Priority| {
        let offered = after.offered_by(p) - before.offered_by(p);
        // Refused by the adaptive limit (or, if a level were pinned, shed by its share).
        let shed = after.rejected_by(p) - before.rejected_by(p);
        (
            shed,
            offered,
            if offered == 0 {
                0.0
            } else {
                shed as f64 / offered as f64
            },
        )
    };
    for p in [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ] {
        let (shed, offered, share) = shed_share(p);
        println!(
            "  DegradeLayer {:<8}: offered {offered:>5}, shed {shed:>5} ({:>5.1} %)",
            p.as_str(),
            share * 100.0
        );
    }
    let (low_shed, _, low_share) = shed_share(Priority::Low);
    let (_, _, high_share) = shed_share(Priority::High);
    let (_, _, critical_share) = shed_share(Priority::Critical);
    let critical_ok = row(&rows, "critical").map_or(0, |r| r.count(Kind::Ok));
    checks.check(
        "overload: the level rose to moderate or above",
        max_seen >= Level::Moderate,
    );
    checks.check("overload: low priority was shed", low_shed > 0);
    let (with_token, status) = admin_status(&client, gw.ops, &gw.admin_token).await?;
    let (without, _) = admin_status(&client, gw.ops, "guess").await?;
    checks.check(
        "admin: /admin/status answers the token's holder with the level, and 401 to others",
        with_token == StatusCode::OK
            && status.contains(&format!("\"level\":\"{}\"", gw.controller.level()))
            && without == StatusCode::UNAUTHORIZED,
    );
    checks.check(
        "metrics: the scrape lists level, signal pressure, admission, rate limit and breaker",
        [
            "degrade_level{",
            "degrade_signal_pressure_ratio{",
            "degrade_admission_requests_total{",
            "degrade_admission_limit{",
            "degrade_rate_limit_decisions_total{",
            "degrade_breaker_state{",
        ]
        .iter()
        .all(|name| scraped.contains(name)),
    );
    // The order low ≥ normal ≥ high, unless chance explains the difference: when the limit
    // leaves the three only a few slots between them (a loaded host slows the gateway and the
    // limit falls to 2 or 3), each is shed about 90 % and which of them got the last ten
    // requests in is noise, not an inversion.
    let (low, normal, high) = (
        shed_share(Priority::Low),
        shed_share(Priority::Normal),
        shed_share(Priority::High),
    );
    checks.check(
        "overload: shed low >= normal >= high (beyond chance)",
        shed_no_less((low.0, low.1), (normal.0, normal.1))
            && shed_no_less((normal.0, normal.1), (high.0, high.1)),
    );
    // The adaptive limit learns the capacity while it serves: a critical request can find it
    // full in the moment the limit is cut (no fixed share reserves its slots), so the check is
    // the priority order, not zero refusals.
    let (_, _, normal_share) = shed_share(Priority::Normal);
    checks.check(
        "overload: critical was served and refused least of all",
        critical_ok > 0 && critical_share < low_share.min(normal_share).min(high_share),
    );

    println!(
        "\nran {:.1} s; gateway totals: offered {}, shed {}; backend calls {}",
        scenario_start.elapsed().as_secs_f64(),
        after.offered(),
        after.rejected(),
        backend.calls.load(Ordering::Relaxed)
    );
    println!("\nchecks:");
    let mut all_ok = true;
    for (what, ok) in &checks.0 {
        println!("  [{}] {what}", if *ok { "ok" } else { "FAILED" });
        all_ok &= *ok;
    }
    Ok(all_ok)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args()) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => {
            println!("all checks passed");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("some checks FAILED");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shed_no_less;

    /// The run that failed CI (normal shed 97 %, low 74 %) fails the order check; two classes
    /// shed about alike, either way round, pass it.
    #[test]
    fn the_order_check_fails_an_inversion_and_passes_noise() {
        assert!(!shed_no_less((187, 252), (244, 252)));
        assert!(shed_no_less((244, 252), (187, 252)));
        assert!(shed_no_less((198, 223), (202, 223)));
        assert!(shed_no_less((202, 223), (198, 223)));
        // One request either way is noise; so are classes shed alike.
        assert!(shed_no_less((199, 200), (200, 200)));
        assert!(shed_no_less((200, 200), (200, 200)));
        assert!(shed_no_less((0, 200), (0, 200)));
        // 85 % against 100 % of 200 each: almost six standard errors.
        assert!(!shed_no_less((170, 200), (200, 200)));
        // Nothing offered: nothing to compare.
        assert!(shed_no_less((0, 0), (0, 0)));
    }
}
