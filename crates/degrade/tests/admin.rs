//! The admin router on a real axum server on 127.0.0.1, called by a real HTTP client, mounted
//! under a bearer-token auth layer as a service would mount it.

use axum::body::Body;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use degrade::admin::{Admin, Operator};
use degrade::breaker::{BreakerConfig, BreakerHandle, BreakerLayer, State};
use degrade::canary::{Canary, CanaryConfig, CanaryController, CanaryPhase, Gates};
use degrade::ratelimit::{RateLimitConfig, RateLimitLayer};
use degrade::{Controller, DegradeLayer, Level, Policy};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The service's own auth: `authorization: Bearer <token>` → an operator, else 401.
async fn auth(mut req: Request<Body>, next: Next) -> Response {
    let who = match req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        Some("Bearer alice-token") => "alice",
        Some("Bearer bob-token") => "bob",
        _ => return (StatusCode::UNAUTHORIZED, "who are you?").into_response(),
    };
    req.extensions_mut().insert(Operator::new(who));
    next.run(req).await
}

struct Stack {
    controller: Controller,
    limit: RateLimitLayer,
    breaker: BreakerHandle,
    gates: Gates,
    _canary_task:
        tokio::task::JoinHandle<Result<degrade::canary::CanaryState, degrade::canary::StoreError>>,
}

