//! Typed rejections and their one mapping to HTTP and gRPC.
//!
//! Every degrade layer rejects with a public concrete struct ([`Shed`] here, `RateLimited` and
//! `CircuitOpen` in their crates) returned as the service's `BoxError`, so callers write
//! `err.is::<Shed>()`. Every such struct implements [`Rejection`], which says what *kind* of
//! refusal it is and when to retry. The kind alone decides the wire form, written once here:
//!
//! | [`RejectionKind`] | HTTP | gRPC |
//! |---|---|---|
//! | `Overloaded` (load shed) | 503 + `Retry-After` | UNAVAILABLE |
//! | `RateLimited` | 429 + `Retry-After` | RESOURCE_EXHAUSTED + `RetryInfo` |
//! | `Unavailable` (circuit open) | 503 + `Retry-After` | UNAVAILABLE |
//!
//! gRPC statuses carry a `google.rpc.RetryInfo` detail whenever a retry delay is known: the
//! OTLP specification makes RESOURCE_EXHAUSTED retryable only with it.
//!
//! A service error of unknown origin can be mapped too: [`find`] recognises every rejection
//! type that was [`register`]ed (each degrade crate registers its own when a layer is built).
//!
//! ## Local rejections are marked
//!
//! A rejection says nothing about the health of the service behind the layer that made it, so
//! the breaker, the canary's statistics and the error-rate trigger must not count it as a
//! failure of that service. Every answer a degrade layer makes itself carries a [`Rejected`]
//! mark, and every classifier in [`outcome`](crate::Classifier) reads it as
//! [`Outcome::Ignored`](crate::Outcome::Ignored):
//!
//! | answer mode | what the outer layers see | the mark |
//! |---|---|---|
//! | errors | `Err(BoxError)` holding the rejection | the rejection itself ([`find`]) |
//! | HTTP ([`http::response`]) | a 429 / 503 response | a [`Rejected`] response extension |
//! | gRPC ([`grpc::response`]) | a trailers-only response | a [`Rejected`] response extension |
//! | [`grpc::status`] | a `tonic::Status` | the status's `source()` is a [`Rejected`] |
//!
//! The mark lives in process memory only (an `http::Extensions` entry, an error source) and
//! never crosses the wire. That is deliberate: a 503 that a *remote* degrade layer answered
//! (the `degrade-rejection` header, or `degrade-rejection` gRPC metadata, tells a human which
//! policy refused) is a real sign that the remote service is overloaded, and a breaker in its
//! client should count it. A header that any peer can set cannot be trusted to hide failures.

use crate::level::Level;
use crate::priority::Priority;
use std::any::{Any, TypeId};
use std::error::Error;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// What kind of refusal a rejection is; decides the HTTP status and gRPC code.
///
/// ```
/// use degrade_core::RejectionKind;
/// assert_eq!(RejectionKind::RateLimited.http_status(), 429);
/// assert_eq!(RejectionKind::Overloaded.http_status(), 503);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// The service is shedding load (HTTP 503, gRPC UNAVAILABLE).
    Overloaded,
    /// The caller is over a rate limit (HTTP 429, gRPC RESOURCE_EXHAUSTED).
    RateLimited,
    /// A dependency is unavailable, e.g. a circuit is open (HTTP 503, gRPC UNAVAILABLE).
    Unavailable,
}

impl RejectionKind {
    /// The HTTP status code for this kind.
    ///
    /// ```
    /// # use degrade_core::RejectionKind;
    /// assert_eq!(RejectionKind::Unavailable.http_status(), 503);
    /// ```
    pub const fn http_status(self) -> u16 {
        match self {
            RejectionKind::RateLimited => 429,
            RejectionKind::Overloaded | RejectionKind::Unavailable => 503,
        }
    }

    /// The gRPC status code for this kind (8 = RESOURCE_EXHAUSTED, 14 = UNAVAILABLE).
    ///
    /// ```
    /// # use degrade_core::RejectionKind;
    /// assert_eq!(RejectionKind::RateLimited.grpc_code(), 8);
    /// assert_eq!(RejectionKind::Overloaded.grpc_code(), 14);
    /// ```
    pub const fn grpc_code(self) -> i32 {
        match self {
            RejectionKind::RateLimited => 8,
            RejectionKind::Overloaded | RejectionKind::Unavailable => 14,
        }
    }
}

