//! Request priority, and the [`Prioritize`] classifiers that assign it.
//!
//! The [`DegradeLayer`](crate::DegradeLayer) admits a share of each priority that the
//! [`Policy`](crate::Policy) sets for the current level. A classifier must be cheap: it runs on
//! every request, before admission, and must not allocate. The HTTP classifiers (feature `http`)
//! read one header, compare a path against prefixes, or look at the method; the gRPC classifier
//! (feature `grpc`) matches the method path `/package.Service/Method`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How much a request matters when capacity is short. Ordered: `Critical` is the greatest.
///
/// ```
/// use degrade_core::Priority;
/// assert!(Priority::Critical > Priority::High && Priority::Low > Priority::Background);
/// assert_eq!("high".parse::<Priority>(), Ok(Priority::High));
/// assert_eq!(Priority::from_scale(255), Priority::Critical);
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Priority {
    /// Work that can wait or be dropped: prefetches, analytics, batch jobs.
    Background = 0,
    /// Nice to have.
    Low = 1,
    /// Ordinary traffic (the default).
    #[default]
    Normal = 2,
    /// Important traffic.
    High = 3,
    /// Must not be shed while anything else is admitted: payments, health checks, control plane.
    Critical = 4,
}

impl Priority {
    /// All priorities, lowest first.
    ///
    /// ```
    /// # use degrade_core::Priority;
    /// assert_eq!(Priority::ALL[4], Priority::Critical);
    /// ```
    pub const ALL: [Priority; 5] = [
        Priority::Background,
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];

    /// Index 0 (Background) to 4 (Critical).
    ///
    /// ```
    /// # use degrade_core::Priority;
    /// assert_eq!(Priority::High.index(), 3);
    /// ```
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Maps a numeric scale where a greater number is more important: 0–50 Background,
    /// 51–101 Low, 102–152 Normal, 153–203 High, 204–255 Critical.
    ///
    /// ```
    /// # use degrade_core::Priority;
    /// assert_eq!(Priority::from_scale(0), Priority::Background);
    /// assert_eq!(Priority::from_scale(128), Priority::Normal);
    /// assert_eq!(Priority::from_scale(204), Priority::Critical);
    /// ```
    pub const fn from_scale(value: u8) -> Priority {
        match value {
            0..=50 => Priority::Background,
            51..=101 => Priority::Low,
            102..=152 => Priority::Normal,
            153..=203 => Priority::High,
            _ => Priority::Critical,
        }
    }

    /// The lower-case name.
    ///
    /// ```
    /// # use degrade_core::Priority;
    /// assert_eq!(Priority::Background.as_str(), "background");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Background => "background",
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    /// Parses a name (any case) or a number on the [`from_scale`](Priority::from_scale) scale,
    /// without allocating. `None` for anything else.
    ///
    /// ```
    /// # use degrade_core::Priority;
    /// assert_eq!(Priority::parse_bytes(b"CRITICAL"), Some(Priority::Critical));
    /// assert_eq!(Priority::parse_bytes(b"250"), Some(Priority::Critical));
    /// assert_eq!(Priority::parse_bytes(b"urgent"), None);
    /// ```
    pub fn parse_bytes(value: &[u8]) -> Option<Priority> {
        let value = value.trim_ascii();
        if let Some(p) = Priority::ALL
            .into_iter()
            .find(|p| p.as_str().as_bytes().eq_ignore_ascii_case(value))
        {
            return Some(p);
        }
        if value.is_empty() || value.len() > 3 || !value.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = value.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        u8::try_from(n).ok().map(Priority::from_scale)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = crate::ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::parse_bytes(s.as_bytes()).ok_or_else(|| {
            crate::ConfigError::new(
                "priority",
                format!("unknown priority `{s}` (expected background, low, normal, high, critical or 0-255)"),
            )
        })
    }
}

/// Assigns a [`Priority`] to a request. Implemented for closures `Fn(&R) -> Priority`.
///
/// ```
/// use degrade_core::{Prioritize, Priority};
///
/// let by_path = |path: &&str| if path.starts_with("/health") { Priority::Critical } else { Priority::Normal };
/// assert_eq!(by_path.priority(&"/health/live"), Priority::Critical);
/// ```
pub trait Prioritize<R>: Send + Sync + 'static {
    /// The request's priority. Runs on the hot path: must not block or allocate.
    fn priority(&self, request: &R) -> Priority;
}

impl<R, F> Prioritize<R> for F
where
    F: Fn(&R) -> Priority + Send + Sync + 'static,
{
    #[inline]
    fn priority(&self, request: &R) -> Priority {
        self(request)
    }
}

/// Gives every request the same priority ([`Priority::Normal`] by default).
///
/// ```
/// use degrade_core::{priority::Fixed, Prioritize, Priority};
/// assert_eq!(Fixed(Priority::Low).priority(&()), Priority::Low);
/// assert_eq!(Fixed::default().0, Priority::Normal);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fixed(pub Priority);

