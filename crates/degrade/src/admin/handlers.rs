//! The routes: one handler per resource, each validating everything before it changes
//! anything.

use super::Inner;
use super::input::{Refusal, body, operator};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use degrade_core::Level;
use http::{Request, StatusCode};
use serde_json::json;
use std::sync::Arc;

type Shared = State<Arc<Inner>>;

pub(super) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/level/pin", post(pin))
        .route("/level/unpin", post(unpin))
        .route("/breakers/{name}/{action}", post(breaker))
        .route("/quotas/{name}", post(quota))
        .route("/canaries/{name}/{action}", post(canary))
        .route("/rollouts/{name}/{action}", post(rollout))
        .route("/config", post(config))
        .with_state(inner)
}

fn done(what: &str) -> Response {
    (StatusCode::OK, axum::Json(json!({ "done": what }))).into_response()
}

fn answer(r: Result<Response, Refusal>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// The change event every handler writes once its change is made.
macro_rules! changed {
    ($what:expr, $who:expr, $why:expr $(, $k:ident = $v:expr)*) => {
        tracing::info!(
            target: "degrade::admin",
            what = $what,
            who = %$who,
            why = %$why,
            $($k = %$v,)*
            "admin change"
        )
    };
}

async fn status(State(inner): Shared, req: Request<Body>) -> Response {
    answer(operator(&req).map(|_| axum::Json(inner.status()).into_response()))
}

async fn pin(State(inner): Shared, req: Request<Body>) -> Response {
    answer(
        async {
            let who = operator(&req)?;
            let change = body(req, &["level", "ttl"]).await?;
            let controller = inner.controller()?;
            let level: Level = change
                .string("level")?
                .ok_or_else(|| {
                    Refusal::field(
                        "level",
                        "required: normal, light, moderate, heavy or emergency",
                    )
                })?
                .parse()
                .map_err(|e| Refusal::field("level", format!("{e}")))?;
            let ttl = change.duration("ttl")?;
            if ttl == Some(std::time::Duration::ZERO) {
                return Err(Refusal::field("ttl", "must be > 0"));
            }
            let expires = ttl.and_then(|t| tokio::time::Instant::now().checked_add(t));
            let generation = {
                let mut pin = super::lock(&inner.pin);
                pin.generation += 1;
                pin.expires = expires;
                controller.pin(level);
                pin.generation
            };
            changed!(
                "level.pin",
                who,
                change.reason,
                level = level,
                ttl = format!("{ttl:?}")
            );
            if let Some(at) = expires {
                let inner = Arc::clone(&inner);
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    inner.expire(generation);
                });
            }
            Ok(done("level.pin"))
        }
        .await,
    )
}

async fn unpin(State(inner): Shared, req: Request<Body>) -> Response {
    answer(
        async {
            let who = operator(&req)?;
            let change = body(req, &[]).await?;
            let controller = inner.controller()?;
            {
                let mut pin = super::lock(&inner.pin);
                pin.generation += 1;
                pin.expires = None;
                controller.unpin();
            }
            changed!("level.unpin", who, change.reason);
            Ok(done("level.unpin"))
        }
        .await,
    )
}

#[cfg_attr(not(feature = "breaker"), allow(unused_variables))]
async fn breaker(
    State(inner): Shared,
    Path((name, action)): Path<(String, String)>,
    req: Request<Body>,
) -> Response {
    answer(
        async {
            let who = operator(&req)?;
            let change = body(req, &[]).await?;
            #[cfg(feature = "breaker")]
            {
                let b = inner
                    .breakers
                    .get(&name)
                    .ok_or_else(|| unknown("breaker", &name, inner.breakers.keys()))?;
                let what = match action.as_str() {
                    "force-open" => {
                        b.force_open();
                        "breaker.force_open"
                    }
                    "force-close" => {
                        b.force_close();
                        "breaker.force_close"
                    }
                    "reset" => {
                        b.reset();
                        "breaker.reset"
                    }
                    _ => {
                        return Err(Refusal::field(
                            "action",
                            "one of force-open, force-close, reset",
                        ));
                    }
                };
                changed!(what, who, change.reason, breaker = name);
                Ok(done(what))
            }
            #[cfg(not(feature = "breaker"))]
            Err(unknown("breaker", &name, std::iter::empty::<&String>()))
        }
        .await,
    )
}

#[cfg_attr(not(feature = "ratelimit"), allow(unused_variables))]
async fn quota(State(inner): Shared, Path(name): Path<String>, req: Request<Body>) -> Response {
    answer(
        async {
            let who = operator(&req)?;
            let change = body(req, &["quota", "period", "burst"]).await?;
            #[cfg(feature = "ratelimit")]
            {
                let limit = inner
                    .rate_limits
                    .get(&name)
                    .ok_or_else(|| unknown("quota", &name, inner.rate_limits.keys()))?;
                let mut config = limit.quota.get();
                if let Some(q) = change.u64("quota")? {
                    config.quota = q;
                }
                if let Some(p) = change.duration("period")? {
                    config.period = p;
                }
                if let Some(b) = change.u64("burst")? {
                    config.burst = Some(b);
                }
                // `set` validates first: a refused config leaves the old one in force.
                limit
                    .quota
                    .set(config.clone())
                    .map_err(|e| Refusal::field(e.field().to_owned(), e.rule().to_owned()))?;
                changed!(
                    "quota.set",
                    who,
                    change.reason,
                    limiter = name,
                    quota = config.quota,
                    period = humantime::format_duration(config.period)
                );
                Ok(done("quota.set"))
            }
            #[cfg(not(feature = "ratelimit"))]
            Err(unknown("quota", &name, std::iter::empty::<&String>()))
        }
        .await,
    )
}

