//! Per-arm statistics as Redis hash fields: the increments an instance adds per interval and
//! the fleet's sums the judge reads back, both as [`CanarySnapshot`]s.
//!
//! Field names: `<arm>:<counter>` (`s` stable, `c` canary; `routed`, `forced`, `ok`, `fail`,
//! `ign`, `canc`), `<arm>:h<i>` for bucket `i` of the arm's latency histogram
//! ([`ARM_LAYOUT`]), and `<arm>:g<g>:n` (judged calls), `<arm>:g<g>:fail`, `<arm>:g<g>:canc`,
//! `<arm>:g<g>:h<i>` for key group `g` ([`GROUP_LAYOUT`]). Only non-zero increments are sent. Fields that do not parse, name a
//! bucket or group out of range, or hold a negative count are skipped on reading: the hash is
//! network input.

use crate::Arm;
use crate::stats::{ARM_LAYOUT, ArmSnapshot, CanarySnapshot, GROUP_LAYOUT, GROUPS, GroupSnapshot};

const ARMS: [(Arm, &str); 2] = [(Arm::Stable, "s"), (Arm::Canary, "c")];

/// The non-zero increments from `earlier` to `now`, as (field, count) pairs.
pub(crate) fn increments(now: &CanarySnapshot, earlier: &CanarySnapshot) -> Vec<(String, u64)> {
    let d = now.since(earlier);
    let mut out = Vec::new();
    let mut push = |field: String, n: u64| {
        if n > 0 {
            out.push((field, n));
        }
    };
    for (arm, a) in ARMS {
        let s = d.arm(arm);
        push(format!("{a}:routed"), s.routed);
        push(format!("{a}:forced"), s.forced);
        push(format!("{a}:ok"), s.successes);
        push(format!("{a}:fail"), s.failures);
        push(format!("{a}:ign"), s.ignored);
        push(format!("{a}:canc"), s.cancelled);
        for (i, &n) in s.latency.buckets().iter().enumerate() {
            push(format!("{a}:h{i}"), n);
        }
        for (g, group) in s.groups.iter().enumerate() {
            push(format!("{a}:g{g}:n"), group.calls);
            push(format!("{a}:g{g}:fail"), group.failures);
            push(format!("{a}:g{g}:canc"), group.cancelled);
            for (i, &n) in group.latency.buckets().iter().enumerate() {
                push(format!("{a}:g{g}:h{i}"), n);
            }
        }
    }
    out
}

/// An empty fleet snapshot: both arms with their [`GROUPS`] key groups.
pub(crate) fn empty() -> CanarySnapshot {
    let arm = || ArmSnapshot {
        groups: vec![GroupSnapshot::default(); GROUPS],
        ..ArmSnapshot::default()
    };
    CanarySnapshot {
        stable: arm(),
        canary: arm(),
        weight_bp: None,
    }
}

/// Adds one hash field to `snap`; `false` if the field is not one of ours.
pub(crate) fn add(snap: &mut CanarySnapshot, field: &str, value: i64) -> bool {
    let Ok(n) = u64::try_from(value) else {
        return false;
    };
    let Some((a, rest)) = field.split_once(':') else {
        return false;
    };
    let arm = match a {
        "s" => &mut snap.stable,
        "c" => &mut snap.canary,
        _ => return false,
    };
    let counter = match rest {
        "routed" => Some(&mut arm.routed),
        "forced" => Some(&mut arm.forced),
        "ok" => Some(&mut arm.successes),
        "fail" => Some(&mut arm.failures),
        "ign" => Some(&mut arm.ignored),
        "canc" => Some(&mut arm.cancelled),
        _ => None,
    };
    if let Some(c) = counter {
        *c = c.saturating_add(n);
        return true;
    }
    if let Some(i) = rest.strip_prefix('h') {
        return match i.parse::<usize>() {
            Ok(i) if i < ARM_LAYOUT.len() => {
                arm.latency.add(i, n);
                true
            }
            _ => false,
        };
    }
    let Some((g, what)) = rest.strip_prefix('g').and_then(|r| r.split_once(':')) else {
        return false;
    };
    let Some(group) = g.parse::<usize>().ok().and_then(|g| arm.groups.get_mut(g)) else {
        return false;
    };
    match what {
        "n" => group.calls = group.calls.saturating_add(n),
        "fail" => group.failures = group.failures.saturating_add(n),
        "canc" => group.cancelled = group.cancelled.saturating_add(n),
        _ => match what.strip_prefix('h').and_then(|i| i.parse::<usize>().ok()) {
            Some(i) if i < GROUP_LAYOUT.len() => group.latency.add(i, n),
            _ => return false,
        },
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn increments_read_back_as_the_same_snapshot() {
        let mut now = empty();
        now.canary.routed = 7;
        now.canary.failures = 2;
        now.canary.successes = 5;
        now.canary.latency.record(Duration::from_millis(3));
        now.canary.groups[9].failures = 2;
        now.canary.groups[9].calls = 2;
        now.canary.groups[9]
            .latency
            .record(Duration::from_millis(3));
        now.stable.ignored = 1;
        let mut back = empty();
        for (f, n) in increments(&now, &empty()) {
            assert!(add(&mut back, &f, i64::try_from(n).unwrap()), "{f}");
        }
        assert_eq!(back, now);
    }

    #[test]
    fn fields_that_are_not_ours_are_skipped() {
        let mut s = empty();
        for f in [
            "x:routed",
            "s:h99999",
            "c:g64:fail",
            "c:g1:h9999",
            "s",
            "s:nope",
            "c:g:x",
        ] {
            assert!(!add(&mut s, f, 1), "{f}");
        }
        assert!(!add(&mut s, "s:routed", -5));
        assert_eq!(s, empty());
    }
}
