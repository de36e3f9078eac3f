//! Key extractors: which budget a request spends.
//!
//! A [`KeyExtractor`] returns the key of a request, or `None`. Requests without a key share one
//! budget of their own (the *keyless* budget), so a client cannot escape the limit by leaving
//! its key out. [`Global`] gives every request `None`: one budget for everything.
//!
//! With feature `http`: `PeerIp` (the TCP peer, or the client named in `X-Forwarded-For`
//! when the peer is a trusted proxy), `HeaderKey` and `GrpcMetadataKey`. Any closure
//! `Fn(&R) -> Option<K>` becomes one with [`from_fn`].

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

/// The key type of an extractor (separate from [`KeyExtractor`] so that a layer's key store
/// does not depend on the request type).
///
/// ```
/// use degrade_ratelimit::key::{from_fn, Keyed};
/// fn key_of<K: Keyed>(_: &K) -> Option<K::Key> { None }
/// let by_tenant = from_fn(|t: &String| Some(t.clone()));
/// let none: Option<String> = key_of(&by_tenant);
/// assert!(none.is_none());
/// ```
pub trait Keyed: Send + Sync + 'static {
    /// The key type.
    type Key: Hash + Eq + Send + Sync + 'static;
}

/// Finds the key of a request.
///
/// ```
/// use degrade_ratelimit::key::{from_fn, KeyExtractor};
/// let by_tenant = from_fn(|req: &(u32, &str)| Some(req.0));
/// assert_eq!(by_tenant.extract(&(7, "/")), Some(7));
/// ```
pub trait KeyExtractor<R>: Keyed {
    /// The request's key, or `None` for the shared keyless budget.
    fn extract(&self, request: &R) -> Option<Self::Key>;
}

/// A closure as a key extractor: `from_fn(|req: &Request<B>| Some(tenant(req)))`.
///
/// ```
/// use degrade_ratelimit::key::{from_fn, KeyExtractor};
/// let k = from_fn(|n: &u64| (*n > 0).then_some(*n % 10));
/// assert_eq!(k.extract(&13), Some(3));
/// assert_eq!(k.extract(&0), None);
/// ```
pub fn from_fn<F, R, K>(f: F) -> KeyFn<F, K>
where
    F: Fn(&R) -> Option<K> + Send + Sync + 'static,
    K: Hash + Eq + Send + Sync + 'static,
{
    KeyFn {
        f,
        _key: PhantomData,
    }
}

/// A key extractor made by [`from_fn`].
///
/// ```
/// use degrade_ratelimit::key::{from_fn, KeyFn};
/// let k: KeyFn<_, u8> = from_fn(|r: &u8| Some(*r));
/// # let _ = k;
/// ```
pub struct KeyFn<F, K> {
    f: F,
    _key: PhantomData<fn() -> K>,
}

impl<F: Clone, K> Clone for KeyFn<F, K> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _key: PhantomData,
        }
    }
}

impl<F, K> fmt::Debug for KeyFn<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFn").finish_non_exhaustive()
    }
}

impl<F, K> Keyed for KeyFn<F, K>
where
    F: Send + Sync + 'static,
    K: Hash + Eq + Send + Sync + 'static,
{
    type Key = K;
}

impl<R, K, F> KeyExtractor<R> for KeyFn<F, K>
where
    F: Fn(&R) -> Option<K> + Send + Sync + 'static,
    K: Hash + Eq + Send + Sync + 'static,
{
    #[inline]
    fn extract(&self, request: &R) -> Option<K> {
        (self.f)(request)
    }
}

/// No key: every request spends the one shared budget.
///
/// ```
/// use degrade_ratelimit::key::{Global, KeyExtractor};
/// assert_eq!(KeyExtractor::<&str>::extract(&Global, &"any"), None);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl Keyed for Global {
    type Key = NoKey;
}

impl<R> KeyExtractor<R> for Global {
    #[inline(always)]
    fn extract(&self, _: &R) -> Option<NoKey> {
        None
    }
}

/// The key type of [`Global`]: it has no values, so a global limit never touches a key store.
///
/// ```
/// use degrade_ratelimit::key::{Keyed, Global, NoKey};
/// let _: Option<<Global as Keyed>::Key> = None::<NoKey>;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoKey {}

impl fmt::Display for NoKey {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

/// A key stored as a seeded 64-bit hash of a header or metadata value. The seed is random per
/// extractor (per process), so it is a local key only: it has no `Display`, and fleet mode,
/// which needs a key every host spells the same way, does not accept it.
///
/// ```
/// # #[cfg(feature = "http")] {
/// use degrade_ratelimit::key::{HashedKey, HeaderKey, KeyExtractor};
/// let k = HeaderKey::new("x-api-key").unwrap();
/// let req = http::Request::builder().header("x-api-key", "a").body(()).unwrap();
/// let _: HashedKey = k.extract(&req).unwrap();
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub struct HashedKey(u64);

#[cfg(feature = "http")]
pub use self::http_impl::{Cidr, GrpcMetadataKey, HeaderKey, PeerIp};

#[cfg(feature = "http")]
mod http_impl {
    use super::{HashedKey, KeyExtractor, Keyed};
    use degrade_core::ConfigError;
    use http::{HeaderName, Request};
    use std::hash::{BuildHasher, RandomState};
    use std::net::{IpAddr, SocketAddr};
    use std::str::FromStr;

