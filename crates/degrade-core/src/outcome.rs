//! What happened to a call: the [`Outcome`] and the [`Classifier`] that decides it.
//!
//! The breaker's window, the canary's per-arm statistics and the latency/error triggers all need
//! the same judgement of a finished call, so it is made once here. A classifier looks at the
//! response (or the error) and says success, failure or ignored; [`Outcome::slow_if`] then marks
//! a successful call that took too long as [`Outcome::Slow`].

use std::time::Duration;

/// The judgement of one finished (or abandoned) call.
///
/// ```
/// use degrade_core::Outcome;
/// use std::time::Duration;
///
/// let o = Outcome::Success.slow_if(Duration::from_millis(900), Duration::from_millis(500));
/// assert_eq!(o, Outcome::Slow);
/// assert!(Outcome::Failure.is_failure());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded in time.
    Success,
    /// The call failed (an error, a 5xx, a gRPC UNAVAILABLE, a timeout...).
    Failure,
    /// The call succeeded but took longer than the slow-call threshold.
    Slow,
    /// The call says nothing about the health of the callee: it was cancelled (the future was
    /// dropped), rejected locally by another policy, or classified as the caller's own fault.
    Ignored,
}

impl Outcome {
    /// Marks a [`Success`](Outcome::Success) as [`Slow`](Outcome::Slow) when `latency` is at
    /// least `threshold`; other outcomes are returned unchanged (a slow failure is a failure).
    ///
    /// ```
    /// # use degrade_core::Outcome; use std::time::Duration;
    /// let t = Duration::from_millis(100);
    /// assert_eq!(Outcome::Success.slow_if(Duration::from_millis(99), t), Outcome::Success);
    /// assert_eq!(Outcome::Success.slow_if(t, t), Outcome::Slow);
    /// assert_eq!(Outcome::Failure.slow_if(Duration::from_secs(9), t), Outcome::Failure);
    /// ```
    #[must_use]
    pub fn slow_if(self, latency: Duration, threshold: Duration) -> Self {
        match self {
            Outcome::Success if latency >= threshold => Outcome::Slow,
            other => other,
        }
    }

    /// `true` for [`Outcome::Failure`].
    ///
    /// ```
    /// # use degrade_core::Outcome;
    /// assert!(Outcome::Failure.is_failure() && !Outcome::Slow.is_failure());
    /// ```
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failure)
    }

    /// `true` for [`Outcome::Ignored`].
    ///
    /// ```
    /// # use degrade_core::Outcome;
    /// assert!(Outcome::Ignored.is_ignored());
    /// ```
    pub fn is_ignored(self) -> bool {
        matches!(self, Outcome::Ignored)
    }
}

/// Judges a finished call. Shared by the breaker, the canary's per-arm statistics and the
/// latency / error triggers, so "failure" means the same thing everywhere.
///
/// `classify_response` sees a successful `Ok` response (which may still be a failure, like an
/// HTTP 503); `classify_error` sees the service's error. Slowness is judged separately with
/// [`Outcome::slow_if`].
///
/// ```
/// use degrade_core::{Classifier, Outcome};
///
/// /// Treats an `Err` string "not found" as the caller's fault.
/// #[derive(Clone)]
/// struct Lookup;
/// impl Classifier<u32, String> for Lookup {
///     fn classify_response(&self, _: &u32) -> Outcome { Outcome::Success }
///     fn classify_error(&self, e: &String) -> Outcome {
///         if e == "not found" { Outcome::Ignored } else { Outcome::Failure }
///     }
/// }
/// assert_eq!(Lookup.classify_error(&"not found".to_string()), Outcome::Ignored);
/// ```
pub trait Classifier<Res, Err>: Send + Sync + 'static {
    /// The outcome of a call that returned `Ok(response)`.
    fn classify_response(&self, response: &Res) -> Outcome;
    /// The outcome of a call that returned `Err(error)`.
    fn classify_error(&self, error: &Err) -> Outcome;
}

