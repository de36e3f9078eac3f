//! `cargo xtask serve --grpc`: the bench's backend as one unary gRPC method over HTTP/2, behind
//! the default DegradeLayer in its gRPC answer mode (or nothing), for gRPC clients: a Python
//! grpcio script, grpcurl, ghz. One HTTP/2 connection carries many calls at once, so the
//! limit is shared by streams rather than by connections, as behind a gRPC load balancer.
//!
//! The protocol is written by hand (no protoc): `package degrade.bench; message Work { bytes
//! payload = 1; } service Work { rpc Call(Work) returns (Work); }`. Every field is optional in
//! proto3, so a client may send empty bytes and ignore the reply.

use super::{Args, GRPC_PATH, Running, Served, Stats};
use crate::Result;
use crate::demo::service::{self, Backend, Protection};
use degrade_core::Controller;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

/// `message Work { bytes payload = 1; }`: the request and the reply.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Work {
    /// Whatever the client sends (ignored; the reply's is empty).
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) payload: Vec<u8>,
}

/// Serves `args` (with `--grpc`) on `listener`.
pub(super) fn start(args: &Args, listener: TcpListener) -> Result<Served> {
    let addr = listener
        .local_addr()
        .map_err(|err| format!("no local address: {err}"))?;
    let backend = Backend::with_model(args.model);
    let stats = Arc::new(Stats::default());
    let counting = CountLayer {
        stats: Arc::clone(&stats),
    };
    let work = WorkServer { backend };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let (degrade, task) = match args.protection {
        Protection::DegradeLayer => {
            let controller = Controller::new(crate::demo::ladder_config(
                std::time::Duration::from_secs(1),
            ))
            .map_err(|err| format!("ladder: {err}"))?;
            let degrade = service::degrade_layer(&controller)?;
            let router = Server::builder()
                .layer(counting)
                .layer(degrade.clone().grpc())
                .add_service(work);
            let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
            (Some(degrade), task)
        }
        Protection::Unprotected => {
            let router = Server::builder().layer(counting).add_service(work);
            let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
            (None, task)
        }
        other => {
            return Err(format!(
                "`--grpc` serves `--protection degrade` or `unprotected`, not `{}`",
                other.key()
            ));
        }
    };
    Ok(Served {
        addr,
        stats,
        degrade,
        server: Running::Grpc { stop, task },
    })
}

/// The HTTP status [`Stats`] counts a gRPC answer as: 503 for a call the DegradeLayer refused
/// (the response carries core's rejection mark, as its HTTP answers do), 200 for OK, 500 for
/// anything else. A call's status is in the response's headers when the answer has no message
/// (a trailers-only answer: every refusal and error), else in its trailers, after the message:
/// an OK unary call.
fn counted_status<B>(response: &http::Response<B>) -> u16 {
    if degrade_core::rejection::http::rejected(response).is_some() {
        return 503;
    }
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32);
    if code == Code::Ok { 200 } else { 500 }
}

/// Counts every answer by status, and times the admitted ones around everything inside it
/// (degrade's wait for a slot included).
#[derive(Clone)]
struct CountLayer {
    stats: Arc<Stats>,
}

impl<S> tower::Layer<S> for CountLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            stats: Arc::clone(&self.stats),
        }
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    stats: Arc<Stats>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<std::result::Result<http::Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let start = Instant::now();
        let stats = Arc::clone(&self.stats);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let answer = answer.await;
            let status = answer.as_ref().map_or(500, counted_status);
            stats.record(status, start.elapsed());
            answer
        })
    }
}

/// The handler of `Call`: the backend's work, OK when it succeeded, INTERNAL when it failed.
struct Handler {
    backend: Arc<Backend>,
}

impl tonic::server::UnaryService<Work> for Handler {
    type Response = Work;
    type Future = BoxFuture<std::result::Result<tonic::Response<Work>, Status>>;

    fn call(&mut self, _request: tonic::Request<Work>) -> Self::Future {
        let backend = Arc::clone(&self.backend);
        Box::pin(async move {
            let response = backend.serve(false).await;
            if response.status().is_success() {
                Ok(tonic::Response::new(Work::default()))
            } else {
                Err(Status::internal(format!(
                    "the backend answered {}",
                    response.status()
                )))
            }
        })
    }
}

/// `degrade.bench.Work` as a tower service over HTTP/2 requests, the shape tonic's generated
/// servers have: dispatch on the path, decode and encode with `ProstCodec`.
#[derive(Clone)]
struct WorkServer {
    backend: Arc<Backend>,
}

impl NamedService for WorkServer {
    const NAME: &'static str = "degrade.bench.Work";
}

