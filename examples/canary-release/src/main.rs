//! # canary-release
//!
//! Two canary releases of a backend behind degrade-canary, on real axum servers on 127.0.0.1,
//! under a built-in load of many users:
//!
//! ```text
//! clients (x-user: many ids) ─► front (127.0.0.1:0) ─► Canary ─┬─► v1 (stable)
//!                                                      weight  └─► v2 (candidate)
//!                                    ▲                        │
//!                    CanaryController ◄── judge ◄── per-arm statistics
//! ```
//!
//! 1. **v2-bad** fails 20 % of its requests (v1 fails 0.5 %). The controller starts it at the
//!    first step; the judge's sequential test sees the canary's share of failures far above its
//!    share of traffic and fails it; the controller sets the weight to 0 (rolled back). Every
//!    user is back on v1.
//! 2. **v2-good** behaves like v1. The judge passes it at each step once both arms have the
//!    minimum samples and the step's bake time is over; the weight climbs 10 → 25 → 50 → 100 %
//!    and the release is promoted. Every user is then on v2.
//!
//! Routing is sticky (a user's `x-user` hashes to a fixed bucket; a rising weight only adds
//! buckets), so a user who reached v2 stays there as the weight rises and leaves only on
//! rollback. Real time is used throughout; `--quick` shortens the steps (300 ms bake, 100
//! samples per arm) so both releases finish in a few seconds.
//!
//! The exit status is 0 only if the bad release was rolled back and the good one promoted.

use axum::Router;
use axum::body::Body;
use degrade::HttpClassifier;
use degrade::canary::key::HeaderKey;
use degrade::canary::{
    Arm, BoxError, Canary, CanaryConfig, CanaryController, CanaryHandle, CanaryPhase, CanaryStep,
    Judgement,
};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::{Instant, MissedTickBehavior};
use tower::{Service, ServiceExt};

type HttpClient = Client<HttpConnector, Body>;
type Error = Box<dyn std::error::Error + Send + Sync>;

/// The load: this many clients, each sending this many requests per second.
const CLIENTS: u64 = 12;
const CLIENT_RATE: f64 = 40.0;
/// The work of every backend request.
const WORK: Duration = Duration::from_millis(2);

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Debug, Clone, Copy)]
struct Args {
    /// Bake time of each step.
    bake: Duration,
    /// Time between analyses.
    interval: Duration,
    /// Judged calls each arm needs before a pass.
    min_samples: u64,
}

const USAGE: &str = concat!(
    "usage: canary-release [--quick] [--duration <secs>]\n",
    "  --quick            short steps (300 ms bake, 100 samples per arm), as in CI\n",
    "  --duration <secs>  planned length of a full rollout: four steps of a quarter each\n",
    "                     (default 4)",
);

fn parse_args(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let with_duration = |secs: f64| {
        let bake = Duration::from_secs_f64(secs / 4.0);
        Args {
            bake,
            interval: (bake / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)),
            min_samples: 300,
        }
    };
    let mut out = with_duration(4.0);
    let mut args = args.skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => {
                out = Args {
                    bake: Duration::from_millis(300),
                    interval: Duration::from_millis(150),
                    min_samples: 100,
                }
            }
            "--duration" => {
                let v = args.next().ok_or("--duration needs a value")?;
                let secs: f64 = v
                    .trim_end_matches('s')
                    .parse()
                    .map_err(|_| format!("--duration: `{v}` is not a number of seconds"))?;
                if !(1.0..=3600.0).contains(&secs) {
                    return Err("--duration must be between 1 and 3600 seconds".into());
                }
                out = with_duration(secs);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Backends

/// One backend version and what it served.
#[derive(Debug)]
struct Version {
    name: &'static str,
    addr: SocketAddr,
    served: AtomicU64,
    failed: AtomicU64,
}

/// A fixed, well-mixed hash (splitmix64): which requests fail, without a random number
/// generator, spread evenly over the run.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

async fn serve(listener: TcpListener, app: Router) {
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("server stopped: {e}");
    }
}