async fn stack() -> (Stack, Admin) {
    let controller = Controller::new(Default::default()).unwrap();
    let admission = DegradeLayer::new(controller.handle(), Policy::default()).unwrap();
    let limit = RateLimitLayer::new(RateLimitConfig::per(100, Duration::from_secs(1))).unwrap();
    let breaker = BreakerLayer::new(BreakerConfig::default()).unwrap();
    let ok = || tower::service_fn(|_: u8| async { Ok::<_, Infallible>(()) });
    let canary = Canary::new(ok(), ok());
    let (task, gates) = CanaryController::builder(CanaryConfig::default(), canary.handle())
        .build()
        .unwrap()
        .spawn();
    let admin = Admin::new()
        .controller(controller.clone())
        .admission("api", &admission)
        .rate_limit("api", &limit)
        .breaker("backend", breaker.handle())
        .canary("v2", canary.handle(), gates.clone());
    let stack = Stack {
        controller,
        limit,
        breaker: breaker.handle(),
        gates,
        _canary_task: task,
    };
    (stack, admin)
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The admin router under the auth layer, as a service mounts it.
async fn server(admin: Admin) -> SocketAddr {
    serve(
        axum::Router::new()
            .nest("/admin", admin.router())
            .layer(axum::middleware::from_fn(auth)),
    )
    .await
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}/admin{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = client
        .request(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, json)
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> (StatusCode, Value) {
    call(addr, "POST", path, Some("alice-token"), body).await
}

#[tokio::test]
async fn status_reports_level_admission_quota_breaker_and_canary() {
    let (s, admin) = stack().await;
    let addr = server(admin).await;
    s.breaker.force_open();
    let (code, status) = call(addr, "GET", "/status", Some("bob-token"), "").await;
    assert_eq!(code, StatusCode::OK, "{status}");
    assert_eq!(status["level"]["level"], "normal");
    assert_eq!(status["level"]["pinned"], Value::Null);
    assert_eq!(status["admission"]["api"]["offered"], 0);
    assert!(
        status["admission"]["api"]["limit"]["limit"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(status["rate_limits"]["api"]["quota"], 100);
    assert_eq!(status["rate_limits"]["api"]["period"], "1s");
    assert_eq!(status["breakers"]["backend"]["state"], "forced-open");
    assert_eq!(status["canaries"]["v2"]["state"]["phase"], "progressing");
    assert_eq!(status["canaries"]["v2"]["weight"], 0.01); // the first step, 100 bp
}

#[tokio::test]
async fn pin_with_a_ttl_shows_its_expiry_and_unpin_ends_it() {
    let (s, admin) = stack().await;
    let addr = server(admin).await;
    let (code, body) = post(
        addr,
        "/level/pin",
        r#"{"level":"heavy","ttl":"10m","reason":"incident 7"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(s.controller.level(), Level::Heavy);
    assert_eq!(s.controller.pinned(), Some(Level::Heavy));
    let (_, status) = call(addr, "GET", "/status", Some("alice-token"), "").await;
    assert_eq!(status["level"]["pinned"], "heavy");
    assert!(status["level"]["pin_expires_in_ms"].as_u64().unwrap() <= 600_000);

    let (code, _) = post(addr, "/level/unpin", r#"{"reason":"resolved"}"#).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(s.controller.pinned(), None);
}

#[tokio::test(start_paused = true)]
async fn a_pin_ends_at_its_ttl_and_an_earlier_ttl_does_not_end_a_later_pin() {
    let (s, admin) = stack().await;
    let app =
        axum::Router::new()
            .nest("/admin", admin.router())
            .layer(axum::middleware::map_request(
                |mut req: Request<Body>| async move {
                    req.extensions_mut().insert(Operator::new("alice"));
                    req
                },
            ));
    use tower::ServiceExt;
    let pin = |body: &'static str| {
        app.clone().oneshot(
            Request::post("/admin/level/pin")
                .body(Body::from(body))
                .unwrap(),
        )
    };
    assert_eq!(
        pin(r#"{"level":"light","ttl":"1s","reason":"a"}"#)
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // paused time
    assert_eq!(s.controller.pinned(), None); // the ttl ended it
    assert_eq!(
        pin(r#"{"level":"light","ttl":"1s","reason":"a"}"#)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        pin(r#"{"level":"heavy","ttl":"1h","reason":"b"}"#)
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // paused time: the first ttl ends
    assert_eq!(s.controller.pinned(), Some(Level::Heavy));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(s.controller.pinned(), None);
}

#[tokio::test]
async fn breaker_force_open_force_close_and_reset() {
    let (s, admin) = stack().await;
    let addr = server(admin).await;
    for (action, state) in [
        ("force-open", State::ForcedOpen),
        ("force-close", State::Closed),
        ("force-open", State::ForcedOpen),
        ("reset", State::Closed),
    ] {
        let (code, body) = post(
            addr,
            &format!("/breakers/backend/{action}"),
            r#"{"reason":"db failover"}"#,
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{action}: {body}");
        assert_eq!(s.breaker.state(), state, "{action}");
    }
}

#[tokio::test]
async fn set_quota_changes_the_limit_in_force() {
    let (s, admin) = stack().await;
    let addr = server(admin).await;
    let (code, body) = post(
        addr,
        "/quotas/api",
        r#"{"quota":5,"period":"2s","burst":1,"reason":"abuse"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let cfg = s.limit.quota_handle().get();
    assert_eq!(
        (cfg.quota, cfg.period, cfg.burst),
        (5, Duration::from_secs(2), Some(1))
    );
}

#[tokio::test]
async fn canary_gates_pause_resume_abort_then_conflict() {
    let (s, admin) = stack().await;
    let addr = server(admin).await;
    let (code, _) = post(addr, "/canaries/v2/pause", r#"{"reason":"looks odd"}"#).await;
    assert_eq!(code, StatusCode::OK);
    let wait = |phase: fn(CanaryPhase) -> bool| {
        let gates = s.gates.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), async {
                while !phase(gates.state().phase) {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the controller applied the gate")
        }
    };
    wait(|p| matches!(p, CanaryPhase::Paused(_))).await;
    let (code, _) = post(addr, "/canaries/v2/resume", r#"{"reason":"fine"}"#).await;
    assert_eq!(code, StatusCode::OK);
    wait(|p| p == CanaryPhase::Progressing).await;
    let (code, _) = post(addr, "/canaries/v2/abort", r#"{"reason":"bad release"}"#).await;
    assert_eq!(code, StatusCode::OK);
    wait(|p| p == CanaryPhase::RolledBack).await;
    let (code, body) = post(addr, "/canaries/v2/promote", r#"{"reason":"too late"}"#).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(s.gates.state().phase, CanaryPhase::RolledBack);
}

#[tokio::test]
async fn bad_input_is_400_naming_the_field_and_changes_nothing() {
    let (s, admin) = stack().await;
    let addr = server(admin).await;
    let before = s.limit.quota_handle().get();
    for (path, body, field) in [
        ("/level/pin", r#"{"level":"panic","reason":"x"}"#, "level"),
        ("/level/pin", r#"{"reason":"x"}"#, "level"),
        (
            "/level/pin",
            r#"{"level":"heavy","ttl":"soon","reason":"x"}"#,
            "ttl",
        ),
        (
            "/level/pin",
            r#"{"level":"heavy","ttl":"0s","reason":"x"}"#,
            "ttl",
        ),
        ("/level/pin", r#"{"level":"heavy"}"#, "reason"),
        ("/level/pin", r#"{"level":"heavy","reason":"  "}"#, "reason"),
        (
            "/level/pin",
            r#"{"level":"heavy","reason":"x","lvl":"y"}"#,
            "lvl",
        ),
        ("/level/pin", r#"["heavy"]"#, "body"),
        ("/level/pin", r#"{"level":"#, "body"),
        ("/quotas/api", r#"{"quota":0,"reason":"x"}"#, "quota"),
        ("/quotas/api", r#"{"quota":-3,"reason":"x"}"#, "quota"),
        ("/quotas/api", r#"{"quota":"ten","reason":"x"}"#, "quota"),
        ("/quotas/api", r#"{"period":"0s","reason":"x"}"#, "period"),
        ("/quotas/nope", r#"{"quota":5,"reason":"x"}"#, "quota"),
        ("/breakers/nope/reset", r#"{"reason":"x"}"#, "breaker"),
        ("/breakers/backend/explode", r#"{"reason":"x"}"#, "action"),
        ("/canaries/nope/promote", r#"{"reason":"x"}"#, "canary"),
        ("/canaries/v2/ship-it", r#"{"reason":"x"}"#, "action"),
        ("/rollouts/nope/pause", r#"{"reason":"x"}"#, "rollout"),
    ] {
        let (code, answer) = post(addr, path, body).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
        assert_eq!(answer["field"], field, "{path} {body}: {answer}");
        assert!(!answer["error"].as_str().unwrap().is_empty());
    }
    // A body over the limit is refused without being read whole.
    let big = format!(r#"{{"reason":"{}"}}"#, "x".repeat(100_000));
    let (code, answer) = post(addr, "/level/unpin", &big).await;
    assert_eq!(
        (code, answer["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("body"))
    );
    // Nothing changed.
    assert_eq!(s.controller.pinned(), None);
    assert_eq!(s.breaker.state(), State::Closed);
    assert_eq!(s.limit.quota_handle().get(), before);
    assert_eq!(s.gates.state().phase, CanaryPhase::Progressing);
}

#[tokio::test]
async fn the_auth_layer_is_honoured_and_a_router_without_one_refuses_everything() {
    let (s, admin) = stack().await;
    let addr = server(admin).await;
    for token in [None, Some("mallory-token")] {
        let (code, _) = call(
            addr,
            "POST",
            "/breakers/backend/force-open",
            token,
            r#"{"reason":"x"}"#,
        )
        .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let (code, _) = call(addr, "GET", "/status", token, "").await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(s.breaker.state(), State::Closed);

    // Mounted with no auth layer at all: no operator, nothing changes.
    let (s, admin) = stack().await;
    let bare = serve(axum::Router::new().nest("/admin", admin.router())).await;
    let (code, body) = call(
        bare,
        "POST",
        "/level/pin",
        None,
        r#"{"level":"heavy","reason":"x"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(s.controller.pinned(), None);
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test] // current-thread: the server's tasks run under this thread's subscriber
async fn every_change_is_a_tracing_event_with_what_who_and_why() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (_s, admin) = stack().await;
    let addr = server(admin).await;
    post(
        addr,
        "/breakers/backend/force-open",
        r#"{"reason":"db failover"}"#,
    )
    .await;
    call(
        addr,
        "POST",
        "/quotas/api",
        Some("bob-token"),
        r#"{"quota":7,"reason":"tenant abuse"}"#,
    )
    .await;
    post(addr, "/quotas/api", r#"{"quota":0,"reason":"refused"}"#).await;

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let changes: Vec<&str> = log.lines().filter(|l| l.contains("admin change")).collect();
    assert_eq!(changes.len(), 2, "{log}");
    assert!(
        changes[0].contains("what=\"breaker.force_open\"")
            || changes[0].contains("what=breaker.force_open"),
        "{log}"
    );
    assert!(
        changes[0].contains("who=alice") && changes[0].contains("why=db failover"),
        "{log}"
    );
    assert!(
        changes[1].contains("quota.set") && changes[1].contains("who=bob"),
        "{log}"
    );
    assert!(
        changes[1].contains("why=tenant abuse") && changes[1].contains("quota=7"),
        "{log}"
    );
}

#[tokio::test]
async fn config_reload_through_the_router_is_all_or_nothing() {
    let file = "[limits.api]\nquota = 100\nperiod = \"1s\"\n";
    let stack = degrade::config::StackConfig::from_toml(file)
        .unwrap()
        .build()
        .unwrap();
    let limit = stack.limits["api"].clone();
    let admin = Admin::new()
        .rate_limit("api", &limit)
        .config(stack.reloader());
    let addr = server(admin).await;
    let body = |toml: &str, reason: &str| {
        serde_json::json!({ "toml": toml, "reason": reason }).to_string()
    };

    let (code, answer) = post(
        addr,
        "/config",
        &body("[limits.api]\nquota = 0\nperiod = \"1s\"", "x"),
    )
    .await;
    assert_eq!(
        (code, answer["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("limits.api.quota"))
    );
    let (code, answer) = post(
        addr,
        "/config",
        &body(
            "[ladder]\nescalate_after = 9\n[admission]\nmode = \"both\"\n[limits.api]\nquota = 5",
            "x",
        ),
    )
    .await;
    assert_eq!(
        (code, answer["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("admission.mode"))
    );
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("requires a restart"),
        "{answer}"
    );
    assert_eq!(stack.controller.config().escalate_after, 3); // live, but not applied: all or nothing
    assert_eq!(limit.quota_handle().get().quota, 100); // nothing changed

    let (code, answer) = post(
        addr,
        "/config",
        &body("[limits.api]\nquota = 7\nperiod = \"1s\"", "tenant abuse"),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(limit.quota_handle().get().quota, 7);
    let (_, status) = post(addr, "/config", &body("", "")).await;
    assert_eq!(status["field"], "reason");
}

/// The whole stack's file for the next test, with the values it changes.
fn stack_file(quota: u64, light_enter: f64, light_normal: f64, failure_rate: f64) -> String {
    let light_exit = light_enter - 0.1;
    format!(
        r#"
[ladder]
escalate_after = 1
thresholds.light = {{ enter = {light_enter}, exit = {light_exit} }}

[policy.light]
admit = {{ background = 0, low = 0, normal = {light_normal}, high = 1, critical = 1 }}
sampling = 0.5

[admission]
mode = "level-shares"

[limits.api]
quota = {quota}
period = "1s"

[breakers.backend]
window = {{ kind = "count", size = 100 }}
minimum_calls = 100
failure_rate = {failure_rate}
wait = "100ms"
half_open = {{ successes = 1 }}
"#
    )
}

/// Waits for a precondition of the scenario (the load reaching a layer, a breaker's wait):
/// not a figure under test, so the bound only stops a hung run.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: never happened"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `cond` while the load runs: the new values must be in force within 1 s of the
/// reload's answer (generous on a shared machine; the changes are observed, not timed).
async fn within_1s(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what}: not in force within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `POST /config` under load on the service's own server: a quota lowered and raised, a
/// trigger threshold and the level's policy changed, a breaker's failure rate lowered, and a
/// bad file refused with 400 naming the field. No request on the service fails, and every
/// one is counted once by the layer that answered it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_through_the_router_under_load_changes_policy_quota_and_breaker() {
    use degrade::ladder::Reading;
    use degrade::{Outcome, Priority};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stack = degrade::config::StackConfig::from_toml(&stack_file(1_000_000, 0.7, 1.0, 0.5))
        .unwrap()
        .build()
        .unwrap();
    let limit = stack.limits["api"].clone();
    let admission = stack.admission.clone();
    let breaker = stack.breakers["backend"].clone();
    let handle = breaker.handle();
    let admin = Admin::new()
        .controller(stack.controller.clone())
        .admission("api", &admission)
        .rate_limit("api", &limit)
        .breaker("backend", handle.clone())
        .config(stack.reloader());
    let service = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(breaker.clone().http())
        .layer(admission.clone().http())
        .layer(limit.clone().http());
    let addr = serve(
        service.merge(
            axum::Router::new()
                .nest("/admin", admin.router())
                .layer(axum::middleware::from_fn(auth)),
        ),
    )
    .await;

    // Four client loops; by answer: 200, our typed rejections by reason, anything else.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
    let (ok, rate_limited, shed, circuit_open, failed) = (0, 1, 2, 3, 4);
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, seen) = (stop.clone(), seen.clone());
        load.push(tokio::spawn(async move {
            let client: Client<HttpConnector, Body> =
                Client::builder(TokioExecutor::new()).build_http();
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(format!("http://{addr}/"))
                    .body(Body::empty())
                    .unwrap();
                let slot = match client.request(req).await {
                    Ok(r) => {
                        let reason = r.headers().get("degrade-rejection").cloned();
                        // Read the whole answer: a body cut short is a failure too.
                        let whole = r.into_body().collect().await.is_ok();
                        match reason.as_ref().and_then(|v| v.to_str().ok()) {
                            _ if !whole => failed,
                            None => ok,
                            Some("rate_limited") => rate_limited,
                            Some("shed") => shed,
                            Some("circuit_open") => circuit_open,
                            Some(_) => failed,
                        }
                    }
                    Err(_) => failed,
                };
                seen[slot].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let reload = |toml: String, reason: &'static str| async move {
        let body = serde_json::json!({ "toml": toml, "reason": reason }).to_string();
        post(addr, "/config", &body).await
    };
    eventually("load running", || breaker.snapshot().admitted >= 100).await;

    // The quota, lowered then raised.
    let (code, _) = reload(stack_file(3, 0.7, 1.0, 0.5), "tenant abuse").await;
    assert_eq!(code, StatusCode::OK);
    let before = limit.snapshot().rejected();
    within_1s("quota 3", || limit.snapshot().rejected() > before).await;
    let (code, _) = reload(stack_file(1_000_000, 0.7, 1.0, 0.5), "over").await;
    assert_eq!(code, StatusCode::OK);
    let raised = std::time::Instant::now();
    loop {
        let before = limit.snapshot();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let after = limit.snapshot();
        if after.rejected() == before.rejected() && after.admitted > before.admitted + 10 {
            break;
        }
        assert!(
            raised.elapsed() < Duration::from_secs(1),
            "quota raised: not in force within 1 s"
        );
    }

    // A trigger threshold, then the level's policy.
    let controller = &stack.controller;
    assert!(controller.observe(&[Reading::new("load", 0.5)]).is_none());
    let (code, _) = reload(stack_file(1_000_000, 0.4, 1.0, 0.5), "earlier").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        controller.observe(&[Reading::new("load", 0.5)]).unwrap().to,
        Level::Light
    );
    let shed_at_light = || admission.snapshot().shed_at(Level::Light, Priority::Normal);
    let (code, _) = reload(stack_file(1_000_000, 0.4, 0.5, 0.5), "shed half").await;
    assert_eq!(code, StatusCode::OK);
    within_1s("policy light.normal = 0.5", || shed_at_light() > 0).await;

    // A breaker threshold: lowered to 1 %, one failure in a full window opens it.
    eventually("window full", || handle.snapshot().window.calls == 100).await;
    let (code, _) = reload(stack_file(1_000_000, 0.4, 0.5, 0.01), "stricter").await;
    assert_eq!(code, StatusCode::OK);
    handle.try_acquire().unwrap().record(Outcome::Failure);
    assert_eq!(handle.state(), State::Open);
    eventually("breaker closed again", || handle.state() == State::Closed).await;

    // A bad file: 400 naming the field, and nothing in it applied.
    let in_force = stack.config();
    for (toml, field) in [
        (stack_file(7, 0.4, 1.5, 0.5), "policy.light.admit.normal"),
        (
            stack_file(7, 0.9, 0.5, 0.5),
            "ladder.thresholds.moderate.enter",
        ),
        (
            stack_file(7, 0.4, 0.5, 0.5).replace("size = 100", "size = 200"),
            "breakers.backend.window",
        ),
    ] {
        let (code, answer) = reload(toml, "bad").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(answer["field"], field, "{answer}");
    }
    assert_eq!(stack.config(), in_force);
    assert_eq!(limit.quota_handle().get().quota, 1_000_000);

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let n: Vec<u64> = seen.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert_eq!(n[failed], 0, "{n:?}");
    assert!(n.iter().take(4).all(|&c| c > 0), "{n:?}");
    let (l, a, b) = (limit.snapshot(), admission.snapshot(), breaker.snapshot());
    assert_eq!(l.offered(), n.iter().sum::<u64>());
    assert_eq!(l.rejected(), n[rate_limited]);
    assert_eq!(a.offered(), l.offered() - l.rejected());
    assert_eq!(a.rejected(), n[shed]);
    assert_eq!(b.offered(), a.admitted() + 1); // and the one failure recorded by hand
    assert_eq!((b.rejected, b.admitted), (n[circuit_open], n[ok] + 1));
}

/// A fleet canary steered through one instance's admin router (real redis-server, two
/// instances): each gate goes to Redis with the operator as who and the reason as why, the
/// rollout's leader applies it, and both instances' routers follow; a gate on the finished
/// rollout is a 409; the status shows the fleet's state.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_canary_gates_go_to_every_instance_with_who_and_why() {
    use degrade::canary::fleet::{FleetCanary, FleetCanaryConfig, FleetCanaryTask};
    use degrade_core::fleet::testing::RedisServer;

    let redis = RedisServer::start();
    let ok = || tower::service_fn(|_: u8| async { Ok::<_, Infallible>(()) });
    let mut fleet = Vec::new();
    for name in ["a", "b"] {
        let router = Canary::new(ok(), ok());
        let cfg: FleetCanaryConfig = serde_json::from_value(serde_json::json!({
            "url": redis.url(), "name": "admin-v2", "instance": name,
            "poll": "50ms", "timeout": "100ms", "lease": "1s", "publish": "100ms",
        }))
        .unwrap();
        let fc = FleetCanary::new(cfg, router.handle()).unwrap();
        let task = fc.spawn();
        fleet.push((router, fc, task));
    }
    let (router_b, fc_b, task_b) = &fleet[1];
    let admin = Admin::new().fleet_canary("v2", router_b.handle(), task_b.status(), fc_b.gates());
    let addr = server(admin).await;
    let tasks: Vec<&FleetCanaryTask> = fleet.iter().map(|(_, _, t)| t).collect();
    let all = |f: fn(CanaryPhase) -> bool| {
        let tasks = tasks.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), async {
                while !tasks
                    .iter()
                    .all(|t| t.snapshot().state.is_some_and(|s| f(s.phase)))
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("every instance follows the gate")
        }
    };
    all(|p| p == CanaryPhase::Progressing).await;
    let (code, body) = post(addr, "/canaries/v2/pause", r#"{"reason":"looks odd"}"#).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["command"], 1);
    all(|p| matches!(p, CanaryPhase::Paused(_))).await;
    let (_, status) = call(addr, "GET", "/status", Some("bob-token"), "").await;
    let v2 = &status["canaries"]["v2"];
    assert_eq!(
        v2["state"]["phase"],
        serde_json::json!({"paused": "manual"}),
        "{v2}"
    );
    assert!(v2["fleet"]["leader"].is_boolean(), "{v2}");
    let (code, _) = post(addr, "/canaries/v2/resume", r#"{"reason":"fine"}"#).await;
    assert_eq!(code, StatusCode::OK);
    all(|p| p == CanaryPhase::Progressing).await;
    let (code, _) = post(addr, "/canaries/v2/abort", r#"{"reason":"bad release"}"#).await;
    assert_eq!(code, StatusCode::OK);
    all(|p| p == CanaryPhase::RolledBack).await;
    for (router, _, _) in &fleet {
        assert_eq!(router.handle().weight().get(), 0);
    }
    let (code, body) = post(addr, "/canaries/v2/promote", r#"{"reason":"too late"}"#).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    // Who and why, in the rollout's audit list.
    let audit = fc_b.gates().audit().await.unwrap();
    let issued: Vec<(&str, &str, &str)> = audit
        .iter()
        .rev()
        .filter(|e| e.action == "issued")
        .map(|e| (e.gate.as_str(), e.who.as_str(), e.why.as_str()))
        .collect();
    assert_eq!(
        issued,
        [
            ("pause", "alice", "looks odd"),
            ("resume", "alice", "fine"),
            ("abort", "alice", "bad release")
        ]
    );
    // Redis gone: a gate cannot be recorded, 503.
    drop(redis);
    let (code, body) = post(addr, "/canaries/v2/pause", r#"{"reason":"x"}"#).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}