/// The default classifier: every `Ok` is a success; every `Err` is a failure, except a degrade
/// rejection from a layer further in (a `BoxError` recognised by
/// [`rejection::find`](crate::rejection::find), a `tonic::Status` made from one, or a
/// rejection type used as the error type), which says nothing about the callee's health and is
/// [`Outcome::Ignored`]. Timeouts (e.g. `tower::timeout::error::Elapsed`) are errors, hence
/// failures.
///
/// It does not look inside responses, whatever their type, so it cannot see the
/// [mark](crate::rejection::Rejected) of a layer further in that *answers* its rejections
/// (`.http()`, `.grpc()`): such a response counts as a success. Over HTTP or gRPC, use
/// `HttpClassifier` or `GrpcClassifier` (features `http`, `grpc`), which read status codes
/// and ignore marked responses.
///
/// ```
/// use degrade_core::{BoxError, Classifier, DefaultClassifier, Level, Outcome, Priority, Shed};
/// use std::time::Duration;
///
/// let c = DefaultClassifier;
/// assert_eq!(Classifier::<(), BoxError>::classify_response(&c, &()), Outcome::Success);
/// let boom: BoxError = "boom".into();
/// assert_eq!(Classifier::<(), BoxError>::classify_error(&c, &boom), Outcome::Failure);
/// let shed: BoxError = Box::new(Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(1)));
/// assert_eq!(Classifier::<(), BoxError>::classify_error(&c, &shed), Outcome::Ignored);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

/// The degrade rejection that `err` is or wraps, if any: a `BoxError` holding one (anywhere in
/// its `source()` chain), a `tonic::Status` made from one (feature `grpc`), or an error type
/// that is a rejection type itself.
fn local_rejection<E: 'static>(err: &E) -> Option<&dyn crate::Rejection> {
    let any: &dyn std::any::Any = err;
    if let Some(b) = any.downcast_ref::<crate::BoxError>() {
        return crate::rejection::find(&**b);
    }
    #[cfg(feature = "grpc")]
    if let Some(s) = any.downcast_ref::<tonic::Status>() {
        return crate::rejection::find(s);
    }
    crate::rejection::find_any(any)
}

/// `Ignored` if `err` is (or wraps) a degrade rejection, else `Failure`.
fn classify_any_error<E: 'static>(err: &E) -> Outcome {
    match local_rejection(err) {
        Some(_) => Outcome::Ignored,
        None => Outcome::Failure,
    }
}

impl<Res, Err: 'static> Classifier<Res, Err> for DefaultClassifier {
    fn classify_response(&self, _: &Res) -> Outcome {
        Outcome::Success
    }
    fn classify_error(&self, error: &Err) -> Outcome {
        classify_any_error(error)
    }
}

#[cfg(feature = "http")]
pub use self::http_classifier::HttpClassifier;

#[cfg(feature = "http")]
mod http_classifier {
    use super::{Classifier, Outcome, classify_any_error};

    /// Classifies HTTP responses by status (feature `http`). By default 5xx, 408 (request
    /// timeout) and 429 (throttled) are failures — the callee is unhealthy or overloaded — and
    /// everything else, including other 4xx (the caller's own fault), is a success. Errors are
    /// classified like [`DefaultClassifier`](crate::DefaultClassifier).
    ///
    /// A response that a degrade layer in this process answered itself (it carries the
    /// [`Rejected`](crate::rejection::Rejected) mark) is [`Outcome::Ignored`] whatever its
    /// status: a rate limiter's 429 or a breaker's 503 further in says nothing about the
    /// service. The same status from the network counts as usual.
    ///
    /// ```
    /// use degrade_core::{rejection, BoxError, Classifier, HttpClassifier, Level, Outcome, Priority, Shed};
    /// use std::time::Duration;
    ///
    /// let shed = Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(1));
    /// let ours: http::Response<()> = rejection::http::response(&shed);
    /// let theirs = http::Response::builder().status(503).body(()).unwrap();
    /// let c = HttpClassifier::default();
    /// assert_eq!(Classifier::<_, BoxError>::classify_response(&c, &ours), Outcome::Ignored);
    /// assert_eq!(Classifier::<_, BoxError>::classify_response(&c, &theirs), Outcome::Failure);
    /// ```
    ///
    /// ```
    /// use degrade_core::{Classifier, HttpClassifier, Outcome, BoxError};
    ///
    /// let c = HttpClassifier::default().success_status(501).ignored_status(499);
    /// let res = |code: u16| http::Response::builder().status(code).body(()).unwrap();
    /// let judge = |code| Classifier::<_, BoxError>::classify_response(&c, &res(code));
    /// assert_eq!(judge(503), Outcome::Failure);
    /// assert_eq!(judge(429), Outcome::Failure);
    /// assert_eq!(judge(404), Outcome::Success);
    /// assert_eq!(judge(501), Outcome::Success);
    /// assert_eq!(judge(499), Outcome::Ignored);
    /// ```
    #[derive(Debug, Clone)]
    pub struct HttpClassifier {
        // Two bits per status code 0..1024: failure, ignored.
        failure: [u64; 16],
        ignored: [u64; 16],
    }