/// A backend answering 200 `name`, or 500 for `fail_per_mille` of its requests.
async fn start_version(name: &'static str, fail_per_mille: u64) -> Result<Arc<Version>, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let version = Arc::new(Version {
        name,
        addr: listener.local_addr()?,
        served: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let state = Arc::clone(&version);
    let seed = mix(name.len() as u64 + fail_per_mille);
    let app = Router::new().fallback(move || {
        let state = Arc::clone(&state);
        async move {
            let n = state.served.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(WORK).await;
            if mix(n ^ seed) % 1000 < fail_per_mille {
                state.failed.fetch_add(1, Ordering::Relaxed);
                (StatusCode::INTERNAL_SERVER_ERROR, state.name)
            } else {
                (StatusCode::OK, state.name)
            }
        }
    });
    tokio::spawn(serve(listener, app));
    Ok(version)
}

// ---------------------------------------------------------------------------------------------
// The front: the Canary router over two proxies

fn status_only(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    res
}

/// A reverse-proxy arm: forwards the request to `addr`.
fn proxy(
    client: HttpClient,
    addr: SocketAddr,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |mut req: Request<Body>| {
        let client = client.clone();
        async move {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = format!("http://{addr}{path}").parse()?;
            let res = client.request(req).await?;
            Ok::<_, BoxError>(res.map(Body::new))
        }
    })
}

/// Starts a front server whose `Canary` routes between `stable` and `candidate`, sticky on
/// `x-user`, and tags every answer with the arm taken (`x-arm`).
async fn start_front(
    stable: SocketAddr,
    candidate: SocketAddr,
) -> Result<(SocketAddr, CanaryHandle), Error> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let canary = Canary::builder()
        .key(HeaderKey::new("x-user")?)
        .classifier(HttpClassifier::default())
        .http()
        .build(proxy(client.clone(), stable), proxy(client, candidate));
    let handle = canary.handle();
    let svc = tower::service_fn(move |req: Request<Body>| {
        let mut canary = canary.clone();
        async move {
            let res = match canary.ready().await {
                Ok(svc) => svc.call(req).await,
                Err(e) => Err(e),
            };
            Ok::<_, Infallible>(match res {
                Ok(mut res) => {
                    if let Some(arm) = res.extensions().get::<Arm>().copied() {
                        res.headers_mut()
                            .insert("x-arm", http::HeaderValue::from_static(arm.as_str()));
                    }
                    res
                }
                Err(_) => status_only(StatusCode::BAD_GATEWAY),
            })
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, Router::new().fallback_service(svc)));
    Ok((addr, handle))
}

// ---------------------------------------------------------------------------------------------
// The load

/// Answers seen by the clients, by arm (0 stable, 1 canary).
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: [u64; 2],
    failed: [u64; 2],
    other: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        for a in 0..2 {
            self.ok[a] += other.ok[a];
            self.failed[a] += other.failed[a];
        }
        self.other += other.other;
    }
}

/// One request as user `user`; returns the arm that answered and whether it succeeded.
async fn send(client: &HttpClient, front: SocketAddr, user: u64) -> Option<(usize, bool)> {
    let req = Request::get(format!("http://{front}/api/quote"))
        .header("x-user", user.to_string())
        .body(Body::empty())
        .ok()?;
    let res = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    let arm = match res.headers().get("x-arm").map(|v| v.as_bytes()) {
        Some(b"stable") => 0,
        Some(b"canary") => 1,
        _ => return None,
    };
    let ok = res.status().is_success();
    let _ = res.into_body().collect().await;
    Some((arm, ok))
}

/// A client: `CLIENT_RATE` requests per second, each from another user, until `stop`.
async fn client_loop(
    client: HttpClient,
    front: SocketAddr,
    id: u64,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / CLIENT_RATE));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tally = Tally::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        // Users drawn from a large population, so the split follows the weight.
        let user = mix(id << 32 | n) % 1_000_000;
        n += 1;
        match send(&client, front, user).await {
            Some((arm, true)) => tally.ok[arm] += 1,
            Some((arm, false)) => tally.failed[arm] += 1,
            None => tally.other += 1,
        }
    }
    tally
}

