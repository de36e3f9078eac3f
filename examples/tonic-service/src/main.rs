//! # tonic-service
//!
//! A real tonic gRPC server on 127.0.0.1 behind degrade's layers in their gRPC answer mode,
//! and a real tonic client that decodes what they answer.
//!
//! ```text
//! tonic client ─► Server::builder()
//!   (HTTP/2)        .layer(DegradeLayer.grpc())     priority by method; shed ─► UNAVAILABLE + RetryInfo
//!                   .layer(RateLimitLayer.grpc())   per `x-tenant` metadata ─► RESOURCE_EXHAUSTED + RetryInfo
//!                   .layer(BreakerLayer.grpc())     open ─► UNAVAILABLE + RetryInfo
//!                   .add_service(demo.Quotes)       GetQuote (normal), ListHistory (low), PlaceOrder (critical)
//! ```
//!
//! Each rejection is a gRPC "trailers-only" answer written by the layer itself: the status
//! code, a lower-case message, a `google.rpc.RetryInfo` detail in `grpc-status-details-bin`
//! (what OTLP exporters and well-behaved clients honour), and a `degrade-rejection` metadata
//! entry naming the policy. The client reads the delay with
//! `degrade::rejection::grpc::retry_delay`.
//!
//! No protoc is needed: the two messages are written by hand with `#[derive(prost::Message)]`
//! and the service is served and called through `tonic::server::Grpc` and
//! `tonic::client::Grpc` with tonic-prost's `ProstCodec`, as generated code would.
//!
//! Three scenes:
//!
//! 1. **rate limit**: tenant `acme` sends 30 calls at once and gets RESOURCE_EXHAUSTED with a
//!    retry delay past its burst; tenant `globex` is untouched.
//! 2. **breaker**: the service's database goes down (the handler answers INTERNAL). After 3
//!    failures in a row the breaker answers UNAVAILABLE itself without calling the handler; the
//!    client waits the RetryInfo delay each time; once the database is back a probe succeeds
//!    and the breaker closes.
//! 3. **shed**: pressure readings move the ladder to Heavy: `ListHistory` (low) and `GetQuote`
//!    (normal) are shed with UNAVAILABLE, `PlaceOrder` (critical) is served.
//!
//! `--duration <secs>` sets how long the database stays down (default 3 s; `--quick`: 1 s).
//! The exit status is 0 only if every check printed at the end holds.

use degrade::breaker::{BreakerConfig, BreakerLayer, WindowConfig};
use degrade::ladder::{LadderConfig, Reading};
use degrade::priority::GrpcMethodPriority;
use degrade::ratelimit::key::GrpcMetadataKey;
use degrade::ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer};
use degrade::rejection::grpc::retry_delay;
use degrade::{Controller, DegradeLayer, GrpcClassifier, Level, Priority};
use http::uri::PathAndQuery;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

type Error = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Debug, Clone, Copy)]
struct Args {
    /// How long the database stays down in scene 2.
    outage: Duration,
}

const USAGE: &str = concat!(
    "usage: tonic-service [--quick] [--duration <secs>]\n",
    "  --quick            a short run (the database is down for 1 s), as in CI\n",
    "  --duration <secs>  how long the database stays down in scene 2 (default 3)",
);

