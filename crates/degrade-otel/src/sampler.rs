//! A head sampler that follows the degradation level.
//!
//! [`LevelSampler`] reads the level with one atomic load and samples at that level's
//! [`LevelPolicy::sampling`](degrade_core::policy::LevelPolicy::sampling) ratio. It is a
//! *consistent probability* sampler (OpenTelemetry "TraceState: probability sampling"): the
//! decision compares 56 bits of randomness (the `rv` sub-key of the `ot` tracestate entry when
//! present, else the low 56 bits of the trace id) with a rejection threshold, and a kept trace
//! carries the threshold as `ot=th:…` in its tracestate, so a collector can count what each
//! kept span stands for. Because the randomness comes from the trace id, every service that
//! samples at the same ratio keeps the same traces, and a trace kept at 1 % is also kept at
//! 10 %.
//!
//! Put it under [`ParentBasedSampler`](opentelemetry_sdk::trace::ParentBasedSampler): the root
//! decides, children follow, so whole traces are kept or dropped.
//!
//! # Sampled parents bypass the level, unless you cap them
//!
//! Under `ParentBasedSampler` the level's ratio applies to **roots** only. A span whose
//! *remote* parent is sampled (an incoming `traceparent` ending in `-01`) goes to the
//! `remote_parent_sampled` branch, which is `AlwaysOn` by default: it is recorded at every
//! level, whatever the ratio. An upstream that samples everything therefore keeps this
//! service tracing everything at Emergency. And where this sampler itself sees a parent, it
//! decides on the caller's randomness — the `rv` sub-key of an incoming `ot` tracestate entry,
//! else the trace id — so a caller sending `tracestate: ot=rv:ffffffffffffff` is kept at every
//! ratio above zero.
//!
//! [`LevelSampler::cap_sampled_parents`] closes that: a [`SampledParentCap`] for
//! `ParentBasedSampler::with_remote_parent_sampled` follows the parent below a level you
//! choose and applies this sampler's rules (ratio, critical-only, errors-only) from that level
//! up. By default it decides on randomness of its own (a hash of the trace id under a key
//! random per process, written to `rv` when the trace is kept, so services downstream stay
//! consistent with it): a caller can no longer pick a trace id or an `rv` that every ratio
//! keeps. Inside a trust boundary,
//! [`trust_caller_randomness(true)`](SampledParentCap::trust_caller_randomness) decides on the
//! caller's randomness instead, so services capping at the same ratio keep the same traces.
//!
//! What a span gets, with the default [`Policy`] (Emergency: ratio 0.001 and errors only):
//!
//! | span | below `from` | at Emergency (default) | at Emergency, `record_errors_only_levels(false)` |
//! |---|---|---|---|
//! | root | level's ratio | recorded; the filter exports errors only | 0.1 % of traces; the filter exports their errors |
//! | remote parent sampled, no cap (SDK default) | recorded | recorded; filter: errors only | recorded; filter: errors only |
//! | remote parent sampled, capped | recorded | recorded; filter: errors only | 0.1 % of traces; filter: errors only |
//! | remote parent not sampled | dropped | dropped | dropped |
//! | local parent | follows it | follows it | follows it |
//!
//! The cap is a ratio of the traffic this service admits. An absolute bound on exported spans,
//! whoever decided to sample them, is a span rate limit on the export path
//! (`ratelimit::span_rate_limit`, feature `ratelimit`).
//!
//! The sampler never answers `RecordOnly`: the SDK's batch processor exports `RecordOnly`
//! spans (0.33.1), so a degrading sampler that recorded without sampling would save nothing.
//!
//! At a level whose policy is `errors_only`, the head cannot know whether the operation will
//! fail. By default ([`LevelSampler::record_errors_only_levels`]) the sampler then keeps every
//! trace and leaves the choice to the [`LevelFilter`](crate::LevelFilter), which exports error
//! spans only; switch it off to apply the ratio at the head as well (cheaper, fewer errors
//! kept). At a `critical_only` level, a root span whose service (or span name) is not on the
//! policy's critical list is dropped; critical ones are sampled at the level's ratio.

use crate::stats::{DropReason, ExportStats};
use degrade_core::{Level, LevelHandle, PerLevel, Policy};
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

/// 2^56: the randomness and threshold domain of consistent probability sampling.
const MAX_THRESHOLD: u64 = 1 << 56;
const RANDOMNESS_MASK: u64 = MAX_THRESHOLD - 1;