/// Which arm `users` distinct users land on now: (stable, canary).
async fn where_are_users(client: &HttpClient, front: SocketAddr, users: u64) -> (u64, u64) {
    let mut arms = (0, 0);
    for u in 0..users {
        match send(client, front, mix(u ^ 0x5eed) % 1_000_000).await {
            Some((0, _)) => arms.0 += 1,
            Some((_, _)) => arms.1 += 1,
            None => {}
        }
    }
    arms
}

// ---------------------------------------------------------------------------------------------
// One rollout

fn rollout_config(args: &Args) -> CanaryConfig {
    let mut cfg = CanaryConfig {
        steps: [10.0, 25.0, 50.0, 100.0]
            .into_iter()
            .map(|w| CanaryStep::new(w, args.bake))
            .collect(),
        analysis_interval: args.interval,
        // Waiting for the minimum samples at the 10 % step takes many short analyses; that is
        // not a reason to pause.
        inconclusive_limit: 1_000,
        ..CanaryConfig::default()
    };
    cfg.judge.min_samples = args.min_samples;
    cfg
}

fn pct(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

fn print_analysis(t: Duration, step: usize, steps: usize, weight_bp: u32, j: &Judgement) {
    println!(
        "  {:>6.2}s  {:>4}  {:>5.1}%  {:<12}  {:>6} {:>6}  {:>7} {:>7}  {:>5.2} {:>5.2} / {:.2}  {}",
        t.as_secs_f64(),
        format!("{}/{}", step + 1, steps),
        f64::from(weight_bp) / 100.0,
        j.verdict.to_string(),
        j.samples.0,
        j.samples.1,
        pct(j.error_rates.0),
        pct(j.error_rates.1),
        j.error_llr,
        j.latency_llr,
        j.upper_bound,
        j.reason,
    );
}

/// What happened to one release.
struct Outcome {
    phase: CanaryPhase,
    weight_bp: u32,
    elapsed: Duration,
    /// Users probed after the end: (on stable, on canary).
    users: (u64, u64),
    tally: Tally,
}

async fn release(
    client: &HttpClient,
    stable: &Version,
    candidate: &Version,
    args: &Args,
) -> Result<Outcome, Error> {
    let (front, handle) = start_front(stable.addr, candidate.addr).await?;
    let cfg = rollout_config(args);
    let steps = cfg.steps.len();
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client_loop(client.clone(), front, id, Arc::clone(&stop))))
        .collect();

    let name = candidate.name;
    let mut controller = CanaryController::builder(cfg, handle.clone())
        .on_promote(
            move || async move { println!("  hook: {name} promoted, make it the new stable") },
        )
        .on_rollback(move || async move { println!("  hook: {name} rolled back, page the owner") })
        .start()?;
    let start = Instant::now();
    // Each row: the state after the analysis, the judge's evidence since the rollout began
    // (s = stable, c = canary), its log-likelihood ratios and the bound at which it fails.
    println!(
        "  {:>7}  {:>4}  {:>6}  {:<12}  {:>13}  {:>15}  {:<18}  reason",
        "time", "step", "weight", "verdict", "samples s/c", "errors s/c", "llr err lat/bound"
    );
    let mut weights = vec![(Duration::ZERO, handle.weight().get())];
    // A generous cap: the quick run needs about 1 s (bad) and 3 s (good).
    let cap = (args.bake * 4 * 10).max(Duration::from_secs(30));
    let mut tick = tokio::time::interval_at(start + args.interval, args.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !controller.state().phase.is_terminal() && start.elapsed() < cap {
        tick.tick().await;
        let judgement = controller.tick().await?;
        let state = controller.state();
        print_analysis(
            start.elapsed(),
            state.step,
            steps,
            state.weight_bp,
            &judgement,
        );
        if weights.last().is_some_and(|w| w.1 != state.weight_bp) {
            weights.push((start.elapsed(), state.weight_bp));
        }
    }
    let elapsed = start.elapsed();
    let state = controller.state();
    println!(
        "  weights: {}",
        weights
            .iter()
            .map(|(t, w)| format!("{:.2}s {}%", t.as_secs_f64(), f64::from(*w) / 100.0))
            .collect::<Vec<_>>()
            .join(" -> ")
    );

    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for task in load {
        tally.add(&task.await?);
    }
    let users = where_are_users(client, front, 200).await;
    Ok(Outcome {
        phase: state.phase,
        weight_bp: state.weight_bp,
        elapsed,
        users,
        tally,
    })
}