fn parse_args(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut outage = Duration::from_secs(3);
    let mut args = args.skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => outage = Duration::from_secs(1),
            "--duration" => {
                let v = args.next().ok_or("--duration needs a value")?;
                let secs: f64 = v
                    .trim_end_matches('s')
                    .parse()
                    .map_err(|_| format!("--duration: `{v}` is not a number of seconds"))?;
                if !(0.5..=600.0).contains(&secs) {
                    return Err("--duration must be between 0.5 and 600 seconds".into());
                }
                outage = Duration::from_secs_f64(secs);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(Args { outage })
}

// ---------------------------------------------------------------------------------------------
// The protocol, by hand: package demo; service Quotes { rpc GetQuote, ListHistory, PlaceOrder }

/// `message QuoteRequest { string symbol = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
struct QuoteRequest {
    #[prost(string, tag = "1")]
    symbol: String,
}

/// `message QuoteReply { string symbol = 1; int64 price_cents = 2; string method = 3; }`
#[derive(Clone, PartialEq, prost::Message)]
struct QuoteReply {
    #[prost(string, tag = "1")]
    symbol: String,
    #[prost(int64, tag = "2")]
    price_cents: i64,
    #[prost(string, tag = "3")]
    method: String,
}

const SERVICE: &str = "demo.Quotes";
const GET_QUOTE: &str = "GetQuote";
const LIST_HISTORY: &str = "ListHistory";
const PLACE_ORDER: &str = "PlaceOrder";

// ---------------------------------------------------------------------------------------------
// The server

/// The service's own state: its database switch and how often its handler ran.
#[derive(Debug, Default)]
struct Backend {
    database_down: AtomicBool,
    handled: AtomicU64,
}

/// The handler of one unary method.
struct Handler {
    backend: Arc<Backend>,
    method: &'static str,
}

type Answer = Result<tonic::Response<QuoteReply>, Status>;

impl tonic::server::UnaryService<QuoteRequest> for Handler {
    type Response = QuoteReply;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&mut self, request: tonic::Request<QuoteRequest>) -> Self::Future {
        let backend = Arc::clone(&self.backend);
        let method = self.method;
        Box::pin(async move {
            backend.handled.fetch_add(1, Ordering::Relaxed);
            if backend.database_down.load(Ordering::Relaxed) {
                return Err(Status::internal("database unreachable"));
            }
            let symbol = request.into_inner().symbol;
            let price_cents = symbol.bytes().map(i64::from).sum::<i64>() * 7;
            Ok(tonic::Response::new(QuoteReply {
                symbol,
                price_cents,
                method: method.to_owned(),
            }))
        })
    }
}

/// `demo.Quotes` as a tower service over HTTP/2 requests, the shape tonic's generated servers
/// have: dispatch on the path, decode and encode with `ProstCodec`.
#[derive(Clone)]
struct QuotesServer {
    backend: Arc<Backend>,
}

impl NamedService for QuotesServer {
    const NAME: &'static str = SERVICE;
}

impl tower_service::Service<http::Request<Body>> for QuotesServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let backend = Arc::clone(&self.backend);
        Box::pin(async move {
            let method = match req.uri().path().rsplit('/').next() {
                Some(GET_QUOTE) => GET_QUOTE,
                Some(LIST_HISTORY) => LIST_HISTORY,
                Some(PLACE_ORDER) => PLACE_ORDER,
                _ => return Ok(Status::unimplemented("no such method").into_http()),
            };
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<QuoteReply, QuoteRequest>::default());
            Ok(grpc.unary(Handler { backend, method }, req).await)
        })
    }
}

/// What the scenes read from the server.
struct Running {
    addr: SocketAddr,
    backend: Arc<Backend>,
    controller: Controller,
}

async fn start_server(breaker_wait: Duration) -> Result<Running, Error> {
    let controller = Controller::new(LadderConfig::default())?;
    let degrade = DegradeLayer::builder(controller.handle())
        .prioritize(
            GrpcMethodPriority::new(Priority::Normal)
                .method(SERVICE, LIST_HISTORY, Priority::Low)
                .method(SERVICE, PLACE_ORDER, Priority::Critical),
        )
        // The level's shares as well as the adaptive limit: this example moves the level by
        // hand to show each status mapping, and a level sheds only in this mode.
        .admission(degrade::degrade::Admission::Both)
        .build()?
        .grpc();
    let rate_limit =
        RateLimitLayer::builder(RateLimitConfig::per(20, Duration::from_secs(1)).burst(10))
            .keyed(GrpcMetadataKey::new("x-tenant")?, KeysConfig::default())
            .build()?
            .grpc();
    let mut breaker_config = BreakerConfig::default();
    breaker_config.window = WindowConfig::Consecutive { failures: 3 };
    breaker_config.wait = breaker_wait;
    breaker_config.half_open.successes = 2;
    let breaker = BreakerLayer::builder(breaker_config)
        .classifier(GrpcClassifier::default())
        .name("demo.Quotes")
        .build()?
        .grpc();

    let backend = Arc::new(Backend::default());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = Server::builder()
        .layer(degrade)
        .layer(rate_limit)
        .layer(breaker)
        .add_service(QuotesServer {
            backend: Arc::clone(&backend),
        });
    tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
        {
            eprintln!("server stopped: {e}");
        }
    });
    Ok(Running {
        addr,
        backend,
        controller,
    })
}