/// The rejection threshold for a sampling probability: keep iff randomness ≥ threshold.
/// `None` means "never sample" (probability 0).
///
/// ```
/// use degrade_otel::sampler::threshold_for;
/// assert_eq!(threshold_for(1.0), Some(0));
/// assert_eq!(threshold_for(0.5), Some(1 << 55));
/// assert_eq!(threshold_for(0.0), None);
/// ```
pub fn threshold_for(probability: f64) -> Option<u64> {
    if probability.is_nan() || probability <= 0.0 {
        return None;
    }
    if probability >= 1.0 {
        return Some(0);
    }
    // 2^56 - round(p * 2^56): scaling by a power of two is exact in f64, so only the rounding
    // to an integer loses anything (computing (1 - p) first would lose 3 bits).
    let keep = (probability * MAX_THRESHOLD as f64).round() as u64;
    Some(MAX_THRESHOLD - keep.clamp(1, MAX_THRESHOLD))
}

/// The `th` value of a threshold: 14 hex digits with trailing zeros removed (`"0"` for 100 %).
///
/// ```
/// use degrade_otel::sampler::encode_threshold;
/// assert_eq!(encode_threshold(0), "0");
/// assert_eq!(encode_threshold(1 << 55), "8");
/// assert_eq!(encode_threshold(0xff_ffc0_0000_0000), "ffffc");
/// ```
pub fn encode_threshold(threshold: u64) -> String {
    if threshold == 0 {
        return "0".to_owned();
    }
    let s = format!("{:014x}", threshold & RANDOMNESS_MASK);
    s.trim_end_matches('0').to_owned()
}

/// Per-level precomputed decision data.
#[derive(Debug, Clone)]
struct LevelRule {
    /// `None`: never sample.
    threshold: Option<u64>,
    /// The `th:` sub-value written into kept traces.
    th: String,
    /// `ot=th:…` ready to clone for a root without inherited tracestate (no validation then).
    kept_state: TraceState,
    errors_only: bool,
    critical_only: bool,
}

#[derive(Debug, Clone)]
struct Shared {
    rules: PerLevel<LevelRule>,
    /// `ot=th:0`, for errors-only levels that keep every trace.
    keep_all_state: TraceState,
    policy: Policy,
    service_critical: bool,
    stats: Option<ExportStats>,
}

/// A consistent probability sampler whose ratio follows the degradation level. See the
/// [module documentation](self).
///
/// ```
/// use degrade_core::{Controller, Level, Policy};
/// use degrade_otel::LevelSampler;
/// use opentelemetry::trace::{SpanKind, TraceId};
/// use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
///
/// let controller = Controller::new(Default::default()).unwrap();
/// let sampler = LevelSampler::new(controller.handle(), Policy::default()).unwrap();
/// let id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
/// let r = sampler.should_sample(None, id, "GET /", &SpanKind::Server, &[], &[]);
/// assert_eq!(r.decision, SamplingDecision::RecordAndSample);
/// assert_eq!(r.trace_state.get("ot"), Some("th:0"));
///
/// controller.pin(Level::Emergency);
/// let sampler = sampler.record_errors_only_levels(false);
/// let r = sampler.should_sample(None, id, "GET /", &SpanKind::Server, &[], &[]);
/// assert_eq!(r.decision, SamplingDecision::Drop); // 0.1 % of traces, this one is not among them
/// ```
#[derive(Debug, Clone)]
pub struct LevelSampler {
    level: LevelHandle,
    /// Effective rejection threshold per level, inline for the hot path; `NEVER` drops all.
    thresholds: PerLevel<u64>,
    shared: Arc<Shared>,
    record_errors_only: bool,
    write_threshold: bool,
}

/// Above every 56-bit randomness: nothing is kept.
const NEVER: u64 = u64::MAX;

impl LevelSampler {
    /// A sampler reading `level` and `policy` (validated here).
    pub fn new(level: LevelHandle, policy: Policy) -> Result<Self, degrade_core::ConfigError> {
        policy.validate()?;
        let rules = PerLevel::from_fn(|l| {
            let lp = policy.level(l);
            let threshold = threshold_for(lp.sampling);
            let th = threshold.map(encode_threshold).unwrap_or_default();
            LevelRule {
                threshold,
                kept_state: state_with(&th),
                th,
                errors_only: lp.errors_only,
                critical_only: lp.critical_only,
            }
        });
        let mut sampler = Self {
            level,
            thresholds: PerLevel::new([NEVER; 5]),
            shared: Arc::new(Shared {
                rules,
                keep_all_state: state_with("0"),
                policy,
                service_critical: false,
                stats: None,
            }),
            record_errors_only: true,
            write_threshold: true,
        };
        sampler.refresh_thresholds();
        Ok(sampler)
    }

