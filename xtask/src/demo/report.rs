//! The end of the demo: per-phase figures of every run, the checks the issue asks for, the
//! accounting of each layer against the client, and `summary.json` (which also carries the
//! per-second timelines the HTML report charts).

use super::load::{self, Second, Tally};
use super::service;
use super::{BreakerEvent, CanaryEvent, Run, SAMPLE_EVERY};
use crate::Result;
use degrade_canary::CanaryConfig;
use degrade_core::ladder::LadderConfig;
use degrade_core::{Level, LevelTransition, Priority};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// Sending an arrival later than this after its scheduled time means the process is short of
/// CPU; the summary then warns that the figures describe the machine more than the server.
pub(crate) const LATE_US: u32 = 20_000;

/// Milliseconds from microseconds, for display; `-` when there is nothing to show.
pub(crate) fn ms(micros: Option<u32>) -> String {
    match micros {
        Some(us) => format!("{:.1}ms", f64::from(us) / 1000.0),
        None => "-".to_owned(),
    }
}

pub(crate) fn ms_value(micros: Option<u32>) -> Option<f64> {
    micros.map(|us| (f64::from(us) / 10.0).round() / 100.0)
}

/// Everything the demo reports, as written to `summary.json`.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    pub(crate) setup: Setup,
    /// The bar at 3x overload, per run.
    pub(crate) checks: Vec<Check>,
    pub(crate) runs: Vec<RunJson>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Setup {
    capacity_rps: f64,
    permits: usize,
    service_time_ms: u128,
    tower_concurrency_limit: usize,
    signal: String,
    sample_every_ms: u128,
    mix: Vec<(&'static str, f64)>,
    rate_limit_per_client: String,
    ladder: LadderConfig,
    canary_steps_percent: Vec<f64>,
    canary_min_samples: u64,
}

/// Unloaded against 3x for one run.
#[derive(Debug, Serialize)]
pub(crate) struct Check {
    pub(crate) run: &'static str,
    /// p99 of the 200 responses in the warm-up (0.6x capacity).
    pub(crate) unloaded_p99_ms: Option<f64>,
    /// p99 of the 200 responses while the offered load holds at 3x.
    pub(crate) overload_p99_ms: Option<f64>,
    pub(crate) p99_ratio: Option<f64>,
    /// Critical requests answered 200 at 3x, in percent of those offered.
    pub(crate) critical_success_percent: Option<f64>,
    /// 200 responses per second at 3x, in percent of capacity.
    pub(crate) goodput_percent_of_capacity: f64,
    /// p99 within 2x of unloaded and critical success at least 99.9 %.
    pub(crate) meets_bar: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct RunJson {
    pub(crate) protection: &'static str,
    pub(crate) name: &'static str,
    pub(crate) duration_s: u64,
    pub(crate) phases: Vec<PhaseJson>,
    pub(crate) transitions: Vec<TransitionJson>,
    pub(crate) breaker: Vec<BreakerEvent>,
    pub(crate) canary: Vec<CanaryEvent>,
    pub(crate) accounting: Accounting,
    /// The worst lateness of the load generator against its schedule.
    pub(crate) max_send_lag_ms: f64,
    pub(crate) timeline: Vec<SecondJson>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PriorityJson {
    pub(crate) priority: &'static str,
    #[serde(flatten)]
    pub(crate) tally: Tally,
    pub(crate) p99_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PhaseJson {
    pub(crate) name: &'static str,
    pub(crate) start_s: u64,
    pub(crate) end_s: u64,
    pub(crate) target_rps_from: f64,
    pub(crate) target_rps_to: f64,
    /// offered = ok + shed + rate_limited + circuit_open + overloaded + errors + timeouts +
    /// dropped.
    pub(crate) total: Tally,
    /// 200 responses completed per second during the phase (by completion time).
    pub(crate) goodput_rps: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) critical_success_percent: Option<f64>,
    pub(crate) highest_level: Level,
    pub(crate) level_transitions: usize,
    pub(crate) by_priority: Vec<PriorityJson>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SecondJson {
    pub(crate) t_s: u64,
    pub(crate) phase: &'static str,
    pub(crate) target_rps: f64,
    pub(crate) total: Tally,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    /// The highest level held at any moment of this second.
    pub(crate) highest_level: Level,
    /// 200 responses by priority, most important first.
    pub(crate) ok_by_priority: [u64; 5],
    /// Offered by priority, most important first.
    pub(crate) offered_by_priority: [u64; 5],
    /// Answers of the candidate version: successes, errors.
    pub(crate) v2: [u64; 2],
    pub(crate) max_send_lag_ms: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct TransitionJson {
    pub(crate) t_s: f64,
    pub(crate) from: Level,
    pub(crate) to: Level,
    pub(crate) cause: String,
    pub(crate) signal: Option<String>,
    pub(crate) value: Option<f64>,
    pub(crate) threshold: Option<f64>,
}

/// The client's outcomes against each layer's own counters.
#[derive(Debug, Serialize)]
pub(crate) struct Accounting {
    pub(crate) client: Tally,
    /// offered == every outcome, with nothing pending.
    pub(crate) client_ok: bool,
    /// Each layer's counters against the client's (see `lines`).
    pub(crate) layers_ok: bool,
    pub(crate) lines: Vec<String>,
    pub(crate) backend_calls: u64,
}

impl Summary {
    pub(crate) fn new(runs: &[Run], ladder: &LadderConfig, rollout: &CanaryConfig) -> Self {
        let mix = super::mix();
        let rl = service::rate_limit();
        let setup = Setup {
            capacity_rps: service::capacity(),
            permits: service::permits(),
            service_time_ms: service::service_time().as_millis(),
            tower_concurrency_limit: service::tower_limit(),
            signal: "admission: the share of requests the adaptive limit refused (light 1 %, \
                     moderate 10 %, heavy 33 %, emergency 66 %)"
                .to_owned(),
            sample_every_ms: SAMPLE_EVERY.as_millis(),
            mix: Priority::ALL
                .iter()
                .rev()
                .map(|&p| (p.as_str(), mix.share(p)))
                .collect(),
            rate_limit_per_client: format!(
                "{} per {:?}, burst {}",
                rl.quota,
                rl.period,
                rl.burst.unwrap_or(0)
            ),
            ladder: ladder.clone(),
            canary_steps_percent: rollout.steps.iter().map(|s| s.weight_percent).collect(),
            canary_min_samples: rollout.judge.min_samples,
        };
        let runs: Vec<RunJson> = runs.iter().map(RunJson::new).collect();
        let checks = runs.iter().map(Check::new).collect();
        Self {
            setup,
            checks,
            runs,
        }
    }

    pub(crate) fn accounting_ok(&self) -> bool {
        self.runs
            .iter()
            .all(|r| r.accounting.client_ok && r.accounting.layers_ok)
    }

    pub(crate) fn print(&self) {
        let mut out = String::new();
        for run in &self.runs {
            let _ = writeln!(
                out,
                "\n== {} (by send time; latency = 200 responses, send to last byte) ==",
                run.name
            );
            let _ = writeln!(
                out,
                "{:<12} {:>6} {:>8} {:>7} {:>6} {:>5} {:>5} {:>6} {:>6} {:>5} {:>8} {:>8} {:>7} {:<9}",
                "phase",
                "secs",
                "offered",
                "ok",
                "shed",
                "429",
                "open",
                "over",
                "err",
                "t/o",
                "p50",
                "p99",
                "crit%",
                "level<="
            );
            for p in &run.phases {
                let t = &p.total;
                let _ = writeln!(
                    out,
                    "{:<12} {:>6} {:>8} {:>7} {:>6} {:>5} {:>5} {:>6} {:>6} {:>5} {:>8} {:>8} {:>7} {:<9}",
                    p.name,
                    format!("{}-{}", p.start_s, p.end_s),
                    t.offered,
                    t.ok,
                    t.shed,
                    t.rate_limited,
                    t.circuit_open,
                    t.overloaded,
                    t.errors,
                    t.timeouts + t.dropped,
                    fmt_ms(p.p50_ms),
                    fmt_ms(p.p99_ms),
                    p.critical_success_percent
                        .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}")),
                    p.highest_level.as_str(),
                );
            }
            if !run.transitions.is_empty() {
                let levels = run
                    .transitions
                    .iter()
                    .map(|t| format!("{:.1}s {}", t.t_s, t.to.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(out, "level: {levels}");
            }
            if !run.breaker.is_empty() {
                let breaker = run
                    .breaker
                    .iter()
                    .map(|b| format!("{:.1}s {:?}", b.t, b.to))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(out, "breaker: {breaker}");
            }
            for c in run.canary.iter().filter(|c| c.outcome.is_some()) {
                let _ = writeln!(
                    out,
                    "canary {:?}: {} at {:.1}s ({}; samples stable {} / canary {})",
                    c.candidate,
                    c.outcome.unwrap_or("-"),
                    c.t,
                    c.reason,
                    c.samples.0,
                    c.samples.1
                );
            }
            let a = &run.accounting;
            let verdict = |ok: bool| if ok { "ok" } else { "!!! MISMATCH !!!" };
            let c = &a.client;
            let _ = writeln!(
                out,
                "accounting: offered {} = ok {} + shed {} + 429 {} + open {} + overloaded {} + \
                 errors {} + timeouts {} + dropped {} (pending {})   {}",
                c.offered,
                c.ok,
                c.shed,
                c.rate_limited,
                c.circuit_open,
                c.overloaded,
                c.errors,
                c.timeouts,
                c.dropped,
                c.pending(),
                verdict(a.client_ok)
            );
            for line in &a.lines {
                let _ = writeln!(out, "  {line}");
            }
            let _ = writeln!(out, "  layers against the client: {}", verdict(a.layers_ok));
            if run.max_send_lag_ms > f64::from(LATE_US) / 1000.0 {
                let _ = writeln!(
                    out,
                    "  !!! the load generator ran up to {:.0} ms late (CPU starved?): read the \
                     figures with care",
                    run.max_send_lag_ms
                );
            }
        }
        let _ = writeln!(
            out,
            "\n== at 3x overload (the issue's bar: p99 <= 2x unloaded, critical >= 99.9 %) =="
        );
        for c in &self.checks {
            let _ = writeln!(
                out,
                "{:<32} unloaded p99 {:>8}  overload p99 {:>8}  ratio {:>6}  critical {:>7}  goodput {:>5.1}% of capacity  {}",
                c.run,
                fmt_ms(c.unloaded_p99_ms),
                fmt_ms(c.overload_p99_ms),
                c.p99_ratio
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")),
                c.critical_success_percent
                    .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}%")),
                c.goodput_percent_of_capacity,
                if c.meets_bar {
                    "meets the bar"
                } else {
                    "does not"
                }
            );
        }
        print!("{out}");
    }

    /// Writes `summary.json` under `dir` (created if needed) and returns its path.
    pub(crate) fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)
            .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        let path = dir.join("summary.json");
        let json = serde_json::to_string_pretty(self)
            .map_err(|err| format!("cannot serialize the summary: {err}"))?;
        std::fs::write(&path, json + "\n")
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        Ok(vec![path])
    }
}

impl Check {
    fn new(run: &RunJson) -> Self {
        let phase = |name: &str| run.phases.iter().find(|p| p.name == name);
        let unloaded = phase("warm-up").and_then(|p| p.p99_ms);
        let overload = phase("overload");
        let overload_p99 = overload.and_then(|p| p.p99_ms);
        let ratio = unloaded
            .zip(overload_p99)
            .map(|(u, o)| ((o / u) * 100.0).round() / 100.0);
        let critical = overload.and_then(|p| p.critical_success_percent);
        let goodput = overload.map_or(0.0, |p| 100.0 * p.goodput_rps / service::capacity());
        Self {
            run: run.name,
            unloaded_p99_ms: unloaded,
            overload_p99_ms: overload_p99,
            p99_ratio: ratio,
            critical_success_percent: critical,
            goodput_percent_of_capacity: (goodput * 10.0).round() / 10.0,
            meets_bar: ratio.is_some_and(|r| r <= 2.0) && critical.is_some_and(|c| c >= 99.9),
        }
    }
}

impl RunJson {
    fn new(run: &Run) -> Self {
        let levels = Levels::new(&run.transitions, run.start);
        let scenario = &run.scenario;
        let phases = scenario
            .phases
            .iter()
            .map(|phase| {
                let mut merged = Second::default();
                for s in run
                    .seconds
                    .iter()
                    .take(phase.end as usize)
                    .skip(phase.start as usize)
                {
                    merged.add(s);
                }
                let (total, p50, p99) = totals(&mut merged);
                let span = Duration::from_secs(phase.start)..Duration::from_secs(phase.end);
                let secs = (phase.end - phase.start).max(1) as f64;
                let crit = merged.tally[Priority::Critical.index()];
                // Goodput by completion time: a queue that answers late still answers at
                // capacity at most.
                let completed: u64 = run
                    .seconds
                    .iter()
                    .take(phase.end as usize)
                    .skip(phase.start as usize)
                    .map(|s| s.completed_ok)
                    .sum();
                PhaseJson {
                    name: phase.name,
                    start_s: phase.start,
                    end_s: phase.end,
                    target_rps_from: phase.from * scenario.capacity,
                    target_rps_to: phase.to * scenario.capacity,
                    total,
                    goodput_rps: (completed as f64 / secs * 10.0).round() / 10.0,
                    p50_ms: p50,
                    p99_ms: p99,
                    critical_success_percent: crit
                        .success_percent()
                        .map(|c| (c * 100.0).round() / 100.0),
                    highest_level: levels.highest(span.clone()),
                    level_transitions: levels.count(span),
                    by_priority: by_priority(&mut merged),
                }
            })
            .collect();

        let timeline = run
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut s = s.clone();
                let t = i as u64;
                let (total, p50, p99) = totals(&mut s);
                let span = Duration::from_secs(t)..Duration::from_secs(t + 1);
                let by = |f: fn(&Tally) -> u64| {
                    let mut row = [0; 5];
                    for (slot, p) in row.iter_mut().zip(Priority::ALL.iter().rev()) {
                        *slot = f(&s.tally[p.index()]);
                    }
                    row
                };
                SecondJson {
                    t_s: t,
                    phase: scenario.phase_at(t).name,
                    target_rps: scenario.rate_at(Duration::from_secs_f64(t as f64 + 0.5)),
                    total,
                    p50_ms: p50,
                    p99_ms: p99,
                    highest_level: levels.highest(span),
                    ok_by_priority: by(|t| t.ok),
                    offered_by_priority: by(|t| t.offered),
                    v2: s.v2,
                    max_send_lag_ms: f64::from(s.max_send_lag_us) / 1000.0,
                }
            })
            .collect();

        let transitions = run
            .transitions
            .iter()
            .map(|tr| TransitionJson {
                t_s: tr.at.saturating_duration_since(run.start).as_secs_f64(),
                from: tr.from,
                to: tr.to,
                cause: tr.cause.to_string(),
                signal: tr.signal.clone(),
                value: tr.value,
                threshold: tr.threshold,
            })
            .collect();

        Self {
            protection: run.protection.key(),
            name: run.protection.name(),
            duration_s: scenario.total(),
            phases,
            transitions,
            breaker: run.breaker.clone(),
            canary: run.canary.clone(),
            accounting: Accounting::new(run),
            max_send_lag_ms: f64::from(
                run.seconds
                    .iter()
                    .map(|s| s.max_send_lag_us)
                    .max()
                    .unwrap_or(0),
            ) / 1000.0,
            timeline,
        }
    }
}

impl Accounting {
    fn new(run: &Run) -> Self {
        let mut all = Second::default();
        run.seconds.iter().for_each(|s| all.add(s));
        let c = all.total();
        let client_ok = c.pending() == 0 && c.offered == c.settled();
        let mut lines = Vec::new();
        // What reached the server: everything answered. A request the client gave up on (or
        // lost to a connection error) may or may not have; with no timeouts the sides must
        // agree exactly, otherwise within the timeouts.
        let reached = c.ok + c.rejected() + c.errors;
        let slack = c.timeouts;
        let within = |server: u64, client: u64| (client..=client + slack).contains(&server);
        let mut ok = true;
        let mut check = |name: &str, server: u64, client: u64, lines: &mut Vec<String>| {
            let good = within(server, client);
            ok &= good;
            lines.push(format!(
                "{name}: layer {server} vs client {client}{}{}",
                if slack > 0 {
                    format!(" (+ up to {slack} timeouts)")
                } else {
                    String::new()
                },
                if good { "" } else { "  <-- MISMATCH" }
            ));
        };
        match &run.parts {
            Some(parts) => {
                let degrade = parts.degrade_snapshot();
                let rl = parts.rate_limit_snapshot();
                let breaker = parts.breaker.snapshot();
                check(
                    "DegradeLayer offered",
                    degrade.offered(),
                    reached,
                    &mut lines,
                );
                check("DegradeLayer shed", degrade.rejected(), c.shed, &mut lines);
                check(
                    "RateLimit offered = DegradeLayer admitted",
                    rl.offered(),
                    degrade.admitted(),
                    &mut lines,
                );
                check(
                    "RateLimit rejected",
                    rl.rejected.iter().sum(),
                    c.rate_limited,
                    &mut lines,
                );
                check(
                    "Breaker passed + rejected = RateLimit admitted",
                    breaker.admitted + breaker.rejected,
                    rl.admitted,
                    &mut lines,
                );
                check(
                    "Breaker rejected",
                    breaker.rejected,
                    c.circuit_open,
                    &mut lines,
                );
                check(
                    "backend calls = Breaker passed",
                    run.backend_calls,
                    breaker.admitted,
                    &mut lines,
                );
            }
            None => {
                check(
                    "backend calls",
                    run.backend_calls,
                    c.ok + c.errors,
                    &mut lines,
                );
            }
        }
        Self {
            client: c,
            client_ok,
            layers_ok: ok,
            lines,
            backend_calls: run.backend_calls,
        }
    }
}

/// Totals and overall p50 / p99 of a merged span.
fn totals(s: &mut Second) -> (Tally, Option<f64>, Option<f64>) {
    let total = s.total();
    let mut all: Vec<u32> = s.latency_us.iter().flatten().copied().collect();
    let p50 = ms_value(load::quantile(&mut all, 0.50));
    let p99 = ms_value(load::quantile(&mut all, 0.99));
    (total, p50, p99)
}

/// Per priority, most important first.
fn by_priority(s: &mut Second) -> Vec<PriorityJson> {
    Priority::ALL
        .iter()
        .rev()
        .map(|&p| PriorityJson {
            priority: p.as_str(),
            tally: s.tally[p.index()],
            p99_ms: ms_value(load::quantile(&mut s.latency_us[p.index()], 0.99)),
        })
        .collect()
}

fn fmt_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}ms"))
}

/// The level over time, rebuilt from the handle's history.
pub(crate) struct Levels {
    /// (time since start, from, to), in order.
    changes: Vec<(Duration, Level, Level)>,
}

impl Levels {
    pub(crate) fn new(history: &[LevelTransition], start: Instant) -> Self {
        Self {
            changes: history
                .iter()
                .map(|t| (t.at.saturating_duration_since(start), t.from, t.to))
                .collect(),
        }
    }

    fn at(&self, t: Duration) -> Level {
        match self.changes.iter().rev().find(|(at, _, _)| *at <= t) {
            Some((_, _, to)) => *to,
            None => self
                .changes
                .first()
                .map_or(Level::Normal, |(_, from, _)| *from),
        }
    }

    /// The highest level held at any moment of `span`.
    fn highest(&self, span: std::ops::Range<Duration>) -> Level {
        self.changes
            .iter()
            .filter(|(at, _, _)| span.contains(at))
            .map(|(_, _, to)| *to)
            .fold(self.at(span.start), Level::max)
    }

    fn count(&self, span: std::ops::Range<Duration>) -> usize {
        self.changes
            .iter()
            .filter(|(at, _, _)| span.contains(at))
            .count()
    }
}
