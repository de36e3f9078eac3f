//! The stacking matrix (issue 14): a request that one degrade layer refuses is never counted as
//! a failure of the service by another layer, whatever the answer mode and the order.
//!
//! * **Rejecting layers**: `DegradeLayer` (pinned at Emergency: low-priority requests are shed),
//!   `RateLimitLayer` (1 per minute, burst 1: the first request passes) and `BreakerLayer`
//!   (forced open after two requests). The canary router never refuses a request, so it
//!   appears only as a consumer.
//! * **Answer modes**: errors (tower services called in process), HTTP (a real axum server on
//!   127.0.0.1, called by a hyper client) and gRPC (a real tonic server on 127.0.0.1, called by
//!   a tonic client).
//! * **Classifying consumers**: a breaker's window (a breaker that opens on a single failure),
//!   a canary's arm statistics, and an `ObserveLayer`'s error count — each with the classifier
//!   of its mode (`DefaultClassifier`, `HttpClassifier`, `GrpcClassifier`).
//! * **Orders**: the consumer outside the rejecting layer (it sees every refusal and must
//!   ignore it) and inside it (it sees only the admitted requests).
//!
//! Every case sends six requests and checks, request by request, that the answer is the one
//! the rejecting layer gives (so an outer breaker that opened would show as `circuit_open`
//! answers), then that the consumer counted no failure, as many successes as admitted
//! requests and, where it counts them, as many ignored calls as refusals it saw.

use degrade::breaker::{BreakerConfig, BreakerLayer, BreakerSnapshot, WindowConfig};
use degrade::canary::{Canary, CanaryHandle, Weight};
use degrade::priority::HeaderPriority;
use degrade::ratelimit::{RateLimitConfig, RateLimitLayer};
use degrade::triggers::{ObserveLayer, observe::ObserveSnapshot};
use degrade::{
    BoxError, Controller, DefaultClassifier, DegradeLayer, GrpcClassifier, HttpClassifier, Level,
    ManualClock, Priority,
};
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

/// Requests per case.
const N: u32 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejecter {
    Degrade,
    RateLimit,
    Breaker,
}

impl Rejecter {
    /// Whether request `i` is refused.
    fn refuses(self, i: u32) -> bool {
        match self {
            Rejecter::Degrade => i % 2 == 1, // odd requests are low priority
            Rejecter::RateLimit => i >= 1,   // the burst of one is spent by request 0
            Rejecter::Breaker => i >= 2,     // forced open before request 2
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Rejecter::Degrade => "shed",
            Rejecter::RateLimit => "rate_limited",
            Rejecter::Breaker => "circuit_open",
        }
    }
}

/// Request `i`'s priority: only critical requests are admitted at Emergency.
fn priority(i: u32) -> Priority {
    if i.is_multiple_of(2) {
        Priority::Critical
    } else {
        Priority::Low
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consumer {
    Breaker,
    Canary,
    Observe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    ConsumerOutside,
    ConsumerInside,
}

const CONSUMERS: [Consumer; 3] = [Consumer::Breaker, Consumer::Canary, Consumer::Observe];
const ORDERS: [Order; 2] = [Order::ConsumerOutside, Order::ConsumerInside];

/// What the client got for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Served,
    Refused(String),
    Other(String),
}

/// What a consumer counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    successes: u64,
    failures: u64,
    /// Calls counted as ignored (`None` where the consumer does not count them).
    ignored: Option<u64>,
    /// A breaker's state is still closed (always true for other consumers).
    closed: bool,
}

impl Seen {
    fn breaker(s: BreakerSnapshot) -> Self {
        // offered = admitted + rejected, in the words every layer's snapshot shares.
        assert!(degrade::snapshot::Accounting::balanced(&s), "{s:?}");
        Self {
            successes: s.successes,
            failures: s.failures,
            ignored: Some(s.ignored),
            closed: s.state == degrade::breaker::State::Closed,
        }
    }

    fn canary(h: &CanaryHandle) -> Self {
        let s = h.snapshot();
        Self {
            successes: s.stable.successes + s.canary.successes,
            failures: s.stable.failures + s.canary.failures,
            ignored: Some(s.stable.ignored + s.canary.ignored),
            closed: true,
        }
    }

