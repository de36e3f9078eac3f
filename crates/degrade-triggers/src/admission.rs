//! [`AdmissionSignal`]: the pressure of a [`DegradeLayer`]'s adaptive limit, for the ladder.
//!
//! The adaptive limit knows better than any threshold whether the service is overloaded: it
//! refuses requests only when demand is above what the service can do. So the share of
//! requests it refuses is a pressure with no per-service number in it: 0 % at any load the
//! service can carry, and it climbs with the overload (at 2× capacity, half is refused). The
//! ladder can then keep doing what levels are for — sampling traces less, errors only, larger
//! export batches, feature switches — while the limit does the admission.

use crate::scale::{LevelThresholds, Scale};
use crate::signal::{Sample, Signal, SignalError};
use degrade_core::DegradeLayer;
use degrade_core::degrade::DegradeSnapshot;
use std::fmt;
use tokio::time::Instant;

/// The share of requests a [`DegradeLayer`] refused since the previous sample, in percent,
/// as a pressure: Light from 1 %, Moderate from 10 %, Heavy from 33 % (1.5× capacity),
/// Emergency from 66 % (3× capacity). Reads nothing (`None`) while no request arrives.
///
/// ```
/// use degrade_core::{Controller, DegradeLayer};
/// use degrade_triggers::{AdmissionSignal, Signal};
///
/// let c = Controller::new(Default::default()).unwrap();
/// let layer = DegradeLayer::builder(c.handle()).build().unwrap();
/// let mut signal = AdmissionSignal::new(&layer);
/// assert_eq!(signal.name(), "admission");
/// // No request yet: nothing to say.
/// assert_eq!(signal.sample(tokio::time::Instant::now()).unwrap(), None);
/// ```
pub struct AdmissionSignal {
    read: Box<dyn Fn() -> DegradeSnapshot + Send + Sync>,
    scale: Scale,
    last: Option<(u64, u64)>,
}

impl fmt::Debug for AdmissionSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionSignal")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl AdmissionSignal {
    /// The signal of `layer` (it reads the layer's shared counters; any clone will do).
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer};
    /// # use degrade_triggers::AdmissionSignal;
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let layer = DegradeLayer::builder(c.handle()).build().unwrap().http();
    /// let _ = AdmissionSignal::new(&layer);
    /// ```
    pub fn new<P, M>(layer: &DegradeLayer<P, M>) -> Self
    where
        P: Send + Sync + 'static,
    {
        let layer = layer.clone().errors();
        Self {
            read: Box::new(move || layer.snapshot()),
            scale: Self::scale(),
            last: None,
        }
    }

    /// The refused share, in percent, that enters each level.
    ///
    /// ```
    /// # use degrade_triggers::AdmissionSignal;
    /// assert_eq!(AdmissionSignal::scale().pressure(10.0), 0.80);
    /// ```
    pub fn scale() -> Scale {
        Scale::new(LevelThresholds::new(1.0, 10.0, 33.0, 66.0))
            .expect("the admission thresholds rise")
    }
}

impl Signal for AdmissionSignal {
    fn name(&self) -> &str {
        "admission"
    }

    fn sample(&mut self, _now: Instant) -> Result<Option<Sample>, SignalError> {
        let snap = (self.read)();
        let offered = snap.offered();
        let refused = snap.limited();
        let previous = self.last.replace((offered, refused));
        let Some((offered0, refused0)) = previous else {
            return Ok(None);
        };
        let offered = offered.saturating_sub(offered0);
        if offered == 0 {
            return Ok(None);
        }
        let percent = 100.0 * refused.saturating_sub(refused0) as f64 / offered as f64;
        Ok(Some(Sample::scaled(percent.min(100.0), &self.scale)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use degrade_core::{Controller, Priority};
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn refused_share_becomes_the_pressure() {
        let c = Controller::new(Default::default()).unwrap();
        let limit = degrade_core::limit::LimitConfig {
            initial: 1,
            max: 1,
            ..Default::default()
        };
        let layer = DegradeLayer::builder(c.handle())
            .prioritize(|_: &u8| Priority::Low)
            .limit(limit)
            .build()
            .unwrap();
        let mut signal = AdmissionSignal::new(&layer);
        assert_eq!(signal.sample(Instant::now()).unwrap(), None);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
        let svc = layer.layer(tower::service_fn(move |_: u8| {
            let rx = rx.clone();
            async move {
                if let Some(rx) = rx.lock().await.take() {
                    let _ = rx.await;
                }
                Ok::<_, std::convert::Infallible>(())
            }
        }));
        // One request holds the only slot; with no baseline learnt yet, the next three are
        // refused at once.
        let mut first = svc.clone();
        let held = tokio::spawn(async move { first.ready().await.unwrap().call(0).await });
        tokio::task::yield_now().await;
        for _ in 0..3 {
            let mut s = svc.clone();
            assert!(s.ready().await.unwrap().call(0).await.is_err());
        }
        let sample = signal.sample(Instant::now()).unwrap().unwrap();
        assert_eq!(sample.value, 75.0);
        assert!(sample.pressure >= 0.95, "{sample:?}");
        tx.send(()).unwrap();
        held.await.unwrap().unwrap();
    }
}
