//! Real OTLP receivers on 127.0.0.1 for the end-to-end tests: opentelemetry-proto's tonic
//! server for gRPC, an axum `/v1/traces` route decoding protobuf for HTTP.
#![allow(dead_code, unreachable_pub, missing_docs)]

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One received span.
#[derive(Debug, Clone)]
pub struct Got {
    pub service: String,
    pub trace_id: Vec<u8>,
    pub name: String,
    pub is_error: bool,
    pub trace_state: String,
    pub attributes: Vec<String>,
}

/// What a receiver answers to the next requests (then OK).
#[derive(Debug, Clone)]
pub enum Answer {
    Ok,
    /// HTTP 429 + Retry-After (seconds) / gRPC RESOURCE_EXHAUSTED + RetryInfo.
    Throttle(Duration),
    /// HTTP 503 / gRPC UNAVAILABLE, no delay.
    Unavailable,
}

#[derive(Debug, Default)]
pub struct State {
    pub spans: Vec<Got>,
    /// Every attempt (answered OK or not), with its arrival time and span count.
    pub attempts: Vec<(Instant, usize)>,
    /// Span counts of the requests answered OK.
    pub accepted_requests: Vec<usize>,
    pub script: VecDeque<Answer>,
    /// The `x-api-key` metadata of the last gRPC request.
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Received(pub Arc<Mutex<State>>);

impl Received {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    pub fn span_count(&self) -> usize {
        self.lock().spans.len()
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.lock().script.extend(answers);
    }

    /// Records an attempt; returns the scripted answer.
    fn attempt(&self, req: &ExportTraceServiceRequest) -> Answer {
        let n: usize = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        let mut st = self.lock();
        st.attempts.push((Instant::now(), n));
        let answer = st.script.pop_front().unwrap_or(Answer::Ok);
        if matches!(answer, Answer::Ok) {
            st.accepted_requests.push(n);
            for rs in &req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        st.spans.push(Got {
                            service: service.clone(),
                            trace_id: s.trace_id.clone(),
                            name: s.name.clone(),
                            // STATUS_CODE_ERROR = 2
                            is_error: s.status.as_ref().is_some_and(|st| st.code == 2),
                            trace_state: s.trace_state.clone(),
                            attributes: s.attributes.iter().map(|kv| kv.key.clone()).collect(),
                        });
                    }
                }
            }
        }
        answer
    }

    /// Spans grouped by trace id.
    pub fn traces(&self) -> HashMap<Vec<u8>, Vec<Got>> {
        let mut m: HashMap<Vec<u8>, Vec<Got>> = HashMap::new();
        for s in &self.lock().spans {
            m.entry(s.trace_id.clone()).or_default().push(s.clone());
        }
        m
    }

    /// Waits (bounded) until `cond` holds; returns whether it did.
    pub async fn wait_until(&self, deadline: Duration, cond: impl Fn(&State) -> bool) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if cond(&self.lock()) {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A running receiver: address, what it got, and a switch to stop it.
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Received,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Stops the server and waits until its listener is closed.
    pub async fn stop(mut self) -> Received {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
        self.received
    }
}

#[derive(Clone)]
struct Grpc(Received);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().api_key = request
            .metadata()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match self.0.attempt(request.get_ref()) {
            Answer::Ok => Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            })),
            Answer::Throttle(d) => Err(degrade_core::rejection::grpc::status(
                &degrade_ratelimit::RateLimited::new(
                    degrade_ratelimit::error::Cause::OverQuota,
                    Some(d),
                ),
            )),
            Answer::Unavailable => Err(tonic::Status::unavailable("scripted outage")),
        }
    }
}

/// Starts an OTLP/gRPC receiver on `addr` (use port 0 for a fresh one).
pub async fn grpc_receiver_on(addr: SocketAddr, received: Received) -> Receiver {
    let listener = bind(addr).await;
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let svc = TraceServiceServer::new(Grpc(received.clone()));
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = rx.await;
                },
            )
            .await;
    });
    Receiver {
        addr,
        received,
        stop: Some(tx),
        task,
    }
}

pub async fn grpc_receiver() -> Receiver {
    grpc_receiver_on("127.0.0.1:0".parse().unwrap(), Received::default()).await
}