/// A local refusal to serve a request, by any degrade layer.
///
/// ```
/// use degrade_core::{Level, Priority, Rejection, RejectionKind, Shed};
/// use std::time::Duration;
///
/// let shed = Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(2));
/// assert_eq!(shed.kind(), RejectionKind::Overloaded);
/// assert_eq!(shed.retry_after(), Some(Duration::from_secs(2)));
/// assert_eq!(shed.reason(), "shed");
/// ```
pub trait Rejection: Error + Send + Sync + 'static {
    /// The kind of refusal.
    fn kind(&self) -> RejectionKind;
    /// When the caller may retry, if known.
    fn retry_after(&self) -> Option<Duration>;
    /// A short machine-readable reason (`"shed"`, `"rate_limited"`, `"circuit_open"`), used in
    /// counters and the `degrade-rejection` response header.
    fn reason(&self) -> &'static str;

    /// Headers of its own that the HTTP answer adds after `Retry-After` and
    /// `degrade-rejection` (feature `http`): a rate limit's `RateLimit-Policy` and `RateLimit`
    /// fields, for instance. None by default.
    #[cfg(feature = "http")]
    fn http_headers(&self, headers: &mut ::http::HeaderMap) {
        let _ = headers;
    }
}

/// The request was shed by the [`DegradeLayer`](crate::DegradeLayer): at `level`, the policy
/// admits no more of `priority`.
///
/// ```
/// use degrade_core::{Level, Priority, Shed};
/// use std::time::Duration;
///
/// let s = Shed::new(Level::Moderate, Priority::Low, Duration::from_secs(1));
/// assert_eq!(s.to_string(), "shed low-priority request at degradation level moderate");
/// let err: degrade_core::BoxError = Box::new(s);
/// assert!(err.is::<Shed>());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Shed {
    /// The level at which the request was shed.
    pub level: Level,
    /// The request's priority.
    pub priority: Priority,
    /// When to retry.
    pub retry_after: Duration,
}

impl Shed {
    /// A shed rejection.
    ///
    /// ```
    /// # use degrade_core::{Level, Priority, Shed}; use std::time::Duration;
    /// let s = Shed::new(Level::Light, Priority::Background, Duration::from_secs(5));
    /// assert_eq!(s.level, Level::Light);
    /// ```
    pub fn new(level: Level, priority: Priority, retry_after: Duration) -> Self {
        Self {
            level,
            priority,
            retry_after,
        }
    }
}

impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shed {}-priority request at degradation level {}",
            self.priority, self.level
        )
    }
}

impl Error for Shed {}

impl Rejection for Shed {
    fn kind(&self) -> RejectionKind {
        RejectionKind::Overloaded
    }
    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after)
    }
    fn reason(&self) -> &'static str {
        "shed"
    }
}

/// The mark of a request that a degrade layer in this process refused: what is left of the
/// rejection once it has been turned into a response or a `tonic::Status` (see the
/// [module documentation](self#local-rejections-are-marked)).
///
/// Every classifier reads a marked answer as [`Outcome::Ignored`](crate::Outcome::Ignored), so
/// one layer's refusals never open a breaker, sink a canary or raise the error rate of another
/// layer stacked around it. A custom classifier finds the mark with
/// [`http::rejected`] (feature `http`) or [`find`] (errors, statuses).
///
/// ```
/// use degrade_core::rejection::{Rejected, Rejection};
/// use degrade_core::{Level, Priority, RejectionKind, Shed};
/// use std::time::Duration;
///
/// let mark = Rejected::of(&Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(2)));
/// assert_eq!(mark.kind, RejectionKind::Overloaded);
/// assert_eq!(mark.reason, "shed");
/// assert_eq!(mark.retry_after, Some(Duration::from_secs(2)));
/// assert_eq!(mark.to_string(), "request refused by degrade (shed)");
/// // The mark is itself a rejection, so `find` sees it in an error's source chain.
/// let err: degrade_core::BoxError = Box::new(mark);
/// assert_eq!(degrade_core::rejection::find(&*err).unwrap().reason(), "shed");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejected {
    /// The kind of refusal.
    pub kind: RejectionKind,
    /// The rejection's [`reason`](Rejection::reason).
    pub reason: &'static str,
    /// The rejection's [`retry_after`](Rejection::retry_after).
    pub retry_after: Option<Duration>,
}

