//! Passive ejection in the discover pool, against real sockets on 127.0.0.1: an endpoint whose
//! calls fail at the transport leaves every balancer after one failed call and comes back once
//! it passes its re-probe; an endpoint that answers (even with an error) stays.

use degrade_core::BoxError;
use degrade_rollout::Instance;
use degrade_rollout::discover::{EjectionConfig, Pool, is_transport_failure};
use futures_util::StreamExt;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::discover::Change;
use tower::{Service, ServiceExt, service_fn};

/// A client service of one endpoint: connects, writes a byte, done (`Ok` when it connected).
fn connect(
    i: &Instance,
) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone + Send + use<> {
    let address = i.address;
    service_fn(move |()| async move {
        let mut s = TcpStream::connect(address).await?;
        s.write_all(b"x").await?;
        Ok::<(), BoxError>(())
    })
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Accepts and drops connections until dropped.
fn serve(l: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    })
}

fn quick() -> EjectionConfig {
    EjectionConfig {
        reprobe_interval: Duration::from_millis(50),
        reprobe_max: Duration::from_millis(200),
        probe_timeout: Duration::from_secs(1),
        ..EjectionConfig::default()
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what} within 20 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_ejects_the_endpoint_from_every_balancer_and_a_probe_brings_it_back() {
    let (l, addr) = listener().await;
    let server = serve(l);
    let pool = Pool::builder(connect).ejection(quick()).build().unwrap();
    let a = Instance::new("a", addr, "v1");
    let b_listener = listener().await;
    let b = Instance::new("b", b_listener.1, "v1");
    let _b_server = serve(b_listener.0);
    pool.insert(&a);
    pool.insert(&b);
    let mut streams = [pool.discover(), pool.discover()];
    for s in &mut streams {
        for _ in 0..2 {
            assert!(matches!(s.next().await, Some(Ok(Change::Insert(..)))));
        }
    }
    let mut svc = pool.service(&a.key()).unwrap();
    svc.ready().await.unwrap().call(()).await.unwrap();

    // The process behind `a` goes away: the next call is refused, and that one call ejects it.
    server.abort();
    let _ = server.await;
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(is_transport_failure(&*err), "{err}");
    let snap = pool.snapshot();
    assert_eq!((snap.ejections, snap.ejected.clone()), (1, vec![a.key()]));
    assert_eq!(pool.keys(), vec![b.key()]);
    for s in &mut streams {
        match within("the removal", s.next()).await {
            Some(Ok(Change::Remove(k))) => assert_eq!(k, a.key()),
            other => panic!(
                "expected the removal of a, got {:?}",
                other.map(|c| c.map(|_| ()))
            ),
        }
    }
    // A new balancer does not see it either.
    let mut fresh = pool.discover();
    match fresh.next().await {
        Some(Ok(Change::Insert(k, _))) => assert_eq!(k, b.key()),
        _ => panic!("b only"),
    }

    // It listens again on the same port: the re-probe passes and every balancer gets it back.
    let l = within("the port", async {
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let _server = serve(l);
    for s in &mut streams {
        match within("the return", s.next()).await {
            Some(Ok(Change::Insert(k, _))) => assert_eq!(k, a.key()),
            _ => panic!("expected a back"),
        }
    }
    let snap = pool.snapshot();
    assert_eq!((snap.ejections, snap.returns), (1, 1));
    assert!(snap.ejected.is_empty());
    assert_eq!(pool.keys(), vec![a.key(), b.key()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_answers_with_an_error_is_not_ejected() {
    let pool = Pool::new(|_: &Instance| {
        service_fn(|()| async { Err::<(), BoxError>("status 500".into()) })
    });
    let a = Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1");
    pool.insert(&a);
    let mut svc = pool.service(&a.key()).unwrap();
    for _ in 0..10 {
        assert!(svc.ready().await.unwrap().call(()).await.is_err());
    }
    let snap = pool.snapshot();
    assert_eq!((snap.transport_failures, snap.ejections), (0, 0));
    assert_eq!(pool.keys(), vec![a.key()]);
    // The failures count for analysis all the same.
    assert_eq!(pool.outcomes(&[a.key()]).failures, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_an_ejected_endpoint_ends_its_reprobe() {
    let (l, addr) = listener().await;
    drop(l); // nothing listens: refused
    let probes = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = probes.clone();
    let pool = Pool::builder(connect)
        .ejection(quick())
        .health(move |_: &Instance| {
            counted.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), BoxError>("down".into()) }
        })
        .build()
        .unwrap();
    let a = Instance::new("a", addr, "v1");
    pool.insert(&a);
    let mut stream = pool.discover();
    assert!(matches!(stream.next().await, Some(Ok(Change::Insert(..)))));
    let mut svc = pool.service(&a.key()).unwrap();
    assert!(svc.ready().await.unwrap().call(()).await.is_err());
    assert!(matches!(stream.next().await, Some(Ok(Change::Remove(_)))));
    within("a failed re-probe", async {
        while probes.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The balancers saw the ejection: the drain is over at once.
    let report = pool.drain(&a.key(), Duration::from_secs(5)).await;
    assert!(report.clean(), "{report:?}");
    assert_eq!(pool.snapshot().endpoints, 0);
    // A re-probe being polled on another worker when the drain aborted it may still count:
    // read the count once that poll is surely over, then watch for ten re-probe intervals.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = probes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        probes.load(Ordering::Relaxed),
        after,
        "no re-probe after the drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejected_percent_keeps_endpoints_in_service() {
    let dead: Vec<SocketAddr> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let (l, a) = listener().await;
            drop(l);
            v.push(a);
        }
        v
    };
    let pool = Pool::builder(connect)
        .ejection(EjectionConfig {
            max_ejected_percent: 50,
            ..quick()
        })
        .build()
        .unwrap();
    let instances: Vec<Instance> = dead
        .iter()
        .enumerate()
        .map(|(k, a)| Instance::new(format!("i{k}"), *a, "v1"))
        .collect();
    for i in &instances {
        pool.insert(i);
    }
    for i in &instances {
        let mut svc = pool.service(&i.key()).unwrap();
        let _ = svc.ready().await.unwrap().call(()).await;
    }
    let snap = pool.snapshot();
    assert_eq!(snap.ejected.len(), 2, "{snap:?}");
    assert_eq!(snap.transport_failures, 4);
    assert_eq!(pool.keys().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_can_be_turned_off_and_the_classifier_replaced() {
    let (l, addr) = listener().await;
    drop(l);
    let a = Instance::new("a", addr, "v1");
    let off = Pool::builder(connect)
        .ejection(EjectionConfig::disabled())
        .build()
        .unwrap();
    off.insert(&a);
    let mut svc = off.service(&a.key()).unwrap();
    let _ = svc.ready().await.unwrap().call(()).await;
    assert_eq!(off.snapshot().ejections, 0);

    // A classifier that sees transport failures in errors of its own making.
    let seen = Arc::new(AtomicBool::new(false));
    let s2 = seen.clone();
    let own = Pool::builder(|_: &Instance| {
        service_fn(|()| async { Err::<(), BoxError>("unreachable: no route".into()) })
    })
    .transport_failure(move |e| {
        s2.store(true, Ordering::Relaxed);
        e.to_string().starts_with("unreachable")
    })
    .ejection(quick())
    .build()
    .unwrap();
    own.insert(&a);
    let mut svc = own.service(&a.key()).unwrap();
    let _ = svc.ready().await.unwrap().call(()).await;
    assert!(seen.load(Ordering::Relaxed));
    assert_eq!(own.snapshot().ejections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_under_a_hyper_call_is_a_transport_failure() {
    // Accepts, reads nothing, closes: hyper sees the connection end before an answer.
    let (l, addr) = listener().await;
    let _server = serve(l);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let err = client
        .get(format!("http://{addr}/").parse().unwrap())
        .await
        .unwrap_err();
    let boxed: BoxError = Box::new(err);
    assert!(is_transport_failure(&*boxed), "{boxed:?}");
    // And a refused connection, through hyper-util's connect error.
    let (l, refused) = listener().await;
    drop(l);
    let err = client
        .get(format!("http://{refused}/").parse().unwrap())
        .await
        .unwrap_err();
    let boxed: BoxError = Box::new(err);
    assert!(is_transport_failure(&*boxed), "{boxed:?}");
}