async fn bind(addr: SocketAddr) -> TcpListener {
    // Re-binding a port just released can take a moment on a loaded box.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < end => {
                eprintln!("bind {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

/// Starts an OTLP/HTTP receiver (`POST /v1/traces`, protobuf) on 127.0.0.1.
pub async fn http_receiver() -> Receiver {
    let received = Received::default();
    let listener = bind("127.0.0.1:0".parse().unwrap()).await;
    let addr = listener.local_addr().unwrap();
    let r = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let r = r.clone();
            async move {
                let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                    return (StatusCode::BAD_REQUEST, HeaderMap::new(), Vec::new());
                };
                let mut headers = HeaderMap::new();
                headers.insert("content-type", "application/x-protobuf".parse().unwrap());
                match r.attempt(&req) {
                    Answer::Ok => (
                        StatusCode::OK,
                        headers,
                        ExportTraceServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec(),
                    ),
                    Answer::Throttle(d) => {
                        headers.insert("retry-after", d.as_secs().to_string().parse().unwrap());
                        (StatusCode::TOO_MANY_REQUESTS, headers, Vec::new())
                    }
                    Answer::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, headers, Vec::new()),
                }
            }
        }),
    );
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Receiver {
        addr,
        received,
        stop: Some(tx),
        task,
    }
}

// ---- pipelines ------------------------------------------------------------------------------

use bytes::Bytes as RawBytes;
use degrade_core::{LevelHandle, Policy};
use degrade_otel::grpc::GrpcSpanExporter;
use degrade_otel::http::TowerHttpClient;
use degrade_otel::{ExportStats, LevelFilter, LevelSampler, ServiceExporter};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, ParentBasedSampler, SdkTracerProvider, SpanData,
};
use tokio::runtime::Handle;
use tonic::transport::{Channel, Endpoint};

pub type HyperClient = Client<HttpConnector, Full<RawBytes>>;

pub fn hyper_client() -> HyperClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A gRPC exporter to `addr` with the given stats.
pub fn grpc_exporter(addr: SocketAddr, stats: &ExportStats) -> GrpcSpanExporter<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    GrpcSpanExporter::new(channel, Handle::current()).stats(stats.clone())
}

/// An opentelemetry-otlp HTTP exporter to `addr` through a `TowerHttpClient` over `service`.
pub fn otlp_http_exporter<S>(
    addr: SocketAddr,
    service: S,
    stats: &ExportStats,
) -> opentelemetry_otlp::SpanExporter
where
    TowerHttpClient<S, Full<RawBytes>>: opentelemetry_http::HttpClient + 'static,
{
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let client = TowerHttpClient::<S, Full<RawBytes>>::new(service, Handle::current())
        .timeout(Duration::from_secs(5))
        .stats(stats.clone());
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(format!("http://{addr}/v1/traces"))
        .with_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sampler + filter + batch processor + the given exporter, for service `service`.
pub fn provider<E>(
    exporter: E,
    level: &LevelHandle,
    policy: &Policy,
    stats: &ExportStats,
    service: &str,
    batch: usize,
) -> SdkTracerProvider
where
    E: opentelemetry_sdk::trace::SpanExporter + 'static,
{
    provider_with_queue(exporter, level, policy, stats, service, batch, 65_536)
}

/// [`provider`] with a given processor queue size.
pub fn provider_with_queue<E>(
    exporter: E,
    level: &LevelHandle,
    policy: &Policy,
    stats: &ExportStats,
    service: &str,
    batch: usize,
    queue: usize,
) -> SdkTracerProvider
where
    E: opentelemetry_sdk::trace::SpanExporter + 'static,
{
    let sampler = LevelSampler::new(level.clone(), policy.clone())
        .unwrap()
        .service(service)
        .stats(stats.clone());
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(queue)
                .with_max_export_batch_size(batch)
                .with_scheduled_delay(Duration::from_millis(100))
                .build(),
        )
        .build();
    let filter = LevelFilter::new(processor, level.clone(), policy.clone())
        .unwrap()
        .stats(stats.clone());
    SdkTracerProvider::builder()
        .with_sampler(ParentBasedSampler::new(sampler))
        .with_resource(
            Resource::builder_empty()
                .with_service_name(service.to_owned())
                .build(),
        )
        .with_span_processor(filter)
        .build()
}

/// Flushes and shuts the provider down off the runtime's worker threads.
pub async fn shutdown(provider: SdkTracerProvider) {
    tokio::task::spawn_blocking(move || {
        let _ = provider.force_flush();
        provider.shutdown().unwrap();
    })
    .await
    .unwrap();
}

/// A `ServiceExporter` over a gRPC exporter (the exporter's lifecycle registered).
pub fn grpc_service_exporter(
    addr: SocketAddr,
    stats: &ExportStats,
) -> ServiceExporter<GrpcSpanExporter<Channel>> {
    let grpc = grpc_exporter(addr, stats);
    let lifecycle = grpc.lifecycle();
    ServiceExporter::new(grpc, Handle::current())
        .lifecycle(lifecycle)
        .stats(stats.clone())
}

pub fn _assert_span_data(_: &SpanData) {}