    fn observe(s: ObserveSnapshot) -> Self {
        Self {
            successes: s.calls - s.failures,
            failures: s.failures,
            ignored: None,
            closed: true,
        }
    }
}

type Wrap<S> = Box<dyn Fn(S) -> S + Send + Sync>;
type Hook = Box<dyn Fn(u32) + Send + Sync>;
type Readout = Box<dyn Fn() -> Seen + Send + Sync>;

/// A breaker that opens on the first failure it counts: any refusal mistaken for a failure
/// shows at once as `circuit_open` answers.
fn sensitive() -> BreakerConfig {
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Consecutive { failures: 1 };
    c
}

fn ladder_at_emergency() -> Controller {
    let controller = Controller::new(Default::default()).unwrap();
    controller.pin(Level::Emergency);
    controller
}

fn rate_limit() -> RateLimitLayer<
    degrade::ratelimit::key::Global,
    degrade::ratelimit::cost::DefaultCost,
    ManualClock,
> {
    RateLimitLayer::builder(RateLimitConfig::per(1, Duration::from_secs(60)).burst(1))
        .clock(ManualClock::new())
        .build()
        .unwrap()
}

/// Checks one case's answers and the consumer's counts.
fn check(case: &str, r: Rejecter, order: Order, answers: &[Answer], seen: Seen) {
    let mut refused = 0;
    for (i, answer) in (0..N).zip(answers) {
        let expected = if r.refuses(i) {
            refused += 1;
            Answer::Refused(r.reason().to_owned())
        } else {
            Answer::Served
        };
        assert_eq!(*answer, expected, "{case}: request {i}");
    }
    let admitted = u64::from(N) - refused;
    assert_eq!(seen.failures, 0, "{case}: {seen:?}");
    assert_eq!(seen.successes, admitted, "{case}: {seen:?}");
    assert!(seen.closed, "{case}: the consumer breaker opened: {seen:?}");
    let expected_ignored = match order {
        Order::ConsumerOutside => refused,
        Order::ConsumerInside => 0,
    };
    if let Some(ignored) = seen.ignored {
        assert_eq!(ignored, expected_ignored, "{case}: {seen:?}");
    }
}

/// A service whose errors become responses (the canary router's error is a `BoxError`; axum
/// and tonic servers need `Infallible`). An error shows up as an `Answer::Other`.
#[derive(Clone)]
struct Answered<S, F>(S, F);

impl<S, F, R> tower::Service<R> for Answered<S, F>
where
    S: tower::Service<R, Error = BoxError>,
    S::Future: Send + 'static,
    F: Fn(BoxError) -> S::Response + Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // The arms are infallible services: the router's readiness cannot fail.
        self.0
            .poll_ready(cx)
            .map(|r| r.map_err(|e| unreachable!("an infallible arm failed: {e}")))
    }

    fn call(&mut self, req: R) -> Self::Future {
        let fut = self.0.call(req);
        let answer = self.1.clone();
        Box::pin(async move { Ok(fut.await.unwrap_or_else(answer)) })
    }
}

