//! Key extractors: which key a request belongs to, one family for every keyed layer.
//!
//! A [`KeyExtractor`] returns the key of a request, or `None`. The rate limiter gives each key
//! its own budget (requests without a key share one keyless budget, so leaving the key out
//! buys nothing), the keyed breaker its own breaker, and the canary a sticky arm (requests
//! without a key follow the weight's stride). [`Global`] gives every request `None`.
//!
//! | extractor | key | from |
//! |---|---|---|
//! | [`from_fn`] | any `Hash + Eq` | a closure `Fn(&R) -> Option<K>` |
//! | [`Global`] | none | every request keyless |
//! | `HeaderKey` (feature `http`) | [`HashedKey`] | one header's value |
//! | `GrpcMetadataKey` (feature `http`) | [`HashedKey`] | one ASCII gRPC metadata entry |
//! | `CookieKey` (feature `http`) | [`HashedKey`] | one cookie's value |
//! | `PeerIp` (feature `http`) | `IpAddr` | the TCP peer, or the client a trusted proxy names |
//!
//! Each constructor validates its argument once, the same way for every crate, and a
//! [`ConfigError`](crate::ConfigError) names the argument: `header`, `metadata`, `cookie`,
//! `trusted_proxies[i]`, `ipv4_prefix`, `ipv6_prefix`. Binary (`-bin`) gRPC metadata is refused
//! in any case: its value travels base64-encoded, with or without padding, so one value has
//! several spellings and would be several keys.
//!
//! ```
//! use degrade_core::key::{from_fn, Global, KeyExtractor};
//! let by_tenant = from_fn(|req: &(u32, &str)| Some(req.0));
//! assert_eq!(by_tenant.extract(&(7, "/")), Some(7));
//! assert_eq!(KeyExtractor::<(u32, &str)>::extract(&Global, &(7, "/")), None);
//! ```

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

/// The key type of an extractor (separate from [`KeyExtractor`] so that a layer's key store
/// does not depend on the request type).
///
/// ```
/// use degrade_core::key::{from_fn, Keyed};
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
/// use degrade_core::key::{from_fn, KeyExtractor};
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
/// use degrade_core::key::{from_fn, KeyExtractor};
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
/// use degrade_core::key::{Global, KeyExtractor};
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
/// use degrade_core::key::{HashedKey, HeaderKey, KeyExtractor};
/// let k = HeaderKey::new("x-api-key").unwrap();
/// let req = http::Request::builder().header("x-api-key", "a").body(()).unwrap();
/// let _: HashedKey = k.extract(&req).unwrap();
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub struct HashedKey(u64);

#[cfg(feature = "http")]
pub use self::http_impl::{
    Cidr, CookieKey, ForwardedHeader, GrpcMetadataKey, HeaderKey, PeerIp, PeerIpConfig,
};

#[cfg(feature = "http")]
mod http_impl {
    use super::{HashedKey, KeyExtractor, Keyed};
    use crate::ConfigError;
    use http::{HeaderName, Request};
    use serde::{Deserialize, Serialize};
    use std::hash::{BuildHasher, RandomState};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::str::FromStr;

    /// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
    ///
    /// ```
    /// use degrade_core::key::Cidr;
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
        /// # use degrade_core::key::Cidr;
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

    /// Which header a trusted proxy names the client in.
    ///
    /// ```
    /// use degrade_core::key::ForwardedHeader;
    /// let h: ForwardedHeader = serde_json::from_str(r#""forwarded""#).unwrap();
    /// assert_eq!(h, ForwardedHeader::Forwarded);
    /// assert_eq!(ForwardedHeader::default(), ForwardedHeader::XForwardedFor);
    /// ```
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    #[non_exhaustive]
    pub enum ForwardedHeader {
        /// `X-Forwarded-For: client, proxy1, proxy2` (entries may carry a port:
        /// `203.0.113.9:5678`, `[2001:db8::1]:443`).
        #[default]
        XForwardedFor,
        /// RFC 7239 `Forwarded: for=192.0.2.60;proto=http, for="[2001:db8::17]:4711"`.
        Forwarded,
    }

