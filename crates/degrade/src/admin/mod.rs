//! An admin router (feature `admin`): read every registered layer's state and steer it at run
//! time over HTTP, through the handles the layers already have.
//!
//! [`Admin`] collects the handles (`Controller`, `DegradeLayer`, `QuotaHandle`,
//! `BreakerHandle`, `CanaryHandle` + `Gates`, `RolloutHandle`) and [`Admin::router`] turns them
//! into an axum [`Router`](axum::Router) that the service mounts **under its own auth layer**.
//! The auth layer says who is calling by inserting an [`Operator`] into the request's
//! extensions; a request without one is refused with 401, so a router mounted without auth
//! changes nothing.
//!
//! | method and path | body (JSON) | what |
//! |---|---|---|
//! | `GET /status` | | level, pin and its expiry, signals, admission, rate limits, breakers, canaries, rollouts |
//! | `POST /level/pin` | `level`, `ttl` (optional, humantime: `"10m"`), `reason` | `Controller::pin`; unpinned when the ttl ends |
//! | `POST /level/unpin` | `reason` | `Controller::unpin` |
//! | `POST /breakers/{name}/{force-open, force-close, reset}` | `reason` | the `BreakerHandle` method |
//! | `POST /quotas/{name}` | `quota`, `period` (humantime), `burst` (each optional), `reason` | `QuotaHandle::set` of the current config with those fields changed |
//! | `POST /canaries/{name}/{promote, abort, pause, resume}` | `reason` | the `Gates` method; for a fleet canary, the `FleetGates` method (who: the operator, why: the reason) |
//! | `POST /rollouts/{name}/{pause, resume, abort}` | `reason` | the `RolloutHandle` method |
//! | `POST /config` | `toml` (the whole file), `reason` | `config::Reloader::reload_toml` (feature `config`): all or nothing |
//!
//! Every change is a `tracing` event (target `degrade::admin`) with `what`, `who` (the
//! [`Operator`]) and `why` (the `reason`, required). Bad input — an unknown name, an invalid
//! value, a missing `reason`, a body that is not a JSON object — is a 400 whose JSON names the
//! field (`{"field": "quota", "error": "..."}`), and nothing changes.
//!
//! ```
//! use axum::body::Body;
//! use degrade::admin::{Admin, Operator};
//! use degrade::{Controller, Level};
//! use http::Request;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let controller = Controller::new(Default::default()).unwrap();
//! let admin = Admin::new().controller(controller.clone()).router();
//! // The service's own auth layer sets the operator; here, everyone is "alice".
//! let app = axum::Router::new().nest("/admin", admin).layer(axum::middleware::map_request(
//!     |mut req: Request<Body>| async move {
//!         req.extensions_mut().insert(Operator::new("alice"));
//!         req
//!     },
//! ));
//!
//! let pin = Request::post("/admin/level/pin")
//!     .body(Body::from(r#"{"level": "heavy", "ttl": "10m", "reason": "incident 42"}"#))
//!     .unwrap();
//! assert_eq!(app.clone().oneshot(pin).await.unwrap().status(), 200);
//! assert_eq!(controller.level(), Level::Heavy);
//!
//! let bad = Request::post("/admin/level/pin")
//!     .body(Body::from(r#"{"level": "panic", "reason": "typo"}"#))
//!     .unwrap();
//! assert_eq!(app.oneshot(bad).await.unwrap().status(), 400); // {"field": "level", ..}
//! assert_eq!(controller.level(), Level::Heavy); // unchanged
//! # }
//! ```

mod handlers;
mod input;
mod status;

use degrade_core::degrade::DegradeSnapshot;
use degrade_core::{Controller, DegradeLayer};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Who is calling: the auth layer in front of the admin router inserts one into the request's
/// extensions. Requests without one are refused (401).
///
/// ```
/// let who = degrade::admin::Operator::new("alice@ops");
/// assert_eq!(who.name(), "alice@ops");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator(String);

