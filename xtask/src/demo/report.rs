//! The end of the demo: per-phase figures, the level history, the accounting check, and
//! `summary.json` (which also carries the per-second timeline the HTML report will chart).

use super::load::{self, Second, Tally};
use super::{PERMITS, QUEUE_SCALE, SAMPLE_EVERY, SERVICE_TIME, Sample, Scenario};
use crate::Result;
use degrade_core::degrade::DegradeSnapshot;
use degrade_core::ladder::LadderConfig;
use degrade_core::{Level, Priority, Transition};
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

fn ms_value(micros: Option<u32>) -> Option<f64> {
    micros.map(|us| (f64::from(us) / 10.0).round() / 100.0)
}

/// Everything the demo reports, as written to `summary.json`.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    scenario: ScenarioJson,
    phases: Vec<PhaseJson>,
    transitions: Vec<TransitionJson>,
    pub(crate) accounting: Accounting,
    /// The worst lateness of the load generator against its schedule.
    max_send_lag_ms: f64,
    timeline: Vec<SecondJson>,
    /// Every reading of the signal: `[seconds since start, pressure]`.
    signal: Vec<[f64; 2]>,
}

#[derive(Debug, Serialize)]
struct ScenarioJson {
    capacity_rps: f64,
    permits: usize,
    service_time_ms: u128,
    signal: String,
    sample_every_ms: u128,
    duration_s: u64,
    mix: Vec<(&'static str, f64)>,
    ladder: LadderConfig,
}

#[derive(Debug, Serialize)]
struct PriorityJson {
    priority: &'static str,
    #[serde(flatten)]
    tally: Tally,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct PhaseJson {
    name: &'static str,
    start_s: u64,
    end_s: u64,
    target_rps_from: f64,
    target_rps_to: f64,
    offered_rps: f64,
    total: Tally,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    highest_level: Level,
    by_priority: Vec<PriorityJson>,
}

#[derive(Debug, Serialize)]
struct SecondJson {
    t_s: u64,
    phase: &'static str,
    target_rps: f64,
    total: Tally,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// The highest level held at any moment of this second.
    highest_level: Level,
    pressure_max: Option<f64>,
    max_send_lag_ms: f64,
    by_priority: Vec<PriorityJson>,
}

#[derive(Debug, Serialize)]
struct TransitionJson {
    t_s: f64,
    from: Level,
    to: Level,
    cause: String,
    signal: Option<String>,
    value: Option<f64>,
    threshold: Option<f64>,
    time_at_previous_s: f64,
}

/// Client-side and server-side totals and whether they agree.
#[derive(Debug, Serialize)]
pub(crate) struct Accounting {
    client: Tally,
    server_offered: u64,
    server_admitted: u64,
    server_shed: u64,
    /// Shed by the layer, by level then priority.
    server_shed_by_level: Vec<(Level, [u64; 5])>,
    /// offered == ok + shed + errors + dropped, with nothing pending.
    client_ok: bool,
    /// The layer saw what the client says reached the server (exactly, per priority, when
    /// the client had no errors; within the errors otherwise).
    server_ok: bool,
    pub(crate) ok: bool,
}

impl Summary {
    pub(crate) fn new(
        scenario: &Scenario,
        ladder: &LadderConfig,
        seconds: &[Second],
        samples: &[Sample],
        history: &[Transition],
        start: Instant,
        snapshot: &DegradeSnapshot,
    ) -> Self {
        let levels = Levels::new(history, start);
        let mix = super::mix();
        let scenario_json = ScenarioJson {
            capacity_rps: scenario.capacity,
            permits: PERMITS,
            service_time_ms: SERVICE_TIME.as_millis(),
            signal: format!(
                "queue: requests waiting for or holding a permit / {}",
                QUEUE_SCALE * PERMITS
            ),
            sample_every_ms: SAMPLE_EVERY.as_millis(),
            duration_s: scenario.total(),
            mix: Priority::ALL
                .iter()
                .rev()
                .map(|&p| (p.as_str(), mix.share(p)))
                .collect(),
            ladder: ladder.clone(),
        };

        let phases = scenario
            .phases
            .iter()
            .map(|phase| {
                let mut merged = Second::default();
                for s in seconds
                    .iter()
                    .take(phase.end as usize)
                    .skip(phase.start as usize)
                {
                    merged.add(s);
                }
                let (total, p50, p99) = totals(&mut merged);
                let span = Duration::from_secs(phase.start)..Duration::from_secs(phase.end);
                PhaseJson {
                    name: phase.name,
                    start_s: phase.start,
                    end_s: phase.end,
                    target_rps_from: phase.from * scenario.capacity,
                    target_rps_to: phase.to * scenario.capacity,
                    offered_rps: total.offered as f64 / (phase.end - phase.start).max(1) as f64,
                    total,
                    p50_ms: p50,
                    p99_ms: p99,
                    highest_level: levels.highest(span),
                    by_priority: by_priority(&mut merged),
                }
            })
            .collect();

        let timeline = seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut s = s.clone();
                let t = i as u64;
                let (total, p50, p99) = totals(&mut s);
                let span = Duration::from_secs(t)..Duration::from_secs(t + 1);
                let pressure_max = samples
                    .iter()
                    .filter(|x| span.contains(&x.t))
                    .map(|x| x.pressure)
                    .reduce(f64::max);
                SecondJson {
                    t_s: t,
                    phase: scenario.phase_at(t).name,
                    target_rps: scenario.rate_at(Duration::from_secs_f64(t as f64 + 0.5)),
                    total,
                    p50_ms: p50,
                    p99_ms: p99,
                    highest_level: levels.highest(span),
                    pressure_max,
                    max_send_lag_ms: f64::from(s.max_send_lag_us) / 1000.0,
                    by_priority: by_priority(&mut s),
                }
            })
            .collect();