    /// Configuration of [`PeerIp`]; every field has a default.
    ///
    /// ```
    /// use degrade_core::key::{PeerIp, PeerIpConfig};
    /// let cfg: PeerIpConfig = serde_json::from_str(
    ///     r#"{ "trusted_proxies": ["10.0.0.0/8"], "ipv6_prefix": 56 }"#,
    /// ).unwrap();
    /// assert!(PeerIp::from_config(&cfg).is_ok());
    /// let bad: PeerIpConfig = serde_json::from_str(r#"{ "ipv6_prefix": 129 }"#).unwrap();
    /// assert_eq!(PeerIp::from_config(&bad).unwrap_err().field(), "ipv6_prefix");
    /// ```
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    #[non_exhaustive]
    pub struct PeerIpConfig {
        /// Networks (`10.0.0.0/8`, `::1`) whose forwarding header is believed (default: none,
        /// the TCP peer is the client).
        pub trusted_proxies: Vec<String>,
        /// The header a trusted proxy names the client in (default `x_forwarded_for`).
        pub header: ForwardedHeader,
        /// How many leading bits of an IPv4 address make one key (default 32: one key per
        /// address). In 1..=32.
        pub ipv4_prefix: u8,
        /// How many leading bits of an IPv6 address make one key (default 64: one key per /64,
        /// the block a single host is usually given and picks its addresses from, so rotating
        /// addresses within it does not buy a fresh budget). In 1..=128.
        pub ipv6_prefix: u8,
    }

    impl Default for PeerIpConfig {
        fn default() -> Self {
            Self {
                trusted_proxies: Vec::new(),
                header: ForwardedHeader::XForwardedFor,
                ipv4_prefix: 32,
                ipv6_prefix: 64,
            }
        }
    }

    /// The client's IP network: the TCP peer (from the request's extensions: a
    /// `std::net::SocketAddr`, or with feature `axum` axum's `ConnectInfo<SocketAddr>`), or,
    /// when that peer is a trusted proxy, the right-most client in `X-Forwarded-For` (or
    /// `Forwarded`) that is not itself a trusted proxy. A peer that is not trusted cannot
    /// choose its key by sending the header.
    ///
    /// The key is the address cut to a prefix: IPv4 addresses whole (/32), IPv6 addresses by
    /// their /64 (see [`PeerIpConfig`]). IPv4-mapped IPv6 addresses count as IPv4.
    ///
    /// ```
    /// use degrade_core::key::{KeyExtractor, PeerIp};
    /// use std::net::{IpAddr, SocketAddr};
    ///
    /// let key = PeerIp::behind(["10.0.0.0/8"]).unwrap();
    /// let mut req = http::Request::builder()
    ///     .header("x-forwarded-for", "203.0.113.9:5678, 10.0.0.2")
    ///     .body(()).unwrap();
    /// req.extensions_mut().insert(SocketAddr::from(([10, 0, 0, 1], 4000)));
    /// assert_eq!(key.extract(&req), Some("203.0.113.9".parse::<IpAddr>().unwrap()));
    ///
    /// // An untrusted peer is its own key, whatever it claims.
    /// req.extensions_mut().insert(SocketAddr::from(([198, 51, 100, 1], 4000)));
    /// assert_eq!(key.extract(&req), Some("198.51.100.1".parse::<IpAddr>().unwrap()));
    ///
    /// // Two addresses of one IPv6 /64 are one client.
    /// let v6 = |a: &str| {
    ///     let mut r = http::Request::new(());
    ///     r.extensions_mut().insert(SocketAddr::new(a.parse().unwrap(), 443));
    ///     key.extract(&r).unwrap()
    /// };
    /// assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:aaaa::9"));
    /// assert_eq!(v6("2001:db8:1:2::1"), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    /// ```
    #[derive(Debug, Clone)]
    pub struct PeerIp {
        trusted: Vec<Cidr>,
        header: ForwardedHeader,
        v4_mask: u32,
        v6_mask: u128,
    }

