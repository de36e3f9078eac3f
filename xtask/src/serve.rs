//! `cargo xtask serve`: the overload bench's backend behind one of its protections, on an
//! address an external client can drive: over HTTP/1.1 (wrk, hey, an aiohttp script) or, with
//! `--grpc`, as a unary gRPC method over HTTP/2 (a Python grpcio script, grpcurl, ghz).
//!
//! The bench drives its server from the same process with its own open- or closed-loop
//! client; this serves the same work to whatever client the user brings, and
//! reports from the server's side what the client cannot tell apart: every few seconds the
//! answers by status, the goodput against the backend's capacity, the admitted requests'
//! p50 / p99 (measured around the whole stack, waits included) and, behind degrade, the
//! adaptive limit. wrk, for one, reports one latency distribution for 200s and 503s alike:
//! under overload it is mostly the refusals'.

mod grpc;

use crate::Result;
use crate::bench::{CONFIGS, parse_backend};
use crate::demo::service::{self, Backend, Model, Protection};
use axum::extract::Request;
use axum::middleware::Next;
use degrade_core::DegradeLayer;
use degrade_core::histogram::{AtomicHistogram, Histogram, Layout};
use degrade_core::priority::HeaderPriority;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

pub(crate) const USAGE: &str = "\
Usage: cargo xtask serve [--backend PxMS] [--model slots|cpu|mixed] [--protection NAME]
                         [--queue-delay Q] [--grpc] [--addr HOST:PORT] [--duration SECS]
                         [--every SECS]
  --backend     the backend's permits and service time (default 8x40: 200 req/s)
  --model       slots (a pool of permits), cpu (processor sharing) or mixed (one request in
                ten costs ten times as much); default slots
  --protection  degrade (the default DegradeLayer, as the bench's), tower, bulkhead,
                acc-gradient2, acc-vegas, adaptive-aimd, adaptive-vegas, unprotected,
                degrade-stack (the demo's full stack); default degrade
  --queue-delay degrade's `LimitConfig::queue_delay` in baselines (default 0.5): how long
                a request may wait for a slot
  --grpc        serve gRPC over HTTP/2 instead: the unary method /degrade.bench.Work/Call
                (request and reply `message Work { bytes payload = 1; }`, so any client can
                send empty bytes), a call's priority from its `x-priority` metadata; degrade
                answers a refused call UNAVAILABLE with a RetryInfo delay. Protections:
                degrade or unprotected
  --addr        where to listen (default 127.0.0.1:8080; port 0 picks a free one)
  --duration    seconds to serve before the summary (default 60, at most 86400)
  --every       seconds between report lines (default 5)
Serves GET /work; e.g. `wrk -t2 -c64 -d30s http://127.0.0.1:8080/work`.";

/// The one gRPC method `--grpc` serves.
pub(crate) const GRPC_PATH: &str = "/degrade.bench.Work/Call";

/// What `serve` was asked for.
#[derive(Debug, Clone, PartialEq)]
struct Args {
    backend: Option<(usize, u64)>,
    model: Model,
    protection: Protection,
    queue_delay: Option<f64>,
    grpc: bool,
    addr: SocketAddr,
    duration: Duration,
    every: Duration,
}

fn parse(args: &[String]) -> Result<Option<Args>> {
    let mut parsed = Args {
        backend: None,
        model: Model::Slots,
        protection: Protection::DegradeLayer,
        queue_delay: None,
        grpc: false,
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        duration: Duration::from_secs(60),
        every: Duration::from_secs(5),
    };
    let secs = |flag: &str, v: &str, max: u64| -> Result<Duration> {
        match v.parse::<u64>() {
            Ok(s) if (1..=max).contains(&s) => Ok(Duration::from_secs(s)),
            _ => Err(format!("`{flag} {v}`: expected whole seconds in 1..={max}")),
        }
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || {
            iter.next()
                .map(String::as_str)
                .ok_or_else(|| format!("`{arg}` needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--backend" => parsed.backend = Some(parse_backend(value()?)?),
            "--model" => {
                parsed.model = match value()? {
                    "slots" => Model::Slots,
                    "cpu" => Model::Cpu,
                    "mixed" => Model::Mixed,
                    other => return Err(format!("unknown model `{other}`\n\n{USAGE}")),
                }
            }
            "--protection" => {
                let name = value()?;
                parsed.protection = CONFIGS
                    .iter()
                    .copied()
                    .chain([Protection::Degrade])
                    .find(|p| p.key() == name)
                    .ok_or_else(|| format!("unknown protection `{name}`\n\n{USAGE}"))?;
            }
            "--queue-delay" => parsed.queue_delay = Some(service::parse_queue_delay(value()?)?),
            "--grpc" => parsed.grpc = true,
            "--addr" => {
                let v = value()?;
                parsed.addr = v.parse().map_err(|_| {
                    format!("`--addr {v}`: expected HOST:PORT, e.g. 127.0.0.1:8080")
                })?;
            }
            "--duration" => parsed.duration = secs("--duration", value()?, 86_400)?,
            "--every" => parsed.every = secs("--every", value()?, 3_600)?,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unexpected argument `{other}`\n\n{USAGE}")),
        }
    }
    if parsed.grpc
        && !matches!(
            parsed.protection,
            Protection::DegradeLayer | Protection::Unprotected
        )
    {
        return Err(format!(
            "`--grpc` serves `--protection degrade` or `unprotected`, not `{}`",
            parsed.protection.key()
        ));
    }
    Ok(Some(parsed))
}

pub(crate) fn run(args: &[String]) -> Result {
    let Some(args) = parse(args)? else {
        println!("{USAGE}");
        return Ok(());
    };
    if let Some((permits, ms)) = args.backend {
        service::set_shape(permits, Duration::from_millis(ms))?;
    }
    if let Some(queue_delay) = args.queue_delay {
        service::set_queue_delay(queue_delay)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the tokio runtime: {err}"))?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.addr)
            .await
            .map_err(|err| format!("cannot bind {}: {err}", args.addr))?;
        let server = start(&args, listener)?;
        let what = if args.grpc {
            format!("gRPC {GRPC_PATH} on http://{}", server.addr)
        } else {
            format!("GET http://{}/work", server.addr)
        };
        println!(
            "serving {what}: {}{} in front of {} × {:?} ({:?}, capacity {:.0} req/s) for {:?}",
            args.protection.name(),
            args.queue_delay
                .map_or_else(String::new, |q| format!(" (queue_delay {q})")),
            service::permits(),
            service::service_time(),
            args.model,
            service::capacity_of(args.model),
            args.duration,
        );
        let started = Instant::now();
        let mut last = Snapshot::default();
        let mut tick = tokio::time::interval_at(started + args.every, args.every);
        while started.elapsed() < args.duration {
            tick.tick().await;
            let now = server.stats.snapshot();
            println!(
                "{:>5.0} s  {}",
                started.elapsed().as_secs_f64(),
                now.since(&last, args.every, service::capacity_of(args.model), &server)
            );
            last = now;
        }
        let total = server.stats.snapshot();
        println!(
            "total    {}",
            total.since(
                &Snapshot::default(),
                started.elapsed(),
                service::capacity_of(args.model),
                &server
            )
        );
        server.stop().await
    })
}

/// A server of the bench's backend behind a protection, counting what it answers.
struct Served {
    addr: SocketAddr,
    stats: Arc<Stats>,
    /// The DegradeLayer in front of the backend (`None` for the peers).
    degrade: Option<DegradeLayer<HeaderPriority>>,
    server: Running,
}

/// The server task: axum's over HTTP/1.1, or tonic's over HTTP/2.
enum Running {
    Http(crate::demo::Server),
    Grpc {
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    },
}

impl Served {
    async fn stop(self) -> Result {
        match self.server {
            Running::Http(server) => server.stop().await,
            Running::Grpc { stop, task } => {
                let _ = stop.send(());
                match tokio::time::timeout(Duration::from_secs(10), task).await {
                    Ok(Ok(Ok(()))) => Ok(()),
                    Ok(Ok(Err(err))) => Err(format!("gRPC server failed: {err}")),
                    Ok(Err(err)) => Err(format!("gRPC server task failed: {err}")),
                    Err(_) => Err("the gRPC server did not stop within 10 s".to_string()),
                }
            }
        }
    }

    fn limit(&self) -> Option<u32> {
        self.degrade
            .as_ref()
            .and_then(|d| d.snapshot().limit)
            .map(|l| l.limit)
    }
}

/// Builds the app for `args` and serves it on `listener`.
fn start(args: &Args, listener: TcpListener) -> Result<Served> {
    if args.grpc {
        return grpc::start(args, listener);
    }
    let backend = Backend::with_model(args.model);
    let ladder = crate::demo::ladder_config(Duration::from_secs(1));
    let (app, parts) = service::app(args.protection, &backend, &ladder)?;
    let stats = Arc::new(Stats::default());
    let counted = Arc::clone(&stats);
    let app = app.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let stats = Arc::clone(&counted);
            async move {
                let start = Instant::now();
                let response = next.run(req).await;
                stats.record(response.status().as_u16(), start.elapsed());
                response
            }
        },
    ));
    let server = crate::demo::Server::serve(listener, app)?;
    Ok(Served {
        addr: server.addr,
        stats,
        degrade: parts.map(|p| p.degrade),
        server: Running::Http(server),
    })
}