impl Operator {
    /// The operator named `name` (a user, a service account).
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The operator's name, as written in the change events.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Read<T> = Box<dyn Fn() -> T + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A breaker's handle without its type parameters.
#[cfg(feature = "breaker")]
trait BreakerOps: Send + Sync {
    fn snapshot(&self) -> degrade_breaker::BreakerSnapshot;
    fn force_open(&self);
    fn force_close(&self);
    fn reset(&self);
}

#[cfg(feature = "breaker")]
impl<C, K> BreakerOps for degrade_breaker::BreakerHandle<C, K>
where
    C: Send + Sync + 'static,
    K: degrade_core::Clock + Send + Sync + 'static,
{
    fn snapshot(&self) -> degrade_breaker::BreakerSnapshot {
        degrade_breaker::BreakerHandle::snapshot(self)
    }
    fn force_open(&self) {
        degrade_breaker::BreakerHandle::force_open(self)
    }
    fn force_close(&self) {
        degrade_breaker::BreakerHandle::force_close(self)
    }
    fn reset(&self) {
        degrade_breaker::BreakerHandle::reset(self)
    }
}

#[cfg(feature = "ratelimit")]
struct RateLimitEntry {
    quota: degrade_ratelimit::QuotaHandle,
    snapshot: Read<degrade_ratelimit::RateLimitSnapshot>,
}

#[cfg(feature = "canary")]
enum CanaryEntry {
    /// A canary with its own controller on this instance.
    Local {
        handle: degrade_canary::CanaryHandle,
        gates: degrade_canary::Gates,
    },
    /// This instance's part in a fleet rollout: gates go to Redis, the leader applies them.
    #[cfg(feature = "redis")]
    Fleet {
        handle: degrade_canary::CanaryHandle,
        status: degrade_canary::fleet::FleetCanaryStatus,
        gates: degrade_canary::fleet::FleetGates,
    },
}

/// The pin the admin router made, if it is still the one in force.
#[derive(Debug, Default)]
struct Pin {
    /// Bumped by every pin and unpin: an expiry timer acts only if its pin is the latest.
    generation: u64,
    expires: Option<tokio::time::Instant>,
}

#[derive(Default)]
struct Inner {
    controller: Option<Controller>,
    pin: Mutex<Pin>,
    admission: BTreeMap<String, Read<DegradeSnapshot>>,
    #[cfg(feature = "triggers")]
    monitor: Option<tokio::sync::watch::Receiver<Arc<degrade_triggers::MonitorSnapshot>>>,
    #[cfg(feature = "ratelimit")]
    rate_limits: BTreeMap<String, RateLimitEntry>,
    #[cfg(feature = "breaker")]
    breakers: BTreeMap<String, Box<dyn BreakerOps>>,
    #[cfg(feature = "canary")]
    canaries: BTreeMap<String, CanaryEntry>,
    #[cfg(feature = "rollout")]
    rollouts: BTreeMap<String, degrade_rollout::RolloutHandle>,
    #[cfg(feature = "config")]
    config: Option<crate::config::Reloader>,
}

/// The handles the admin router reads and steers; see the [module documentation](self).
///
/// ```
/// use degrade::admin::Admin;
/// let admin = Admin::new().controller(degrade::Controller::new(Default::default()).unwrap());
/// let _router: axum::Router = admin.router(); // mount it under your auth layer
/// ```
#[derive(Default)]
pub struct Admin {
    inner: Inner,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// An admin with nothing registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// The level controller: the level in the status, and pin / unpin.
    pub fn controller(mut self, controller: Controller) -> Self {
        self.inner.controller = Some(controller);
        self
    }

    /// A `DegradeLayer`'s adaptive limit and counts in the status, as `name`.
    pub fn admission<P, M>(mut self, name: &str, layer: &DegradeLayer<P, M>) -> Self
    where
        DegradeLayer<P, M>: Send + Sync + 'static,
    {
        let layer = layer.clone();
        self.inner
            .admission
            .insert(name.to_owned(), Box::new(move || layer.snapshot()));
        self
    }

    /// A running `Monitor`'s signals in the status.
    #[cfg(feature = "triggers")]
    pub fn monitor(mut self, monitor: &degrade_triggers::MonitorHandle) -> Self {
        self.inner.monitor = Some(monitor.subscribe());
        self
    }