#[cfg_attr(not(feature = "canary"), allow(unused_variables))]
async fn canary(
    State(inner): Shared,
    Path((name, action)): Path<(String, String)>,
    req: Request<Body>,
) -> Response {
    answer(
        async {
            let who = operator(&req)?;
            let change = body(req, &[]).await?;
            #[cfg(feature = "canary")]
            {
                let c = inner
                    .canaries
                    .get(&name)
                    .ok_or_else(|| unknown("canary", &name, inner.canaries.keys()))?;
                let gate = match action.as_str() {
                    "promote" => degrade_canary::Gate::Promote,
                    "abort" => degrade_canary::Gate::Abort,
                    "pause" => degrade_canary::Gate::Pause,
                    "resume" => degrade_canary::Gate::Resume,
                    _ => {
                        return Err(Refusal::field(
                            "action",
                            "one of promote, abort, pause, resume",
                        ));
                    }
                };
                let what = format!("canary.{action}");
                match c {
                    super::CanaryEntry::Local { gates, .. } => {
                        if gates.state().phase.is_terminal() {
                            return Err(Refusal::status(
                                StatusCode::CONFLICT,
                                "the canary has already ended",
                            ));
                        }
                        gates.send(gate);
                        changed!(what.as_str(), who, change.reason, canary = name);
                        Ok(done(&what))
                    }
                    #[cfg(feature = "redis")]
                    super::CanaryEntry::Fleet { gates, .. } => {
                        use degrade_canary::fleet::FleetCommandError as E;
                        let id = gates.send(gate, who.name(), &change.reason).await.map_err(
                            |e| match e {
                                E::Finished(_) => Refusal::status(
                                    StatusCode::CONFLICT,
                                    "the canary has already ended",
                                ),
                                e => {
                                    Refusal::status(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                                }
                            },
                        )?;
                        changed!(
                            what.as_str(),
                            who,
                            change.reason,
                            canary = name,
                            command = id
                        );
                        Ok((
                            StatusCode::OK,
                            axum::Json(json!({ "done": what, "command": id })),
                        )
                            .into_response())
                    }
                }
            }
            #[cfg(not(feature = "canary"))]
            Err(unknown("canary", &name, std::iter::empty::<&String>()))
        }
        .await,
    )
}

#[cfg_attr(not(feature = "rollout"), allow(unused_variables))]
async fn rollout(
    State(inner): Shared,
    Path((name, action)): Path<(String, String)>,
    req: Request<Body>,
) -> Response {
    answer(
        async {
            let who = operator(&req)?;
            let change = body(req, &[]).await?;
            #[cfg(feature = "rollout")]
            {
                let r = inner
                    .rollouts
                    .get(&name)
                    .ok_or_else(|| unknown("rollout", &name, inner.rollouts.keys()))?;
                match action.as_str() {
                    "pause" => r.pause(),
                    "resume" => r.resume(),
                    "abort" => r.abort(),
                    _ => return Err(Refusal::field("action", "one of pause, resume, abort")),
                }
                let what = format!("rollout.{action}");
                changed!(what.as_str(), who, change.reason, rollout = name);
                Ok(done(&what))
            }
            #[cfg(not(feature = "rollout"))]
            Err(unknown("rollout", &name, std::iter::empty::<&String>()))
        }
        .await,
    )
}

#[cfg_attr(not(feature = "config"), allow(unused_variables))]
async fn config(State(inner): Shared, req: Request<Body>) -> Response {
    answer(
        async {
            let who = operator(&req)?;
            let change = body(req, &["toml"]).await?;
            #[cfg(feature = "config")]
            {
                let reloader = inner.config.as_ref().ok_or_else(|| {
                    Refusal::field("toml", "no config stack registered with this admin router")
                })?;
                let text = change.string("toml")?.ok_or_else(|| {
                    Refusal::field("toml", "required: the whole configuration file")
                })?;
                // The field the stack names is a path in the document (`limits.api.quota`).
                reloader
                    .reload_toml(text)
                    .map_err(|e| Refusal::field(e.field().to_owned(), e.rule().to_owned()))?;
                changed!("config.reload", who, change.reason);
                Ok(done("config.reload"))
            }
            #[cfg(not(feature = "config"))]
            Err(Refusal::field("toml", "this build has no feature `config`"))
        }
        .await,
    )
}

fn unknown<'a>(field: &str, name: &str, known: impl Iterator<Item = &'a String>) -> Refusal {
    let known: Vec<&str> = known.map(String::as_str).collect();
    Refusal::field(
        field,
        format!(
            "no {field} named `{name}`; registered: [{}]",
            known.join(", ")
        ),
    )
}

impl Inner {
    fn controller(&self) -> Result<&degrade_core::Controller, Refusal> {
        self.controller.as_ref().ok_or_else(|| {
            Refusal::field("level", "no controller registered with this admin router")
        })
    }

    /// Ends the pin of `generation` if no later pin or unpin replaced it.
    fn expire(&self, generation: u64) {
        let mut pin = super::lock(&self.pin);
        if pin.generation != generation {
            return;
        }
        pin.generation += 1;
        pin.expires = None;
        if let Some(c) = &self.controller {
            c.unpin();
        }
        changed!("level.unpin", "expiry", "the pin's ttl ended");
    }
}
