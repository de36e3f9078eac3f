//! Sticky keys and the forced-arm override.
//!
//! A [`StickyKey`] turns a request into a bucket in `0..10_000` (or `None`: not keyed, then the
//! router's deterministic stride decides). A [`ForceArm`] may pin a request to one arm, for
//! testers and smoke checks; the HTTP override is honoured only when an allow-list predicate
//! accepts the request, so a client cannot opt itself into (or out of) a release.

use crate::arm::Arm;
use crate::hash;

/// Where a request's sticky bucket comes from.
///
/// ```
/// use degrade_canary::key::{StickyKey, Unkeyed, key_fn};
/// assert_eq!(StickyKey::<u64>::bucket(&Unkeyed, &7), None);
/// let by_user = key_fn(|user: &u64| Some(*user));
/// assert_eq!(by_user.bucket(&7), by_user.bucket(&7));
/// assert!(by_user.bucket(&7).is_some());
/// ```
pub trait StickyKey<R>: Send + Sync + 'static {
    /// The request's bucket in `0..10_000`, or `None` when it carries no key.
    fn bucket(&self, req: &R) -> Option<u16>;
}

/// No key: every request goes through the deterministic stride.
///
/// ```
/// # use degrade_canary::key::{StickyKey, Unkeyed};
/// assert_eq!(StickyKey::<&str>::bucket(&Unkeyed, &"x"), None);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Unkeyed;

impl<R> StickyKey<R> for Unkeyed {
    #[inline]
    fn bucket(&self, _: &R) -> Option<u16> {
        None
    }
}

/// A key from a closure returning a numeric id (a user or tenant id, or a hash you computed
/// with [`hash::hash_bytes`]). Made by [`key_fn`].
///
/// ```
/// use degrade_canary::key::{key_fn, StickyKey};
/// use degrade_canary::hash::hash_bytes;
/// struct Req { user: Option<String> }
/// let k = key_fn(|r: &Req| r.user.as_deref().map(|u| hash_bytes(u.as_bytes())));
/// assert!(k.bucket(&Req { user: Some("ann".into()) }).is_some());
/// assert!(k.bucket(&Req { user: None }).is_none());
/// ```
#[derive(Clone, Copy)]
pub struct KeyFn<F>(F);

impl<F> std::fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyFn")
    }
}

/// A sticky key computed by `f`.
///
/// ```
/// use degrade_canary::key::{key_fn, StickyKey};
/// let k = key_fn(|n: &u32| Some(u64::from(*n)));
/// assert_eq!(k.bucket(&3), k.bucket(&3));
/// ```
pub fn key_fn<F>(f: F) -> KeyFn<F> {
    KeyFn(f)
}

impl<R, F> StickyKey<R> for KeyFn<F>
where
    F: Fn(&R) -> Option<u64> + Send + Sync + 'static,
{
    #[inline]
    fn bucket(&self, req: &R) -> Option<u16> {
        (self.0)(req).map(hash::bucket_u64)
    }
}

/// Pins a request to one arm, or not.
///
/// ```
/// use degrade_canary::key::{ForceArm, NoOverride};
/// assert_eq!(ForceArm::<u8>::forced(&NoOverride, &1), None);
/// ```
pub trait ForceArm<R>: Send + Sync + 'static {
    /// The arm this request must take, or `None` to let the weight decide.
    fn forced(&self, req: &R) -> Option<Arm>;
}

/// No override.
///
/// ```
/// # use degrade_canary::key::{ForceArm, NoOverride};
/// assert_eq!(ForceArm::<()>::forced(&NoOverride, &()), None);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOverride;

impl<R> ForceArm<R> for NoOverride {
    #[inline]
    fn forced(&self, _: &R) -> Option<Arm> {
        None
    }
}

#[cfg(feature = "http")]
pub use self::http_keys::{CookieKey, HeaderKey, HeaderOverride};

#[cfg(feature = "http")]
mod http_keys {
    use super::{ForceArm, StickyKey};
    use crate::arm::Arm;
    use crate::hash;
    use degrade_core::ConfigError;
    use http::HeaderName;

    /// The bucket of a header's value (also a gRPC metadata entry: gRPC metadata are HTTP/2
    /// headers). A request without the header is unkeyed.
    ///
    /// ```
    /// use degrade_canary::key::{HeaderKey, StickyKey};
    /// let k = HeaderKey::new("x-user-id").unwrap();
    /// let req = http::Request::builder().header("x-user-id", "42").body(()).unwrap();
    /// assert!(k.bucket(&req).is_some());
    /// assert!(k.bucket(&http::Request::new(())).is_none());
    /// assert!(HeaderKey::new("bad header").is_err());
    /// ```
    #[derive(Debug, Clone)]
    pub struct HeaderKey {
        name: HeaderName,
    }

    impl HeaderKey {
        /// Keys on header `name`; `ConfigError` if it is not a valid header name.
        ///
        /// ```
        /// # use degrade_canary::key::HeaderKey;
        /// assert!(HeaderKey::new("tenant").is_ok());
        /// ```
        pub fn new(name: &str) -> Result<Self, ConfigError> {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::new("key.header", "must be a valid header name"))?;
            Ok(Self { name })
        }