impl Rejected {
    /// The mark of `rejection`.
    ///
    /// ```
    /// # use degrade_core::rejection::Rejected;
    /// # use degrade_core::{Level, Priority, Shed}; use std::time::Duration;
    /// let shed = Shed::new(Level::Light, Priority::Background, Duration::from_secs(1));
    /// assert_eq!(Rejected::of(&shed).reason, "shed");
    /// ```
    pub fn of(rejection: &dyn Rejection) -> Self {
        Self {
            kind: rejection.kind(),
            reason: rejection.reason(),
            retry_after: rejection.retry_after(),
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request refused by degrade ({})", self.reason)
    }
}

impl Error for Rejected {}

impl Rejection for Rejected {
    fn kind(&self) -> RejectionKind {
        self.kind
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
    fn reason(&self) -> &'static str {
        self.reason
    }
}

type Caster = for<'a> fn(&'a (dyn Error + 'static)) -> Option<&'a dyn Rejection>;
type AnyCaster = for<'a> fn(&'a dyn Any) -> Option<&'a dyn Rejection>;

/// A registered rejection type.
struct Registered {
    id: TypeId,
    cast: Caster,
    cast_any: AnyCaster,
}

/// The most rejection types [`register`] keeps (degrade's own take three).
const MAX_REGISTERED: usize = 64;

/// Append-only, so that [`find`] — run on every error a classifier judges — reads it with
/// plain acquire loads: no lock, no write to a line shared between threads. Writers take
/// [`REGISTERING`].
static REGISTRY: [OnceLock<Registered>; MAX_REGISTERED] =
    [const { OnceLock::new() }; MAX_REGISTERED];
static REGISTERING: Mutex<()> = Mutex::new(());

fn registered() -> impl Iterator<Item = &'static Registered> {
    REGISTRY.iter().map_while(OnceLock::get)
}

fn cast<'a, T: Rejection>(err: &'a (dyn Error + 'static)) -> Option<&'a dyn Rejection> {
    err.downcast_ref::<T>().map(|r| r as &dyn Rejection)
}

fn cast_any<T: Rejection>(value: &dyn Any) -> Option<&dyn Rejection> {
    value.downcast_ref::<T>().map(|r| r as &dyn Rejection)
}

/// The rejection that `value` is, when a service's error type is a rejection type itself
/// rather than a `BoxError` (a `Service<Error = CircuitOpen>`, say).
pub(crate) fn find_any(value: &dyn Any) -> Option<&dyn Rejection> {
    if let Some(r) = cast_any::<Shed>(value).or_else(|| cast_any::<Rejected>(value)) {
        return Some(r);
    }
    registered().find_map(|r| (r.cast_any)(value))
}

/// Makes [`find`] recognise rejection type `T`. Idempotent; degrade crates call it when one of
/// their layers is built, so users rarely need to. [`Shed`] and [`Rejected`] are always
/// recognised. Up to 64 types are kept (degrade's own take three); a type registered beyond
/// that is not recognised, and a warning says so.
///
/// ```
/// use degrade_core::rejection::{find, register, Rejection};
/// use degrade_core::RejectionKind;
/// use std::time::Duration;
///
/// #[derive(Debug)]
/// struct QuotaGone;
/// impl std::fmt::Display for QuotaGone {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("quota gone") }
/// }
/// impl std::error::Error for QuotaGone {}
/// impl Rejection for QuotaGone {
///     fn kind(&self) -> RejectionKind { RejectionKind::RateLimited }
///     fn retry_after(&self) -> Option<Duration> { None }
///     fn reason(&self) -> &'static str { "quota_gone" }
/// }
///
/// register::<QuotaGone>();
/// let err: degrade_core::BoxError = Box::new(QuotaGone);
/// assert_eq!(find(&*err).unwrap().reason(), "quota_gone");
/// ```
pub fn register<T: Rejection>() {
    let id = TypeId::of::<T>();
    if registered().any(|r| r.id == id) {
        return;
    }
    let _writer = REGISTERING.lock().unwrap_or_else(|e| e.into_inner());
    if registered().any(|r| r.id == id) {
        return;
    }
    let entry = Registered {
        id,
        cast: cast::<T>,
        cast_any: cast_any::<T>,
    };
    match REGISTRY.iter().find(|slot| slot.get().is_none()) {
        Some(slot) => {
            let _ = slot.set(entry);
        }
        None => tracing::warn!(
            target: "degrade::rejection",
            rejection = std::any::type_name::<T>(),
            "{MAX_REGISTERED} rejection types are registered already; this one is not recognised"
        ),
    }
}

/// The rejection inside `err`, if it is one of degrade's (or a [`register`]ed) rejection types.
/// Walks the error's `source()` chain, so a rejection wrapped by another layer is still found.
///
/// ```
/// use degrade_core::{rejection::find, Level, Priority, Shed};
/// use std::time::Duration;
///
/// let err: degrade_core::BoxError = Box::new(Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(1)));
/// assert_eq!(find(&*err).unwrap().reason(), "shed");
/// let other: degrade_core::BoxError = "boom".into();
/// assert!(find(&*other).is_none());
/// ```
pub fn find<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a dyn Rejection> {
    let mut cur: Option<&'a (dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = cast::<Shed>(e).or_else(|| cast::<Rejected>(e)) {
            return Some(r);
        }
        let found = registered().find_map(|r| (r.cast)(e));
        if found.is_some() {
            return found;
        }
        cur = e.source();
    }
    None
}

