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

use crate::level::Level;
use crate::priority::Priority;
use std::any::TypeId;
use std::error::Error;
use std::fmt;
use std::sync::RwLock;
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

type Caster = for<'a> fn(&'a (dyn Error + 'static)) -> Option<&'a dyn Rejection>;

static REGISTRY: RwLock<Vec<(TypeId, Caster)>> = RwLock::new(Vec::new());

fn cast<'a, T: Rejection>(err: &'a (dyn Error + 'static)) -> Option<&'a dyn Rejection> {
    err.downcast_ref::<T>().map(|r| r as &dyn Rejection)
}

/// Makes [`find`] recognise rejection type `T`. Idempotent; degrade crates call it when one of
/// their layers is built, so users rarely need to. [`Shed`] is always recognised.
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
    if REGISTRY
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|(t, _)| *t == id)
    {
        return;
    }
    let mut w = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    if !w.iter().any(|(t, _)| *t == id) {
        w.push((id, cast::<T>));
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
        if let Some(r) = cast::<Shed>(e) {
            return Some(r);
        }
        let found = REGISTRY
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find_map(|(_, c)| c(e));
        if found.is_some() {
            return found;
        }
        cur = e.source();
    }
    None
}

/// The `Retry-After` value in whole seconds, rounded up so a client never retries early.
///
/// ```
/// use degrade_core::rejection::retry_after_secs;
/// use std::time::Duration;
/// assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
/// assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
/// assert_eq!(retry_after_secs(Duration::ZERO), 0);
/// ```
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(feature = "http")]
pub mod http {
    //! The HTTP form of rejections (feature `http`): 429 or 503 with `Retry-After`.

    use super::{Rejection, find, retry_after_secs};
    use ::http::{HeaderValue, Response, StatusCode, header};
    use std::error::Error;

    /// The name of the header that says which degrade policy refused the request.
    pub const REJECTION_HEADER: &str = "degrade-rejection";

    /// The HTTP response for `rejection`: the kind's status, `Retry-After` in whole seconds
    /// (rounded up), `degrade-rejection: <reason>`, and an empty body.
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
    /// ```
    pub fn response<B: Default>(rejection: &dyn Rejection) -> Response<B> {
        let mut res = Response::new(B::default());
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
}

#[cfg(feature = "grpc")]
pub mod grpc {
    //! The gRPC form of rejections (feature `grpc`): RESOURCE_EXHAUSTED or UNAVAILABLE, with a
    //! `google.rpc.RetryInfo` detail when the retry delay is known.

    use super::{Rejection, find};
    use std::error::Error;
    use std::time::Duration;

    /// The [`tonic::Status`] for `rejection`.
    ///
    /// ```
    /// use degrade_core::{rejection, Level, Priority, Shed};
    /// use std::time::Duration;
    ///
    /// let s = rejection::grpc::status(&Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(3)));
    /// assert_eq!(s.code(), tonic::Code::Unavailable);
    /// assert_eq!(rejection::grpc::retry_delay(&s), Some(Duration::from_secs(3)));
    /// ```
    pub fn status(rejection: &dyn Rejection) -> tonic::Status {
        let code = tonic::Code::from_i32(rejection.kind().grpc_code());
        let message = rejection.to_string();
        match rejection.retry_after() {
            Some(delay) => {
                let details = encode_status_with_retry_info(code as i32, &message, delay);
                tonic::Status::with_details(code, message, details.into())
            }
            None => tonic::Status::new(code, message),
        }
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
    /// themselves in front of a tonic service.
    ///
    /// ```
    /// use degrade_core::{rejection, Level, Priority, Shed};
    /// use std::time::Duration;
    /// let res: http::Response<()> = rejection::grpc::response(&Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(1)));
    /// assert_eq!(res.status(), 200);
    /// assert_eq!(res.headers()["grpc-status"], "14");
    /// ```
    pub fn response<B: Default>(rejection: &dyn Rejection) -> http::Response<B> {
        let mut res = status(rejection).into_http::<B>();
        if let Ok(v) = http::HeaderValue::from_str(rejection.reason()) {
            res.headers_mut().insert(super::http::REJECTION_HEADER, v);
        }
        res
    }

    /// The retry delay carried by a status's `google.rpc.RetryInfo` detail, if any.
    ///
    /// ```
    /// # use degrade_core::rejection::grpc::retry_delay;
    /// assert_eq!(retry_delay(&tonic::Status::unavailable("down")), None);
    /// ```
    pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
        decode_retry_info(status.details())
    }