    impl Default for HttpClassifier {
        fn default() -> Self {
            let mut c = Self {
                failure: [0; 16],
                ignored: [0; 16],
            };
            for code in (500..600).chain([408, 429]) {
                set(&mut c.failure, code, true);
            }
            c
        }
    }

    fn set(bits: &mut [u64; 16], code: u16, on: bool) {
        let i = usize::from(code);
        if i < 1024 {
            if on {
                bits[i / 64] |= 1 << (i % 64);
            } else {
                bits[i / 64] &= !(1 << (i % 64));
            }
        }
    }

    fn get(bits: &[u64; 16], code: u16) -> bool {
        let i = usize::from(code);
        i < 1024 && bits[i / 64] & (1 << (i % 64)) != 0
    }

    impl HttpClassifier {
        /// Counts `status` as a failure.
        #[must_use]
        pub fn failure_status(mut self, status: u16) -> Self {
            set(&mut self.failure, status, true);
            set(&mut self.ignored, status, false);
            self
        }

        /// Counts `status` as a success.
        #[must_use]
        pub fn success_status(mut self, status: u16) -> Self {
            set(&mut self.failure, status, false);
            set(&mut self.ignored, status, false);
            self
        }

        /// Ignores `status` (it says nothing about the callee's health).
        #[must_use]
        pub fn ignored_status(mut self, status: u16) -> Self {
            set(&mut self.failure, status, false);
            set(&mut self.ignored, status, true);
            self
        }

        /// The outcome for a status code.
        ///
        /// ```
        /// # use degrade_core::{HttpClassifier, Outcome};
        /// assert_eq!(HttpClassifier::default().classify_status(502), Outcome::Failure);
        /// ```
        pub fn classify_status(&self, status: u16) -> Outcome {
            if get(&self.failure, status) {
                Outcome::Failure
            } else if get(&self.ignored, status) {
                Outcome::Ignored
            } else {
                Outcome::Success
            }
        }
    }

    impl<B, Err: 'static> Classifier<http::Response<B>, Err> for HttpClassifier {
        fn classify_response(&self, response: &http::Response<B>) -> Outcome {
            if crate::rejection::http::rejected(response).is_some() {
                return Outcome::Ignored;
            }
            self.classify_status(response.status().as_u16())
        }
        fn classify_error(&self, error: &Err) -> Outcome {
            classify_any_error(error)
        }
    }
}

#[cfg(feature = "grpc")]
pub use self::grpc_classifier::GrpcClassifier;

#[cfg(feature = "grpc")]
mod grpc_classifier {
    use super::{Classifier, Outcome, classify_any_error, local_rejection};

