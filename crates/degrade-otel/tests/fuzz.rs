//! Fuzz-style property tests on stable Rust (proptest: arbitrary bytes and structured
//! generators, bounded to seconds) of everything degrade-otel reads from the network: gRPC
//! statuses and their `RetryInfo` details as a collector (or any proxy) sends them, the
//! responses the OTLP/HTTP client reads (any status, headers and body, of any size), and the
//! `ot` tracestate entry of incoming requests. Nothing panics, hangs or reads without bound.
//! (degrade-otel has no serde configuration types of its own: its policy is degrade-core's.)
#![cfg(all(feature = "http", feature = "grpc"))]

use bytes::Bytes;
use degrade_core::{BoxError, Controller, Level, Policy, Priority, Shed};
use degrade_otel::LevelSampler;
use degrade_otel::grpc::{GrpcRetry, GrpcSpanExporter, RetryDecision, classify};
use degrade_otel::http::TowerHttpClient;
use futures_util::stream::{self, StreamExt};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry_http::{HttpClient, ResponseBodyTooLarge};
use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;
use tower::Service;

// --- protobuf, by hand: google.rpc.Status { code, message, details: [Any { type_url, value }] }

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn field_varint(buf: &mut Vec<u8>, field: u64, v: u64) {
    varint(buf, field << 3);
    varint(buf, v);
}

fn field_bytes(buf: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(buf, field << 3 | 2);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A `google.rpc.Status` whose one detail is a `RetryInfo` of `seconds` and `nanos` (any
/// values a peer may send, negative and out of range included).
fn status_with_retry_info(code: i32, seconds: i64, nanos: i32) -> Vec<u8> {
    let mut duration = Vec::new();
    field_varint(&mut duration, 1, seconds as u64);
    field_varint(&mut duration, 2, i64::from(nanos) as u64);
    let mut info = Vec::new();
    field_bytes(&mut info, 1, &duration);
    let mut any = Vec::new();
    field_bytes(&mut any, 1, b"type.googleapis.com/google.rpc.RetryInfo");
    field_bytes(&mut any, 2, &info);
    let mut status = Vec::new();
    field_varint(&mut status, 1, i64::from(code) as u64);
    field_bytes(&mut status, 2, b"slow down");
    field_bytes(&mut status, 3, &any);
    status
}

fn details() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (any::<i32>(), any::<i64>(), any::<i32>())
            .prop_map(|(c, s, n)| status_with_retry_info(c, s, n)),
        (
            any::<i32>(),
            prop_oneof![Just(-1i64), Just(i64::MAX), Just(i64::MIN), 0i64..100],
            prop_oneof![
                Just(1_000_000_000i32),
                Just(-1),
                Just(i32::MAX),
                0..1_000_000_000
            ]
        )
            .prop_map(|(c, s, n)| status_with_retry_info(c, s, n)),
        // A valid status cut short.
        (any::<i64>(), any::<prop::sample::Index>()).prop_map(|(s, at)| {
            let mut v = status_with_retry_info(8, s, 0);
            v.truncate(at.index(v.len()));
            v
        }),
    ]
}

fn code() -> impl Strategy<Value = Code> {
    prop_oneof![0i32..17, any::<i32>()].prop_map(Code::from_i32)
}

// --- the gRPC exporter over a scripted transport

/// One answer of the scripted collector: OK, or a status with details.
#[derive(Debug, Clone)]
enum Answer {
    Ok,
    Status(Code, Vec<u8>),
    /// Raw trailers-only headers: garbage in `grpc-status` and its details.
    Raw(String, Vec<u8>),
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        1 => Just(Answer::Ok),
        4 => (code(), details()).prop_map(|(c, d)| Answer::Status(c, d)),
        1 => ("[0-9a-z ]{0,6}", prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(s, d)| Answer::Raw(s, d)),
    ]
}

fn respond(a: &Answer) -> Response<tonic::body::Body> {
    match a {
        Answer::Ok => {
            // An empty ExportTraceServiceResponse: a zero-length message, then `grpc-status: 0`.
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                Ok(Frame::trailers(trailers)),
            ];
            Response::builder()
                .header("content-type", "application/grpc")
                .body(tonic::body::Body::new(StreamBody::new(stream::iter(
                    frames,
                ))))
                .unwrap()
        }
        Answer::Status(code, details) => {
            tonic::Status::with_details(*code, "scripted", Bytes::from(details.clone())).into_http()
        }
        Answer::Raw(status, details) => {
            let mut r = tonic::Status::unavailable("raw").into_http::<tonic::body::Body>();
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(status) {
                h.insert("grpc-status", v);
            }
            if let Ok(v) = HeaderValue::from_bytes(details) {
                h.insert("grpc-status-details-bin", v);
            }
            r
        }
    }
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..5_000).prop_map(Duration::from_millis),
        Just(Duration::ZERO),
        Just(Duration::MAX),
        any::<u64>().prop_map(Duration::from_secs),
    ]
}

