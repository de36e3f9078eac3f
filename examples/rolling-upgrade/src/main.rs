//! A rolling upgrade of four local HTTP servers, v1 → v2, under continuous load through p2c
//! balancers fed by the rollout's discover stream. See README.md.
//!
//! The binary is also the server: `rolling-upgrade serve --port P --version V [--unhealthy]
//! [--exit-after-ms N]`, so the driver spawns `current_exe() serve …` for each instance.

use degrade::BoxError;
use degrade::rollout::discover::Pool;
use degrade::rollout::driver::{CommandSpec, HealthCheck};
use degrade::rollout::{
    Driver, Instance, ProcessDriver, RolloutConfig, RolloutController, RolloutOutcome,
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::balance::p2c::Balance;
use tower::{Service, ServiceExt};

const USAGE: &str =
    "usage: rolling-upgrade [--quick] [--duration SECS] [--bad-release | --crash] [--instances N]
       rolling-upgrade serve --port P --version V [--unhealthy] [--exit-after-ms N]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = if args.first().map(String::as_str) == Some("serve") {
        match rt.block_on(serve(&args[1..])) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("serve: {e}");
                1
            }
        }
    } else {
        match rt.block_on(demo(&args)) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                eprintln!("rolling-upgrade: {e}\n{USAGE}");
                2
            }
        }
    };
    std::process::exit(code);
}

// ---------------------------------------------------------------- the server

async fn serve(args: &[String]) -> Result<(), BoxError> {
    let (mut port, mut version, mut unhealthy) = (0u16, String::new(), false);
    let mut exit_after = None::<u64>;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--port" => port = it.next().ok_or("--port needs a value")?.parse()?,
            "--version" => version = it.next().ok_or("--version needs a value")?.clone(),
            "--unhealthy" => unhealthy = true,
            "--exit-after-ms" => {
                exit_after = Some(it.next().ok_or("--exit-after-ms needs a value")?.parse()?);
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if let Some(ms) = exit_after {
        // A release that passes its gates, serves, then crashes: no goodbye to anyone.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            std::process::exit(3);
        });
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let version = Bytes::from(version);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let version = version.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let version = version.clone();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/" => {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                (StatusCode::OK, version)
                            }
                            "/healthz" if unhealthy => (StatusCode::SERVICE_UNAVAILABLE, Bytes::new()),
                            "/healthz" => (StatusCode::OK, Bytes::from_static(b"ok")),
                            _ => (StatusCode::NOT_FOUND, Bytes::new()),
                        };
                        let mut resp = Response::new(Full::new(body));
                        *resp.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = term.recv() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}

// ---------------------------------------------------------------- the client side

/// GET / on one instance; anything but 200 is an error. The body is the version.
#[derive(Clone)]
struct HttpGet {
    client: Client<HttpConnector, Empty<Bytes>>,
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
        let (client, uri) = (self.client.clone(), self.uri.clone());
        Box::pin(async move {
            let resp = client.get(uri).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            if status != StatusCode::OK {
                return Err(format!("status {status}").into());
            }
            Ok(String::from_utf8_lossy(&body).into_owned())
        })
    }
}

#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    by_version: Mutex<BTreeMap<String, u64>>,
    first_error: Mutex<Option<String>>,
}