        let transitions = history
            .iter()
            .map(|tr| TransitionJson {
                t_s: tr.at.saturating_duration_since(start).as_secs_f64(),
                from: tr.from,
                to: tr.to,
                cause: tr.cause.to_string(),
                signal: tr.signal.clone(),
                value: tr.value,
                threshold: tr.threshold,
                time_at_previous_s: tr.time_at_previous.as_secs_f64(),
            })
            .collect();

        Self {
            scenario: scenario_json,
            phases,
            transitions,
            accounting: Accounting::new(seconds, snapshot),
            max_send_lag_ms: f64::from(
                seconds.iter().map(|s| s.max_send_lag_us).max().unwrap_or(0),
            ) / 1000.0,
            timeline,
            signal: samples
                .iter()
                .map(|s| {
                    let round = |x: f64| (x * 1000.0).round() / 1000.0;
                    [round(s.t.as_secs_f64()), round(s.pressure)]
                })
                .collect(),
        }
    }

    pub(crate) fn print(&self) {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n== per phase (by send time; latency = 200 responses, send to last byte) =="
        );
        let _ = writeln!(
            out,
            "{:<9} {:>7} {:>11}  {:<10} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8}",
            "phase",
            "secs",
            "target/s",
            "priority",
            "offered",
            "admitted",
            "shed",
            "errors",
            "p50",
            "p99"
        );
        for phase in &self.phases {
            let secs = format!("{}-{}", phase.start_s, phase.end_s);
            let target = if phase.target_rps_from == phase.target_rps_to {
                format!("{:.0}", phase.target_rps_from)
            } else {
                format!("{:.0}-{:.0}", phase.target_rps_from, phase.target_rps_to)
            };
            let row = |out: &mut String, first: bool, name: &str, t: &Tally, p50, p99| {
                let (label, secs, target) = if first {
                    (phase.name, secs.as_str(), target.as_str())
                } else {
                    ("", "", "")
                };
                let _ = write!(
                    out,
                    "{label:<9} {secs:>7} {target:>11}  {name:<10} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8}",
                    t.offered,
                    t.ok,
                    t.shed,
                    t.errors + t.dropped,
                    fmt_ms(p50),
                    fmt_ms(p99),
                );
            };
            for (i, p) in phase.by_priority.iter().enumerate() {
                row(&mut out, i == 0, p.priority, &p.tally, p.p50_ms, p.p99_ms);
                out.push('\n');
            }
            row(
                &mut out,
                false,
                "all",
                &phase.total,
                phase.p50_ms,
                phase.p99_ms,
            );
            let _ = writeln!(
                out,
                "   offered {:.0}/s, highest level {}",
                phase.offered_rps, phase.highest_level
            );
        }

        let _ = writeln!(out, "\n== level transitions (LevelHandle::history) ==");
        if self.transitions.is_empty() {
            let _ = writeln!(out, "  none: the level stayed normal");
        }
        for tr in &self.transitions {
            let relation = if tr.cause == "recovered" { "<" } else { ">=" };
            let _ = writeln!(
                out,
                "  t={:>5.1}s {:>9} -> {:<9} {:<9} {} {:.2} {relation} {:.2}  (after {:.1}s)",
                tr.t_s,
                tr.from.as_str(),
                tr.to.as_str(),
                tr.cause,
                tr.signal.as_deref().unwrap_or("-"),
                tr.value.unwrap_or(f64::NAN),
                tr.threshold.unwrap_or(f64::NAN),
                tr.time_at_previous_s,
            );
        }