fn retry() -> impl Strategy<Value = GrpcRetry> {
    (0u32..5, duration(), duration(), duration(), duration()).prop_map(|(n, i, m, t, d)| {
        let mut r = GrpcRetry::default();
        r.max_retries = n;
        r.initial_delay = i;
        r.max_delay = m;
        r.max_throttle = t;
        r.deadline = d;
        r
    })
}

// --- the OTLP/HTTP client's response handling

#[derive(Debug, Clone)]
struct HttpCase {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    chunks: Vec<Vec<u8>>,
    endless: bool,
    max: usize,
}

fn http_case() -> impl Strategy<Value = HttpCase> {
    let name = prop_oneof![
        Just("retry-after".to_owned()),
        Just("content-type".to_owned()),
        Just("content-length".to_owned()),
        "[a-z-]{1,12}",
    ];
    (
        prop_oneof![100u16..600, 100u16..1000],
        prop::collection::vec((name, prop::collection::vec(any::<u8>(), 0..24)), 0..6),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..512), 0..12),
        any::<bool>(),
        prop_oneof![0usize..64, 64usize..4096, Just(usize::MAX)],
    )
        .prop_map(|(status, headers, chunks, endless, max)| HttpCase {
            status,
            headers,
            chunks,
            endless,
            // Without a cap an endless body would be read for ever: that is what the cap is for.
            max: if endless { max.min(1 << 20) } else { max },
        })
}

type Chunk = Result<Frame<Bytes>, Infallible>;
type BodyStream = StreamBody<stream::BoxStream<'static, Chunk>>;

fn http_response(c: &HttpCase) -> Response<BodyStream> {
    let chunks: Vec<Chunk> = c
        .chunks
        .iter()
        .map(|b| Ok(Frame::data(Bytes::from(b.clone()))))
        .collect();
    let body: stream::BoxStream<'static, Chunk> = if c.endless {
        // A peer that never stops sending: 1 KiB chunks for ever.
        Box::pin(stream::iter(chunks).chain(stream::repeat_with(|| {
            Ok(Frame::data(Bytes::from_static(&[b'x'; 1024])))
        })))
    } else {
        Box::pin(stream::iter(chunks))
    };
    let mut r = Response::new(StreamBody::new(body));
    *r.status_mut() = StatusCode::from_u16(c.status).unwrap();
    for (name, value) in &c.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            r.headers_mut().append(n, v);
        }
    }
    r
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

// --- the `ot` tracestate entry of incoming requests

