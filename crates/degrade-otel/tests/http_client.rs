//! The `TowerHttpClient` on its own: local rejections become answers, the response size is
//! capped, attempts are bounded, and it works from a thread without a runtime.
#![cfg(feature = "http")]

use bytes::Bytes;
use degrade_core::{BoxError, Level, Priority, Shed};
use degrade_otel::http::TowerHttpClient;
use http::{Request, Response};
use http_body_util::Full;
use opentelemetry_http::{HttpClient, ResponseBodyTooLarge};
use std::convert::Infallible;
use std::time::Duration;
use tokio::runtime::Handle;

fn request() -> Request<Bytes> {
    Request::post("http://127.0.0.1:1/v1/traces")
        .body(Bytes::from_static(b"spans"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_rejection_becomes_503_with_retry_after() {
    let svc = tower::service_fn(|_: Request<Bytes>| async {
        Err::<Response<Full<Bytes>>, BoxError>(Box::new(Shed::new(
            Level::Heavy,
            Priority::Low,
            Duration::from_millis(1_500),
        )))
    });
    let client = TowerHttpClient::<_, Bytes>::new(svc, Handle::current());
    let response = client.send_bytes(request()).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_errors_stay_errors() {
    let svc = tower::service_fn(|_: Request<Bytes>| async {
        Err::<Response<Full<Bytes>>, BoxError>("connection refused".into())
    });
    let client = TowerHttpClient::<_, Bytes>::new(svc, Handle::current());
    assert!(client.send_bytes(request()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_is_capped() {
    let svc = tower::service_fn(|_: Request<Bytes>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![0u8; 10_000]))))
    });
    let client = TowerHttpClient::<_, Bytes>::new(svc, Handle::current()).max_response_bytes(1_000);
    let err = client.send_bytes(request()).await.unwrap_err();
    assert!(err.is::<ResponseBodyTooLarge>(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn each_attempt_is_bounded_by_its_own_timeout() {
    let svc = tower::service_fn(|_: Request<Bytes>| async {
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let client =
        TowerHttpClient::<_, Bytes>::new(svc, Handle::current()).timeout(Duration::from_secs(2));
    let err = client.send_bytes(request()).await.unwrap_err();
    assert!(err.is::<tokio::time::error::Elapsed>(), "{err}");
}

/// The exporter calls the client from the batch processor's thread, which has no runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_from_a_thread_without_a_runtime() {
    let svc = tower::service_fn(|_: Request<Bytes>| async {
        // A tokio timer: would panic without a runtime.
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let client = TowerHttpClient::<_, Bytes>::new(svc, Handle::current());
    let response = std::thread::spawn(move || {
        assert!(Handle::try_current().is_err(), "no runtime on this thread");
        block_on(client.send_bytes(request()))
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(response.body().as_ref(), b"ok");
}

/// A bare executor, as `futures_executor::block_on` on the processor thread: park until woken.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