/// Puts the consumer and the rejecting layer around `base` in `order`.
fn stack<S: Clone>(base: S, order: Order, reject: &Wrap<S>, consume: &Wrap<S>) -> S {
    match order {
        Order::ConsumerOutside => consume(reject(base)),
        Order::ConsumerInside => reject(consume(base)),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors mode: tower services in process.

mod errors {
    use super::*;

    pub(crate) type Svc = BoxCloneSyncService<u32, &'static str, BoxError>;

    fn boxed<S>(s: S) -> Svc
    where
        S: tower::Service<u32, Response = &'static str, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        BoxCloneSyncService::new(s)
    }

    fn rejecter(r: Rejecter) -> (Wrap<Svc>, Hook) {
        match r {
            Rejecter::Degrade => {
                let controller = ladder_at_emergency();
                let layer = DegradeLayer::builder(controller.handle())
                    // The level's shares: a pinned level sheds (the adaptive default does not).
                    .admission(degrade::degrade::Admission::LevelShares)
                    .prioritize(|i: &u32| priority(*i))
                    .build()
                    .unwrap();
                (
                    Box::new(move |s| boxed(layer.layer(s))),
                    Box::new(move |_| assert_eq!(controller.pinned(), Some(Level::Emergency))),
                )
            }
            Rejecter::RateLimit => {
                let layer = rate_limit();
                (Box::new(move |s| boxed(layer.layer(s))), Box::new(|_| {}))
            }
            Rejecter::Breaker => {
                let layer = BreakerLayer::new(BreakerConfig::default()).unwrap();
                let handle = layer.handle();
                (
                    Box::new(move |s| boxed(layer.layer(s))),
                    Box::new(move |i| {
                        if i == 2 {
                            handle.force_open();
                        }
                    }),
                )
            }
        }
    }

    fn consumer(c: Consumer) -> (Wrap<Svc>, Readout) {
        match c {
            Consumer::Breaker => {
                let layer = BreakerLayer::builder(sensitive())
                    .classifier(DefaultClassifier)
                    .build()
                    .unwrap();
                let handle = layer.handle();
                (
                    Box::new(move |s| boxed(layer.layer(s))),
                    Box::new(move || Seen::breaker(handle.snapshot())),
                )
            }
            Consumer::Canary => {
                let handle = Arc::new(OnceLock::<CanaryHandle>::new());
                let h = Arc::clone(&handle);
                (
                    Box::new(move |s: Svc| {
                        let canary = Canary::builder(s.clone(), s)
                            .weight(Weight::new(5_000).unwrap())
                            .classifier(DefaultClassifier)
                            .build()
                            .unwrap();
                        let _ = h.set(canary.handle());
                        boxed(canary)
                    }),
                    Box::new(move || Seen::canary(handle.get().unwrap())),
                )
            }
            Consumer::Observe => {
                let layer = ObserveLayer::builder()
                    .classifier(DefaultClassifier)
                    .build()
                    .unwrap();
                let readout = layer.clone();
                (
                    Box::new(move |s| boxed(layer.layer(s))),
                    Box::new(move || Seen::observe(readout.snapshot())),
                )
            }
        }
    }

    pub(crate) async fn case(r: Rejecter, c: Consumer, order: Order) {
        let (reject, hook) = rejecter(r);
        let (consume, readout) = consumer(c);
        let base = boxed(tower::service_fn(|_: u32| async {
            Ok::<_, BoxError>("ok")
        }));
        let svc = stack(base, order, &reject, &consume);
        let mut answers = Vec::new();
        for i in 0..N {
            hook(i);
            answers.push(match svc.clone().oneshot(i).await {
                Ok(_) => Answer::Served,
                Err(e) => match degrade::rejection::find(&*e) {
                    Some(r) => Answer::Refused(r.reason().to_owned()),
                    None => Answer::Other(e.to_string()),
                },
            });
        }
        let case = format!("errors mode, {r:?} with {c:?}, {order:?}");
        check(&case, r, order, &answers, readout());
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP mode: a real axum server, a hyper client.

mod http_mode {
    use super::*;
    use axum::body::Body;
    use http::{Request, Response};
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    pub(crate) type Svc = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

    fn boxed<S>(s: S) -> Svc
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        BoxCloneSyncService::new(s)
    }

    fn rejecter(r: Rejecter) -> (Wrap<Svc>, Hook) {
        match r {
            Rejecter::Degrade => {
                let controller = ladder_at_emergency();
                let layer = DegradeLayer::builder(controller.handle())
                    // The level's shares: a pinned level sheds (the adaptive default does not).
                    .admission(degrade::degrade::Admission::LevelShares)
                    .prioritize(HeaderPriority::new("x-priority", Priority::Normal).unwrap())
                    .build()
                    .unwrap()
                    .http();
                (
                    Box::new(move |s| boxed(layer.layer(s))),
                    Box::new(move |_| assert_eq!(controller.pinned(), Some(Level::Emergency))),
                )
            }
            Rejecter::RateLimit => {
                let layer = rate_limit().http();
                (Box::new(move |s| boxed(layer.layer(s))), Box::new(|_| {}))
            }
            Rejecter::Breaker => {
                let layer = BreakerLayer::builder(BreakerConfig::default())
                    .classifier(HttpClassifier::default())
                    .build()
                    .unwrap();
                let handle = layer.handle();
                let layer = layer.http();
                (
                    Box::new(move |s| boxed(layer.layer(s))),
                    Box::new(move |i| {
                        if i == 2 {
                            handle.force_open();
                        }
                    }),
                )
            }
        }
    }

    fn consumer(c: Consumer) -> (Wrap<Svc>, Readout) {
        match c {
            Consumer::Breaker => {
                let layer = BreakerLayer::builder(sensitive())
                    .classifier(HttpClassifier::default())
                    .build()
                    .unwrap();
                let handle = layer.handle();
                let layer = layer.http();
                (
                    Box::new(move |s| boxed(layer.layer(s))),
                    Box::new(move || Seen::breaker(handle.snapshot())),
                )
            }
            Consumer::Canary => {
                let handle = Arc::new(OnceLock::<CanaryHandle>::new());
                let h = Arc::clone(&handle);
                (
                    Box::new(move |s: Svc| {
                        let canary = Canary::builder(s.clone(), s)
                            .weight(Weight::new(5_000).unwrap())
                            .classifier(HttpClassifier::default())
                            .build()
                            .unwrap();
                        let _ = h.set(canary.handle());
                        // The router's error is a `BoxError`; axum needs `Infallible`.
                        boxed(Answered(canary, |e: BoxError| {
                            let mut res = Response::new(Body::from(e.to_string()));
                            *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                            res
                        }))
                    }),
                    Box::new(move || Seen::canary(handle.get().unwrap())),
                )
            }
            Consumer::Observe => {
                let layer = ObserveLayer::builder()
                    .classifier(HttpClassifier::default())
                    .build()
                    .unwrap();
                let readout = layer.clone();
                (
                    Box::new(move |s| boxed(layer.layer(s))),
                    Box::new(move || Seen::observe(readout.snapshot())),
                )
            }
        }
    }

    pub(crate) async fn case(r: Rejecter, c: Consumer, order: Order) {
        let (reject, hook) = rejecter(r);
        let (consume, readout) = consumer(c);
        let base = boxed(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::from("ok")))
        }));
        let svc = stack(base, order, &reject, &consume);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback_service(svc);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
        let mut answers = Vec::new();
        for i in 0..N {
            hook(i);
            let req = Request::builder()
                .uri(format!("http://{addr}/"))
                .header("x-priority", priority(i).as_str())
                .body(Body::empty())
                .unwrap();
            let res = client.request(req).await.unwrap();
            let status = res.status();
            let reason = res
                .headers()
                .get("degrade-rejection")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = res.into_body().collect().await.unwrap().to_bytes();
            answers.push(match (status.as_u16(), reason) {
                (200, None) if body == "ok" => Answer::Served,
                (429 | 503, Some(reason)) => Answer::Refused(reason),
                (code, reason) => Answer::Other(format!("{code} {reason:?} {body:?}")),
            });
        }
        server.abort();
        let case = format!("HTTP mode, {r:?} with {c:?}, {order:?}");
        check(&case, r, order, &answers, readout());
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC mode: a real tonic server, a tonic client. The protocol is written by hand (no protoc):
// `service stacking.Echo { rpc Say(Text) returns (Text); }`.

