//! The whole stack from one file, and its live reload under load on a real server.

use axum::body::Body;
use degrade::config::StackConfig;
use http::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const FILE: &str = r#"
[ladder]
escalate_after = 2

[limits.api]
quota = 1000
period = "1s"

[breakers.backend]
wait = "5s"
"#;

#[test]
fn a_bad_file_names_the_field_by_its_path() {
    for (text, field) in [
        (
            "[limits.api]\nquota = 0\nperiod = \"1s\"",
            "limits.api.quota",
        ),
        ("[limits.api]\nquota = -1", "limits.api.quota"),
        (
            "[limits.api]\nquota = 5\nperiod = \"soon\"",
            "limits.api.period",
        ),
        ("[limits.api]\nqota = 5", "limits.api.qota"),
        ("[breakers.backend]\nwait = 3", "breakers.backend.wait"),
        ("[ladder]\nrecover_after = 0", "ladder.recover_after"),
        ("[polcy]", "polcy"),
        ("[limits.api\nquota = 5", "file"),
    ] {
        let err = StackConfig::from_toml(text).unwrap_err();
        assert_eq!(err.field(), field, "{text:?}: {err}");
    }
}

#[test]
fn the_file_builds_every_layer_it_names() {
    let stack = StackConfig::from_toml(FILE).unwrap().build().unwrap();
    assert_eq!(stack.limits["api"].quota_handle().get().quota, 1000);
    assert_eq!(stack.breakers["backend"].handle().name(), "backend");
    assert_eq!(stack.config().ladder.escalate_after, 2);
}

#[test]
fn a_reload_that_changes_what_cannot_change_live_changes_nothing() {
    let stack = StackConfig::from_toml(FILE).unwrap().build().unwrap();
    for (edit, field) in [
        (
            FILE.replace(
                "wait = \"5s\"",
                "wait = \"5s\"\nwindow = { kind = \"count\", size = 50 }\nminimum_calls = 10",
            ),
            "breakers.backend.window",
        ),
        (
            format!("{FILE}\n[admission]\nmode = \"both\""),
            "admission.mode",
        ),
        (
            format!("{FILE}\n[limits.extra]\nquota = 5\nperiod = \"1s\""),
            "limits.extra",
        ),
        (
            format!("{FILE}\n[breakers.extra]\nwait = \"1s\""),
            "breakers.extra",
        ),
        // The quota, the ladder and the policy would be live, but the file also changes the
        // admission mode: all or nothing.
        (
            format!(
                "{}\n[admission]\nmode = \"both\"\n[policy.light]\nadmit = {{ background = 0, low = 0, normal = 0.5, high = 1, critical = 1 }}\nsampling = 0.5",
                FILE.replace("quota = 1000", "quota = 5")
                    .replace("escalate_after = 2", "escalate_after = 3")
            ),
            "admission.mode",
        ),
    ] {
        let new = StackConfig::from_toml(&edit).unwrap();
        let err = stack.reload(&new).unwrap_err();
        assert_eq!(err.field(), field, "{err}");
        assert!(err.to_string().contains("requires a restart"), "{err}");
        assert_eq!(stack.limits["api"].quota_handle().get().quota, 1000);
        assert_eq!(stack.controller.config().escalate_after, 2);
        assert_eq!(stack.config(), StackConfig::from_toml(FILE).unwrap());
    }
}

#[test]
fn the_ladder_the_policy_and_breaker_thresholds_reload_live() {
    let stack = StackConfig::from_toml(FILE).unwrap().build().unwrap();
    let edit = format!(
        "{}\n[policy.light]\nadmit = {{ background = 0, low = 0, normal = 0.5, high = 1, critical = 1 }}\nsampling = 0.5",
        FILE.replace("escalate_after = 2", "escalate_after = 3")
            .replace("wait = \"5s\"", "wait = \"9s\"\nfailure_rate = 0.2")
    );
    let new = StackConfig::from_toml(&edit).unwrap();
    stack.reload(&new).unwrap();
    assert_eq!(stack.controller.config().escalate_after, 3);
    let breaker = stack.breakers["backend"].handle().config();
    assert_eq!(
        (breaker.wait, breaker.failure_rate),
        (Duration::from_secs(9), 0.2)
    );
    assert_eq!(stack.config(), new);
}

/// A real axum server behind the file's rate limit, a real client keeping it busy, and the
/// file rewritten under it: lowered, a bad edit, raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_reloads_under_load_with_no_failed_request() {
    let dir = std::env::temp_dir().join(format!("degrade-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("degrade.toml");
    std::fs::write(&path, FILE).unwrap();
    let stack = StackConfig::from_file(&path).unwrap().build().unwrap();
    let limit = stack.limits["api"].clone();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(limit.clone().http());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // The load: every answer must be 200 or the limiter's 429; anything else is a failure.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, limited, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, limited, failed) =
            (stop.clone(), ok.clone(), limited.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let client: Client<HttpConnector, Body> =
                Client::builder(TokioExecutor::new()).build_http();
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(format!("http://{addr}/"))
                    .body(Body::empty())
                    .unwrap();
                match client.request(req).await.map(|r| r.status()) {
                    Ok(StatusCode::OK) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(StatusCode::TOO_MANY_REQUESTS) => limited.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    let mut watch = stack.watch(&path, Duration::from_millis(250));
    // Replaced atomically, as editors and config maps do: the watcher never reads half a file.
    let edit = |quota: &str| {
        let tmp = dir.join("degrade.toml.tmp");
        std::fs::write(
            &tmp,
            FILE.replace("quota = 1000", &format!("quota = {quota}")),
        )
        .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };

    edit("3");
    assert_eq!(watch.next().await, Some(Ok(())));
    assert_eq!(limit.quota_handle().get().quota, 3);

    edit("0");
    let refused = watch.next().await.unwrap().unwrap_err();
    assert_eq!(refused.field(), "limits.api.quota");
    assert_eq!(limit.quota_handle().get().quota, 3); // unchanged

    edit("1000000");
    assert_eq!(watch.next().await, Some(Ok(())));
    assert_eq!(limit.quota_handle().get().quota, 1_000_000);

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, limited, failed) = (
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert_eq!(failed, 0, "ok {ok}, limited {limited}");
    assert!(ok > 0);
    // Offered = admitted + rejected, across the reloads.
    let snap = limit.snapshot();
    assert_eq!(snap.offered(), ok + limited);
    assert_eq!(snap.rejected(), limited);
    std::fs::remove_dir_all(&dir).unwrap();
}