/// Answers by status class and the admitted (200) requests' latencies, in core's lock-free
/// histogram (fine layout): however long the run and however fast the client, the memory
/// stays the same.
#[derive(Debug)]
struct Stats {
    ok: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
    latencies: AtomicHistogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            ok: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            other: AtomicU64::new(0),
            latencies: AtomicHistogram::per_thread(Layout::FINE),
        }
    }
}

impl Stats {
    fn record(&self, status: u16, latency: Duration) {
        match status {
            200 => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.latencies.record(latency);
            }
            429 | 503 => {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            ok: self.ok.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
            latencies: self.latencies.snapshot(),
        }
    }
}

#[derive(Clone)]
struct Snapshot {
    ok: u64,
    refused: u64,
    other: u64,
    latencies: Histogram,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            ok: 0,
            refused: 0,
            other: 0,
            latencies: Histogram::new(Layout::FINE),
        }
    }
}

impl Snapshot {
    /// One report line: what was answered since `before`, over `elapsed`.
    fn since(
        &self,
        before: &Snapshot,
        elapsed: Duration,
        capacity: f64,
        served: &Served,
    ) -> String {
        let ok = self.ok - before.ok;
        let secs = elapsed.as_secs_f64().max(1e-9);
        let window = self.latencies.since(&before.latencies);
        let ms = |q: f64| {
            window
                .quantile(q)
                .map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
        };
        let limit = served
            .limit()
            .map_or(String::new(), |l| format!("  limit {l}"));
        format!(
            "200: {ok} ({:.0}/s, {:.1} % of capacity)  refused: {}  other: {}  admitted p50 {} ms, p99 {} ms{limit}",
            ok as f64 / secs,
            100.0 * ok as f64 / secs / capacity,
            self.refused - before.refused,
            self.other - before.other,
            ms(0.5),
            ms(0.99),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    fn args(list: &[&str]) -> Result<Option<Args>> {
        parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_arguments_parse_and_name_what_is_wrong() {
        let a = args(&[
            "--protection",
            "tower",
            "--addr",
            "127.0.0.1:0",
            "--duration",
            "5",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.protection, Protection::Tower);
        assert_eq!(a.addr.port(), 0);
        assert_eq!(a.duration, Duration::from_secs(5));
        assert_eq!(
            args(&[]).unwrap().unwrap().protection,
            Protection::DegradeLayer
        );
        assert_eq!(args(&["--help"]).unwrap(), None);
        let err = args(&["--protection", "nginx"]).unwrap_err();
        assert!(err.contains("unknown protection `nginx`"), "{err}");
        let err = args(&["--duration", "0"]).unwrap_err();
        assert!(err.contains("--duration 0"), "{err}");
        let err = args(&["--addr"]).unwrap_err();
        assert!(err.contains("`--addr` needs a value"), "{err}");
        let err = args(&["--backend", "8by40"]).unwrap_err();
        assert!(err.contains("PERMITSxMILLISECONDS"), "{err}");
        let a = args(&["--queue-delay", "0.3"]).unwrap().unwrap();
        assert_eq!(a.queue_delay, Some(0.3));
        assert!(args(&["--grpc"]).unwrap().unwrap().grpc);
        let err = args(&["--grpc", "--protection", "tower"]).unwrap_err();
        assert!(err.contains("`--grpc`") && err.contains("`tower`"), "{err}");
        let err = args(&["--queue-delay", "11"]).unwrap_err();
        assert!(
            err.contains("`--queue-delay 11`") && err.contains("queue_delay"),
            "{err}"
        );
    }

    /// A real server on a free port, a real client: the answers are counted by status and
    /// the admitted ones timed; behind degrade the report names the adaptive limit.
    #[test]
    fn a_served_backend_answers_an_external_client_and_counts_it() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let a = args(&["--addr", "127.0.0.1:0"]).unwrap().unwrap();
            let listener = TcpListener::bind(a.addr).await.unwrap();
            let served = start(&a, listener).unwrap();
            let client: Client<_, Empty<&'static [u8]>> =
                Client::builder(TokioExecutor::new()).build_http();
            let uri: http::Uri = format!("http://{}/work", served.addr).parse().unwrap();
            for _ in 0..4 {
                let response = client.get(uri.clone()).await.unwrap();
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert!(body.starts_with(b"v1"), "{body:?}");
            }
            let snapshot = served.stats.snapshot();
            assert_eq!((snapshot.ok, snapshot.refused, snapshot.other), (4, 0, 0));
            // Each took the backend's 40 ms at least.
            assert!(snapshot.latencies.quantile_upper(0.5).unwrap() >= service::service_time());
            let line = snapshot.since(&Snapshot::default(), Duration::from_secs(1), 200.0, &served);
            assert!(
                line.starts_with("200: 4 (4/s, 2.0 % of capacity)"),
                "{line}"
            );
            assert!(line.contains("limit 16"), "{line}");
            served.stop().await.unwrap();
        });
    }
}