        let a = &self.accounting;
        let c = &a.client;
        let verdict = |ok: bool| if ok { "ok" } else { "!!! MISMATCH !!!" };
        let _ = writeln!(out, "\n== accounting ==");
        let _ = writeln!(
            out,
            "client: offered {} = ok {} + shed {} + errors {} + dropped {} (pending {})   {}",
            c.offered,
            c.ok,
            c.shed,
            c.errors,
            c.dropped,
            c.pending(),
            verdict(a.client_ok)
        );
        let reached = c.ok + c.shed;
        let _ = writeln!(
            out,
            "server: layer offered {} = admitted {} + shed {}; client ok + shed = {reached}{}   {}",
            a.server_offered,
            a.server_admitted,
            a.server_shed,
            if c.errors > 0 {
                format!(" (+ up to {} client errors)", c.errors)
            } else {
                ", per priority too".to_owned()
            },
            verdict(a.server_ok)
        );
        let shed_by_level = a
            .server_shed_by_level
            .iter()
            .filter(|(_, row)| row.iter().sum::<u64>() > 0)
            .map(|(level, row)| {
                let parts = Priority::ALL
                    .iter()
                    .rev()
                    .filter(|p| row[p.index()] > 0)
                    .map(|p| format!("{} {}", p.as_str(), row[p.index()]))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("{level}: {parts}")
            })
            .collect::<Vec<_>>();
        if !shed_by_level.is_empty() {
            let _ = writeln!(out, "layer shed by level: {}", shed_by_level.join("; "));
        }
        let late = self.max_send_lag_ms > f64::from(LATE_US) / 1000.0;
        let _ = writeln!(
            out,
            "load generator: worst send lag {:.1}ms{}",
            self.max_send_lag_ms,
            if late {
                "  !!! WARNING: the process could not keep its own schedule (CPU starved?); \
                 arrivals left in bursts, read the figures with care"
            } else {
                " (kept its schedule)"
            }
        );
        print!("{out}");
    }

    /// Writes `summary.json` under `dir` (created if needed) and returns its path.
    pub(crate) fn write(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)
            .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        let path = dir.join("summary.json");
        let json = serde_json::to_string_pretty(self)
            .map_err(|err| format!("cannot serialize the summary: {err}"))?;
        std::fs::write(&path, json + "\n")
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        Ok(path)
    }
}

impl Accounting {
    fn new(seconds: &[Second], snapshot: &DegradeSnapshot) -> Self {
        let mut all = Second::default();
        seconds.iter().for_each(|s| all.add(s));
        let client = all.total();
        let client_ok = client.pending() == 0
            && client.offered == client.ok + client.shed + client.errors + client.dropped;
        let reached = client.ok + client.shed;
        // A request the client gave up on (or lost to a connection error) may or may not have
        // reached the layer; with no client errors the two sides must agree exactly.
        let server_ok = if client.errors == 0 {
            snapshot.offered() == reached
                && Priority::ALL.iter().all(|&p| {
                    let t = all.tally[p.index()];
                    snapshot.admitted_by(p) == t.ok && snapshot.shed_by(p) == t.shed
                })
        } else {
            (reached..=reached + client.errors).contains(&snapshot.offered())
        };
        Self {
            client,
            server_offered: snapshot.offered(),
            server_admitted: snapshot.admitted_total(),
            server_shed: snapshot.shed_total(),
            server_shed_by_level: Level::ALL
                .iter()
                .map(|&level| (level, snapshot.shed[level.index()]))
                .collect(),
            client_ok,
            server_ok,
            ok: client_ok && server_ok,
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
        .map(|&p| {
            let latencies = &mut s.latency_us[p.index()];
            PriorityJson {
                priority: p.as_str(),
                tally: s.tally[p.index()],
                p50_ms: ms_value(load::quantile(latencies, 0.50)),
                p99_ms: ms_value(load::quantile(latencies, 0.99)),
            }
        })
        .collect()
}

fn fmt_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}ms"))
}

/// The level over time, rebuilt from the handle's history.
struct Levels {
    /// (time since start, from, to), in order.
    changes: Vec<(Duration, Level, Level)>,
}

impl Levels {
    fn new(history: &[Transition], start: Instant) -> Self {
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
}