// ---------------------------------------------------------------------------------------------
// The client

/// What one call came back with.
#[derive(Debug, Clone)]
struct Reply {
    code: Code,
    message: String,
    retry: Option<Duration>,
    /// The `degrade-rejection` metadata: which policy refused the call.
    rejection: Option<String>,
}

impl Reply {
    fn row(&self, label: &str) -> String {
        format!(
            "  {label:<30} {:<19} {:<13} {:<8} {}",
            format!("{:?}", self.code),
            self.rejection.as_deref().unwrap_or("-"),
            self.retry
                .map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis())),
            self.message
        )
    }
}

fn header() {
    println!(
        "  {:<30} {:<19} {:<13} {:<8} message",
        "call", "code", "rejection", "retry"
    );
}

async fn call(channel: &Channel, method: &str, tenant: &str) -> Result<Reply, Error> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await?;
    let mut request = tonic::Request::new(QuoteRequest {
        symbol: "DGRD".into(),
    });
    request.metadata_mut().insert("x-tenant", tenant.parse()?);
    let path = PathAndQuery::try_from(format!("/{SERVICE}/{method}"))?;
    let answer: Result<tonic::Response<QuoteReply>, Status> = grpc
        .unary(
            request,
            path,
            ProstCodec::<QuoteRequest, QuoteReply>::default(),
        )
        .await;
    Ok(match answer {
        Ok(res) => Reply {
            code: Code::Ok,
            message: format!(
                "{} {} = {} cents",
                res.get_ref().method,
                res.get_ref().symbol,
                res.get_ref().price_cents
            ),
            retry: None,
            rejection: None,
        },
        Err(status) => Reply {
            code: status.code(),
            message: status.message().to_owned(),
            retry: retry_delay(&status),
            rejection: status
                .metadata()
                .get("degrade-rejection")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// The scenes

async fn run(args: Args) -> Result<bool, Error> {
    let breaker_wait = (args.outage / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let server = start_server(breaker_wait).await?;
    let channel = Channel::from_shared(format!("http://{}", server.addr))?
        .connect()
        .await?;
    println!(
        "tonic server on http://{}: DegradeLayer.grpc() -> RateLimitLayer.grpc() (x-tenant, 20/s, burst 10) -> BreakerLayer.grpc() (3 failures, wait {} ms) -> demo.Quotes",
        server.addr,
        breaker_wait.as_millis()
    );
    let mut checks: Vec<(String, bool)> = Vec::new();

    // Scene 1: rate limit per tenant.
    println!("\nscene 1/3 rate limit: acme sends 30 GetQuote calls at once, globex sends 3");
    header();
    let mut acme = Vec::new();
    for _ in 0..30 {
        acme.push(call(&channel, GET_QUOTE, "acme").await?);
    }
    let mut globex = Vec::new();
    for _ in 0..3 {
        globex.push(call(&channel, GET_QUOTE, "globex").await?);
    }
    let count = |replies: &[Reply], code: Code| replies.iter().filter(|r| r.code == code).count();
    if let Some(ok) = acme.iter().find(|r| r.code == Code::Ok) {
        println!("{}", ok.row("acme GetQuote"));
    }
    let limited: Vec<&Reply> = acme
        .iter()
        .filter(|r| r.code == Code::ResourceExhausted)
        .collect();
    if let Some(first) = limited.first() {
        println!("{}", first.row("acme GetQuote (limited)"));
    }
    if let Some(last) = limited.last() {
        println!("{}", last.row("acme GetQuote (last limited)"));
    }
    if let Some(g) = globex.first() {
        println!("{}", g.row("globex GetQuote"));
    }
    println!(
        "  acme: {} OK, {} RESOURCE_EXHAUSTED; globex: {} OK, {} RESOURCE_EXHAUSTED",
        count(&acme, Code::Ok),
        limited.len(),
        count(&globex, Code::Ok),
        count(&globex, Code::ResourceExhausted)
    );
    checks.push((
        "rate limit: acme got RESOURCE_EXHAUSTED with a RetryInfo delay".into(),
        !limited.is_empty()
            && limited
                .iter()
                .all(|r| r.retry.is_some_and(|d| d > Duration::ZERO)),
    ));
    checks.push((
        "rate limit: globex was not limited".into(),
        count(&globex, Code::Ok) == globex.len(),
    ));

    // Scene 2: the database goes down; the breaker opens and closes again.
    println!(
        "\nscene 2/3 breaker: the database is down for {:.1} s; the client calls GetQuote every 100 ms and waits the RetryInfo delay when told to",
        args.outage.as_secs_f64()
    );
    header();
    let handled_before = server.backend.handled.load(Ordering::Relaxed);
    server.backend.database_down.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let back_at = start + args.outage;
    let deadline = back_at + Duration::from_secs(30);
    let mut replies = Vec::new();
    let mut ok_after = 0;
    while ok_after < 3 && Instant::now() < deadline {
        if Instant::now() >= back_at {
            server.backend.database_down.store(false, Ordering::Relaxed);
        }
        let reply = call(&channel, GET_QUOTE, "initech").await?;
        println!(
            "{}",
            reply.row(&format!(
                "{:>5.2}s initech GetQuote",
                start.elapsed().as_secs_f64()
            ))
        );
        if reply.code == Code::Ok {
            ok_after += 1;
        }
        let wait = reply.retry.unwrap_or(Duration::from_millis(100));
        replies.push(reply);
        tokio::time::sleep(wait).await;
    }
    server.backend.database_down.store(false, Ordering::Relaxed);
    let handled = server.backend.handled.load(Ordering::Relaxed) - handled_before;
    let internal = count(&replies, Code::Internal);
    let open: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.rejection.as_deref() == Some("circuit_open"))
        .collect();
    println!(
        "  {} calls: {} INTERNAL from the handler, {} UNAVAILABLE from the open breaker, {} OK; the handler ran {handled} times",
        replies.len(),
        internal,
        open.len(),
        count(&replies, Code::Ok)
    );
    checks.push((
        "breaker: opened and answered UNAVAILABLE with a RetryInfo delay".into(),
        !open.is_empty()
            && open
                .iter()
                .all(|r| r.code == Code::Unavailable && r.retry.is_some()),
    ));
    checks.push((
        "breaker: the handler never ran while the breaker was open".into(),
        handled as usize == replies.len() - open.len(),
    ));
    checks.push((
        "breaker: closed again once the database was back".into(),
        ok_after == 3,
    ));

    // Scene 3: shed by priority at a high level.
    for _ in 0..3 {
        server.controller.observe(&[Reading::new("cpu", 0.92)]);
    }
    let level = server.controller.level();
    println!(
        "\nscene 3/3 shed: three cpu readings of 0.92 move the ladder to {level}; one call of each priority"
    );
    header();
    let mut shed = Vec::new();
    for (method, priority) in [
        (LIST_HISTORY, Priority::Low),
        (GET_QUOTE, Priority::Normal),
        (PLACE_ORDER, Priority::Critical),
    ] {
        let reply = call(&channel, method, "umbrella").await?;
        println!("{}", reply.row(&format!("{method} ({priority})")));
        shed.push(reply);
    }
    checks.push(("shed: the level is heavy".into(), level == Level::Heavy));
    checks.push((
        "shed: low and normal answered UNAVAILABLE (shed) with a RetryInfo delay".into(),
        shed[..2].iter().all(|r| {
            r.code == Code::Unavailable
                && r.rejection.as_deref() == Some("shed")
                && r.retry.is_some()
        }),
    ));
    checks.push((
        "shed: critical PlaceOrder was served".into(),
        shed[2].code == Code::Ok,
    ));

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