    impl Default for PeerIp {
        fn default() -> Self {
            Self::new()
        }
    }

    fn mask_v4(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    fn mask_v6(prefix: u8) -> u128 {
        u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
    }

    impl PeerIp {
        /// The TCP peer's address (IPv6 by its /64); forwarding headers are ignored.
        ///
        /// ```
        /// # use degrade_core::key::{KeyExtractor, PeerIp};
        /// let mut req = http::Request::builder()
        ///     .header("x-forwarded-for", "203.0.113.9").body(()).unwrap();
        /// req.extensions_mut().insert(std::net::SocketAddr::from(([10, 0, 0, 1], 1)));
        /// assert_eq!(PeerIp::new().extract(&req), Some([10, 0, 0, 1].into()));
        /// ```
        pub fn new() -> Self {
            Self {
                trusted: Vec::new(),
                header: ForwardedHeader::XForwardedFor,
                v4_mask: mask_v4(32),
                v6_mask: mask_v6(64),
            }
        }

        /// Trusts `X-Forwarded-For` from peers in these networks.
        ///
        /// ```
        /// # use degrade_core::key::PeerIp;
        /// assert_eq!(PeerIp::behind(["10.0.0.0/8", "nonsense"]).unwrap_err().field(), "trusted_proxies[1]");
        /// ```
        pub fn behind<I, S>(trusted: I) -> Result<Self, ConfigError>
        where
            I: IntoIterator<Item = S>,
            S: AsRef<str>,
        {
            Ok(Self {
                trusted: parse_trusted(trusted)?,
                ..Self::new()
            })
        }

        /// From a [`PeerIpConfig`]; the error names the field that breaks a rule.
        ///
        /// ```
        /// use degrade_core::key::{ForwardedHeader, KeyExtractor, PeerIp, PeerIpConfig};
        /// use std::net::{IpAddr, SocketAddr};
        /// let mut cfg = PeerIpConfig::default();
        /// cfg.trusted_proxies = vec!["10.0.0.0/8".into()];
        /// cfg.header = ForwardedHeader::Forwarded;
        /// let key = PeerIp::from_config(&cfg).unwrap();
        /// let mut req = http::Request::builder()
        ///     .header("forwarded", r#"for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.2"#)
        ///     .body(()).unwrap();
        /// req.extensions_mut().insert(SocketAddr::from(([10, 0, 0, 1], 4000)));
        /// assert_eq!(key.extract(&req), Some("2001:db8:cafe::".parse::<IpAddr>().unwrap()));
        ///
        /// cfg.ipv4_prefix = 0;
        /// assert_eq!(PeerIp::from_config(&cfg).unwrap_err().field(), "ipv4_prefix");
        /// ```
        pub fn from_config(config: &PeerIpConfig) -> Result<Self, ConfigError> {
            if !(1..=32).contains(&config.ipv4_prefix) {
                return Err(ConfigError::new(
                    "ipv4_prefix",
                    format!(
                        "must be in 1..=32 (0 would put every client in one budget), got {}",
                        config.ipv4_prefix
                    ),
                ));
            }
            if !(1..=128).contains(&config.ipv6_prefix) {
                return Err(ConfigError::new(
                    "ipv6_prefix",
                    format!(
                        "must be in 1..=128 (0 would put every client in one budget), got {}",
                        config.ipv6_prefix
                    ),
                ));
            }
            Ok(Self {
                trusted: parse_trusted(&config.trusted_proxies)?,
                header: config.header,
                v4_mask: mask_v4(config.ipv4_prefix),
                v6_mask: mask_v6(config.ipv6_prefix),
            })
        }

        fn is_trusted(&self, ip: IpAddr) -> bool {
            self.trusted.iter().any(|c| c.contains(ip))
        }

        /// The key of a client address: canonical, cut to the configured prefix.
        fn key_of(&self, ip: IpAddr) -> IpAddr {
            match canonical(ip) {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & self.v4_mask)),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & self.v6_mask)),
            }
        }

        /// The client named by the forwarding headers of a request from a trusted proxy
        /// `peer`: the right-most entry that is not a trusted proxy; if an entry cannot be
        /// read, the entry to its right (the last address a trusted proxy vouched for).
        ///
        /// Computed in one pass from the left, without allocating: the walk from the right
        /// stops at the right-most *stopper* (an unreadable or untrusted entry), so only the
        /// last stopper and what follows it matter.
        fn forwarded_client<B>(&self, req: &Request<B>, peer: IpAddr) -> IpAddr {
            let mut client: Option<IpAddr> = None;
            let mut after_unreadable = false;
            let mut stopped = false;
            let mut step = |hop: Option<IpAddr>| match hop.map(canonical) {
                None => {
                    stopped = true;
                    after_unreadable = true;
                    client = None;
                }
                Some(ip) if !self.is_trusted(ip) => {
                    stopped = true;
                    after_unreadable = false;
                    client = Some(ip);
                }
                Some(ip) => {
                    if after_unreadable || (!stopped && client.is_none()) {
                        client = Some(ip);
                        after_unreadable = false;
                    }
                }
            };
            let name = match self.header {
                ForwardedHeader::XForwardedFor => "x-forwarded-for",
                ForwardedHeader::Forwarded => "forwarded",
            };
            for line in req.headers().get_all(name) {
                let Ok(text) = line.to_str() else {
                    step(None);
                    continue;
                };
                match self.header {
                    ForwardedHeader::XForwardedFor => {
                        for hop in text.split(',') {
                            step(parse_hop(hop));
                        }
                    }
                    ForwardedHeader::Forwarded => {
                        forwarded_for(text, |v| step(v.and_then(parse_hop)));
                    }
                }
            }
            client.unwrap_or(peer)
        }
    }

    fn parse_trusted<I, S>(trusted: I) -> Result<Vec<Cidr>, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        trusted
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_ref().parse::<Cidr>().map_err(|e| {
                    ConfigError::new(format!("trusted_proxies[{i}]"), e.rule().to_owned())
                })
            })
            .collect()
    }

    /// A port after an address: decimal up to 65535, or an RFC 7239 obfuscated port
    /// (`_` then letters, digits, `.`, `_`, `-`).
    fn is_port(s: &str) -> bool {
        match s.strip_prefix('_') {
            Some(obf) => {
                !obf.is_empty()
                    && obf
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            }
            None => {
                !s.is_empty()
                    && s.len() <= 5
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && s.parse::<u32>().is_ok_and(|p| p <= 65535)
            }
        }
    }

    /// One forwarding entry: `203.0.113.9`, `203.0.113.9:5678`, `2001:db8::1`,
    /// `[2001:db8::1]` or `[2001:db8::1]:443`. Anything else (`unknown`, an obfuscated
    /// `_node`, a zone, garbage) is unreadable.
    fn parse_hop(hop: &str) -> Option<IpAddr> {
        let hop = hop.trim_matches([' ', '\t']);
        if let Some(rest) = hop.strip_prefix('[') {
            let (ip, after) = rest.split_once(']')?;
            if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
                return None;
            }
            return ip.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
        }
        if let Ok(ip) = hop.parse::<IpAddr>() {
            return Some(ip);
        }
        let (host, port) = hop.rsplit_once(':')?;
        if !is_port(port) {
            return None;
        }
        host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }

    /// Calls `f` once per element of an RFC 7239 `Forwarded` field value, left to right, with
    /// the element's `for` value (unquoted), or `None` when the element has none, has two,
    /// or cannot be read.
    fn forwarded_for(text: &str, mut f: impl FnMut(Option<&str>)) {
        let b = text.as_bytes();
        let ows = |i: &mut usize| {
            while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
                *i += 1;
            }
        };
        let mut i = 0;
        loop {
            // One element: pairs separated by `;`, up to a `,` outside quotes.
            let mut value: Option<&str> = None;
            let mut bad = false;
            loop {
                ows(&mut i);
                let name_start = i;
                while i < b.len() && !b"=;,".contains(&b[i]) {
                    i += 1;
                }
                let name = text[name_start..i].trim_end_matches([' ', '\t']);
                if i < b.len() && b[i] == b'=' {
                    i += 1;
                    let v = if i < b.len() && b[i] == b'"' {
                        i += 1;
                        let start = i;
                        let mut escaped = false;
                        while i < b.len() && b[i] != b'"' {
                            if b[i] == b'\\' {
                                escaped = true;
                                i += 1;
                            }
                            i += 1;
                        }
                        let end = i.min(b.len());
                        if i < b.len() {
                            i += 1; // the closing quote
                        } else {
                            bad = true; // unterminated
                        }
                        // An address never needs an escape: an escaped value is unreadable.
                        (!escaped).then(|| &text[start..end])
                    } else {
                        let start = i;
                        while i < b.len() && !b";, \t".contains(&b[i]) {
                            i += 1;
                        }
                        Some(&text[start..i])
                    };
                    if name.eq_ignore_ascii_case("for") {
                        if value.is_some() {
                            bad = true;
                        }
                        value = v;
                        if v.is_none() {
                            bad = true;
                        }
                    }
                } else if !name.is_empty() {
                    bad = true;
                }
                ows(&mut i);
                if i < b.len() && b[i] == b';' {
                    i += 1;
                    continue;
                }
                if i < b.len() && b[i] != b',' {
                    // Garbage after a value: skip to the next element.
                    bad = true;
                    while i < b.len() && b[i] != b',' {
                        i += 1;
                    }
                }
                break;
            }
            f(if bad { None } else { value });
            if i >= b.len() {
                return;
            }
            i += 1; // the `,`
        }
    }

    impl Keyed for PeerIp {
        type Key = IpAddr;
    }

    impl<B> KeyExtractor<Request<B>> for PeerIp {
        fn extract(&self, req: &Request<B>) -> Option<IpAddr> {
            let peer = canonical(peer_addr(req)?.ip());
            let client = if self.is_trusted(peer) {
                self.forwarded_client(req, peer)
            } else {
                peer
            };
            Some(self.key_of(client))
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
    /// use degrade_core::key::{HeaderKey, KeyExtractor};
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
        /// # use degrade_core::key::HeaderKey;
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

        /// The bytes the key is made of: the header's value, if the request has it. For a
        /// layer that needs a hash of its own (the canary's sticky bucket must be the same in
        /// every process, so it cannot use the per-extractor seed).
        ///
        /// ```
        /// # use degrade_core::key::HeaderKey;
        /// let key = HeaderKey::new("x-user").unwrap();
        /// let req = http::Request::builder().header("x-user", "ann").body(()).unwrap();
        /// assert_eq!(key.value(&req), Some(&b"ann"[..]));
        /// assert_eq!(key.value(&http::Request::new(())), None);
        /// ```
        #[inline]
        pub fn value<'r, B>(&self, req: &'r Request<B>) -> Option<&'r [u8]> {
            req.headers().get(&self.name).map(|v| v.as_bytes())
        }
    }

    impl Keyed for HeaderKey {
        type Key = HashedKey;
    }

    impl<B> KeyExtractor<Request<B>> for HeaderKey {
        #[inline]
        fn extract(&self, req: &Request<B>) -> Option<HashedKey> {
            Some(HashedKey(self.seed.hash_one(self.value(req)?)))
        }
    }

    /// The value of one ASCII gRPC metadata entry (carried as an HTTP/2 header), stored as a
    /// seeded hash like [`HeaderKey`].
    ///
    /// ```
    /// use degrade_core::key::{GrpcMetadataKey, KeyExtractor};
    /// let key = GrpcMetadataKey::new("tenant").unwrap();
    /// let req = |t: &str| http::Request::builder().header("tenant", t).body(()).unwrap();
    /// assert_eq!(key.extract(&req("acme")), key.extract(&req("acme")));
    /// assert_ne!(key.extract(&req("acme")), key.extract(&req("initech")));
    /// assert_eq!(GrpcMetadataKey::new("Tenant").unwrap_err().field(), "metadata");
    /// ```
    #[derive(Debug, Clone)]
    pub struct GrpcMetadataKey(HeaderKey);

    impl GrpcMetadataKey {
        /// Keys by metadata entry `name`: lower case (as gRPC sends it), not reserved
        /// (`grpc-`), and not binary (`-bin`, in any case: a binary value travels
        /// base64-encoded with or without padding, so one value would be several keys).
        ///
        /// ```
        /// # use degrade_core::key::GrpcMetadataKey;
        /// assert!(GrpcMetadataKey::new("x-user-id").is_ok());
        /// assert_eq!(GrpcMetadataKey::new("x-user-bin").unwrap_err().field(), "metadata");
        /// assert!(GrpcMetadataKey::new("X-User-BIN").is_err());
        /// assert!(GrpcMetadataKey::new("grpc-timeout").is_err());
        /// ```
        pub fn new(name: &str) -> Result<Self, ConfigError> {
            let b = name.as_bytes();
            if b.len() >= 4 && b[b.len() - 4..].eq_ignore_ascii_case(b"-bin") {
                return Err(ConfigError::new(
                    "metadata",
                    format!("`{name}` is binary metadata, whose base64 text is not a stable key"),
                ));
            }
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

        /// The entry's value, if the request has it (see [`HeaderKey::value`]).
        ///
        /// ```
        /// # use degrade_core::key::GrpcMetadataKey;
        /// let key = GrpcMetadataKey::new("tenant").unwrap();
        /// let req = http::Request::builder().header("tenant", "acme").body(()).unwrap();
        /// assert_eq!(key.value(&req), Some(&b"acme"[..]));
        /// ```
        #[inline]
        pub fn value<'r, B>(&self, req: &'r Request<B>) -> Option<&'r [u8]> {
            self.0.value(req)
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

    /// The value of one cookie, stored as a seeded hash like [`HeaderKey`]. A request without
    /// the cookie has no key.
    ///
    /// ```
    /// use degrade_core::key::{CookieKey, KeyExtractor};
    /// let k = CookieKey::new("session").unwrap();
    /// let a = http::Request::builder().header("cookie", "theme=dark; session=abc").body(()).unwrap();
    /// let b = http::Request::builder().header("cookie", "session=abc").body(()).unwrap();
    /// assert_eq!(k.extract(&a), k.extract(&b));
    /// assert_eq!(k.value(&a), Some(&b"abc"[..]));
    /// assert_eq!(k.extract(&http::Request::new(())), None);
    /// ```
    #[derive(Debug, Clone)]
    pub struct CookieKey {
        name: Box<str>,
        seed: RandomState,
    }

    impl CookieKey {
        /// Keys by cookie `name`: not empty, without `=`, `;` or white space.
        ///
        /// ```
        /// # use degrade_core::key::CookieKey;
        /// assert_eq!(CookieKey::new("a=b").unwrap_err().field(), "cookie");
        /// ```
        pub fn new(name: &str) -> Result<Self, ConfigError> {
            if name.is_empty() || name.contains(['=', ';', ' ', '\t']) {
                return Err(ConfigError::new(
                    "cookie",
                    format!("`{name}` is not a cookie name (non-empty, no `=`, `;` or spaces)"),
                ));
            }
            Ok(Self {
                name: name.into(),
                seed: RandomState::new(),
            })
        }

        /// The cookie's value, if the request has it (the first one, across every `Cookie`
        /// header).
        ///
        /// ```
        /// # use degrade_core::key::CookieKey;
        /// let k = CookieKey::new("id").unwrap();
        /// let req = http::Request::builder().header("cookie", "idx=1; id=2").body(()).unwrap();
        /// assert_eq!(k.value(&req), Some(&b"2"[..]));
        /// ```
        pub fn value<'r, B>(&self, req: &'r Request<B>) -> Option<&'r [u8]> {
            for header in req.headers().get_all(http::header::COOKIE) {
                for pair in header.as_bytes().split(|&b| b == b';') {
                    let value = pair
                        .trim_ascii()
                        .strip_prefix(self.name.as_bytes())
                        .and_then(|rest| rest.strip_prefix(b"="));
                    if value.is_some() {
                        return value;
                    }
                }
            }
            None
        }
    }

    impl Keyed for CookieKey {
        type Key = HashedKey;
    }

    impl<B> KeyExtractor<Request<B>> for CookieKey {
        #[inline]
        fn extract(&self, req: &Request<B>) -> Option<HashedKey> {
            Some(HashedKey(self.seed.hash_one(self.value(req)?)))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn ip(s: &str) -> Option<IpAddr> {
            Some(s.parse().unwrap())
        }

        #[test]
        fn hops_with_ports_and_brackets_are_read() {
            assert_eq!(parse_hop(" 203.0.113.9 "), ip("203.0.113.9"));
            assert_eq!(parse_hop("203.0.113.9:5678"), ip("203.0.113.9"));
            assert_eq!(parse_hop("[2001:db8::1]:443"), ip("2001:db8::1"));
            assert_eq!(parse_hop("[2001:db8::1]"), ip("2001:db8::1"));
            assert_eq!(parse_hop("2001:db8::1"), ip("2001:db8::1"));
            assert_eq!(parse_hop("192.0.2.43:_obf"), ip("192.0.2.43"));
            for bad in [
                "",
                "unknown",
                "_hidden",
                "203.0.113.9:",
                "203.0.113.9:99999",
                "[2001:db8::1",
                "[2001:db8::1]443",
                "[203.0.113.9]",
                "2001:db8::1:443x",
                "fe80::1%eth0",
                "1.2.3.4:5:6",
                "[::1]:_",
                "\"1.2.3.4\"",
            ] {
                assert_eq!(parse_hop(bad), None, "{bad:?}");
            }
        }

        fn fors(text: &str) -> Vec<Option<String>> {
            let mut out = Vec::new();
            forwarded_for(text, |v| out.push(v.map(str::to_owned)));
            out
        }

        #[test]
        fn forwarded_elements_are_split_outside_quotes() {
            let s = |v: &str| Some(v.to_owned());
            assert_eq!(
                fors(
                    r#"for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711""#
                ),
                [s("192.0.2.60"), s("[2001:db8:cafe::17]:4711")]
            );
            assert_eq!(fors("proto=https"), [None]);
            assert_eq!(fors("for=a;for=b"), [None]);
            assert_eq!(fors(r#"for="a,b;c", for=d"#), [s("a,b;c"), s("d")]);
            assert_eq!(fors(r#"for="1.2.3.4"#), [None]);
            assert_eq!(fors(r#"for="\1.2.3.4""#), [None]);
            assert_eq!(fors("for=1.2.3.4 junk, for=5.6.7.8"), [None, s("5.6.7.8")]);
            assert_eq!(fors(",,"), [None, None, None]);
            assert_eq!(fors(" for = 1.2.3.4 "), [None]);
        }
    }
}