impl<R> Prioritize<R> for Fixed {
    #[inline]
    fn priority(&self, _: &R) -> Priority {
        self.0
    }
}

/// A table of path prefixes, longest match first; shared by the HTTP route and gRPC method
/// classifiers.
#[cfg(feature = "http")]
#[derive(Debug, Clone, Default)]
struct PrefixTable {
    entries: Vec<(String, Priority)>,
}

#[cfg(feature = "http")]
impl PrefixTable {
    fn insert(&mut self, prefix: String, priority: Priority) {
        self.entries.retain(|(p, _)| *p != prefix);
        self.entries.push((prefix, priority));
        // Longest first, so the first match is the most specific one.
        self.entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
    }

    fn lookup(&self, path: &str) -> Option<Priority> {
        self.entries
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, prio)| *prio)
    }
}

#[cfg(feature = "http")]
pub use self::http_impl::{HeaderPriority, MethodPriority, RoutePriority};

#[cfg(feature = "http")]
mod http_impl {
    use super::{PrefixTable, Prioritize, Priority};
    use crate::ConfigError;
    use http::{HeaderName, Method, Request};

    /// Reads the priority from a request header (feature `http`): a name (`critical`, `high`,
    /// `normal`, `low`, `background`, any case) or a number 0–255 (see
    /// [`Priority::from_scale`]). Missing or unreadable values get the default.
    ///
    /// A client can claim any priority it likes with this header: use it behind a gateway that
    /// sets or strips it, or combine it with an authenticated identity.
    ///
    /// ```
    /// use degrade_core::priority::HeaderPriority;
    /// use degrade_core::{Prioritize, Priority};
    ///
    /// let p = HeaderPriority::new("x-priority", Priority::Normal).unwrap();
    /// let req = http::Request::builder().header("x-priority", "critical").body(()).unwrap();
    /// assert_eq!(p.priority(&req), Priority::Critical);
    /// assert_eq!(p.priority(&http::Request::new(())), Priority::Normal);
    /// assert!(HeaderPriority::new("bad header", Priority::Normal).is_err());
    /// ```
    #[derive(Debug, Clone)]
    pub struct HeaderPriority {
        name: HeaderName,
        default: Priority,
    }

    impl HeaderPriority {
        /// Reads header `name`; fails if it is not a valid header name.
        ///
        /// ```
        /// # use degrade_core::{priority::HeaderPriority, Priority};
        /// assert_eq!(HeaderPriority::new("bad:name", Priority::Low).unwrap_err().field(), "priority.header");
        /// ```
        pub fn new(name: &str, default: Priority) -> Result<Self, ConfigError> {
            let name = HeaderName::try_from(name).map_err(|_| {
                ConfigError::new(
                    "priority.header",
                    format!("`{name}` is not a valid header name"),
                )
            })?;
            Ok(Self { name, default })
        }
    }

    impl<B> Prioritize<Request<B>> for HeaderPriority {
        fn priority(&self, req: &Request<B>) -> Priority {
            req.headers()
                .get(&self.name)
                .and_then(|v| Priority::parse_bytes(v.as_bytes()))
                .unwrap_or(self.default)
        }
    }

    /// Maps path prefixes to priorities, the longest matching prefix winning (feature `http`).
    ///
    /// ```
    /// use degrade_core::priority::RoutePriority;
    /// use degrade_core::{Prioritize, Priority};
    ///
    /// let p = RoutePriority::new(Priority::Normal)
    ///     .route("/api/", Priority::Low)
    ///     .route("/api/checkout", Priority::Critical);
    /// let req = |path: &str| http::Request::builder().uri(path).body(()).unwrap();
    /// assert_eq!(p.priority(&req("/api/checkout/confirm")), Priority::Critical);
    /// assert_eq!(p.priority(&req("/api/search")), Priority::Low);
    /// assert_eq!(p.priority(&req("/")), Priority::Normal);
    /// ```
    #[derive(Debug, Clone)]
    pub struct RoutePriority {
        table: PrefixTable,
        default: Priority,
    }

    impl RoutePriority {
        /// An empty table: every request gets `default`.
        ///
        /// ```
        /// # use degrade_core::{priority::RoutePriority, Prioritize, Priority};
        /// assert_eq!(RoutePriority::new(Priority::High).priority(&http::Request::new(())), Priority::High);
        /// ```
        pub fn new(default: Priority) -> Self {
            Self {
                table: PrefixTable::default(),
                default,
            }
        }

        /// Requests whose path starts with `prefix` get `priority` (replacing an earlier entry
        /// for the same prefix).
        #[must_use]
        pub fn route(mut self, prefix: impl Into<String>, priority: Priority) -> Self {
            self.table.insert(prefix.into(), priority);
            self
        }
    }

