//! `GET /status`: every registered handle's state as one JSON document, in the snapshot
//! vocabulary (`offered`, `admitted`, `rejected`).

use super::Inner;
use degrade_core::Priority;
use serde_json::{Map, Value, json};

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Inner {
    pub(super) fn status(&self) -> Value {
        let mut out = Map::new();
        if let Some(c) = &self.controller {
            let expires = super::lock(&self.pin).expires;
            out.insert(
                "level".into(),
                json!({
                    "level": c.level().as_str(),
                    "pinned": c.pinned().map(|l| l.as_str()),
                    "pin_expires_in_ms": expires.map(|at| ms(at.saturating_duration_since(tokio::time::Instant::now()))),
                }),
            );
        }
        #[cfg(feature = "triggers")]
        if let Some(m) = &self.monitor {
            let snap = m.borrow().clone();
            let signals: Vec<Value> = snap
                .signals
                .iter()
                .map(|s| json!({ "name": s.name, "pressure": s.pressure, "failing": s.failing }))
                .collect();
            out.insert("signals".into(), Value::Array(signals));
        }
        let admission: Map<String, Value> = self
            .admission
            .iter()
            .map(|(name, snap)| {
                let s = snap();
                let by_priority: Map<String, Value> = Priority::ALL
                    .iter()
                    .map(|&p| {
                        (
                            p.as_str().to_owned(),
                            json!({
                                "offered": s.offered_by(p),
                                "admitted": s.admitted_by(p),
                                "shed": s.shed_by(p),
                                "limited": s.limited_by(p),
                            }),
                        )
                    })
                    .collect();
                let limit = s.limit.map(
                    |l| json!({ "limit": l.limit, "in_flight": l.in_flight, "waiting": l.waiting }),
                );
                (
                    name.clone(),
                    json!({
                        "offered": s.offered(),
                        "admitted": s.admitted(),
                        "rejected": s.rejected(),
                        "limit": limit,
                        "by_priority": by_priority,
                    }),
                )
            })
            .collect();
        out.insert("admission".into(), Value::Object(admission));
        #[cfg(feature = "ratelimit")]
        {
            let limits: Map<String, Value> = self
                .rate_limits
                .iter()
                .map(|(name, l)| {
                    let c = l.quota.get();
                    let s = (l.snapshot)();
                    (
                        name.clone(),
                        json!({
                            "quota": c.quota,
                            "period": humantime::format_duration(c.period).to_string(),
                            "burst": c.effective_burst(),
                            "offered": s.offered(),
                            "admitted": s.admitted + s.waited,
                            "rejected": s.rejected(),
                            "keys": s.keys,
                        }),
                    )
                })
                .collect();
            out.insert("rate_limits".into(), Value::Object(limits));
        }
        #[cfg(feature = "breaker")]
        {
            let breakers: Map<String, Value> = self
                .breakers
                .iter()
                .map(|(name, b)| {
                    let s = b.snapshot();
                    (
                        name.clone(),
                        json!({
                            "state": s.state.as_str(),
                            "offered": s.offered(),
                            "admitted": s.admitted,
                            "rejected": s.rejected,
                            "failures": s.failures,
                            "transitions": s.transitions,
                        }),
                    )
                })
                .collect();
            out.insert("breakers".into(), Value::Object(breakers));
        }
        #[cfg(feature = "canary")]
        {
            let canaries: Map<String, Value> = self
                .canaries
                .iter()
                .map(|(name, c)| {
                    let arm = |a: &degrade_canary::stats::ArmSnapshot| {
                        json!({
                            "routed": a.routed,
                            "successes": a.successes,
                            "failures": a.failures,
                            "error_rate": a.error_rate(),
                        })
                    };
                    let v = match c {
                        super::CanaryEntry::Local { handle, gates } => {
                            let snap = handle.snapshot();
                            let judgement = gates.last_judgement().map(
                                |j| json!({ "verdict": j.verdict.to_string(), "reason": j.reason }),
                            );
                            json!({
                                "weight": f64::from(handle.weight().get()) / 10_000.0,
                                "state": gates.state(),
                                "last_judgement": judgement,
                                "stable": arm(&snap.stable),
                                "canary": arm(&snap.canary),
                            })
                        }
                        #[cfg(feature = "redis")]
                        super::CanaryEntry::Fleet { handle, status, .. } => {
                            let snap = handle.snapshot();
                            let f = status.snapshot();
                            let judgement = f.last_verdict.map(
                                |(v, reason)| json!({ "verdict": v.to_string(), "reason": reason }),
                            );
                            json!({
                                "weight": f64::from(handle.weight().get()) / 10_000.0,
                                "state": f.state,
                                "last_judgement": judgement,
                                "stable": arm(&snap.stable),
                                "canary": arm(&snap.canary),
                                "fleet": {
                                    "leader": f.leader,
                                    "token": f.token,
                                    "commands_applied": f.commands_applied,
                                    "falling_back": f.falling_back,
                                },
                            })
                        }
                    };
                    (name.clone(), v)
                })
                .collect();
            out.insert("canaries".into(), Value::Object(canaries));
        }
        #[cfg(feature = "rollout")]
        {
            let rollouts: Map<String, Value> = self
                .rollouts
                .iter()
                .map(|(name, r)| {
                    let s = r.status();
                    let mut by_state = Map::new();
                    for i in &s.instances {
                        let n = by_state
                            .entry(i.state.to_string())
                            .or_insert(Value::from(0u64));
                        *n = Value::from(n.as_u64().unwrap_or(0) + 1);
                    }
                    (
                        name.clone(),
                        json!({
                            "phase": s.phase,
                            "batch": s.batch,
                            "batches": s.batches,
                            "paused": s.paused,
                            "instances": by_state,
                            "failure": s.failure,
                        }),
                    )
                })
                .collect();
            out.insert("rollouts".into(), Value::Object(rollouts));
        }
        Value::Object(out)
    }
}