    fn refresh_thresholds(&mut self) {
        let errors_only = self.record_errors_only;
        self.thresholds = PerLevel::from_fn(|l| {
            let rule = &self.shared.rules[l];
            if rule.errors_only && errors_only {
                0
            } else {
                rule.threshold.unwrap_or(NEVER)
            }
        });
    }

    /// Names the service this sampler runs in: when it is on the policy's critical list, every
    /// root span counts as critical at `critical_only` levels.
    ///
    /// ```
    /// # use degrade_core::{Controller, Level, Policy};
    /// # use degrade_otel::LevelSampler;
    /// # use opentelemetry::trace::{SpanKind, TraceId};
    /// # use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let mut policy = Policy::default().with_critical("payments");
    /// policy.moderate.critical_only = true;
    /// policy.moderate.sampling = 1.0;
    /// # policy.light.sampling = 1.0;
    /// let sampler = |service: &str| LevelSampler::new(c.handle(), policy.clone()).unwrap().service(service);
    /// let (payments, search) = (sampler("payments"), sampler("search"));
    /// c.pin(Level::Moderate).unwrap();
    /// let id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    /// let root = |s: &LevelSampler| s.should_sample(None, id, "POST /pay", &SpanKind::Server, &[], &[]).decision;
    /// assert_ne!(root(&payments), SamplingDecision::Drop);
    /// assert_eq!(root(&search), SamplingDecision::Drop);
    /// ```
    #[must_use]
    pub fn service(mut self, name: &str) -> Self {
        let shared = Arc::make_mut(&mut self.shared);
        shared.service_critical = shared.policy.is_critical(name);
        self
    }

    /// Counts drops (reasons `sampled_out`, `not_critical`) in `stats`.
    #[must_use]
    pub fn stats(mut self, stats: ExportStats) -> Self {
        Arc::make_mut(&mut self.shared).stats = Some(stats);
        self
    }

    /// Whether to keep every trace at `errors_only` levels so that the filter can keep the
    /// errors (default `true`); with `false` the level's ratio applies at the head too.
    #[must_use]
    pub fn record_errors_only_levels(mut self, yes: bool) -> Self {
        self.record_errors_only = yes;
        self.refresh_thresholds();
        self
    }

    /// Whether a kept root gets `ot=th:…` in its tracestate (default `true`, as the
    /// specification asks, so a backend can weigh each kept span). Writing it is the only
    /// allocation of the decision (three small ones, cloned from a precomputed state); turn it
    /// off where nothing downstream reads it.
    #[must_use]
    pub fn write_threshold(mut self, yes: bool) -> Self {
        self.write_threshold = yes;
        self
    }

    #[inline]
    fn drop(&self, reason: DropReason, parent: Option<&Context>) -> SamplingResult {
        if let Some(s) = &self.shared.stats {
            s.record_drop(reason, 1);
        }
        SamplingResult {
            decision: SamplingDecision::Drop,
            attributes: Vec::new(),
            trace_state: parent_state(parent),
        }
    }
}

impl LevelSampler {
    /// A sampler for the sampled-remote-parent branch of a `ParentBasedSampler` that applies
    /// this sampler's rules to such spans from level `from` up, and follows the parent below
    /// it. See the [module documentation](self#sampled-parents-bypass-the-level-unless-you-cap-them).
    ///
    /// ```
    /// use degrade_core::{Controller, Level, Policy};
    /// use degrade_otel::LevelSampler;
    /// use opentelemetry::Context;
    /// use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState};
    /// use opentelemetry_sdk::trace::{ParentBasedSampler, SamplingDecision, ShouldSample};
    ///
    /// let controller = Controller::new(Default::default()).unwrap();
    /// let sampler = LevelSampler::new(controller.handle(), Policy::default()).unwrap();
    /// let capped = ParentBasedSampler::new(sampler.clone())
    ///     .with_remote_parent_sampled(sampler.cap_sampled_parents(Level::Heavy));
    /// let uncapped = ParentBasedSampler::new(sampler);
    ///
    /// // 1,000 requests arriving with a sampled parent that claims the highest randomness.
    /// let rv = TraceState::from_key_value([("ot", "rv:ffffffffffffff")]).unwrap();
    /// let kept = |s: &ParentBasedSampler| (1..=1_000u128).filter(|&i| {
    ///     let parent = SpanContext::new(TraceId::from(i * 0x9e37_79b9_7f4a_7c15), SpanId::from(1), TraceFlags::SAMPLED, true, rv.clone());
    ///     let cx = Context::new().with_remote_span_context(parent);
    ///     s.should_sample(Some(&cx), TraceId::from(i), "GET /", &SpanKind::Server, &[], &[]).decision
    ///         == SamplingDecision::RecordAndSample
    /// }).count();
    ///
    /// controller.pin(Level::Moderate); // below the cap: the parent decides
    /// assert_eq!((kept(&uncapped), kept(&capped)), (1_000, 1_000));
    /// controller.pin(Level::Heavy); // 1 %: the cap applies the level's ratio
    /// assert_eq!(kept(&uncapped), 1_000);
    /// assert!(kept(&capped) < 40, "{}", kept(&capped));
    /// ```
    pub fn cap_sampled_parents(&self, from: Level) -> SampledParentCap {
        SampledParentCap {
            sampler: self.clone(),
            from,
            keys: Some(RandomState::new()),
        }
    }
}

