//! A tiny HTTP server for rollout tests and demos.
//!
//! `degrade-rollout-testserver --port P --version V [--unhealthy] [--latency-ms N] [--error-every N] [--exit-after-ms N] [--cold-ms N]`
//!
//! * `GET /` answers `200` with the version as the body (after `--latency-ms`, default 2), or
//!   `500` for every N-th request with `--error-every N` (a release that serves errors);
//!   with `--cold-ms N`, `GET /` takes four times its latency during the first N ms after the
//!   process started (a release that is slow while it warms up);
//! * `GET /healthz` answers `200 ok`, or `503` with `--unhealthy`;
//! * anything else is `404`;
//! * with `--exit-after-ms N`, the process exits abruptly (status 3, connections cut, requests
//!   in flight lost) N ms after it started: a release that passes its health gates and its
//!   bake, then crashes.
//!
//! On SIGTERM it stops accepting, lets the requests in flight finish (closing idle
//! keep-alive connections), and exits 0.

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

struct Args {
    port: u16,
    version: String,
    unhealthy: bool,
    latency: Duration,
    error_every: u64,
    exit_after: Option<Duration>,
    cold: Duration,
    started: std::time::Instant,
    served: std::sync::atomic::AtomicU64,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        port: 0,
        version: String::new(),
        unhealthy: false,
        latency: Duration::from_millis(2),
        error_every: 0,
        exit_after: None,
        cold: Duration::ZERO,
        started: std::time::Instant::now(),
        served: std::sync::atomic::AtomicU64::new(0),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--port" => {
                args.port = value("--port")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?
            }
            "--version" => args.version = value("--version")?,
            "--unhealthy" => args.unhealthy = true,
            "--latency-ms" => {
                let ms: u64 = value("--latency-ms")?
                    .parse()
                    .map_err(|e| format!("--latency-ms: {e}"))?;
                args.latency = Duration::from_millis(ms);
            }
            "--error-every" => {
                args.error_every = value("--error-every")?
                    .parse()
                    .map_err(|e| format!("--error-every: {e}"))?;
            }
            "--exit-after-ms" => {
                let ms: u64 = value("--exit-after-ms")?
                    .parse()
                    .map_err(|e| format!("--exit-after-ms: {e}"))?;
                args.exit_after = Some(Duration::from_millis(ms));
            }
            "--cold-ms" => {
                let ms: u64 = value("--cold-ms")?
                    .parse()
                    .map_err(|e| format!("--cold-ms: {e}"))?;
                args.cold = Duration::from_millis(ms);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.version.is_empty() {
        return Err("--version is required".into());
    }
    Ok(args)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("degrade-rollout-testserver: {e}");
            eprintln!(
                "usage: degrade-rollout-testserver --port P --version V [--unhealthy] [--latency-ms N] [--error-every N] [--exit-after-ms N] [--cold-ms N]"
            );
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("degrade-rollout-testserver: runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(serve(args)) {
        eprintln!("degrade-rollout-testserver: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    let mut term = signal(SignalKind::terminate())?;
    let graceful = GracefulShutdown::new();
    if let Some(after) = args.exit_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // A crash, not a shutdown: no goodbye to the connections.
            std::process::exit(3);
        });
    }
    let state = Arc::new(args);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, &req).await) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = term.recv() => break,
        }
    }
    drop(listener);
    // In-flight requests finish; idle keep-alive connections close. Bounded, in case a client
    // holds a connection open without sending.
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}

async fn answer(state: &Args, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/" => {
            let latency = if state.started.elapsed() < state.cold {
                state.latency.saturating_mul(4)
            } else {
                state.latency
            };
            tokio::time::sleep(latency).await;
            let n = state
                .served
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if state.error_every > 0 && n.is_multiple_of(state.error_every) {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Bytes::from_static(b"error"),
                )
            } else {
                (StatusCode::OK, Bytes::from(state.version.clone()))
            }
        }
        "/healthz" if state.unhealthy => (
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"unhealthy"),
        ),
        "/healthz" => (StatusCode::OK, Bytes::from_static(b"ok")),
        _ => (StatusCode::NOT_FOUND, Bytes::new()),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp
}