    const RETRY_INFO_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

    // google.rpc.Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
    // google.protobuf.Any { string type_url = 1; bytes value = 2; }
    // google.rpc.RetryInfo { google.protobuf.Duration retry_delay = 1; }
    // google.protobuf.Duration { int64 seconds = 1; int32 nanos = 2; }
    // Hand-encoded: five fields do not justify a protobuf code generator in the core crate.
    fn encode_status_with_retry_info(code: i32, message: &str, delay: Duration) -> Vec<u8> {
        let mut duration = Vec::with_capacity(16);
        put_varint_field(&mut duration, 1, delay.as_secs());
        put_varint_field(&mut duration, 2, u64::from(delay.subsec_nanos()));
        let mut retry_info = Vec::with_capacity(20);
        put_bytes_field(&mut retry_info, 1, &duration);
        let mut any = Vec::with_capacity(64);
        put_bytes_field(&mut any, 1, RETRY_INFO_URL.as_bytes());
        put_bytes_field(&mut any, 2, &retry_info);
        let mut status = Vec::with_capacity(96 + message.len());
        // Codes are small and positive; sign-extension of a negative int32 cannot occur.
        put_varint_field(&mut status, 1, u64::from(code.unsigned_abs()));
        put_bytes_field(&mut status, 2, message.as_bytes());
        put_bytes_field(&mut status, 3, &any);
        status
    }

    fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    fn put_varint_field(buf: &mut Vec<u8>, field: u64, v: u64) {
        if v != 0 {
            put_varint(buf, field << 3);
            put_varint(buf, v);
        }
    }

    fn put_bytes_field(buf: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        put_varint(buf, (field << 3) | 2);
        put_varint(buf, bytes.len() as u64);
        buf.extend_from_slice(bytes);
    }

    /// A minimal protobuf reader: (field number, wire value) pairs of one message.
    struct Fields<'a> {
        buf: &'a [u8],
    }

    enum Value<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
    }

    fn get_varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    impl<'a> Iterator for Fields<'a> {
        type Item = (u64, Value<'a>);
        fn next(&mut self) -> Option<Self::Item> {
            if self.buf.is_empty() {
                return None;
            }
            let key = get_varint(&mut self.buf)?;
            match key & 7 {
                0 => Some((key >> 3, Value::Varint(get_varint(&mut self.buf)?))),
                2 => {
                    let len = usize::try_from(get_varint(&mut self.buf)?).ok()?;
                    if len > self.buf.len() {
                        return None;
                    }
                    let (v, rest) = self.buf.split_at(len);
                    self.buf = rest;
                    Some((key >> 3, Value::Bytes(v)))
                }
                // Other wire types do not occur in these messages; stop rather than misread.
                _ => None,
            }
        }
    }

    fn decode_retry_info(status: &[u8]) -> Option<Duration> {
        for (field, value) in (Fields { buf: status }) {
            let (3, Value::Bytes(any)) = (field, value) else {
                continue;
            };
            let mut url = None;
            let mut payload = None;
            for (f, v) in (Fields { buf: any }) {
                match (f, v) {
                    (1, Value::Bytes(b)) => url = Some(b),
                    (2, Value::Bytes(b)) => payload = Some(b),
                    _ => {}
                }
            }
            if url != Some(RETRY_INFO_URL.as_bytes()) {
                continue;
            }
            for (f, v) in (Fields { buf: payload? }) {
                if let (1, Value::Bytes(d)) = (f, v) {
                    let (mut secs, mut nanos) = (0u64, 0u64);
                    for (f, v) in (Fields { buf: d }) {
                        match (f, v) {
                            (1, Value::Varint(s)) => secs = s,
                            (2, Value::Varint(n)) => nanos = n,
                            _ => {}
                        }
                    }
                    return Some(Duration::new(secs, u32::try_from(nanos).ok()?));
                }
            }
        }
        None
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn retry_info_round_trips() {
            for d in [
                Duration::from_millis(1),
                Duration::from_secs(3),
                Duration::new(100_000, 999_999_999),
            ] {
                let b = encode_status_with_retry_info(8, "slow down", d);
                assert_eq!(decode_retry_info(&b), Some(d));
            }
        }

        #[test]
        fn garbage_details_do_not_panic() {
            for b in [&[0xff_u8; 12][..], &[0x1a, 0x7f], &[0x1a, 0x02, 0x0a, 0x09]] {
                assert_eq!(decode_retry_info(b), None);
            }
        }
    }
}
