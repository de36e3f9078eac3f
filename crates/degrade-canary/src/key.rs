//! Sticky keys and the forced-arm override.
//!
//! The keys are degrade's one extractor family, [`degrade_core::key`], re-exported here. A
//! [`StickyKey`] turns a request's key into a bucket in `0..10_000` with a hash that is the same
//! in every process (or `None`: not keyed, then the router's deterministic stride decides), so a
//! user stays on one arm across instances and restarts. It is implemented for [`Global`] (no
//! key), [`from_fn`] closures returning a `u64` id, and (feature `http`) `HeaderKey`,
//! `GrpcMetadataKey`, `CookieKey` and `PeerIp`. A [`ForceArm`] may pin a request to one arm,
//! for testers and smoke checks; the HTTP override is honoured only when an allow-list predicate
//! accepts the request, so a client cannot opt itself into (or out of) a release.

use crate::arm::Arm;
use crate::hash;
pub use degrade_core::key::*;

/// Where a request's sticky bucket comes from.
///
/// ```
/// use degrade_canary::key::{from_fn, Global, StickyKey};
/// assert_eq!(StickyKey::<u64>::bucket(&Global, &7), None);
/// let by_user = from_fn(|user: &u64| Some(*user));
/// assert_eq!(by_user.bucket(&7), by_user.bucket(&7));
/// assert!(by_user.bucket(&7).is_some());
/// ```
pub trait StickyKey<R>: Send + Sync + 'static {
    /// The request's bucket in `0..10_000`, or `None` when it carries no key.
    fn bucket(&self, req: &R) -> Option<u16>;
}

/// No key: every request goes through the deterministic stride.
impl<R> StickyKey<R> for Global {
    #[inline]
    fn bucket(&self, _: &R) -> Option<u16> {
        None
    }
}

/// A closure returning a numeric id (a user or tenant id, or a hash you computed with
/// [`hash::hash_bytes`]).
///
/// ```
/// use degrade_canary::key::{from_fn, StickyKey};
/// use degrade_canary::hash::hash_bytes;
/// struct Req { user: Option<String> }
/// let k = from_fn(|r: &Req| r.user.as_deref().map(|u| hash_bytes(u.as_bytes())));
/// assert!(k.bucket(&Req { user: Some("ann".into()) }).is_some());
/// assert!(k.bucket(&Req { user: None }).is_none());
/// ```
impl<R, F> StickyKey<R> for KeyFn<F, u64>
where
    F: Fn(&R) -> Option<u64> + Send + Sync + 'static,
{
    #[inline]
    fn bucket(&self, req: &R) -> Option<u16> {
        self.extract(req).map(hash::bucket_u64)
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
pub use self::http_keys::HeaderOverride;

#[cfg(feature = "http")]
mod http_keys {
    use super::{CookieKey, ForceArm, GrpcMetadataKey, HeaderKey, KeyExtractor, PeerIp, StickyKey};
    use crate::arm::Arm;
    use crate::hash;
    use degrade_core::ConfigError;
    use http::HeaderName;
    use std::net::IpAddr;

    /// The bucket of a header's value (the first one). A request without the header is
    /// unkeyed.
    ///
    /// ```
    /// use degrade_canary::key::{HeaderKey, StickyKey};
    /// let k = HeaderKey::new("x-user-id").unwrap();
    /// let req = http::Request::builder().header("x-user-id", "42").body(()).unwrap();
    /// assert_eq!(k.bucket(&req), Some(degrade_canary::hash::bucket(b"42")));
    /// assert!(k.bucket(&http::Request::new(())).is_none());
    /// ```
    impl<B> StickyKey<http::Request<B>> for HeaderKey {
        #[inline]
        fn bucket(&self, req: &http::Request<B>) -> Option<u16> {
            self.value(req).map(hash::bucket)
        }
    }

    /// The bucket of an ASCII gRPC metadata entry's value.
    impl<B> StickyKey<http::Request<B>> for GrpcMetadataKey {
        #[inline]
        fn bucket(&self, req: &http::Request<B>) -> Option<u16> {
            self.value(req).map(hash::bucket)
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
    impl<B> StickyKey<http::Request<B>> for CookieKey {
        #[inline]
        fn bucket(&self, req: &http::Request<B>) -> Option<u16> {
            self.value(req).map(hash::bucket)
        }
    }

    /// The bucket of the client's network (see [`PeerIp`]): a client keeps its arm while its
    /// address stays in the same /64 (IPv6) or address (IPv4).
    impl<B> StickyKey<http::Request<B>> for PeerIp {
        fn bucket(&self, req: &http::Request<B>) -> Option<u16> {
            Some(match self.extract(req)? {
                IpAddr::V4(a) => hash::bucket(&a.octets()),
                IpAddr::V6(a) => hash::bucket(&a.octets()),
            })
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