fn print_outcome(stable: &Version, candidate: &Version, o: &Outcome) {
    let verdict = match o.phase {
        CanaryPhase::RolledBack => "ROLLED BACK",
        CanaryPhase::Promoted => "PROMOTED",
        _ => "UNDECIDED",
    };
    println!(
        "  verdict: {} {verdict} after {:.2} s, weight now {}%",
        candidate.name,
        o.elapsed.as_secs_f64(),
        f64::from(o.weight_bp) / 100.0
    );
    let t = &o.tally;
    println!(
        "  clients saw: {} ok {} / failed {}, {} ok {} / failed {}{}",
        stable.name,
        t.ok[0],
        t.failed[0],
        candidate.name,
        t.ok[1],
        t.failed[1],
        if t.other > 0 {
            format!(", {} other", t.other)
        } else {
            String::new()
        }
    );
    println!(
        "  200 users probed afterwards: {} on {}, {} on {}",
        o.users.0, stable.name, o.users.1, candidate.name
    );
}

async fn run(args: Args) -> Result<bool, Error> {
    let v1 = start_version("v1", 5).await?;
    let v2_bad = start_version("v2-bad", 200).await?;
    let v2_good = start_version("v2-good", 5).await?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    println!(
        "v1 http://{} (0.5 % errors), v2-bad http://{} (20 % errors), v2-good http://{} (0.5 % errors)",
        v1.addr, v2_bad.addr, v2_good.addr
    );
    println!(
        "load: {CLIENTS} clients x {CLIENT_RATE} req/s, each request from another user; steps 10/25/50/100 %, bake {} ms, analysis every {} ms, min samples {} per arm",
        args.bake.as_millis(),
        args.interval.as_millis(),
        args.min_samples
    );
    let mut checks: Vec<(String, bool)> = Vec::new();

    println!("\nrelease 1/2: v1 -> v2-bad");
    let bad = release(&client, &v1, &v2_bad, &args).await?;
    print_outcome(&v1, &v2_bad, &bad);
    checks.push((
        "v2-bad was rolled back automatically (weight 0)".into(),
        bad.phase == CanaryPhase::RolledBack && bad.weight_bp == 0,
    ));
    checks.push((
        "after the rollback every probed user is on v1".into(),
        bad.users.1 == 0 && bad.users.0 > 0,
    ));

    println!("\nrelease 2/2: v1 -> v2-good");
    let good = release(&client, &v1, &v2_good, &args).await?;
    print_outcome(&v1, &v2_good, &good);
    checks.push((
        "v2-good was promoted to 100 %".into(),
        good.phase == CanaryPhase::Promoted && good.weight_bp == 10_000,
    ));
    checks.push((
        "after the promotion every probed user is on v2-good".into(),
        good.users.0 == 0 && good.users.1 > 0,
    ));

    println!(
        "\nbackends served: v1 {} ({} failed), v2-bad {} ({} failed), v2-good {} ({} failed)",
        v1.served.load(Ordering::Relaxed),
        v1.failed.load(Ordering::Relaxed),
        v2_bad.served.load(Ordering::Relaxed),
        v2_bad.failed.load(Ordering::Relaxed),
        v2_good.served.load(Ordering::Relaxed),
        v2_good.failed.load(Ordering::Relaxed),
    );
    println!("\nchecks:");
    let mut all_ok = true;
    for (what, ok) in &checks {
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