/// A tracestate value: printable ASCII without `,` and `=`, often shaped like `ot` sub-keys.
fn ot_value() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        "[0-9a-f]{0,16}".prop_map(|h| format!("rv:{h}")),
        "[0-9a-f]{0,16}".prop_map(|h| format!("th:{h}")),
        "[!-+\\--<>-~]{0,12}",
    ];
    prop::collection::vec(part, 0..5).prop_map(|parts| parts.join(";"))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/fuzz.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_grpc_status_is_classified_without_panic(code in code(), message in ".{0,40}", details in details()) {
        let status = tonic::Status::with_details(code, message, Bytes::from(details));
        match classify(&status) {
            RetryDecision::No => {}
            RetryDecision::Yes(_) => prop_assert!(!matches!(code, Code::Ok | Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated)),
            _ => {}
        }
    }

    #[test]
    fn any_collector_answers_end_the_export_within_its_attempts(
        answers in prop::collection::vec(answer(), 1..8),
        retry in retry(),
    ) {
        let rt = runtime();
        let script = Arc::new(Mutex::new(answers.clone()));
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let transport = tower::service_fn(move |_req: Request<tonic::body::Body>| {
            calls.fetch_add(1, Ordering::Relaxed);
            let mut script = script.lock().unwrap();
            let a = if script.is_empty() { Answer::Ok } else { script.remove(0) };
            async move { Ok::<_, Infallible>(respond(&a)) }
        });
        let result = rt.block_on(async {
            let mut exporter = GrpcSpanExporter::new(transport, tokio::runtime::Handle::current())
                .retry(retry)
                .attempt_timeout(Duration::from_secs(5));
            exporter.call(Vec::new()).await
        });
        let attempts = c.load(Ordering::Relaxed);
        prop_assert!(attempts >= 1 && attempts <= retry.max_retries as usize + 1, "{attempts}");
        if result.is_ok() {
            prop_assert!(matches!(answers.get(attempts - 1), Some(Answer::Ok) | None));
        }
    }

    #[test]
    fn any_http_response_is_read_whole_or_refused_within_its_cap(c in http_case()) {
        let rt = runtime();
        let case = c.clone();
        let svc = tower::service_fn(move |_: Request<Bytes>| {
            let r = http_response(&case);
            async move { Ok::<_, Infallible>(r) }
        });
        let total: usize = c.chunks.iter().map(Vec::len).sum();
        let result = rt.block_on(async {
            let client = TowerHttpClient::<_, Bytes>::new(svc, tokio::runtime::Handle::current())
                .max_response_bytes(c.max);
            client.send_bytes(Request::post("http://127.0.0.1:1/v1/traces").body(Bytes::from_static(b"x")).unwrap()).await
        });
        match result {
            Ok(r) => {
                prop_assert!(!c.endless, "an endless body is never read whole");
                prop_assert!(total <= c.max);
                prop_assert_eq!(r.status().as_u16(), c.status);
                let body: Vec<u8> = c.chunks.concat();
                prop_assert_eq!(r.body().as_ref(), &body[..]);
            }
            Err(e) => {
                prop_assert!(e.is::<ResponseBodyTooLarge>(), "{e}");
                prop_assert!(c.endless || total > c.max);
            }
        }
    }

    #[test]
    fn any_local_rejection_delay_becomes_an_answer(ms in prop_oneof![any::<u64>().prop_map(Duration::from_millis), Just(Duration::MAX), Just(Duration::ZERO)]) {
        let rt = runtime();
        let svc = tower::service_fn(move |_: Request<Bytes>| async move {
            Err::<Response<http_body_util::Full<Bytes>>, BoxError>(Box::new(Shed::new(Level::Heavy, Priority::Low, ms)))
        });
        let r = rt.block_on(async {
            TowerHttpClient::<_, Bytes>::new(svc, tokio::runtime::Handle::current())
                .send_bytes(Request::post("http://127.0.0.1:1/v1/traces").body(Bytes::new()).unwrap())
                .await
        }).expect("a local rejection is an answer");
        prop_assert_eq!(r.status().as_u16(), 503);
        let after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        prop_assert!(after >= ms.as_secs());
    }

    #[test]
    fn any_incoming_tracestate_is_sampled_without_panic(
        ot in ot_value(),
        id in any::<u128>(),
        sampled in any::<bool>(),
        level in 0usize..5,
        trust in any::<bool>(),
    ) {
        let Ok(state) = TraceState::from_key_value([("ot", ot.as_str()), ("vendor", "v")]) else {
            return Ok(());
        };
        let controller = Controller::new(Default::default()).unwrap();
        controller.pin(Level::from_index(level).unwrap());
        let sampler = LevelSampler::new(controller.handle(), Policy::default()).unwrap().record_errors_only_levels(false);
        let cap = sampler.cap_sampled_parents(Level::Light).trust_caller_randomness(trust);
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let trace = TraceId::from(id.max(1));
        let cx = Context::new().with_remote_span_context(SpanContext::new(trace, SpanId::from(1), flags, true, state));
        for r in [
            sampler.should_sample(Some(&cx), trace, "GET /", &SpanKind::Server, &[], &[]),
            cap.should_sample(Some(&cx), trace, "GET /", &SpanKind::Server, &[], &[]),
        ] {
            prop_assert_eq!(r.trace_state.get("vendor"), Some("v"), "other entries survive");
            // Where the sampler wrote its threshold, it wrote one (the caller's are replaced).
            if r.decision == SamplingDecision::RecordAndSample
                && let Some(written) = r.trace_state.get("ot").filter(|w| *w != ot)
            {
                let ths = written.split(';').filter(|p| p.starts_with("th:")).count();
                prop_assert_eq!(ths, 1, "{}", written);
            }
        }
    }
}

#[test]
fn an_endless_response_body_is_cut_at_the_cap() {
    let rt = runtime();
    let read = Arc::new(AtomicUsize::new(0));
    let r = read.clone();
    let svc = tower::service_fn(move |_: Request<Bytes>| {
        let r = r.clone();
        let body = stream::repeat_with(move || {
            r.fetch_add(1024, Ordering::Relaxed);
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[b'x'; 1024])))
        });
        async move { Ok::<_, Infallible>(Response::new(StreamBody::new(body))) }
    });
    let err = rt
        .block_on(async {
            TowerHttpClient::<_, Bytes>::new(svc, tokio::runtime::Handle::current())
                .max_response_bytes(64 * 1024)
                .send_bytes(
                    Request::post("http://127.0.0.1:1/")
                        .body(Bytes::new())
                        .unwrap(),
                )
                .await
        })
        .unwrap_err();
    assert!(err.is::<ResponseBodyTooLarge>(), "{err}");
    let n = read.load(Ordering::Relaxed);
    assert!(n <= 65 * 1024, "read {n} bytes of an endless body");
}