    /// A rate limit as `name`: its quota and counts in the status, `POST /quotas/{name}`.
    #[cfg(feature = "ratelimit")]
    pub fn rate_limit<E, W, C, M>(
        mut self,
        name: &str,
        layer: &degrade_ratelimit::RateLimitLayer<E, W, C, M>,
    ) -> Self
    where
        E: degrade_core::key::Keyed,
        W: Send + Sync + 'static,
        C: degrade_core::Clock,
        degrade_ratelimit::RateLimitLayer<E, W, C, M>: Send + Sync + 'static,
    {
        let l = layer.clone();
        self.inner.rate_limits.insert(
            name.to_owned(),
            RateLimitEntry {
                quota: layer.quota_handle(),
                snapshot: Box::new(move || l.snapshot()),
            },
        );
        self
    }

    /// A breaker as `name`: its state in the status, force-open / force-close / reset.
    #[cfg(feature = "breaker")]
    pub fn breaker<C, K>(mut self, name: &str, handle: degrade_breaker::BreakerHandle<C, K>) -> Self
    where
        C: Send + Sync + 'static,
        K: degrade_core::Clock + Send + Sync + 'static,
    {
        self.inner
            .breakers
            .insert(name.to_owned(), Box::new(handle));
        self
    }

    /// A canary as `name`: the router's weight and arms and the controller's step and last
    /// judgement in the status; promote / abort / pause / resume through its `Gates`.
    #[cfg(feature = "canary")]
    pub fn canary(
        mut self,
        name: &str,
        handle: degrade_canary::CanaryHandle,
        gates: degrade_canary::Gates,
    ) -> Self {
        self.inner
            .canaries
            .insert(name.to_owned(), CanaryEntry::Local { handle, gates });
        self
    }

    /// A fleet canary as `name` (features `canary` and `redis`): this instance's router
    /// weight and arms and the fleet's state, leader and fencing token in the status; promote
    /// / abort / pause / resume go to the whole fleet through `gates`
    /// ([`FleetCanary::gates`](degrade_canary::fleet::FleetCanary::gates)), recorded with the
    /// [`Operator`] as who and the `reason` as why, and applied by the rollout's leader. A
    /// finished rollout answers 409, Redis out of reach 503.
    ///
    /// ```no_run
    /// use degrade::admin::Admin;
    /// use degrade::canary::Canary;
    /// use degrade::canary::fleet::{FleetCanary, FleetCanaryConfig};
    /// # #[tokio::main] async fn main() {
    /// # let router = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// # let mut cfg = FleetCanaryConfig::default(); cfg.instance = "a".into();
    /// let fleet = FleetCanary::new(cfg, router.handle()).unwrap();
    /// let task = fleet.spawn();
    /// let admin = Admin::new().fleet_canary("v2", router.handle(), task.status(), fleet.gates());
    /// # drop(admin);
    /// # }
    /// ```
    #[cfg(all(feature = "canary", feature = "redis"))]
    pub fn fleet_canary(
        mut self,
        name: &str,
        handle: degrade_canary::CanaryHandle,
        status: degrade_canary::fleet::FleetCanaryStatus,
        gates: degrade_canary::fleet::FleetGates,
    ) -> Self {
        self.inner.canaries.insert(
            name.to_owned(),
            CanaryEntry::Fleet {
                handle,
                status,
                gates,
            },
        );
        self
    }

    /// A rollout as `name`: its status, pause / resume / abort.
    #[cfg(feature = "rollout")]
    pub fn rollout(mut self, name: &str, handle: degrade_rollout::RolloutHandle) -> Self {
        self.inner.rollouts.insert(name.to_owned(), handle);
        self
    }

    /// A stack built from a config file: `POST /config` reloads it from a TOML document.
    #[cfg(feature = "config")]
    pub fn config(mut self, reloader: crate::config::Reloader) -> Self {
        self.inner.config = Some(reloader);
        self
    }

    /// The axum router; mount it (`Router::nest("/admin", ..)`) under the service's auth layer.
    pub fn router(self) -> axum::Router {
        handlers::router(Arc::new(self.inner))
    }
}