mod grpc_mode {
    use super::*;
    use http::{Request, Response};
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tonic::body::Body;
    use tonic::server::NamedService;
    use tonic::transport::server::TcpIncoming;
    use tonic::transport::{Channel, Server};
    use tonic_prost::ProstCodec;

    pub(crate) type Svc = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

    /// `message Text { string text = 1; }`
    #[derive(Clone, PartialEq, prost::Message)]
    struct Text {
        #[prost(string, tag = "1")]
        text: String,
    }

    struct Say;

    impl tonic::server::UnaryService<Text> for Say {
        type Response = Text;
        type Future = std::future::Ready<Result<tonic::Response<Text>, tonic::Status>>;

        fn call(&mut self, request: tonic::Request<Text>) -> Self::Future {
            std::future::ready(Ok(tonic::Response::new(request.into_inner())))
        }
    }

    /// The echo service as a tower service over HTTP/2 requests, as generated code would be.
    fn echo() -> Svc {
        BoxCloneSyncService::new(tower::service_fn(|req: Request<Body>| async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Text, Text>::default());
            Ok::<_, Infallible>(grpc.unary(Say, req).await)
        }))
    }

    /// A stack with the name tonic routes by.
    #[derive(Clone)]
    struct Named(Svc);

    impl NamedService for Named {
        const NAME: &'static str = "stacking.Echo";
    }

    impl tower::Service<Request<Body>> for Named {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, req: Request<Body>) -> Self::Future {
            Box::pin(self.0.call(req))
        }
    }

    fn boxed<S>(s: S) -> Svc
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        BoxCloneSyncService::new(s)
    }

    fn rejecter(r: Rejecter) -> (Wrap<Svc>, Hook) {
        match r {
            Rejecter::Degrade => {
                let controller = ladder_at_emergency();
                let layer = DegradeLayer::builder(controller.handle())
                    // The level's shares: a pinned level sheds (the adaptive default does not).
                    .admission(degrade::degrade::Admission::LevelShares)
                    .prioritize(HeaderPriority::new("x-priority", Priority::Normal).unwrap())
                    .build()
                    .unwrap()
                    .grpc();
                (
                    Box::new(move |s| boxed(layer.layer(s))),
                    Box::new(move |_| assert_eq!(controller.pinned(), Some(Level::Emergency))),
                )
            }
            Rejecter::RateLimit => {
                let layer = rate_limit().grpc();
                (Box::new(move |s| boxed(layer.layer(s))), Box::new(|_| {}))
            }
            Rejecter::Breaker => {
                let layer = BreakerLayer::builder(BreakerConfig::default())
                    .classifier(GrpcClassifier::default())
                    .build()
                    .unwrap();
                let handle = layer.handle();
                let layer = layer.grpc();
                (
                    Box::new(move |s| boxed(layer.layer(s))),
                    Box::new(move |i| {
                        if i == 2 {
                            handle.force_open();
                        }
                    }),
                )
            }
        }
    }

    fn consumer(c: Consumer) -> (Wrap<Svc>, Readout) {
        match c {
            Consumer::Breaker => {
                let layer = BreakerLayer::builder(sensitive())
                    .classifier(GrpcClassifier::default())
                    .build()
                    .unwrap();
                let handle = layer.handle();
                let layer = layer.grpc();
                (
                    Box::new(move |s| boxed(layer.layer(s))),
                    Box::new(move || Seen::breaker(handle.snapshot())),
                )
            }
            Consumer::Canary => {
                let handle = Arc::new(OnceLock::<CanaryHandle>::new());
                let h = Arc::clone(&handle);
                (
                    Box::new(move |s: Svc| {
                        let canary = Canary::builder(s.clone(), s)
                            .weight(Weight::new(5_000).unwrap())
                            .classifier(GrpcClassifier::default())
                            .build()
                            .unwrap();
                        let _ = h.set(canary.handle());
                        boxed(Answered(canary, |e: BoxError| {
                            tonic::Status::internal(e.to_string()).into_http()
                        }))
                    }),
                    Box::new(move || Seen::canary(handle.get().unwrap())),
                )
            }
            Consumer::Observe => {
                let layer = ObserveLayer::builder()
                    .classifier(GrpcClassifier::default())
                    .build()
                    .unwrap();
                let readout = layer.clone();
                (
                    Box::new(move |s| boxed(layer.layer(s))),
                    Box::new(move || Seen::observe(readout.snapshot())),
                )
            }
        }
    }

    pub(crate) async fn case(r: Rejecter, c: Consumer, order: Order) {
        let (reject, hook) = rejecter(r);
        let (consume, readout) = consumer(c);
        let svc = stack(echo(), order, &reject, &consume);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Server::builder().add_service(Named(svc));
        let server = tokio::spawn(async move {
            router
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();

        let mut answers = Vec::new();
        for i in 0..N {
            hook(i);
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let mut request = tonic::Request::new(Text {
                text: format!("request {i}"),
            });
            request
                .metadata_mut()
                .insert("x-priority", priority(i).as_str().parse().unwrap());
            let answer = grpc
                .unary(
                    request,
                    http::uri::PathAndQuery::from_static("/stacking.Echo/Say"),
                    ProstCodec::<Text, Text>::default(),
                )
                .await;
            answers.push(match answer {
                Ok(res) if res.get_ref().text == format!("request {i}") => Answer::Served,
                Ok(res) => Answer::Other(format!("{:?}", res.get_ref())),
                Err(status) => match status.metadata().get("degrade-rejection") {
                    Some(v) => Answer::Refused(v.to_str().unwrap().to_owned()),
                    None => Answer::Other(format!("{status:?}")),
                },
            });
        }
        server.abort();
        let case = format!("gRPC mode, {r:?} with {c:?}, {order:?}");
        check(&case, r, order, &answers, readout());
    }
}

// ---------------------------------------------------------------------------------------------
// The matrix: one test per rejecting layer and mode, each over every consumer and both orders.

async fn every_consumer_and_order<F, Fut>(case: F)
where
    F: Fn(Consumer, Order) -> Fut,
    Fut: Future<Output = ()>,
{
    for c in CONSUMERS {
        for order in ORDERS {
            case(c, order).await;
        }
    }
}

use std::future::Future;

#[tokio::test]
async fn shed_errors_are_not_failures_for_any_consumer_in_either_order() {
    every_consumer_and_order(|c, o| errors::case(Rejecter::Degrade, c, o)).await;
}

#[tokio::test]
async fn rate_limit_errors_are_not_failures_for_any_consumer_in_either_order() {
    every_consumer_and_order(|c, o| errors::case(Rejecter::RateLimit, c, o)).await;
}

#[tokio::test]
async fn circuit_open_errors_are_not_failures_for_any_consumer_in_either_order() {
    every_consumer_and_order(|c, o| errors::case(Rejecter::Breaker, c, o)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_http_answers_are_not_failures_for_any_consumer_in_either_order() {
    every_consumer_and_order(|c, o| http_mode::case(Rejecter::Degrade, c, o)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_http_answers_are_not_failures_for_any_consumer_in_either_order() {
    every_consumer_and_order(|c, o| http_mode::case(Rejecter::RateLimit, c, o)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_open_http_answers_are_not_failures_for_any_consumer_in_either_order() {
    every_consumer_and_order(|c, o| http_mode::case(Rejecter::Breaker, c, o)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_grpc_answers_are_not_failures_for_any_consumer_in_either_order() {
    every_consumer_and_order(|c, o| grpc_mode::case(Rejecter::Degrade, c, o)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_grpc_answers_are_not_failures_for_any_consumer_in_either_order() {
    every_consumer_and_order(|c, o| grpc_mode::case(Rejecter::RateLimit, c, o)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_open_grpc_answers_are_not_failures_for_any_consumer_in_either_order() {
    every_consumer_and_order(|c, o| grpc_mode::case(Rejecter::Breaker, c, o)).await;
}

/// The reproduction, as reported: a breaker with `HttpClassifier` outside an `.http()`
/// rate limiter (1 per minute, burst 1) over an always-200 service. Requests 2–4 used to get
/// the limiter's 429, the breaker opened on the 4th, and everyone got 503 after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_outside_an_http_rate_limiter_does_not_open_on_its_429s() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let mut config = BreakerConfig::default();
    config.window = WindowConfig::Count { size: 4 };
    config.minimum_calls = 4;
    config.failure_rate = 0.5;
    let breaker = BreakerLayer::builder(config)
        .classifier(HttpClassifier::default())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(rate_limit().http())
        .layer(breaker.http());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();

    let mut statuses = Vec::new();
    for _ in 0..8 {
        let res = client
            .get(format!("http://{addr}/").parse().unwrap())
            .await
            .unwrap();
        let reason = res
            .headers()
            .get("degrade-rejection")
            .map(|v| v.to_str().unwrap().to_owned());
        statuses.push((res.status().as_u16(), reason));
        let _ = res.into_body().collect().await;
    }
    server.abort();
    assert_eq!(statuses[0], (200, None));
    for s in &statuses[1..] {
        assert_eq!(*s, (429, Some("rate_limited".to_owned())));
    }
    let snap = handle.snapshot();
    assert_eq!(snap.state, degrade::breaker::State::Closed);
    assert_eq!((snap.successes, snap.failures, snap.ignored), (1, 0, 7));
}
