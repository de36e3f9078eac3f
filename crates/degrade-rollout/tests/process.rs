//! Rolling upgrades of real child processes (the crate's test server) under continuous load
//! through p2c balancers fed by the pool's discover stream.

use degrade_canary::JudgeConfig;
use degrade_core::BoxError;
use degrade_rollout::discover::{Pool, PoolSnapshot};
use degrade_rollout::driver::{CommandSpec, HealthCheck};
use degrade_rollout::plan::RolloutPhase;
use degrade_rollout::plan::StepKind;
use degrade_rollout::{
    Amount, AnalysisConfig, Driver, Instance, ProcessDriver, RolloutConfig, RolloutController,
    RolloutHandle, RolloutOutcome, RolloutReport,
};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::balance::p2c::Balance;
use tower::{Service, ServiceExt};

const SERVER: &str = env!("CARGO_BIN_EXE_degrade-rollout-testserver");

/// A free port below the ephemeral range, so that no client connection of the load
/// generator can take it between a server's stop and its restart on the same port.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 400) as u16 * 25;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn server(version: &str, extra: &[&str]) -> CommandSpec {
    CommandSpec::new(SERVER)
        .args(["--port", "{port}", "--version", version])
        .args(extra.iter().copied())
}

fn config() -> RolloutConfig {
    RolloutConfig {
        max_surge: Amount::Count(0),
        max_unavailable: Amount::Count(1),
        min_ready: Duration::from_millis(300),
        progress_deadline: Duration::from_secs(60),
        health_interval: Duration::from_millis(100),
        healthy_threshold: 2,
        failure_threshold: 3,
        // A loaded CI box may take a while to start a process: connection refused meanwhile
        // is not a failure.
        startup_grace: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(10),
        health_timeout: Duration::from_secs(2),
        // Long enough to see a few checks of every upgraded instance, short for a test.
        post_watch: Duration::from_millis(500),
        analysis: None,
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// One client service per endpoint: GET / must answer 200; the body is the version.
#[derive(Clone)]
struct HttpGet {
    client: HttpClient,
    uri: hyper::Uri,
}

impl Service<()> for HttpGet {
    type Response = String;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        let client = self.client.clone();
        let uri = self.uri.clone();
        Box::pin(async move {
            // The client's own error, source chain and all: the pool sees through it whether the
            // call failed at the transport (passive ejection).
            let resp = client
                .get(uri.clone())
                .await
                .map_err(|source| GetError { uri, source })?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            if status != hyper::StatusCode::OK {
                return Err::<String, BoxError>(format!("status {status}").into());
            }
            Ok(String::from_utf8_lossy(&body).into_owned())
        })
    }
}

/// A failed GET, naming the endpoint.
#[derive(Debug)]
struct GetError {
    uri: hyper::Uri,
    source: hyper_util::client::legacy::Error,
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {:?}", self.uri, self.source)
    }
}

impl std::error::Error for GetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn make_client(i: &Instance) -> HttpGet {
    HttpGet {
        client: Client::builder(TokioExecutor::new()).build_http(),
        uri: format!("http://{}/", i.address).parse().expect("uri"),
    }
}

#[derive(Default)]
struct LoadStats {
    ok: AtomicU64,
    failed: AtomicU64,
    by_version: Mutex<HashMap<String, u64>>,
    errors: Mutex<Vec<String>>,
}