/// Applies a [`LevelSampler`]'s rules to spans whose remote parent is sampled, from a level
/// up; made by [`LevelSampler::cap_sampled_parents`] for
/// `ParentBasedSampler::with_remote_parent_sampled`. See the
/// [module documentation](self#sampled-parents-bypass-the-level-unless-you-cap-them).
///
/// Below its level it keeps every such span, as the SDK's default does. Drops are counted as
/// `sampled_out` / `not_critical` in the sampler's [`ExportStats`].
#[derive(Debug, Clone)]
pub struct SampledParentCap {
    sampler: LevelSampler,
    from: Level,
    /// `None`: decide on the caller's randomness.
    keys: Option<RandomState>,
}

impl SampledParentCap {
    /// Whether to decide on the caller's randomness — the `rv` of its `ot` tracestate entry,
    /// else its trace id — as a consistent sampler does (default `false`: randomness of our
    /// own, which a caller cannot choose). Turn it on where callers are trusted services that
    /// sample consistently, so that services capping at the same ratio keep the same traces.
    ///
    /// ```
    /// use degrade_core::{Controller, Level, Policy};
    /// use degrade_otel::LevelSampler;
    /// use opentelemetry::Context;
    /// use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState};
    /// use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
    ///
    /// let controller = Controller::new(Default::default()).unwrap();
    /// controller.pin(Level::Heavy);
    /// let sampler = LevelSampler::new(controller.handle(), Policy::default()).unwrap();
    /// let trusting = sampler.cap_sampled_parents(Level::Heavy).trust_caller_randomness(true);
    /// let rv = TraceState::from_key_value([("ot", "rv:ffffffffffffff")]).unwrap();
    /// let parent = SpanContext::new(TraceId::from(7), SpanId::from(1), TraceFlags::SAMPLED, true, rv);
    /// let cx = Context::new().with_remote_span_context(parent);
    /// let r = trusting.should_sample(Some(&cx), TraceId::from(7), "GET /", &SpanKind::Server, &[], &[]);
    /// assert_eq!(r.decision, SamplingDecision::RecordAndSample); // the caller's rv is above every threshold
    /// ```
    #[must_use]
    pub fn trust_caller_randomness(mut self, yes: bool) -> Self {
        self.keys = if yes { None } else { Some(RandomState::new()) };
        self
    }
}

impl ShouldSample for SampledParentCap {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let level = self.sampler.level.current();
        if level < self.from {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: parent_state(parent_context),
            };
        }
        self.sampler
            .decide(parent_context, trace_id, name, level, self.keys.as_ref())
    }
}

/// A tracestate holding only `ot=th:<th>` (empty when `th` is).
fn state_with(th: &str) -> TraceState {
    if th.is_empty() {
        return TraceState::default();
    }
    TraceState::from_key_value([("ot", with_threshold(None, th, None))]).unwrap_or_default()
}

fn parent_state(parent: Option<&Context>) -> TraceState {
    match parent {
        Some(cx) if cx.has_active_span() => cx.span().span_context().trace_state().clone(),
        _ => TraceState::default(),
    }
}

/// The 56-bit randomness of a trace: `rv` from the `ot` entry if present, else the trace id.
#[inline]
fn randomness(trace_id: TraceId, state: Option<&str>) -> u64 {
    if let Some(ot) = state {
        for part in ot.split(';') {
            if let Some(rv) = part.strip_prefix("rv:")
                && rv.len() == 14
                && let Ok(v) = u64::from_str_radix(rv, 16)
            {
                return v;
            }
        }
    }
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    u64::from_be_bytes(low) & RANDOMNESS_MASK
}