        /// Keys on gRPC metadata entry `key` (ASCII metadata only; `-bin` keys are refused in
        /// any case, since metadata keys are lower-cased on the wire: a binary value travels
        /// base64-encoded, with or without padding, so its text is not a stable key).
        ///
        /// ```
        /// # use degrade_canary::key::HeaderKey;
        /// assert!(HeaderKey::grpc_metadata("user-id").is_ok());
        /// assert!(HeaderKey::grpc_metadata("trace-bin").is_err());
        /// assert!(HeaderKey::grpc_metadata("Trace-BIN").is_err());
        /// ```
        pub fn grpc_metadata(key: &str) -> Result<Self, ConfigError> {
            let bytes = key.as_bytes();
            if bytes.len() >= 4 && bytes[bytes.len() - 4..].eq_ignore_ascii_case(b"-bin") {
                return Err(ConfigError::new(
                    "key.metadata",
                    "binary metadata keys cannot be sticky keys",
                ));
            }
            Self::new(key).map_err(|e| ConfigError::new("key.metadata", e.rule().to_owned()))
        }
    }

    impl<B> StickyKey<http::Request<B>> for HeaderKey {
        #[inline]
        fn bucket(&self, req: &http::Request<B>) -> Option<u16> {
            req.headers()
                .get(&self.name)
                .map(|v| hash::bucket(v.as_bytes()))
        }
    }

    /// The bucket of a cookie's value. A request without the cookie is unkeyed.
    ///
    /// ```
    /// use degrade_canary::key::{CookieKey, StickyKey};
    /// let k = CookieKey::new("session").unwrap();
    /// let a = http::Request::builder().header("cookie", "theme=dark; session=abc").body(()).unwrap();
    /// let b = http::Request::builder().header("cookie", "session=abc").body(()).unwrap();
    /// assert_eq!(k.bucket(&a), k.bucket(&b));
    /// assert!(k.bucket(&a).is_some());
    /// ```
    #[derive(Debug, Clone)]
    pub struct CookieKey {
        name: String,
    }

    impl CookieKey {
        /// Keys on cookie `name`; `ConfigError` if empty or containing `=`, `;` or spaces.
        ///
        /// ```
        /// # use degrade_canary::key::CookieKey;
        /// assert!(CookieKey::new("a=b").is_err());
        /// ```
        pub fn new(name: &str) -> Result<Self, ConfigError> {
            if name.is_empty() || name.contains(['=', ';', ' ']) {
                return Err(ConfigError::new(
                    "key.cookie",
                    "must be a non-empty cookie name without `=`, `;` or spaces",
                ));
            }
            Ok(Self {
                name: name.to_owned(),
            })
        }
    }

    impl<B> StickyKey<http::Request<B>> for CookieKey {
        fn bucket(&self, req: &http::Request<B>) -> Option<u16> {
            for header in req.headers().get_all(http::header::COOKIE) {
                for pair in header.as_bytes().split(|&b| b == b';') {
                    let pair = pair.trim_ascii();
                    if let Some(value) = pair
                        .strip_prefix(self.name.as_bytes())
                        .and_then(|rest| rest.strip_prefix(b"="))
                    {
                        return Some(hash::bucket(value));
                    }
                }
            }
            None
        }
    }

    /// Forces an arm from a header (`stable` or `canary`; anything else is ignored), honoured
    /// only when `allow` accepts the request (an internal network, a tester token, ...).
    ///
    /// ```
    /// use degrade_canary::{Arm, key::{ForceArm, HeaderOverride}};
    /// let o = HeaderOverride::new("x-canary", |r: &http::Request<()>| {
    ///     r.headers().get("x-tester").is_some_and(|v| v == "secret")
    /// }).unwrap();
    /// let tester = http::Request::builder()
    ///     .header("x-canary", "canary").header("x-tester", "secret").body(()).unwrap();
    /// let anyone = http::Request::builder().header("x-canary", "canary").body(()).unwrap();
    /// let odd = http::Request::builder()
    ///     .header("x-canary", "v3").header("x-tester", "secret").body(()).unwrap();
    /// assert_eq!(o.forced(&tester), Some(Arm::Canary));
    /// assert_eq!(o.forced(&anyone), None);
    /// assert_eq!(o.forced(&odd), None);
    /// ```
    #[derive(Clone)]
    pub struct HeaderOverride<F> {
        name: HeaderName,
        allow: F,
    }

    impl<F> std::fmt::Debug for HeaderOverride<F> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("HeaderOverride")
                .field("name", &self.name)
                .finish_non_exhaustive()
        }
    }

    impl<F> HeaderOverride<F> {
        /// Override header `name`, honoured when `allow(request)` is true.
        ///
        /// ```
        /// # use degrade_canary::key::HeaderOverride;
        /// assert!(HeaderOverride::new("x canary", |_: &http::Request<()>| true).is_err());
        /// ```
        pub fn new(name: &str, allow: F) -> Result<Self, ConfigError> {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::new("override.header", "must be a valid header name"))?;
            Ok(Self { name, allow })
        }
    }

    impl<B, F> ForceArm<http::Request<B>> for HeaderOverride<F>
    where
        F: Fn(&http::Request<B>) -> bool + Send + Sync + 'static,
    {
        fn forced(&self, req: &http::Request<B>) -> Option<Arm> {
            let value = req.headers().get(&self.name)?;
            let arm = value.to_str().ok()?.trim().parse::<Arm>().ok()?;
            (self.allow)(req).then_some(arm)
        }
    }
}