/// The `Retry-After` value in whole seconds, rounded up so a client never retries early
/// (saturating at `u64::MAX` for the longest durations, which cannot be rounded up).
///
/// ```
/// use degrade_core::rejection::retry_after_secs;
/// use std::time::Duration;
/// assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
/// assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
/// assert_eq!(retry_after_secs(Duration::ZERO), 0);
/// assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
/// ```
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

#[cfg(feature = "http")]
pub mod http {
    //! The HTTP form of rejections (feature `http`): 429 or 503 with `Retry-After`.

    use super::{Rejected, Rejection, find, retry_after_secs};
    use ::http::{HeaderValue, Response, StatusCode, header};
    use std::error::Error;

    /// The name of the header that says which degrade policy refused the request.
    pub const REJECTION_HEADER: &str = "degrade-rejection";

    /// The HTTP response for `rejection`: the kind's status, `Retry-After` in whole seconds
    /// (rounded up), `degrade-rejection: <reason>`, an empty body, and the [`Rejected`] mark
    /// as a response extension (see [`rejected`]).
    ///
    /// ```
    /// use degrade_core::{rejection, Level, Priority, Shed};
    /// use std::time::Duration;
    ///
    /// let shed = Shed::new(Level::Heavy, Priority::Low, Duration::from_millis(1500));
    /// let res: http::Response<String> = rejection::http::response(&shed);
    /// assert_eq!(res.status(), 503);
    /// assert_eq!(res.headers()["retry-after"], "2");
    /// assert_eq!(res.headers()["degrade-rejection"], "shed");
    /// assert!(rejection::http::rejected(&res).is_some());
    /// ```
    pub fn response<B: Default>(rejection: &dyn Rejection) -> Response<B> {
        let mut res = Response::new(B::default());
        res.extensions_mut().insert(Rejected::of(rejection));
        *res.status_mut() = StatusCode::from_u16(rejection.kind().http_status())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let h = res.headers_mut();
        if let Some(d) = rejection.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
        }
        h.insert(
            REJECTION_HEADER,
            HeaderValue::from_static(rejection.reason()),
        );
        rejection.http_headers(h);
        res
    }

    /// The HTTP response for a service error, if it is a rejection (see
    /// [`find`]); for use in axum's `HandleErrorLayer`.
    ///
    /// ```
    /// use degrade_core::{rejection, BoxError, Level, Priority, Shed};
    /// use std::time::Duration;
    ///
    /// let err: BoxError = Box::new(Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(1)));
    /// let res: http::Response<()> = rejection::http::error_response(&*err).unwrap();
    /// assert_eq!(res.status(), 503);
    /// ```
    pub fn error_response<B: Default>(err: &(dyn Error + 'static)) -> Option<Response<B>> {
        find(err).map(response)
    }

    /// The [`Rejected`] mark of a response that a degrade layer in this process answered
    /// itself (HTTP or gRPC answer mode), or `None` for any other response — including one
    /// that a remote degrade layer answered, whose `degrade-rejection` header is only
    /// informative (see the [module documentation](super#local-rejections-are-marked)).
    ///
    /// ```
    /// use degrade_core::{rejection, Level, Priority, Shed};
    /// use std::time::Duration;
    ///
    /// let shed = Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(1));
    /// let ours: http::Response<()> = rejection::http::response(&shed);
    /// assert_eq!(rejection::http::rejected(&ours).unwrap().reason, "shed");
    ///
    /// // The same status and header from the network are not a local rejection.
    /// let theirs = http::Response::builder()
    ///     .status(503)
    ///     .header("degrade-rejection", "shed")
    ///     .body(())
    ///     .unwrap();
    /// assert!(rejection::http::rejected(&theirs).is_none());
    /// ```
    pub fn rejected<B>(response: &Response<B>) -> Option<&Rejected> {
        response.extensions().get::<Rejected>()
    }
}

