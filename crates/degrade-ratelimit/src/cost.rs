//! What a request costs.
//!
//! By default every request costs the configuration's `cost` (1 unit). A [`Weigh`] gives each
//! request its own cost in whole units: the spans in an OTLP batch, the rows in a query. A cost
//! of zero is admitted without spending budget; a cost above the burst can never be admitted
//! and is refused at once with [`Cause::CostAboveBurst`](crate::error::Cause::CostAboveBurst)
//! rather than left to wait forever. Costs are unsigned integers, so a negative or NaN cost
//! cannot reach the limiter; the fractional configured `cost` is validated instead.

/// The cost of a request in budget units; `None` means the configured default.
///
/// ```
/// use degrade_ratelimit::cost::Weigh;
/// let spans = |batch: &Vec<u8>| batch.len() as u64;
/// assert_eq!(spans.units(&vec![1, 2, 3]), Some(3));
/// ```
pub trait Weigh<R>: Send + Sync + 'static {
    /// Units this request spends, or `None` for the configured default cost.
    fn units(&self, request: &R) -> Option<u64>;
}

impl<R, F> Weigh<R> for F
where
    F: Fn(&R) -> u64 + Send + Sync + 'static,
{
    #[inline]
    fn units(&self, request: &R) -> Option<u64> {
        Some(self(request))
    }
}

/// Every request costs the configured default.
///
/// ```
/// use degrade_ratelimit::cost::{DefaultCost, Weigh};
/// assert_eq!(Weigh::<()>::units(&DefaultCost, &()), None);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultCost;

impl<R> Weigh<R> for DefaultCost {
    #[inline(always)]
    fn units(&self, _: &R) -> Option<u64> {
        None
    }
}