/// A port below the ephemeral range (no client connection can hold it across a restart).
fn free_port(next: &mut u16) -> Result<u16, BoxError> {
    for _ in 0..10_000 {
        let port = *next;
        *next = if *next >= 32_000 { 20_000 } else { *next + 1 };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port".into())
}

async fn demo(args: &[String]) -> Result<bool, BoxError> {
    let (mut quick, mut duration, mut bad, mut n) = (false, None::<u64>, false, 4usize);
    let mut crash = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--duration" => duration = Some(it.next().ok_or("--duration needs seconds")?.parse()?),
            "--bad-release" => bad = true,
            "--crash" => crash = true,
            "--instances" => n = it.next().ok_or("--instances needs a number")?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(true);
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if n == 0 {
        return Err("--instances must be at least 1".into());
    }
    if bad && crash {
        return Err("--bad-release and --crash are two different bad releases: pick one".into());
    }
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();

    let exe = std::env::current_exe()?;
    let server = |v: &str, extra: &[&str]| {
        CommandSpec::new(&exe)
            .args(["serve", "--port", "{port}", "--version", v])
            .args(extra.iter().copied())
    };
    let driver = Arc::new(
        ProcessDriver::builder()
            .version("v1", server("v1", &[]))
            .version(
                "v2",
                server(
                    "v2",
                    match (bad, crash) {
                        (true, _) => &["--unhealthy"],
                        // Healthy through its gates and bake, then it dies.
                        (_, true) => &["--exit-after-ms", "4000"],
                        _ => &[],
                    },
                ),
            )
            .health(HealthCheck::http("/healthz", 200))
            .stop_grace(Duration::from_secs(5))
            .build()?,
    );
    let mut next = 20_000 + (std::process::id() % 400) as u16 * 25;
    let mut instances = Vec::new();
    for k in 0..n {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port(&mut next)?).parse()?;
        let i = Instance::new(format!("web-{k}"), addr, "v1");
        driver.start(&i).await?;
        driver.wait_healthy(&i, Duration::from_secs(30)).await?;
        instances.push(i);
    }
    println!("started {n} instances on v1");

    let pool = Pool::new(|i: &Instance| HttpGet {
        client: Client::builder(TokioExecutor::new()).build_http(),
        uri: format!("http://{}/", i.address)
            .parse()
            .expect("an address makes a URI"),
    });
    for i in &instances {
        pool.insert(i);
    }
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut balancer = Balance::new(pool.discover());
        let (load, stop) = (load.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let res = match balancer.ready().await {
                    Ok(svc) => svc.call(()).await,
                    Err(e) => Err(e),
                };
                match res {
                    Ok(v) => {
                        load.ok.fetch_add(1, Ordering::Relaxed);
                        *load
                            .by_version
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(v)
                            .or_default() += 1;
                    }
                    Err(e) => {
                        load.failed.fetch_add(1, Ordering::Relaxed);
                        load.first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e.to_string());
                    }
                }
            }
        }));
    }

    let cfg = RolloutConfig {
        min_ready: if quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        },
        health_interval: Duration::from_millis(if quick { 100 } else { 250 }),
        healthy_threshold: 2,
        failure_threshold: 3,
        startup_grace: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(10),
        progress_deadline: Duration::from_secs(60),
        // The upgraded instances stay watched this long after the last batch before the
        // rollout completes (a crash meanwhile rolls everything back).
        post_watch: Duration::from_secs(if quick { 3 } else { 10 }),
        ..RolloutConfig::default()
    };
    let (rollout, handle) = RolloutController::builder(driver.clone(), pool.clone())
        .config(cfg)
        .build(instances.clone(), "v2")?;
    let mut status = handle.subscribe();
    let progress = tokio::spawn(async move {
        let mut last = String::new();
        while status.changed().await.is_ok() {
            let s = status.borrow().clone();
            let line = s
                .instances
                .iter()
                .map(|i| format!("{}={}/{}", i.id, i.version, i.state))
                .collect::<Vec<_>>()
                .join(" ");
            if line != last {
                println!(
                    "  [{}] {line}",
                    s.phase.map(|p| p.to_string()).unwrap_or_default()
                );
                last = line;
            }
        }
    });
    let started = Instant::now();
    let report = rollout.run().await?;
    let upgrade_time = started.elapsed();
    let served_during = load.ok.load(Ordering::Relaxed);
    if let Some(d) = duration {
        let until = Duration::from_secs(d);
        if upgrade_time < until {
            tokio::time::sleep(until - upgrade_time).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();

    println!();
    println!("outcome: {}", report.outcome);
    if let Some(f) = &report.failure {
        println!("failure: {f}");
    }
    println!("rollout time: {upgrade_time:.2?}");
    println!(
        "{:<8} {:<22} {:<8} {:<8}",
        "id", "address", "version", "state"
    );
    for i in &report.instances {
        println!(
            "{:<8} {:<22} {:<8} {:<8}",
            i.id, i.address, i.version, i.state
        );
    }
    let ok = load.ok.load(Ordering::Relaxed);
    let failed = load.failed.load(Ordering::Relaxed);
    println!(
        "requests served: {ok} (by version: {:?}; {served_during} by the end of the rollout)",
        load.by_version.lock().unwrap_or_else(|e| e.into_inner())
    );
    println!("failed requests: {failed}");
    let p = pool.snapshot();
    println!(
        "endpoints ejected after a failed connection: {} (back after a passing health check: {})",
        p.ejections, p.returns
    );
    if let Some(e) = load
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        println!("first error: {e}");
    }
    for i in &report.instances {
        driver.stop(i).await?;
    }
    let expected = if bad || crash {
        RolloutOutcome::RolledBack
    } else {
        RolloutOutcome::Completed
    };
    // A crash fails the requests in flight to the instance when it dies (printed above);
    // otherwise none may fail.
    Ok(report.outcome == expected && (crash || failed == 0))
}