#[cfg(feature = "grpc")]
pub mod grpc {
    //! The gRPC form of rejections (feature `grpc`): RESOURCE_EXHAUSTED or UNAVAILABLE, with a
    //! `google.rpc.RetryInfo` detail when the retry delay is known.
    //!
    //! [`retry_delay`] reads the detail back from a status a peer sent. It is total: whatever
    //! bytes arrive, it returns a delay in `[0, MAX_RETRY_DELAY]` or `None`, and never panics.

    use super::{Rejected, Rejection, find};
    use prost::Message as _;
    use std::error::Error;
    use std::sync::Arc;
    use std::time::Duration;
    use tonic_types::{RetryInfo, pb};

    /// The longest retry delay [`retry_delay`] reports: a longer `RetryInfo` is clamped to it.
    ///
    /// One hour. A retry delay is advice about one pending request (an OTLP batch, a call a
    /// client holds in memory), not a schedule: OpenTelemetry's exporters give up on a batch
    /// after their export timeout (10 s by default) and clients' retry budgets are measured in
    /// seconds to minutes, so honouring a longer wait only keeps the request's memory and the
    /// caller's task alive for nothing. A peer that asks for more than an hour is broken or
    /// hostile (`seconds = i64::MAX` is 292 billion years), and an hour still lets an honest
    /// server shed a client for a long incident: the client asks again after it and is told
    /// again.
    ///
    /// ```
    /// use degrade_core::rejection::grpc::{retry_delay, status, MAX_RETRY_DELAY};
    /// use degrade_core::{Level, Priority, Shed};
    /// use std::time::Duration;
    ///
    /// let day = Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(86_400));
    /// assert_eq!(retry_delay(&status(&day)), Some(MAX_RETRY_DELAY));
    /// ```
    pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

    /// The [`tonic::Status`] for `rejection`, marked as a local rejection: its `source()` is
    /// the rejection's [`Rejected`] mark (which never leaves the process), and its metadata
    /// say `degrade-rejection: <reason>` to whoever receives it.
    ///
    /// ```
    /// use degrade_core::{rejection, Level, Priority, Shed};
    /// use std::time::Duration;
    ///
    /// let s = rejection::grpc::status(&Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(3)));
    /// assert_eq!(s.code(), tonic::Code::Unavailable);
    /// assert_eq!(rejection::grpc::retry_delay(&s), Some(Duration::from_secs(3)));
    /// assert_eq!(s.metadata().get("degrade-rejection").unwrap(), "shed");
    /// assert!(rejection::find(&s).is_some()); // the mark, through `source()`
    /// ```
    pub fn status(rejection: &dyn Rejection) -> tonic::Status {
        let code = tonic::Code::from_i32(rejection.kind().grpc_code());
        let message = rejection.to_string();
        let mut status = match rejection.retry_after() {
            Some(delay) => {
                let (details, message) = status_details(code, message, delay);
                tonic::Status::with_details(code, message, details.into())
            }
            None => tonic::Status::new(code, message),
        };
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(rejection.reason()) {
            status
                .metadata_mut()
                .insert(super::http::REJECTION_HEADER, v);
        }
        status.set_source(Arc::new(Rejected::of(rejection)));
        status
    }