impl tower::Service<http::Request<Body>> for WorkServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<std::result::Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let backend = Arc::clone(&self.backend);
        Box::pin(async move {
            if req.uri().path() != GRPC_PATH {
                return Ok(Status::unimplemented(format!(
                    "no such method: this server has only {GRPC_PATH}"
                ))
                .into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Work, Work>::default());
            Ok(grpc.unary(Handler { backend }, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use degrade_core::rejection::grpc::retry_delay;
    use http::uri::PathAndQuery;
    use std::time::Duration;
    use tonic::transport::Channel;

    fn args(list: &[&str]) -> Args {
        super::super::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .unwrap()
    }

    async fn call(
        channel: &Channel,
        path: &'static str,
        priority: Option<&'static str>,
    ) -> std::result::Result<Work, Status> {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready()
            .await
            .map_err(|err| Status::unknown(err.to_string()))?;
        let mut request = tonic::Request::new(Work {
            payload: b"any".to_vec(),
        });
        if let Some(p) = priority {
            request
                .metadata_mut()
                .insert("x-priority", p.parse().unwrap());
        }
        grpc.unary(
            request,
            PathAndQuery::from_static(path),
            ProstCodec::<Work, Work>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// `serve --grpc` on a free port, and a tonic channel (one HTTP/2 connection) to it.
    async fn serve() -> (Served, Channel) {
        let a = args(&["--grpc", "--addr", "127.0.0.1:0"]);
        let listener = TcpListener::bind(a.addr).await.unwrap();
        let served = start(&a, listener).unwrap();
        let channel = Channel::from_shared(format!("http://{}", served.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        (served, channel)
    }

    /// A real tonic server on a free port, a real tonic client over one HTTP/2 connection:
    /// calls are answered OK and counted; a method the server does not have is UNIMPLEMENTED
    /// and counted apart; the report names the adaptive limit.
    #[test]
    fn a_grpc_client_is_served_and_counted() {
        runtime().block_on(async {
            let (served, channel) = serve().await;
            for _ in 0..4 {
                let reply = call(&channel, GRPC_PATH, None).await.unwrap();
                assert!(reply.payload.is_empty(), "{reply:?}");
            }
            let err = call(&channel, "/degrade.bench.Work/Nope", None)
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
            let snapshot = served.stats.snapshot();
            assert_eq!((snapshot.ok, snapshot.refused, snapshot.other), (4, 0, 1));
            assert!(snapshot.latencies.quantile_upper(0.5).unwrap() >= service::service_time());
            let line = snapshot.since(
                &super::super::Snapshot::default(),
                Duration::from_secs(1),
                200.0,
                &served,
            );
            assert!(line.contains("limit 16"), "{line}");
            served.stop().await.unwrap();
        });
    }

    /// A burst of twenty times the backend's slots at once on one HTTP/2 connection: the
    /// default DegradeLayer serves what its limit admits and refuses the rest with UNAVAILABLE
    /// and a RetryInfo delay; every call is answered one way or the other, and the server's
    /// counts match the client's exactly. (Which calls the queue serves first is degrade-core's
    /// to test, on a paused clock: here it races the backend's real 40 ms, and on a loaded host
    /// the critical waiters' share of a single burst fell from 25-34 % to 9 %.)
    #[test]
    fn a_grpc_burst_over_capacity_is_refused_unavailable_with_retry_info() {
        runtime().block_on(async {
            let (served, channel) = serve().await;
            // First the limit learns the backend at its 8 slots: rounds of 8 calls at once
            // (a slow host may make it refuse one; those are counted too).
            let (mut warm_ok, mut warm_refused) = (0, 0);
            for _ in 0..6 {
                let round: Vec<_> = (0..8)
                    .map(|_| {
                        let channel = channel.clone();
                        tokio::spawn(async move { call(&channel, GRPC_PATH, None).await })
                    })
                    .collect();
                for c in round {
                    match c.await.unwrap() {
                        Ok(_) => warm_ok += 1,
                        Err(status) => {
                            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                            warm_refused += 1;
                        }
                    }
                }
            }
            // 160 calls at once, one in five critical, the rest low.
            let calls: Vec<_> = (0..160)
                .map(|i| {
                    let channel = channel.clone();
                    let priority = if i % 5 == 0 { "critical" } else { "low" };
                    tokio::spawn(async move { call(&channel, GRPC_PATH, Some(priority)).await })
                })
                .collect();
            let (mut ok, mut refused) = (0u64, 0u64);
            for c in calls {
                match c.await.unwrap() {
                    Ok(_) => ok += 1,
                    Err(status) => {
                        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                        assert_eq!(
                            retry_delay(&status),
                            Some(Duration::from_secs(1)),
                            "{status:?}"
                        );
                        refused += 1;
                    }
                }
            }
            assert_eq!(ok + refused, 160);
            assert!(refused > 0 && ok > 0, "ok {ok}, refused {refused}");
            let snapshot = served.stats.snapshot();
            assert_eq!(snapshot.ok, ok + warm_ok);
            assert_eq!(snapshot.refused, refused + warm_refused);
            assert_eq!(snapshot.other, 0);
            served.stop().await.unwrap();
        });
    }
}