    /// Classifies gRPC calls by status code (feature `grpc`).
    ///
    /// Failures by default: UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL,
    /// UNAVAILABLE, DATA_LOSS (the callee is unhealthy, overloaded or timed out). CANCELLED is
    /// ignored (the caller gave up). Every other code, such as INVALID_ARGUMENT or NOT_FOUND, is
    /// the caller's concern and counts as a success.
    ///
    /// The status is read from the `grpc-status` response header, which is where a
    /// "trailers-only" response (every error tonic returns before the body) carries it, and from
    /// a [`tonic::Status`] error. A status sent in trailers after a streamed body is not seen
    /// here.
    ///
    /// A call that a degrade layer in this process refused is [`Outcome::Ignored`] whatever
    /// its code: a response carrying the [`Rejected`](crate::rejection::Rejected) mark (the
    /// `.grpc()` answer mode), a `tonic::Status` made by
    /// [`rejection::grpc::status`](crate::rejection::grpc::status) (its `source()` is the mark)
    /// and a rejection returned as an error. A status received from the network is classified
    /// by its code, `degrade-rejection` metadata or not.
    ///
    /// ```
    /// use degrade_core::{BoxError, Classifier, GrpcClassifier, Outcome};
    ///
    /// let c = GrpcClassifier::default();
    /// let res = |code: &str| http::Response::builder().header("grpc-status", code).body(()).unwrap();
    /// assert_eq!(Classifier::<_, BoxError>::classify_response(&c, &res("14")), Outcome::Failure);
    /// assert_eq!(Classifier::<_, BoxError>::classify_response(&c, &res("5")), Outcome::Success);
    /// assert_eq!(Classifier::<_, BoxError>::classify_response(&c, &res("1")), Outcome::Ignored);
    /// let err: BoxError = Box::new(tonic::Status::deadline_exceeded("late"));
    /// assert_eq!(Classifier::<http::Response<()>, BoxError>::classify_error(&c, &err), Outcome::Failure);
    /// ```
    #[derive(Debug, Clone)]
    pub struct GrpcClassifier {
        outcomes: [Outcome; 17],
    }

    impl Default for GrpcClassifier {
        fn default() -> Self {
            let mut outcomes = [Outcome::Success; 17];
            for code in [2, 4, 8, 13, 14, 15] {
                outcomes[code] = Outcome::Failure;
            }
            outcomes[1] = Outcome::Ignored;
            Self { outcomes }
        }
    }

    impl GrpcClassifier {
        /// Sets the outcome of `code`.
        ///
        /// ```
        /// # use degrade_core::{GrpcClassifier, Outcome};
        /// let c = GrpcClassifier::default().code(tonic::Code::Aborted, Outcome::Failure);
        /// assert_eq!(c.classify_code(10), Outcome::Failure);
        /// ```
        #[must_use]
        pub fn code(mut self, code: tonic::Code, outcome: Outcome) -> Self {
            if let Some(slot) = self.outcomes.get_mut(code as usize) {
                *slot = outcome;
            }
            self
        }

        /// The outcome for a numeric status code (unknown codes are failures, like UNKNOWN).
        ///
        /// ```
        /// # use degrade_core::{GrpcClassifier, Outcome};
        /// assert_eq!(GrpcClassifier::default().classify_code(0), Outcome::Success);
        /// assert_eq!(GrpcClassifier::default().classify_code(99), Outcome::Failure);
        /// ```
        pub fn classify_code(&self, code: i32) -> Outcome {
            usize::try_from(code)
                .ok()
                .and_then(|c| self.outcomes.get(c).copied())
                .unwrap_or(Outcome::Failure)
        }
    }

    impl<B, Err: 'static> Classifier<http::Response<B>, Err> for GrpcClassifier {
        fn classify_response(&self, response: &http::Response<B>) -> Outcome {
            if crate::rejection::http::rejected(response).is_some() {
                return Outcome::Ignored;
            }
            let Some(v) = response.headers().get("grpc-status") else {
                return Outcome::Success;
            };
            match std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                Some(code) => self.classify_code(code),
                None => Outcome::Failure,
            }
        }
        fn classify_error(&self, error: &Err) -> Outcome {
            if local_rejection(error).is_some() {
                return Outcome::Ignored;
            }
            let any: &dyn std::any::Any = error;
            let status = any.downcast_ref::<tonic::Status>().or_else(|| {
                any.downcast_ref::<crate::BoxError>()
                    .and_then(|b| b.downcast_ref::<tonic::Status>())
            });
            match status {
                Some(s) => self.classify_code(s.code() as i32),
                None => classify_any_error(error),
            }
        }
    }
}