    /// The `google.rpc.Status` bytes of a rejection with one `RetryInfo` detail, built from
    /// tonic-types' generated messages (its `RetryInfo` conversion writes a delay beyond the
    /// protobuf range as the maximum) and encoded by prost in one buffer. The message is moved
    /// into the `Status` for the encoding and handed back, so it is not copied. The bytes are
    /// those of tonic-types' `StatusExt::with_error_details` (tested), which also copies the
    /// message and fills a ten-detail vector: about 50 ns more per rejection, see
    /// `benches/examples/grpc_reject.rs`.
    fn status_details(code: tonic::Code, message: String, delay: Duration) -> (Vec<u8>, String) {
        let retry = pb::RetryInfo::from(RetryInfo::new(Some(delay)));
        let status = pb::Status {
            code: code as i32,
            message,
            details: vec![prost_types::Any {
                type_url: RetryInfo::TYPE_URL.to_owned(),
                value: retry.encode_to_vec(),
            }],
        };
        let bytes = status.encode_to_vec();
        (bytes, status.message)
    }

    /// The [`tonic::Status`] for a service error, if it is a rejection.
    ///
    /// ```
    /// use degrade_core::{rejection, BoxError, Level, Priority, Shed};
    /// use std::time::Duration;
    /// let err: BoxError = Box::new(Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(1)));
    /// assert_eq!(rejection::grpc::error_status(&*err).unwrap().code(), tonic::Code::Unavailable);
    /// ```
    pub fn error_status(err: &(dyn Error + 'static)) -> Option<tonic::Status> {
        find(err).map(status)
    }

    /// A complete gRPC "trailers-only" HTTP response for `rejection`, for layers that answer
    /// themselves in front of a tonic service; marked with a [`Rejected`] extension like the
    /// HTTP form (see [`http::rejected`](super::http::rejected)).
    ///
    /// ```
    /// use degrade_core::{rejection, Level, Priority, Shed};
    /// use std::time::Duration;
    /// let res: http::Response<()> = rejection::grpc::response(&Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(1)));
    /// assert_eq!(res.status(), 200);
    /// assert_eq!(res.headers()["grpc-status"], "14");
    /// assert_eq!(res.headers()["degrade-rejection"], "shed");
    /// assert!(rejection::http::rejected(&res).is_some());
    /// ```
    pub fn response<B: Default>(rejection: &dyn Rejection) -> http::Response<B> {
        // The status's metadata become the `degrade-rejection` header.
        let mut res = status(rejection).into_http::<B>();
        res.extensions_mut().insert(Rejected::of(rejection));
        res
    }

    /// The retry delay carried by a status's `google.rpc.RetryInfo` detail, if any.
    ///
    /// Total on any input. The status and its detail are decoded with tonic-types' generated
    /// `google.rpc` types; the `google.protobuf.Duration` is read as `seconds + nanos / 10⁹`
    /// (so `nanos` outside `[0, 10⁹)`, or of the other sign, is normalised rather than
    /// refused), a negative total is zero (as tonic-types' `RetryInfo` and
    /// opentelemetry-otlp read it), and a total above [`MAX_RETRY_DELAY`] is clamped to it.
    /// Malformed details, or a `RetryInfo` without a delay, are `None`.
    ///
    /// ```
    /// # use degrade_core::rejection::grpc::{retry_delay, MAX_RETRY_DELAY};
    /// use tonic_types::{ErrorDetails, StatusExt};
    /// use std::time::Duration;
    ///
    /// assert_eq!(retry_delay(&tonic::Status::unavailable("down")), None);
    /// let week = tonic::Status::with_error_details(
    ///     tonic::Code::Unavailable,
    ///     "down",
    ///     ErrorDetails::with_retry_info(Some(Duration::from_secs(7 * 86_400))),
    /// );
    /// assert_eq!(retry_delay(&week), Some(MAX_RETRY_DELAY));
    /// ```
    pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
        decode_retry_info(status.details())
    }

    // The wire types are tonic-types' (`google.rpc.Status`, `google.rpc.RetryInfo`, generated
    // by the tonic project with prost). The one step done here is the conversion of the
    // peer's `google.protobuf.Duration`: prost-types' own conversion negates `i64::MIN` (an
    // overflow panic in debug builds) and knows no ceiling.
    fn decode_retry_info(details: &[u8]) -> Option<Duration> {
        let status = pb::Status::decode(details).ok()?;
        let any = status
            .details
            .iter()
            .find(|any| any.type_url == RetryInfo::TYPE_URL)?;
        let info = pb::RetryInfo::decode(any.value.as_slice()).ok()?;
        // A RetryInfo without a retry_delay carries no delay.
        info.retry_delay.map(|d| clamp_delay(d.seconds, d.nanos))
    }