    impl<B> Prioritize<Request<B>> for RoutePriority {
        fn priority(&self, req: &Request<B>) -> Priority {
            self.table.lookup(req.uri().path()).unwrap_or(self.default)
        }
    }

    /// Maps HTTP methods to priorities (feature `http`).
    ///
    /// ```
    /// use degrade_core::priority::MethodPriority;
    /// use degrade_core::{Prioritize, Priority};
    /// use http::Method;
    ///
    /// let p = MethodPriority::new(Priority::Normal).method(Method::POST, Priority::High);
    /// let post = http::Request::builder().method(Method::POST).body(()).unwrap();
    /// assert_eq!(p.priority(&post), Priority::High);
    /// assert_eq!(p.priority(&http::Request::new(())), Priority::Normal);
    /// ```
    #[derive(Debug, Clone)]
    pub struct MethodPriority {
        methods: Vec<(Method, Priority)>,
        default: Priority,
    }

    impl MethodPriority {
        /// Every method gets `default` until mapped.
        pub fn new(default: Priority) -> Self {
            Self {
                methods: Vec::new(),
                default,
            }
        }

        /// Requests with `method` get `priority`.
        #[must_use]
        pub fn method(mut self, method: Method, priority: Priority) -> Self {
            self.methods.retain(|(m, _)| *m != method);
            self.methods.push((method, priority));
            self
        }
    }

    impl<B> Prioritize<Request<B>> for MethodPriority {
        fn priority(&self, req: &Request<B>) -> Priority {
            self.methods
                .iter()
                .find(|(m, _)| m == req.method())
                .map(|(_, p)| *p)
                .unwrap_or(self.default)
        }
    }

    #[cfg(feature = "grpc")]
    pub use grpc_impl::GrpcMethodPriority;

    #[cfg(feature = "grpc")]
    mod grpc_impl {
        use super::{PrefixTable, Prioritize, Priority, Request};

        /// Maps gRPC services and methods to priorities by the request path
        /// `/package.Service/Method` (feature `grpc`). A method entry beats its service's entry.
        ///
        /// ```
        /// use degrade_core::priority::GrpcMethodPriority;
        /// use degrade_core::{Prioritize, Priority};
        ///
        /// let p = GrpcMethodPriority::new(Priority::Normal)
        ///     .service("shop.Catalog", Priority::Low)
        ///     .method("shop.Catalog", "GetPrice", Priority::High);
        /// let req = |path: &str| http::Request::builder().uri(path).body(()).unwrap();
        /// assert_eq!(p.priority(&req("/shop.Catalog/GetPrice")), Priority::High);
        /// assert_eq!(p.priority(&req("/shop.Catalog/List")), Priority::Low);
        /// assert_eq!(p.priority(&req("/shop.Cart/Add")), Priority::Normal);
        /// ```
        #[derive(Debug, Clone)]
        pub struct GrpcMethodPriority {
            table: PrefixTable,
            default: Priority,
        }

        impl GrpcMethodPriority {
            /// Every method gets `default` until mapped.
            pub fn new(default: Priority) -> Self {
                Self {
                    table: PrefixTable::default(),
                    default,
                }
            }

            /// Every method of `service` (fully qualified, `package.Service`) gets `priority`.
            #[must_use]
            pub fn service(mut self, service: &str, priority: Priority) -> Self {
                self.table.insert(format!("/{service}/"), priority);
                self
            }

            /// Method `method` of `service` gets `priority`.
            #[must_use]
            pub fn method(mut self, service: &str, method: &str, priority: Priority) -> Self {
                // Exact path; the longest-first order puts it before the service prefix.
                self.table.insert(format!("/{service}/{method}"), priority);
                self
            }
        }

        impl<B> Prioritize<Request<B>> for GrpcMethodPriority {
            fn priority(&self, req: &Request<B>) -> Priority {
                self.table.lookup(req.uri().path()).unwrap_or(self.default)
            }
        }
    }
}

#[cfg(feature = "grpc")]
pub use self::http_impl::GrpcMethodPriority;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_boundaries() {
        assert_eq!(Priority::from_scale(50), Priority::Background);
        assert_eq!(Priority::from_scale(51), Priority::Low);
        assert_eq!(Priority::from_scale(152), Priority::Normal);
        assert_eq!(Priority::from_scale(153), Priority::High);
        assert_eq!(Priority::from_scale(203), Priority::High);
    }

    #[test]
    fn parse_rejects_garbage_without_panicking() {
        for bad in [&b""[..], b"999", b"-1", b"1.5", b"\xff\xfe", b"0000"] {
            assert_eq!(Priority::parse_bytes(bad), None, "{bad:?}");
        }
        assert_eq!(Priority::parse_bytes(b" low "), Some(Priority::Low));
        assert_eq!(Priority::parse_bytes(b"255"), Some(Priority::Critical));
        assert_eq!(Priority::parse_bytes(b"256"), None);
    }
}