    /// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
    ///
    /// ```
    /// use degrade_ratelimit::key::Cidr;
    /// let net: Cidr = "10.0.0.0/8".parse().unwrap();
    /// assert!(net.contains("10.1.2.3".parse().unwrap()));
    /// assert!(!net.contains("11.0.0.1".parse().unwrap()));
    /// assert_eq!("10.0.0.0/40".parse::<Cidr>().unwrap_err().field(), "trusted_proxies");
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cidr {
        addr: IpAddr,
        prefix: u8,
    }

    impl Cidr {
        /// Whether `ip` lies in the network.
        ///
        /// ```
        /// # use degrade_ratelimit::key::Cidr;
        /// let one: Cidr = "192.168.1.7".parse().unwrap();
        /// assert!(one.contains("192.168.1.7".parse().unwrap()));
        /// ```
        pub fn contains(&self, ip: IpAddr) -> bool {
            match (self.addr, canonical(ip)) {
                (IpAddr::V4(n), IpAddr::V4(a)) => {
                    let mask = u32::MAX
                        .checked_shl(32 - u32::from(self.prefix))
                        .unwrap_or(0);
                    u32::from(n) & mask == u32::from(a) & mask
                }
                (IpAddr::V6(n), IpAddr::V6(a)) => {
                    let mask = u128::MAX
                        .checked_shl(128 - u32::from(self.prefix))
                        .unwrap_or(0);
                    u128::from(n) & mask == u128::from(a) & mask
                }
                _ => false,
            }
        }
    }

    fn canonical(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        }
    }