/// `tasks` load generators, each with its own p2c balancer over its own discover stream.
fn start_load<S>(
    pool: &Pool<S>,
    tasks: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<LoadStats>,
) -> Vec<tokio::task::JoinHandle<()>>
where
    S: Service<(), Response = String, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    (0..tasks)
        .map(|_| {
            let mut balancer = Balance::new(pool.discover());
            let stop = stop.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let res = match balancer.ready().await {
                        Ok(svc) => svc.call(()).await,
                        Err(e) => Err(e),
                    };
                    match res {
                        Ok(v) => {
                            stats.ok.fetch_add(1, Ordering::Relaxed);
                            *stats.by_version.lock().unwrap().entry(v).or_default() += 1;
                        }
                        Err(e) => {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            let mut errors = stats.errors.lock().unwrap();
                            if errors.len() < 20 {
                                errors.push(e.to_string());
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// Starts `n` v1 instances and waits until each is healthy (on another port if one could not
/// start: a port taken by another program between the probe and the server's bind).
async fn launch(driver: &ProcessDriver, n: usize) -> Vec<Instance> {
    let mut v = Vec::new();
    for k in 0..n {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let i = Instance::new(format!("i{k}"), addr, "v1");
            driver.start(&i).await.expect("start v1");
            match driver.wait_healthy(&i, Duration::from_secs(15)).await {
                Ok(()) => {
                    v.push(i);
                    break;
                }
                Err(e) if attempt < 3 => {
                    eprintln!("{i} did not start ({e}), trying another port");
                    driver.stop(&i).await.expect("stop");
                }
                Err(e) => panic!("v1 not healthy: {e}"),
            }
        }
    }
    v
}

/// GET / on every instance directly: the versions they answer with.
async fn versions(instances: &[Instance]) -> Vec<String> {
    let mut out = Vec::new();
    for i in instances {
        let mut svc = make_client(i);
        out.push(
            svc.ready()
                .await
                .unwrap()
                .call(())
                .await
                .unwrap_or_else(|e| format!("error: {e}")),
        );
    }
    out
}

fn driver(v2: CommandSpec, spares: &[SocketAddr]) -> Arc<ProcessDriver> {
    let mut b = ProcessDriver::builder()
        .version("v1", server("v1", &[]))
        .version("v2", v2)
        .health(HealthCheck::http("/healthz", 200))
        .stop_grace(Duration::from_secs(5))
        .quiet(false);
    for s in spares {
        b = b.spare(*s);
    }
    Arc::new(b.build().expect("driver"))
}

struct Run {
    report: RolloutReport,
    ok: u64,
    failed: u64,
    errors: Vec<String>,
    by_version: HashMap<String, u64>,
    pool: PoolSnapshot,
}

async fn upgrade_under_load<D: Driver>(d: D, instances: Vec<Instance>, cfg: RolloutConfig) -> Run {
    upgrade_under_load_with(d, instances, cfg, |_| async {}).await
}

/// [`upgrade_under_load`], with `during` running next to the rollout (given its handle).
async fn upgrade_under_load_with<D: Driver, F: Future<Output = ()>>(
    d: D,
    instances: Vec<Instance>,
    cfg: RolloutConfig,
    during: impl FnOnce(RolloutHandle) -> F,
) -> Run {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    let pool = Pool::new(make_client);
    let stats = Arc::new(LoadStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    for i in &instances {
        pool.insert(i);
    }
    let load = start_load(&pool, 3, stop.clone(), stats.clone());
    // Some traffic on v1 first.
    while stats.ok.load(Ordering::Relaxed) < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rollout = RolloutController::builder(d, pool.clone())
        .config(cfg)
        .instances(instances)
        .target("v2")
        .build()
        .expect("valid rollout");
    let handle = rollout.handle();
    let (report, ()) = tokio::time::timeout(Duration::from_secs(180), async {
        tokio::join!(rollout.run(), during(handle))
    })
    .await
    .expect("rollout within 180 s");
    let report = report.expect("no journal error");
    // Some traffic after the end, bounded in case the fleet is left unable to serve.
    let after = stats.ok.load(Ordering::Relaxed);
    println!(
        "at the end of the rollout: {after} ok, {} failed, pool {:?}",
        stats.failed.load(Ordering::Relaxed),
        pool.keys()
    );
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while stats.ok.load(Ordering::Relaxed) < after + 50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let by_version = stats.by_version.lock().unwrap().clone();
    let errors = stats.errors.lock().unwrap().clone();
    Run {
        report,
        ok: stats.ok.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        errors,
        by_version,
        pool: pool.snapshot(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_upgrade_under_load_loses_no_request() {
    let d = driver(server("v2", &[]), &[]);
    let instances = launch(&d, 4).await;
    let run = upgrade_under_load(d.clone(), instances.clone(), config()).await;
    println!(
        "upgrade of 4 instances: {:?}, {} requests ok, {} failed, by version {:?}",
        run.report.elapsed, run.ok, run.failed, run.by_version
    );
    assert_eq!(
        run.report.outcome,
        RolloutOutcome::Completed,
        "{:?}",
        run.report.failure
    );
    assert_eq!(run.failed, 0, "failed requests: {:?}", run.errors);
    assert!(run.report.instances.iter().all(|i| i.version == "v2"));
    assert_eq!(versions(&instances).await, vec!["v2"; 4]);
    assert!(run.by_version.get("v1").copied().unwrap_or(0) > 0);
    assert!(run.by_version.get("v2").copied().unwrap_or(0) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_release_rolls_back_without_a_failed_request() {
    let d = driver(server("v2", &["--unhealthy"]), &[]);
    let instances = launch(&d, 4).await;
    let run = upgrade_under_load(d.clone(), instances.clone(), config()).await;
    println!(
        "rollback: {:?}, {} requests ok, {} failed, failure: {:?}",
        run.report.elapsed, run.ok, run.failed, run.report.failure
    );
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack);
    assert!(
        run.report
            .failure
            .as_deref()
            .unwrap_or("")
            .contains("health checks")
    );
    assert_eq!(run.failed, 0, "failed requests: {:?}", run.errors);
    assert!(run.report.instances.iter().all(|i| i.version == "v1"));
    assert_eq!(versions(&instances).await, vec!["v1"; 4]);
    assert_eq!(
        run.by_version.get("v2"),
        None,
        "an unhealthy v2 never served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surge_upgrade_moves_instances_to_spare_ports() {
    let spares: Vec<SocketAddr> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .collect();
    let d = driver(server("v2", &[]), &spares);
    let instances = launch(&d, 4).await;
    let cfg = RolloutConfig {
        max_surge: Amount::Count(1),
        max_unavailable: Amount::Count(0),
        ..config()
    };
    let run = upgrade_under_load(d.clone(), instances.clone(), cfg).await;
    println!(
        "surge upgrade: {:?}, {} ok, {} failed",
        run.report.elapsed, run.ok, run.failed
    );
    assert_eq!(
        run.report.outcome,
        RolloutOutcome::Completed,
        "{:?}",
        run.report.failure
    );
    assert_eq!(run.failed, 0, "failed requests: {:?}", run.errors);
    let end = run.report.instances.clone();
    assert_eq!(end.len(), 4);
    assert!(end.iter().all(|i| i.version == "v2"));
    assert_eq!(versions(&end).await, vec!["v2"; 4]);
    // Every id moved to another address at least once.
    for (a, b) in instances.iter().zip(&end) {
        assert_eq!(a.id, b.id);
        assert_ne!(a.address, b.address);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_failure_names_the_instance_and_rolls_back() {
    let d = driver(CommandSpec::new("/nonexistent/degrade-rollout-v2"), &[]);
    let instances = launch(&d, 2).await;
    let run = upgrade_under_load(d.clone(), instances.clone(), config()).await;
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack);
    assert_eq!(run.failed, 0, "failed requests: {:?}", run.errors);
    let err = run.report.errors.first().expect("a driver error");
    assert_eq!(err.instance, "i0");
    assert_eq!(err.op, StepKind::Start);
    assert!(
        err.to_string().starts_with("start of instance `i0` failed"),
        "{err}"
    );
    assert_eq!(versions(&instances).await, vec!["v1"; 2]);
}

/// Counts install calls per (instance, version).
#[derive(Debug, Clone)]
struct Counting {
    inner: Arc<ProcessDriver>,
    installs: Arc<Mutex<HashMap<(String, String), u32>>>,
}

impl Driver for Counting {
    fn check_version(&self, v: &str) -> Result<(), degrade_core::ConfigError> {
        self.inner.check_version(v)
    }
    async fn stop(&self, i: &Instance) -> Result<(), BoxError> {
        self.inner.stop(i).await
    }
    async fn install(&self, i: &Instance, v: &str) -> Result<(), BoxError> {
        *self
            .installs
            .lock()
            .unwrap()
            .entry((i.id.clone(), v.to_owned()))
            .or_default() += 1;
        self.inner.install(i, v).await
    }
    async fn start(&self, i: &Instance) -> Result<(), BoxError> {
        self.inner.start(i).await
    }
    async fn health(&self, i: &Instance) -> Result<(), BoxError> {
        self.inner.health(i).await
    }
    async fn allocate(&self, i: &Instance) -> Result<SocketAddr, BoxError> {
        self.inner.allocate(i).await
    }
    async fn release(&self, i: &Instance) -> Result<(), BoxError> {
        self.inner.release(i).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_controller_resumes_from_the_journal_without_upgrading_twice() {
    let dir = std::env::temp_dir().join(format!("degrade-rollout-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let journal = dir.join("rollout.jsonl");
    let _ = std::fs::remove_file(&journal);

    let inner = driver(server("v2", &[]), &[]);
    let instances = launch(&inner, 4).await;
    let d = Counting {
        inner,
        installs: Arc::default(),
    };
    let pool = Pool::new(make_client);
    for i in &instances {
        pool.insert(i);
    }
    let stats = Arc::new(LoadStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&pool, 3, stop.clone(), stats.clone());

    // First controller: dropped while the second batch's instance is starting on v2.
    let first = RolloutController::builder(d.clone(), pool.clone())
        .config(config())
        .journal(&journal)
        .instances(instances.clone())
        .target("v2")
        .build()
        .unwrap();
    let handle = first.handle();
    let mut status = handle.subscribe();
    let dropped_at = tokio::time::timeout(Duration::from_secs(120), async {
        let run = first.run();
        tokio::pin!(run);
        loop {
            tokio::select! {
                r = &mut run => panic!("finished before it was dropped: {:?}", r.map(|r| r.outcome)),
                _ = status.changed() => {
                    let s = status.borrow().clone();
                    if s.batch == Some(1) && s.instances.iter().any(|i| i.id == "i1" && i.version == "v2") {
                        return s;
                    }
                }
            }
        }
    })
    .await
    .expect("reached batch 1");
    println!("dropped with: {:?}", dropped_at.instances);

    // Second controller: same journal, same processes.
    let second = RolloutController::builder(d.clone(), pool.clone())
        .config(config())
        .journal(&journal)
        .instances(instances.clone())
        .target("v2")
        .build()
        .unwrap();
    assert_eq!(second.machine().current_batch(), Some(1));
    let report = tokio::time::timeout(Duration::from_secs(180), second.run())
        .await
        .unwrap()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        report.outcome,
        RolloutOutcome::Completed,
        "{:?}",
        report.failure
    );
    assert_eq!(versions(&instances).await, vec!["v2"; 4]);
    let installs = d.installs.lock().unwrap().clone();
    for i in &instances {
        assert_eq!(
            installs.get(&(i.id.clone(), "v2".into())),
            Some(&1),
            "{installs:?}"
        );
    }
    assert_eq!(
        stats.failed.load(Ordering::Relaxed),
        0,
        "{:?}",
        stats.errors.lock().unwrap()
    );

    // A third controller on the finished journal does nothing.
    let third = RolloutController::builder(d.clone(), pool.clone())
        .config(config())
        .journal(&journal)
        .instances(instances.clone())
        .target("v2")
        .build()
        .unwrap();
    assert_eq!(
        third.run().await.unwrap().outcome,
        RolloutOutcome::Completed
    );
    assert_eq!(d.installs.lock().unwrap().values().sum::<u32>(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fails the health checks of one instance once it runs v2.
#[derive(Debug, Clone)]
struct SickOn {
    inner: Arc<ProcessDriver>,
    id: &'static str,
}

impl Driver for SickOn {
    fn check_version(&self, v: &str) -> Result<(), degrade_core::ConfigError> {
        self.inner.check_version(v)
    }
    async fn stop(&self, i: &Instance) -> Result<(), BoxError> {
        self.inner.stop(i).await
    }
    async fn install(&self, i: &Instance, v: &str) -> Result<(), BoxError> {
        self.inner.install(i, v).await
    }
    async fn start(&self, i: &Instance) -> Result<(), BoxError> {
        self.inner.start(i).await
    }
    async fn health(&self, i: &Instance) -> Result<(), BoxError> {
        if i.id == self.id && i.version == "v2" {
            return Err("sick".into());
        }
        self.inner.health(i).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_in_a_later_batch_rolls_back_every_upgraded_instance() {
    let inner = driver(server("v2", &[]), &[]);
    let instances = launch(&inner, 4).await;
    let d = SickOn {
        inner: inner.clone(),
        id: "i2",
    };
    let run = upgrade_under_load(d, instances.clone(), config()).await;
    println!(
        "rollback of 3 instances: {:?}, {} ok, {} failed, {:?}",
        run.report.elapsed, run.ok, run.failed, run.by_version
    );
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack);
    assert!(run.report.failure.as_deref().unwrap_or("").contains("`i2`"));
    assert_eq!(run.failed, 0, "failed requests: {:?}", run.errors);
    assert_eq!(versions(&instances).await, vec!["v1"; 4]);
    assert!(
        run.by_version.get("v2").copied().unwrap_or(0) > 0,
        "i0 and i1 served v2 for a while"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_next_batch_and_abort_stops_after_the_current_one() {
    let d = driver(server("v2", &[]), &[]);
    let instances = launch(&d, 3).await;
    let pool = Pool::new(make_client);
    for i in &instances {
        pool.insert(i);
    }
    let rollout = RolloutController::builder(d.clone(), pool.clone())
        .config(config())
        .instances(instances.clone())
        .target("v2")
        .build()
        .unwrap();
    let handle = rollout.handle();
    handle.pause();
    let task = tokio::spawn(rollout.run());
    let mut rx = handle.subscribe();
    let paused = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            rx.changed().await.unwrap();
            let s = rx.borrow().clone();
            if s.paused && s.batch.is_none() && s.instances[0].version == "v2" {
                return s;
            }
        }
    })
    .await
    .expect("paused after batch 0");
    assert_eq!(paused.instances[1].version, "v1");
    assert_eq!(versions(&instances).await, vec!["v2", "v1", "v1"]);
    handle.resume();
    handle.abort(); // batch 1 runs, then the rollout stops
    let report = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Aborted);
    assert_eq!(versions(&instances).await, vec!["v2", "v2", "v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_rolls_back_a_release_that_serves_errors() {
    // v2 answers 500 to one request in four; v1 never does.
    let d = driver(server("v2", &["--error-every", "4"]), &[]);
    let instances = launch(&d, 4).await;
    let cfg = RolloutConfig {
        analysis: Some(AnalysisConfig {
            judge: JudgeConfig {
                min_samples: 100,
                ..JudgeConfig::default()
            },
            duration: Duration::from_secs(20),
            interval: Duration::from_millis(200),
            warmup: Duration::ZERO,
            require_pass: false,
        }),
        ..config()
    };
    let run = upgrade_under_load(d.clone(), instances.clone(), cfg).await;
    println!(
        "analysis: {:?}, {} ok, {} failed, failure {:?}",
        run.report.elapsed, run.ok, run.failed, run.report.failure
    );
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack);
    let failure = run.report.failure.clone().unwrap_or_default();
    assert!(failure.contains("analysis of batch 0"), "{failure}");
    assert!(failure.contains("error rate"), "{failure}");
    assert_eq!(versions(&instances).await, vec!["v1"; 4]);
    // The only failed requests are v2's own 500s while it served.
    assert!(
        run.errors.iter().all(|e| e.contains("status 500")),
        "{:?}",
        run.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_passes_a_good_release() {
    let d = driver(server("v2", &[]), &[]);
    let instances = launch(&d, 3).await;
    // A process that has just started is slower for a while on a loaded machine (it failed
    // as "canary latency above stable's" half a second after the instance was ready, with
    // the machine at load 8 on 2 cores): the warm-up leaves that out of both arms.
    let run = upgrade_under_load(
        d.clone(),
        instances.clone(),
        analysed(Duration::from_secs(2), true),
    )
    .await;
    assert_eq!(
        run.report.outcome,
        RolloutOutcome::Completed,
        "{:?}",
        run.report.failure
    );
    assert_eq!(run.failed, 0, "{:?}", run.errors);
    assert_eq!(versions(&instances).await, vec!["v2"; 3]);
}

/// The rollout configuration of the analysis tests: a judge that may decide after 50 calls of
/// each arm, a look every 200 ms for at most 20 s after `warmup`.
fn analysed(warmup: Duration, require_pass: bool) -> RolloutConfig {
    RolloutConfig {
        analysis: Some(AnalysisConfig {
            judge: JudgeConfig {
                min_samples: 50,
                ..JudgeConfig::default()
            },
            duration: Duration::from_secs(20),
            interval: Duration::from_millis(200),
            warmup,
            require_pass,
        }),
        ..config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_warmup_a_release_slow_while_it_starts_is_rolled_back() {
    // v2 answers in 8 ms instead of 2 for its first 1.5 s, then like v1: judged from its first
    // call, its cold start reads as a regression (`tests/analysis.rs` shows the warm-up
    // leaving it out, on paused time: here the instances' own differences on a loaded machine
    // would decide a comparison after the cold start).
    let d = driver(server("v2", &["--cold-ms", "1500"]), &[]);
    let instances = launch(&d, 3).await;
    let run = upgrade_under_load(
        d.clone(),
        instances.clone(),
        analysed(Duration::ZERO, false),
    )
    .await;
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack);
    let failure = run.report.failure.clone().unwrap_or_default();
    assert!(
        failure.contains("analysis of batch 0") && failure.contains("latency"),
        "{failure}"
    );
    assert_eq!(versions(&instances).await, vec!["v1"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_surge_discards_the_replacement_and_keeps_the_old_instances() {
    let spares: Vec<SocketAddr> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .collect();
    let d = driver(server("v2", &["--unhealthy"]), &spares);
    let instances = launch(&d, 3).await;
    let cfg = RolloutConfig {
        max_surge: Amount::Count(1),
        max_unavailable: Amount::Count(0),
        ..config()
    };
    let run = upgrade_under_load(d.clone(), instances.clone(), cfg).await;
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack);
    assert_eq!(run.failed, 0, "failed requests: {:?}", run.errors);
    // The old instances never stopped serving; the replacement is gone.
    assert_eq!(run.report.instances, {
        let mut v = instances.clone();
        for i in &mut v {
            i.state = degrade_rollout::InstanceState::Running;
        }
        v
    });
    assert_eq!(versions(&instances).await, vec!["v1"; 3]);
    for s in &spares {
        assert_eq!(d.pid(*s), None, "no process left on the spare {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surge_rollout_resumes_from_the_journal_mid_replacement() {
    let dir = std::env::temp_dir().join(format!("degrade-rollout-surge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let journal = dir.join("rollout.jsonl");
    let _ = std::fs::remove_file(&journal);
    let spares: Vec<SocketAddr> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .collect();
    let inner = driver(server("v2", &[]), &spares);
    let instances = launch(&inner, 3).await;
    let d = Counting {
        inner,
        installs: Arc::default(),
    };
    let cfg = RolloutConfig {
        max_surge: Amount::Count(1),
        max_unavailable: Amount::Count(0),
        ..config()
    };
    let pool = Pool::new(make_client);
    for i in &instances {
        pool.insert(i);
    }
    let stats = Arc::new(LoadStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&pool, 3, stop.clone(), stats.clone());

    let first = RolloutController::builder(d.clone(), pool.clone())
        .config(cfg.clone())
        .journal(&journal)
        .instances(instances.clone())
        .target("v2")
        .build()
        .unwrap();
    let handle = first.handle();
    let mut status = handle.subscribe();
    tokio::time::timeout(Duration::from_secs(120), async {
        let run = first.run();
        tokio::pin!(run);
        loop {
            tokio::select! {
                r = &mut run => panic!("finished before it was dropped: {:?}", r.map(|r| r.outcome)),
                _ = status.changed() => {
                    let s = status.borrow().clone();
                    // Batch 1's replacement exists next to i1, installed with v2 (starting,
                    // or ready and baking), and i1 still serves.
                    if s.batch == Some(1)
                        && s.instances.len() == 4
                        && s.instances[3].version == "v2"
                        && s.instances[1].version == "v1"
                    {
                        return;
                    }
                }
            }
        }
    })
    .await
    .expect("reached the replacement of batch 1");

    let second = RolloutController::builder(d.clone(), pool.clone())
        .config(cfg)
        .journal(&journal)
        .instances(instances.clone())
        .target("v2")
        .build()
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(180), second.run())
        .await
        .unwrap()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        report.outcome,
        RolloutOutcome::Completed,
        "{:?}",
        report.failure
    );
    assert_eq!(report.instances.len(), 3);
    assert_eq!(versions(&report.instances).await, vec!["v2"; 3]);
    let installs = d.installs.lock().unwrap().clone();
    for i in &instances {
        assert_eq!(
            installs.get(&(i.id.clone(), "v2".into())),
            Some(&1),
            "{installs:?}"
        );
    }
    assert_eq!(
        stats.failed.load(Ordering::Relaxed),
        0,
        "{:?}",
        stats.errors.lock().unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests a crash may fail: those in flight to the instance when it dies (each load task has
/// at most one) and, at worst, one more per balancer routed before the ejection reached it.
/// The bound leaves a wide margin; the figure is printed.
const FAILED_PER_CRASH: u64 = 10;

/// The config of the crash tests: v2 crashes 5 s after it starts, after passing its gates and
/// its bake; the watch after the last batch outlasts that.
fn crash_config() -> RolloutConfig {
    RolloutConfig {
        post_watch: Duration::from_secs(6),
        ..config()
    }
}

fn crash_report(what: &str, run: &Run) {
    println!(
        "{what}: {} in {:?}; requests: {} ok, {} failed (v1 {}, v2 {}); pool: {} ejections, {} returns; failure: {:?}",
        run.report.outcome,
        run.report.elapsed,
        run.ok,
        run.failed,
        run.by_version.get("v1").copied().unwrap_or(0),
        run.by_version.get("v2").copied().unwrap_or(0),
        run.pool.ejections,
        run.pool.returns,
        run.report.failure,
    );
    if run.failed > 0 {
        println!("{what}: first failed requests: {:?}", run.errors);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_crashes_after_its_bake_is_rolled_back_in_place() {
    let d = driver(server("v2", &["--exit-after-ms", "5000"]), &[]);
    let instances = launch(&d, 4).await;
    let run = upgrade_under_load(d.clone(), instances.clone(), crash_config()).await;
    crash_report("v2 crashes 5 s after its start (in place)", &run);
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack);
    let failure = run.report.failure.clone().unwrap_or_default();
    assert!(failure.contains("exited"), "{failure}");
    assert!(run.report.instances.iter().all(|i| i.version == "v1"));
    assert_eq!(versions(&instances).await, vec!["v1"; 4]);
    assert!(
        run.by_version.get("v2").copied().unwrap_or(0) > 0,
        "v2 served before it crashed"
    );
    assert!(
        run.pool.ejections >= 1,
        "the dead instance was ejected: {:?}",
        run.pool
    );
    // At most four v2 processes crash.
    assert!(
        run.failed <= 4 * FAILED_PER_CRASH,
        "{} failed requests: {:?}",
        run.failed,
        run.errors
    );
    assert!(
        run.errors.iter().all(|e| !e.contains("status")),
        "only transport failures: {:?}",
        run.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_crashes_after_its_bake_is_rolled_back_by_surge() {
    let spares: Vec<SocketAddr> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .collect();
    let d = driver(server("v2", &["--exit-after-ms", "5000"]), &spares);
    let instances = launch(&d, 4).await;
    let cfg = RolloutConfig {
        max_surge: Amount::Count(1),
        max_unavailable: Amount::Count(0),
        ..crash_config()
    };
    let run = upgrade_under_load(d.clone(), instances.clone(), cfg).await;
    crash_report("v2 crashes 5 s after its start (surge)", &run);
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack);
    let failure = run.report.failure.clone().unwrap_or_default();
    assert!(failure.contains("exited"), "{failure}");
    let end = run.report.instances.clone();
    assert_eq!(end.len(), 4);
    assert!(end.iter().all(|i| i.version == "v1"), "{end:?}");
    assert_eq!(versions(&end).await, vec!["v1"; 4]);
    assert!(
        run.by_version.get("v2").copied().unwrap_or(0) > 0,
        "v2 served before it crashed"
    );
    assert!(
        run.failed <= 4 * FAILED_PER_CRASH,
        "{} failed requests: {:?}",
        run.failed,
        run.errors
    );
    for s in &spares {
        // Every v2 process is gone, wherever it ran.
        if let Some(pid) = d.pid(*s) {
            let i = end
                .iter()
                .find(|i| i.address == *s)
                .expect("a spare in use holds a v1");
            assert_eq!(i.version, "v1", "pid {pid}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_during_the_post_rollout_watch_rolls_the_rollout_back() {
    let d = driver(server("v2", &[]), &[]);
    let instances = launch(&d, 4).await;
    let killer = d.clone();
    let cfg = RolloutConfig {
        post_watch: Duration::from_secs(30),
        ..config()
    };
    let killed = Arc::new(Mutex::new(None));
    let noted = killed.clone();
    let run = upgrade_under_load_with(d.clone(), instances.clone(), cfg, |handle| async move {
        let mut status = handle.subscribe();
        let watching = status
            .wait_for(|s| s.phase == Some(RolloutPhase::Watching))
            .await
            .expect("the rollout reaches its watch")
            .clone();
        assert!(watching.instances.iter().all(|i| i.version == "v2"));
        assert_eq!(watching.outcome, None, "not completed while watching");
        // SIGKILL one upgraded instance a second into the watch (of 30 s): the balancers
        // route to it meanwhile, as they do to every instance in service.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(status.borrow().phase, Some(RolloutPhase::Watching));
        let victim = watching.instances[2].clone();
        let pid = killer.pid(victim.address).expect("a running v2");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        *noted.lock().unwrap() = Some(victim);
    })
    .await;
    crash_report("an instance SIGKILLed during the watch", &run);
    let victim = killed.lock().unwrap().clone().expect("killed one");
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack);
    let failure = run.report.failure.clone().unwrap_or_default();
    assert!(failure.contains(&format!("`{}`", victim.id)), "{failure}");
    assert!(failure.contains("SIGKILL"), "{failure}");
    assert_eq!(versions(&instances).await, vec!["v1"; 4]);
    assert!(
        run.failed <= FAILED_PER_CRASH,
        "{} failed requests: {:?}",
        run.failed,
        run.errors
    );
}