/// The `ot` value with `th` replaced (other sub-keys kept), and `rv` too when given.
fn with_threshold(ot: Option<&str>, th: &str, rv: Option<u64>) -> String {
    let mut out = String::with_capacity(21 + th.len() + ot.map_or(0, str::len));
    out.push_str("th:");
    out.push_str(th);
    if let Some(rv) = rv {
        use std::fmt::Write as _;
        let _ = write!(out, ";rv:{:014x}", rv & RANDOMNESS_MASK);
    }
    if let Some(ot) = ot {
        let replaced = |p: &str| p.starts_with("th:") || (rv.is_some() && p.starts_with("rv:"));
        for part in ot.split(';').filter(|p| !p.is_empty() && !replaced(p)) {
            out.push(';');
            out.push_str(part);
        }
    }
    out
}

impl ShouldSample for LevelSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        self.decide(parent_context, trace_id, name, self.level.current(), None)
    }
}

impl LevelSampler {
    /// The decision at `level`. With `keys`, a trace with a parent is decided on randomness
    /// of our own (a keyed hash of its id), written to `rv` when kept, instead of the
    /// caller's `rv` or trace id.
    #[inline]
    fn decide(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        level: Level,
        keys: Option<&RandomState>,
    ) -> SamplingResult {
        let threshold = self.thresholds[level];
        let rule = &self.shared.rules[level];
        if rule.critical_only
            && !self.shared.service_critical
            && !self.shared.policy.is_critical(name)
        {
            return self.drop(DropReason::NotCritical, parent_context);
        }
        // The common case, a root without inherited tracestate: no parsing, and a kept trace
        // gets a clone of the precomputed `ot=th:…` state.
        let Some(parent) = parent_context.filter(|cx| cx.has_active_span()) else {
            if randomness(trace_id, None) < threshold {
                return self.drop(DropReason::SampledOut, None);
            }
            let trace_state = if !self.write_threshold {
                TraceState::default()
            } else if threshold == 0 {
                self.shared.keep_all_state.clone()
            } else {
                rule.kept_state.clone()
            };
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state,
            };
        };
        let state = parent.span().span_context().trace_state().clone();
        let ot = state.get("ot");
        let (r, own) = match keys {
            None => (randomness(trace_id, ot), None),
            Some(keys) => {
                let r = keys.hash_one(trace_id.to_bytes()) & RANDOMNESS_MASK;
                (r, Some(r))
            }
        };
        if r < threshold {
            return self.drop(DropReason::SampledOut, parent_context);
        }
        if !self.write_threshold {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: state,
            };
        }
        let th = if threshold == 0 {
            "0"
        } else {
            rule.th.as_str()
        };
        let value = with_threshold(ot, th, own);
        let trace_state = match state.insert("ot", value) {
            Ok(s) => s,
            // An invalid inherited entry: keep the decision, leave the state as it was.
            Err(_) => state,
        };
        SamplingResult {
            decision: SamplingDecision::RecordAndSample,
            attributes: Vec::new(),
            trace_state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_of_the_seed_ratios() {
        assert_eq!(encode_threshold(threshold_for(0.5).unwrap()), "8");
        assert_eq!(
            encode_threshold(threshold_for(0.1).unwrap()),
            "e6666666666666"
        );
        assert_eq!(
            encode_threshold(threshold_for(0.01).unwrap()),
            "fd70a3d70a3d71"
        );
        assert_eq!(
            encode_threshold(threshold_for(0.001).unwrap()),
            "ffbe76c8b43958"
        );
        assert_eq!(threshold_for(f64::NAN), None);
    }

    #[test]
    fn rv_overrides_trace_id_randomness() {
        let id = TraceId::from_bytes([0; 16]);
        assert_eq!(randomness(id, Some("rv:ffffffffffffff")), RANDOMNESS_MASK);
        assert_eq!(randomness(id, Some("th:8")), 0);
    }

    #[test]
    fn threshold_replaces_th_keeps_rest() {
        assert_eq!(
            with_threshold(Some("th:8;rv:0123456789abcd"), "c", None),
            "th:c;rv:0123456789abcd"
        );
        assert_eq!(with_threshold(None, "0", None), "th:0");
        assert_eq!(
            with_threshold(Some("rv:ffffffffffffff;x:1"), "8", Some(0xab)),
            "th:8;rv:000000000000ab;x:1"
        );
    }
}