    impl FromStr for Cidr {
        type Err = ConfigError;
        fn from_str(s: &str) -> Result<Self, ConfigError> {
            let bad = || ConfigError::new("trusted_proxies", format!("`{s}` is not an IP network"));
            let (a, p) = match s.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (s, None),
            };
            let addr = canonical(a.trim().parse::<IpAddr>().map_err(|_| bad())?);
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match p {
                Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
                None => max,
            };
            if prefix > max {
                return Err(bad());
            }
            Ok(Cidr { addr, prefix })
        }
    }

    /// The client's IP address: the TCP peer (from the request's extensions: a
    /// `std::net::SocketAddr`, or with feature `axum` axum's `ConnectInfo<SocketAddr>`), or,
    /// when that peer is a trusted proxy, the right-most address in `X-Forwarded-For` that is
    /// not itself a trusted proxy. A peer that is not trusted cannot choose its key by sending
    /// the header.
    ///
    /// ```
    /// use degrade_ratelimit::key::{KeyExtractor, PeerIp};
    /// use std::net::{IpAddr, SocketAddr};
    ///
    /// let key = PeerIp::behind(["10.0.0.0/8"]).unwrap();
    /// let mut req = http::Request::builder()
    ///     .header("x-forwarded-for", "203.0.113.9, 10.0.0.2")
    ///     .body(()).unwrap();
    /// req.extensions_mut().insert(SocketAddr::from(([10, 0, 0, 1], 4000)));
    /// assert_eq!(key.extract(&req), Some("203.0.113.9".parse::<IpAddr>().unwrap()));
    ///
    /// // An untrusted peer is its own key, whatever it claims.
    /// req.extensions_mut().insert(SocketAddr::from(([198, 51, 100, 1], 4000)));
    /// assert_eq!(key.extract(&req), Some("198.51.100.1".parse::<IpAddr>().unwrap()));
    /// ```
    #[derive(Debug, Clone, Default)]
    pub struct PeerIp {
        trusted: Vec<Cidr>,
    }

    impl PeerIp {
        /// The TCP peer's address; `X-Forwarded-For` is ignored.
        ///
        /// ```
        /// # use degrade_ratelimit::key::PeerIp;
        /// let _ = PeerIp::new();
        /// ```
        pub fn new() -> Self {
            Self::default()
        }

        /// Trusts `X-Forwarded-For` from peers in these networks.
        ///
        /// ```
        /// # use degrade_ratelimit::key::PeerIp;
        /// assert_eq!(PeerIp::behind(["10.0.0.0/8", "nonsense"]).unwrap_err().field(), "trusted_proxies[1]");
        /// ```
        pub fn behind<I, S>(trusted: I) -> Result<Self, ConfigError>
        where
            I: IntoIterator<Item = S>,
            S: AsRef<str>,
        {
            let trusted = trusted
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    s.as_ref().parse::<Cidr>().map_err(|e| {
                        ConfigError::new(format!("trusted_proxies[{i}]"), e.rule().to_owned())
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(Self { trusted })
        }

        fn is_trusted(&self, ip: IpAddr) -> bool {
            self.trusted.iter().any(|c| c.contains(ip))
        }
    }

    impl Keyed for PeerIp {
        type Key = IpAddr;
    }

    impl<B> KeyExtractor<Request<B>> for PeerIp {
        fn extract(&self, req: &Request<B>) -> Option<IpAddr> {
            let peer = canonical(peer_addr(req)?.ip());
            if !self.is_trusted(peer) {
                return Some(peer);
            }
            let mut client = peer;
            // Walk right to left across every X-Forwarded-For line: the right-most entries were
            // appended by the proxies nearest to us.
            for line in req.headers().get_all("x-forwarded-for").iter().rev() {
                let Ok(text) = line.to_str() else {
                    return Some(client);
                };
                for hop in text.rsplit(',') {
                    let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                        return Some(client);
                    };
                    client = canonical(ip);
                    if !self.is_trusted(client) {
                        return Some(client);
                    }
                }
            }
            Some(client)
        }
    }

    fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
        if let Some(a) = req.extensions().get::<SocketAddr>() {
            return Some(*a);
        }
        #[cfg(feature = "axum")]
        if let Some(a) = req
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
        {
            return Some(a.0);
        }
        None
    }

    /// The value of one request header (an API key, a tenant id). Requests without it share the
    /// keyless budget.
    ///
    /// The key stored is a 64-bit SipHash of the value under a random per-extractor seed, not
    /// the value: every entry has the same small size whatever the header's length, extracting
    /// it never allocates, and without the seed nobody can make two values collide on purpose.
    ///
    /// ```
    /// use degrade_ratelimit::key::{HeaderKey, KeyExtractor};
    /// let key = HeaderKey::new("x-api-key").unwrap();
    /// let req = |v: &str| http::Request::builder().header("x-api-key", v).body(()).unwrap();
    /// assert_eq!(key.extract(&req("k1")), key.extract(&req("k1")));
    /// assert_ne!(key.extract(&req("k1")), key.extract(&req("k2")));
    /// assert_eq!(key.extract(&http::Request::new(())), None);
    /// assert!(HeaderKey::new("bad header").is_err());
    /// ```
    #[derive(Debug, Clone)]
    pub struct HeaderKey {
        name: HeaderName,
        seed: RandomState,
    }

    impl HeaderKey {
        /// Keys by header `name`.
        ///
        /// ```
        /// # use degrade_ratelimit::key::HeaderKey;
        /// assert_eq!(HeaderKey::new("").unwrap_err().field(), "header");
        /// ```
        pub fn new(name: &str) -> Result<Self, ConfigError> {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ConfigError::new("header", format!("`{name}` is not a header name"))
            })?;
            Ok(Self {
                name,
                seed: RandomState::new(),
            })
        }
    }

    impl Keyed for HeaderKey {
        type Key = HashedKey;
    }

    impl<B> KeyExtractor<Request<B>> for HeaderKey {
        #[inline]
        fn extract(&self, req: &Request<B>) -> Option<HashedKey> {
            let v = req.headers().get(&self.name)?;
            Some(HashedKey(self.seed.hash_one(v.as_bytes())))
        }
    }

    /// The value of one gRPC metadata entry (carried as an HTTP/2 header; binary `-bin` entries
    /// are keyed by their encoded form), stored as a seeded hash like [`HeaderKey`].
    ///
    /// ```
    /// use degrade_ratelimit::key::{GrpcMetadataKey, KeyExtractor};
    /// let key = GrpcMetadataKey::new("tenant").unwrap();
    /// let req = http::Request::builder().header("tenant", "acme").body(()).unwrap();
    /// assert!(key.extract(&req).is_some());
    /// assert_eq!(GrpcMetadataKey::new("Tenant").unwrap_err().field(), "metadata");
    /// ```
    #[derive(Debug, Clone)]
    pub struct GrpcMetadataKey(HeaderKey);

    impl GrpcMetadataKey {
        /// Keys by metadata entry `name` (lower case, as gRPC requires).
        ///
        /// ```
        /// # use degrade_ratelimit::key::GrpcMetadataKey;
        /// assert!(GrpcMetadataKey::new("x-user-bin").is_ok());
        /// ```
        pub fn new(name: &str) -> Result<Self, ConfigError> {
            let valid = !name.is_empty()
                && !name.starts_with("grpc-")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !valid {
                return Err(ConfigError::new(
                    "metadata",
                    format!("`{name}` is not a gRPC metadata key (lower-case, not `grpc-`)"),
                ));
            }
            HeaderKey::new(name)
                .map(Self)
                .map_err(|e| ConfigError::new("metadata", e.rule().to_owned()))
        }
    }

    impl Keyed for GrpcMetadataKey {
        type Key = HashedKey;
    }

    impl<B> KeyExtractor<Request<B>> for GrpcMetadataKey {
        #[inline]
        fn extract(&self, req: &Request<B>) -> Option<HashedKey> {
            self.0.extract(req)
        }
    }
}