    /// A `google.protobuf.Duration` as a delay in `[0, MAX_RETRY_DELAY]`; see [`retry_delay`].
    fn clamp_delay(seconds: i64, nanos: i32) -> Duration {
        let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
        let max = MAX_RETRY_DELAY.as_nanos() as i128;
        // Within an hour: the value fits a u64 of nanoseconds.
        Duration::from_nanos(total.clamp(0, max) as u64)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use tonic_types::{ErrorDetails, StatusExt as _};

        #[test]
        fn a_rejections_details_are_the_bytes_tonic_types_writes() {
            for d in [
                Duration::ZERO,
                Duration::from_nanos(1),
                Duration::from_millis(1500),
                MAX_RETRY_DELAY,
                Duration::from_secs(315_576_000_000),
                Duration::from_secs(315_576_000_001),
                Duration::MAX,
            ] {
                let message = "shed at heavy".to_owned();
                let ours = status_details(tonic::Code::Unavailable, message.clone(), d);
                let theirs = tonic::Status::with_error_details(
                    tonic::Code::Unavailable,
                    message.clone(),
                    ErrorDetails::with_retry_info(Some(d)),
                );
                assert_eq!(ours.0, theirs.details(), "delay {d:?}");
                assert_eq!(ours.1, message);
            }
        }

        fn with_delay(d: Duration) -> tonic::Status {
            tonic::Status::with_error_details(
                tonic::Code::ResourceExhausted,
                "slow down",
                ErrorDetails::with_retry_info(Some(d)),
            )
        }

        fn with_proto_delay(seconds: i64, nanos: i32) -> tonic::Status {
            let info = pb::RetryInfo {
                retry_delay: Some(prost_types::Duration { seconds, nanos }),
            };
            let status = pb::Status {
                code: 8,
                message: String::new(),
                details: vec![prost_types::Any {
                    type_url: RetryInfo::TYPE_URL.into(),
                    value: info.encode_to_vec(),
                }],
            };
            tonic::Status::with_details(
                tonic::Code::ResourceExhausted,
                "x",
                status.encode_to_vec().into(),
            )
        }

        #[test]
        fn retry_info_round_trips() {
            for d in [
                Duration::from_millis(1),
                Duration::from_secs(3),
                Duration::new(3599, 999_999_999),
                MAX_RETRY_DELAY,
            ] {
                assert_eq!(retry_delay(&with_delay(d)), Some(d));
            }
        }

        #[test]
        fn a_delay_beyond_protobuf_range_encodes_and_reads_as_the_maximum() {
            assert_eq!(
                retry_delay(&with_delay(Duration::MAX)),
                Some(MAX_RETRY_DELAY)
            );
        }

        #[test]
        fn a_negative_retry_delay_reads_as_zero() {
            for (s, n) in [
                (-1, 0),
                (0, -1),
                (i64::MIN, 0),
                (i64::MIN, i32::MIN),
                (-1, 999_999_999),
            ] {
                assert_eq!(
                    retry_delay(&with_proto_delay(s, n)),
                    Some(Duration::ZERO),
                    "{s} {n}"
                );
            }
        }

        #[test]
        fn an_out_of_range_retry_delay_is_clamped_not_a_panic() {
            for (s, n) in [
                (i64::MAX, i32::MAX),
                (-1, 1_000_000_000 + 5),
                (3600, 1),
                (0, i32::MAX),
            ] {
                assert!(retry_delay(&with_proto_delay(s, n)).unwrap() <= MAX_RETRY_DELAY);
            }
            assert_eq!(
                retry_delay(&with_proto_delay(-1, 2_000_000_000)),
                Some(Duration::from_secs(1))
            );
        }

        #[test]
        fn garbage_details_do_not_panic() {
            for b in [&[0xff_u8; 12][..], &[0x1a, 0x7f], &[0x1a, 0x02, 0x0a, 0x09]] {
                assert_eq!(decode_retry_info(b), None);
            }
        }
    }
}
