//! `cargo xtask bench overload`: goodput under overload. The demo's backend (real axum on
//! 127.0.0.1) driven by the demo's load generator, in eight configurations with their default
//! settings — unprotected; tower's `ConcurrencyLimit` + `LoadShed`; tower-resilience's
//! bulkhead; tower-acc's adaptive limit (Gradient2, Vegas) + `LoadShed`;
//! tower-resilience-adaptive (AIMD, Vegas) + `LoadShed`; and degrade (the demo's protected
//! stack without its per-client quota: the default `DegradeLayer`, nothing of the backend
//! configured, then the breaker and the canary router, which refuse nothing here) — through
//! six scenarios:
//!
//! * `steps`: open-loop Poisson load at 0.5x to 4x capacity, back to 0.5x (recovery), then a
//!   step to 3x (reaction);
//! * `capacity-halves`: a steady 1.5x of the nominal capacity while the backend slows 2x (3x
//!   its capacity then) and comes back; first, the slowed backend's unloaded p99 (at half its
//!   capacity);
//! * `cpu`: a CPU-bound backend (processor sharing over the backend's cores: capacity set by
//!   CPU, not by a number of slots) at 1.5x and 3x;
//! * `mixed`: one request in ten costs ten times as much, at 1.5x and 3x;
//! * `closed-loop`: 64 connections re-sending as soon as they have an answer, as wrk does;
//! * `critical-only`: only critical requests, at 1.5x and 3x.
//!
//! Measured per phase: goodput (200 answers completed per second, against the capacity of the
//! moment), p50 / p99 of the 200 answers and the p99 over the unloaded p99 (at half capacity)
//! of the backend of the moment,
//! the share of critical requests answered 200; for `steps`, the time to react to the step from
//! 0.5x to 3x and to recover after 4x; for `capacity-halves`, the time until goodput is back at
//! 90 % of the new capacity after each change. Writes a table (Markdown), an SVG plot of
//! `steps` and JSON under `target/degrade-bench/`.

use crate::demo::load::{self, Answer};
use crate::demo::service::{self, Protection};
use crate::demo::{self, Event, Phase, Run, Scenario};
use crate::{Result, workspace_root};
use degrade_core::Priority;
use plotters::prelude::*;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "\
Usage: cargo xtask bench overload [--quick] [--scenario NAME]... [--only CONFIG]... [--out DIR]
  --quick          3 s per load step (default 8 s)
  --scenario NAME  steps | capacity-halves | cpu | mixed | closed-loop | critical-only
                   (repeatable; default: all of them)
  --only CONFIG    unprotected | tower | bulkhead | acc-gradient2 | acc-vegas |
                   adaptive-aimd | adaptive-vegas | degrade (repeatable; default: all)
  --out DIR        where overload.md, overload.svg and overload.json go
                   (default <workspace>/target/degrade-bench)
  --backend PxMS   the backend: P permits of MS milliseconds each (default 8x40;
                   1-1024 permits, 1-10000 ms); loads are multiples of its capacity
  --queue-delay Q  degrade's `LimitConfig::queue_delay` (default 0.5 baselines):
                   how long a request may wait for a slot; shorter trades goodput
                   for a lower admitted p99
  --tail           also print where each phase's admitted tail lies: its answers
                   slower than 1.5x the unloaded p99, by the 100 ms they were sent in
                   (always in overload.json as `over_bar`)
  --update-benchmarks  also replace the table in BENCHMARKS.md (between the
                   `overload-table` markers) with this run's";

/// The markers around the generated table in BENCHMARKS.md.
const TABLE_BEGIN: &str =
    "<!-- overload-table:begin (cargo xtask bench overload --update-benchmarks) -->";
const TABLE_END: &str = "<!-- overload-table:end -->";

/// Every configuration, in the order run and shown.
pub(crate) const CONFIGS: [Protection; 8] = [
    Protection::Unprotected,
    Protection::Tower,
    Protection::Bulkhead,
    Protection::AccGradient2,
    Protection::AccVegas,
    Protection::AdaptiveAimd,
    Protection::AdaptiveVegas,
    Protection::DegradeLayer,
];

/// Parses `--backend`'s `PxMS` (permits × milliseconds, e.g. `16x20`).
pub(crate) fn parse_backend(shape: &str) -> Result<(usize, u64)> {
    let bad = || format!("`--backend {shape}`: expected PERMITSxMILLISECONDS, e.g. 16x20");
    let (p, ms) = shape.split_once(['x', 'X']).ok_or_else(bad)?;
    let p = p.trim().parse::<usize>().map_err(|_| bad())?;
    let ms = ms
        .trim()
        .trim_end_matches("ms")
        .parse::<u64>()
        .map_err(|_| bad())?;
    Ok((p, ms))
}

/// Every scenario, in the order run and shown.
const SCENARIOS: [&str; 6] = [
    "steps",
    "capacity-halves",
    "cpu",
    "mixed",
    "closed-loop",
    "critical-only",
];

/// Connections of the closed-loop scenario.
const CONNECTIONS: usize = 64;

/// Offered load in multiples of capacity, in the order run after a 0.5x warm-up: rising, so
/// each step starts from the state the previous one left (as load grows in production); then
/// back to 0.5x for twice as long (the recovery measure), then a step to 3x from that calm
/// state (the reaction measure). The table takes each load's first occurrence.
const STEPS: [(&str, f64, u64); 9] = [
    ("1x", 1.0, 1),
    ("1.5x", 1.5, 1),
    ("2x", 2.0, 1),
    ("2.5x", 2.5, 1),
    ("3x", 3.0, 1),
    ("4x", 4.0, 1),
    ("back to 0.5x", 0.5, 2),
    ("step to 3x", 3.0, 1),
    ("end", 0.5, 1),
];
const WARM_UP: u64 = 3;
/// `capacity-halves`' phase that measures the slowed backend's unloaded p99.
const SLOWED_UNLOADED: &str = "halved, unloaded";
/// The window of the reaction and recovery measures.
const WINDOW_MS: u32 = 250;

/// Runs the benchmark named by `args[0]` (only `overload` exists).
pub(crate) fn run(args: &[String]) -> Result {
    let Some((name, rest)) = args.split_first() else {
        return Err(format!("which benchmark?\n\n{USAGE}"));
    };
    if name != "overload" {
        return Err(format!("unknown benchmark `{name}`\n\n{USAGE}"));
    }
    let mut quick = false;
    let mut update = false;
    let mut out = workspace_root().join("target").join("degrade-bench");
    let mut scenarios: Vec<&'static str> = Vec::new();
    let mut configs: Vec<Protection> = Vec::new();
    let mut backend_set = false;
    let mut queue_delay = None;
    let mut tail = false;
    let mut iter = rest.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--scenario" => {
                let name = iter.next().ok_or("`--scenario` needs a value")?;
                let found = SCENARIOS
                    .iter()
                    .find(|s| **s == name.as_str())
                    .ok_or_else(|| format!("unknown scenario `{name}`\n\n{USAGE}"))?;
                scenarios.push(found);
            }
            "--only" => {
                let name = iter.next().ok_or("`--only` needs a value")?;
                let found = CONFIGS
                    .iter()
                    .find(|c| c.key() == name.as_str())
                    .ok_or_else(|| format!("unknown configuration `{name}`\n\n{USAGE}"))?;
                configs.push(*found);
            }
            "--out" => {
                out = PathBuf::from(iter.next().ok_or("`--out` needs a value")?);
            }
            "--update-benchmarks" => update = true,
            "--tail" => tail = true,
            "--backend" => {
                let shape = iter.next().ok_or("`--backend` needs a value, e.g. 16x20")?;
                let (permits, ms) = parse_backend(shape)?;
                service::set_shape(permits, Duration::from_millis(ms))?;
                backend_set = true;
            }
            "--queue-delay" => {
                let value = iter
                    .next()
                    .ok_or("`--queue-delay` needs a value, e.g. 0.3")?;
                queue_delay = Some(service::parse_queue_delay(value)?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unexpected argument `{other}`\n\n{USAGE}")),
        }
    }
    if update && backend_set {
        return Err(
            "`--update-benchmarks` writes the table of the default backend: drop `--backend`"
                .to_string(),
        );
    }
    if update && queue_delay.is_some() {
        return Err(
            "`--update-benchmarks` writes the table of the defaults: drop `--queue-delay`"
                .to_string(),
        );
    }
    if let Some(queue_delay) = queue_delay {
        service::set_queue_delay(queue_delay)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the tokio runtime: {err}"))?;
    if scenarios.is_empty() {
        scenarios = SCENARIOS.to_vec();
    }
    if configs.is_empty() {
        configs = CONFIGS.to_vec();
    }
    let table = runtime.block_on(overload(
        if quick { 3 } else { 8 },
        &scenarios,
        &configs,
        out,
        tail,
    ))?;
    if update {
        let path = workspace_root().join("BENCHMARKS.md");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text = replace_between(&text, &table)
            .ok_or_else(|| format!("{} has no overload-table markers", path.display()))?;
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("updated {}", path.display());
    }
    Ok(())
}

/// `text` with what lies between the table markers replaced by `table`.
fn replace_between(text: &str, table: &str) -> Option<String> {
    let begin = text.find(TABLE_BEGIN)? + TABLE_BEGIN.len();
    let end = begin + text[begin..].find(TABLE_END)?;
    Some(format!(
        "{}\n\n{}\n\n{}",
        &text[..begin],
        table.trim(),
        &text[end..]
    ))
}

fn steps_scenario(step_secs: u64) -> Scenario {
    let mut phases = vec![Phase {
        name: "warm-up",
        start: 0,
        end: WARM_UP,
        from: 0.5,
        to: 0.5,
        event: Event::None,
    }];
    let mut start = WARM_UP;
    for (name, factor, length) in STEPS {
        phases.push(Phase {
            name,
            start,
            end: start + step_secs * length,
            from: factor,
            to: factor,
            event: Event::None,
        });
        start += step_secs * length;
    }
    Scenario::new(phases)
}

fn phase(name: &'static str, start: u64, secs: u64, load: f64, event: Event) -> Phase {
    Phase {
        name,
        start,
        end: start + secs,
        from: load,
        to: load,
        event,
    }
}

/// Back-to-back phases from second 0.
fn chain(parts: &[(&'static str, u64, f64, Event)]) -> Vec<Phase> {
    let mut start = 0;
    parts
        .iter()
        .map(|&(name, secs, load, event)| {
            let p = phase(name, start, secs, load, event);
            start = p.end;
            p
        })
        .collect()
}

/// The scenario `name`: its phases, backend and clients. Loads are multiples of the backend's
/// own capacity (for `mixed`, the capacity of its mean cost).
fn scenario(name: &str, step: u64) -> Scenario {
    let warm = WARM_UP;
    match name {
        // The slowed backend's own unloaded p99 is measured first, at half its capacity for
        // twice the warm-up (as many answers as the warm-up's): the halved phase's p99 is
        // compared with it, not with the fast backend's. The warm-up then re-learns the fast
        // backend at 0.5x before the overload, as in every scenario.
        "capacity-halves" => Scenario::new(chain(&[
            (SLOWED_UNLOADED, 2 * warm, 0.25, Event::Slow),
            ("warm-up", warm, 0.5, Event::None),
            ("1.5x", step + 1, 1.5, Event::None),
            ("halved", step + 1, 1.5, Event::Slow),
            ("restored", step + 1, 1.5, Event::None),
        ])),
        "cpu" | "mixed" | "critical-only" => {
            let mut s = Scenario::new(chain(&[
                ("warm-up", warm, 0.5, Event::None),
                ("1.5x", step, 1.5, Event::None),
                ("3x", step, 3.0, Event::None),
            ]));
            match name {
                "cpu" => s.model = service::Model::Cpu,
                "mixed" => {
                    s.model = service::Model::Mixed;
                    s.capacity = service::capacity_of(s.model);
                }
                _ => {
                    s.mix = load::Mix::new([
                        (Priority::Critical, 1.0),
                        (Priority::High, 0.0),
                        (Priority::Normal, 0.0),
                        (Priority::Low, 0.0),
                        (Priority::Background, 0.0),
                    ])
                    .expect("one priority is a valid mix");
                }
            }
            s
        }
        "closed-loop" => {
            let mut s = Scenario::new(chain(&[
                ("start", warm, 0.0, Event::None),
                ("closed", 2 * step, 0.0, Event::None),
            ]));
            s.connections = Some(CONNECTIONS);
            s
        }
        _ => steps_scenario(step),
    }
}

#[derive(Debug, Serialize)]
struct Point {
    phase: &'static str,
    factor: f64,
    offered_rps: f64,
    /// The backend's capacity during the phase (halved while it is slowed).
    capacity_rps: f64,
    goodput_rps: f64,
    goodput_percent_of_capacity: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// The p99 this phase is compared with: the same configuration's p99 at half the
    /// capacity of the backend of the moment (the warm-up's; the slowed backend's own in
    /// `capacity-halves`' halved phase; for `closed-loop`, the `steps` warm-up's).
    unloaded_p99_ms: Option<f64>,
    /// The phase's p99 over `unloaded_p99_ms`.
    p99_over_unloaded: Option<f64>,
    critical_success_percent: Option<f64>,
    /// Where the phase's admitted tail lies: its answers slower than the p99 bar
    /// (1.5 × `unloaded_p99_ms`), counted by the 100 ms in which they were sent (`[ms from
    /// the run's start, count]`; empty without an unloaded p99). An overload's onset, a
    /// change of the backend, or a tail spread over the phase read differently here.
    over_bar: Vec<(u32, u32)>,
    /// How many answers may be over the bar with the p99 within it: the phase's answers
    /// less the rank of its p99.
    over_bar_allowed: usize,
}

#[derive(Debug, Serialize)]
struct ConfigResult {
    name: &'static str,
    key: &'static str,
    points: Vec<Point>,
    /// `steps`: from the step from 0.5x to 3x until every later 250 ms window of that step has
    /// its p99 within 2x of the warm-up's p99 (`None`: never within the step).
    reaction_ms: Option<u64>,
    /// `steps`: from the step from 4x back to 0.5x until every later window answers at least
    /// 99 % of its requests 200 with the p99 within 2x of the warm-up's.
    recovery_ms: Option<u64>,
    /// `capacity-halves`: per change, the time until every later second of the phase has
    /// goodput at 90 % of the new capacity or more.
    settle_ms: Vec<(&'static str, Option<u64>)>,
    warm_up_p99_ms: Option<f64>,
    /// The adaptive limit over the run, one value a second (degrade only).
    limit: Vec<Option<u32>>,
}

#[derive(Debug, Serialize)]
struct ScenarioResult {
    name: &'static str,
    capacity_rps: f64,
    connections: Option<usize>,
    configs: Vec<ConfigResult>,
}

async fn overload(
    step_secs: u64,
    scenarios: &[&'static str],
    configs: &[Protection],
    out: PathBuf,
    tail: bool,
) -> Result<String> {
    let ladder = demo::ladder_config(Duration::from_secs(1));
    let rollout = demo::rollout_config(true);
    let mut results = Vec::new();
    // The closed-loop scenario has no unloaded phase: its p99 is compared with the unloaded
    // p99 of the `steps` scenario when that ran.
    let mut unloaded: Vec<(Protection, Option<f64>)> = Vec::new();
    for &name in scenarios {
        let scenario = if name == "steps" {
            steps_scenario(step_secs)
        } else {
            scenario(name, step_secs)
        };
        let mut runs = Vec::new();
        for &protection in configs {
            let run = demo::run_one(protection, &scenario, &ladder, &rollout).await?;
            let reference = unloaded
                .iter()
                .find(|(p, _)| *p == protection)
                .and_then(|(_, u)| *u);
            let result = measure(&run, &scenario, name, reference);
            if name == "steps" {
                unloaded.push((protection, result.warm_up_p99_ms));
            }
            runs.push(result);
        }
        results.push(ScenarioResult {
            name,
            capacity_rps: scenario.capacity,
            connections: scenario.connections,
            configs: runs,
        });
    }
    let table = table(&results, step_secs);
    println!("\n{table}");
    if tail {
        println!("{}", tail_report(&results));
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let md = out.join("overload.md");
    std::fs::write(&md, &table).map_err(|e| format!("cannot write {}: {e}", md.display()))?;
    let json = out.join("overload.json");
    let text = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(&json, text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    let mut paths = vec![md, json];
    if let Some(steps) = results.iter().find(|r| r.name == "steps") {
        let svg = out.join("overload.svg");
        std::fs::write(&svg, plot(&steps.configs)?)
            .map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
        paths.push(svg);
    }
    for path in paths {
        println!("wrote {}", path.display());
    }
    Ok(table)
}

fn measure(run: &Run, scenario: &Scenario, name: &str, reference: Option<f64>) -> ConfigResult {
    let phase_p99 = |phase: &Phase| {
        let mut latencies: Vec<u32> = run
            .seconds
            .iter()
            .take(phase.end as usize)
            .skip(phase.start as usize)
            .flat_map(|s| s.latency_us.iter().flatten().copied())
            .collect();
        let p50 = crate::demo::report_ms(load::quantile(&mut latencies, 0.5));
        let p99 = crate::demo::report_ms(load::quantile(&mut latencies, 0.99));
        (p50, p99, latencies.len())
    };
    let capacity_of = |phase: &Phase| capacity_of(scenario, phase);
    // The unloaded p99 of the backend a phase runs on, measured in this run (never assumed
    // from the other backend's).
    let unloaded_p99 = |backend: Event| {
        if scenario.connections.is_some() {
            return reference;
        }
        unloaded_phase(scenario, backend).and_then(|p| phase_p99(p).1)
    };
    let warm_up_p99 = unloaded_p99(Event::None);
    // `steps`: each load once (the warm-up and the rising steps); otherwise every phase.
    let shown = if name == "steps" {
        &scenario.phases[..7]
    } else {
        &scenario.phases[..]
    };
    let points: Vec<Point> = shown
        .iter()
        .map(|phase| {
            let seconds = || {
                run.seconds
                    .iter()
                    .take(phase.end as usize)
                    .skip(phase.start as usize)
            };
            let completed: u64 = seconds().map(|s| s.completed_ok).sum();
            let mut offered = 0;
            let mut critical = load::Tally::default();
            for s in seconds() {
                offered += s.total().offered;
                critical.add(&s.tally[Priority::Critical.index()]);
            }
            let secs = (phase.end - phase.start) as f64;
            let goodput = completed as f64 / secs;
            let capacity = capacity_of(phase);
            let (p50, p99, answered) = phase_p99(phase);
            let unloaded = unloaded_p99(phase.event);
            let over_bar = unloaded.map_or_else(Vec::new, |u| {
                let ms = |s: u64| u32::try_from(s * 1000).unwrap_or(u32::MAX);
                let bar_us = (u * P99_BAR * 1000.0) as u32;
                over_bar(&run.answers, ms(phase.start)..ms(phase.end), bar_us)
            });
            Point {
                phase: phase.name,
                factor: phase.from,
                offered_rps: (offered as f64 / secs).round(),
                capacity_rps: capacity.round(),
                goodput_rps: goodput.round(),
                goodput_percent_of_capacity: (1000.0 * goodput / capacity).round() / 10.0,
                p50_ms: p50,
                p99_ms: p99,
                unloaded_p99_ms: unloaded,
                p99_over_unloaded: p99
                    .zip(unloaded)
                    .map(|(p, u)| (100.0 * p / u).round() / 100.0),
                critical_success_percent: critical
                    .success_percent()
                    .map(|c| (c * 100.0).round() / 100.0),
                over_bar,
                over_bar_allowed: answered.saturating_sub(load::rank(0.99, answered.max(1))),
            }
        })
        .collect();
    let bound_us = warm_up_p99.map(|p| (p * 2000.0) as u32);
    let (reaction_ms, recovery_ms) = if name == "steps" {
        (
            settle_time(&run.answers, &scenario.phases[8], bound_us, 0.0),
            settle_time(&run.answers, &scenario.phases[7], bound_us, 0.99),
        )
    } else {
        (None, None)
    };
    let settle_ms = if name == "capacity-halves" {
        scenario
            .phases
            .iter()
            .filter(|p| matches!(p.name, "halved" | "restored"))
            .map(|phase| {
                let target = 0.9 * capacity_of(phase);
                let good: Vec<bool> = (phase.start..phase.end)
                    .map(|s| {
                        run.seconds
                            .get(s as usize)
                            .is_some_and(|sec| sec.completed_ok as f64 >= target)
                    })
                    .collect();
                let first = good.iter().rposition(|g| !g).map_or(0, |bad| bad + 1);
                (
                    phase.name,
                    (first < good.len()).then_some(first as u64 * 1000),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    let limit = (0..scenario.total())
        .map(|s| {
            run.control
                .iter()
                .rfind(|c| c.t < (s + 1) as f64)
                .and_then(|c| c.limit)
        })
        .collect();
    ConfigResult {
        name: run.protection.name(),
        key: run.protection.key(),
        points,
        reaction_ms,
        recovery_ms,
        settle_ms,
        warm_up_p99_ms: warm_up_p99,
        limit,
    }
}

/// Each phase's answers over the p99 bar, by the 100 ms they were sent in, one line a phase
/// that has any (`--tail`).
fn tail_report(results: &[ScenarioResult]) -> String {
    let mut out = format!(
        "Answers slower than {P99_BAR}x the unloaded p99, by the {TAIL_BIN_MS} ms they were sent in (s: count):"
    );
    for scenario in results {
        for config in &scenario.configs {
            for point in config.points.iter().filter(|p| !p.over_bar.is_empty()) {
                let total: u32 = point.over_bar.iter().map(|(_, n)| n).sum();
                let bins: Vec<String> = point
                    .over_bar
                    .iter()
                    .map(|(ms, n)| format!("{:.1}: {n}", f64::from(*ms) / 1000.0))
                    .collect();
                let _ = write!(
                    out,
                    "\n{} / {} / {}: {total} over, {} allowed | {}",
                    scenario.name,
                    config.key,
                    point.phase,
                    point.over_bar_allowed,
                    bins.join(", ")
                );
            }
        }
    }
    out
}

/// Issue 16's bar for the admitted p99: this many times the unloaded p99.
const P99_BAR: f64 = 1.5;

/// How long a bin of [`over_bar`] is, in milliseconds.
const TAIL_BIN_MS: u32 = 100;

/// The answers sent within `sent_ms` that succeeded slower than `bar_us`, counted by the
/// [`TAIL_BIN_MS`] of their sending (`(first ms of the bin, count)`, bins with none left out).
fn over_bar(answers: &[Answer], sent_ms: std::ops::Range<u32>, bar_us: u32) -> Vec<(u32, u32)> {
    let mut bins: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
    for a in answers {
        if a.ok && a.latency_us > bar_us && sent_ms.contains(&a.sent_ms) {
            *bins
                .entry(a.sent_ms / TAIL_BIN_MS * TAIL_BIN_MS)
                .or_default() += 1;
        }
    }
    bins.into_iter().collect()
}

/// The backend's capacity during `phase` (halved while it is slowed).
fn capacity_of(scenario: &Scenario, phase: &Phase) -> f64 {
    if phase.event == Event::Slow {
        scenario.capacity / 2.0
    } else {
        scenario.capacity
    }
}

/// The phase that measures the unloaded p99 of the backend as `backend` leaves it: the first
/// steady phase at half that backend's capacity (the warm-up; the slowed backend's own phase
/// in `capacity-halves`).
fn unloaded_phase(scenario: &Scenario, backend: Event) -> Option<&Phase> {
    scenario.phases.iter().find(|p| {
        p.event == backend
            && p.from == p.to
            && (p.from * scenario.capacity / capacity_of(scenario, p) - 0.5).abs() < 1e-9
    })
}

/// The time from `phase`'s start after which every window of the phase has its p99 of 200
/// answers within `bound_us` and at least `min_ok` of its answered requests 200.
fn settle_time(
    answers: &[Answer],
    phase: &Phase,
    bound_us: Option<u32>,
    min_ok: f64,
) -> Option<u64> {
    let bound_us = bound_us?;
    let start_ms = (phase.start * 1000) as u32;
    let windows = ((phase.end - phase.start) * 1000) as u32 / WINDOW_MS;
    let good: Vec<bool> = (0..windows)
        .map(|w| {
            let from = start_ms + w * WINDOW_MS;
            let in_window: Vec<&Answer> = answers
                .iter()
                .filter(|a| (from..from + WINDOW_MS).contains(&a.sent_ms))
                .collect();
            let mut ok: Vec<u32> = in_window
                .iter()
                .filter(|a| a.ok)
                .map(|a| a.latency_us)
                .collect();
            let share = ok.len() as f64 / in_window.len().max(1) as f64;
            let p99 = load::quantile(&mut ok, 0.99);
            share >= min_ok && p99.is_some_and(|p| p <= bound_us)
        })
        .collect();
    // The first window from which all later ones are good.
    let first_good = good.iter().rposition(|g| !g).map_or(0, |bad| bad + 1);
    (first_good < good.len()).then(|| u64::from(first_good as u32 * WINDOW_MS))
}

fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}{unit}"))
}

fn table(results: &[ScenarioResult], step_secs: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Backend: {} permits x {} ms = {:.0} req/s (the `cpu` scenario: {} cores of processor \
         sharing, the same work); {step_secs} s per load step; open-loop Poisson load (except \
         `closed-loop`: {CONNECTIONS} connections), mix critical 10 % / high 20 % / normal 30 % / \
         low 25 % / background 15 % (except `critical-only`). {}\n",
        service::permits(),
        service::service_time().as_millis(),
        service::capacity(),
        service::permits(),
        service::queue_delay().map_or_else(
            || "Every configuration with its default settings.".to_owned(),
            |q| format!(
                "Every configuration with its default settings, except degrade's \
                 `queue_delay`: {q} baselines (`--queue-delay`)."
            )
        ),
    );
    for scenario in results {
        let _ = writeln!(
            out,
            "### `{}` (capacity {:.0} req/s)\n",
            scenario.name, scenario.capacity_rps
        );
        let _ = writeln!(
            out,
            "| configuration | phase | goodput (% of capacity) | p50 | p99 | p99 / unloaded | critical answered |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for r in &scenario.configs {
            for p in &r.points {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} % | {} | {} | {} | {} |",
                    r.name,
                    p.phase,
                    p.goodput_percent_of_capacity,
                    fmt_opt(p.p50_ms, " ms"),
                    fmt_opt(p.p99_ms, " ms"),
                    p.p99_over_unloaded
                        .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}x")),
                    fmt_opt(p.critical_success_percent, " %"),
                );
            }
        }
        let time = |t: Option<u64>| {
            t.map_or_else(
                || "never (within the phase)".to_owned(),
                |t| format!("{t} ms"),
            )
        };
        if scenario.name == "steps" {
            let _ = writeln!(
                out,
                "\n| configuration | warm-up p99 | reaction to 0.5x -> 3x | recovery after 4x -> 0.5x |"
            );
            let _ = writeln!(out, "|---|---|---|---|");
            for r in &scenario.configs {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    r.name,
                    fmt_opt(r.warm_up_p99_ms, " ms"),
                    time(r.reaction_ms),
                    time(r.recovery_ms),
                );
            }
        }
        if scenario.name == "capacity-halves" {
            let _ = writeln!(
                out,
                "\n| configuration | goodput >= 90 % of the halved capacity after | ... of the restored capacity after |"
            );
            let _ = writeln!(out, "|---|---|---|");
            for r in &scenario.configs {
                let at = |i: usize| r.settle_ms.get(i).and_then(|s| s.1);
                let _ = writeln!(out, "| {} | {} | {} |", r.name, time(at(0)), time(at(1)));
            }
        }
        let _ = writeln!(out);
    }
    out
}

const COLORS: [RGBColor; 8] = [
    RGBColor(200, 30, 45),
    RGBColor(240, 130, 20),
    RGBColor(60, 160, 80),
    RGBColor(150, 150, 40),
    RGBColor(120, 60, 170),
    RGBColor(40, 170, 170),
    RGBColor(200, 90, 160),
    RGBColor(40, 110, 200),
];

fn plot(results: &[ConfigResult]) -> Result<String> {
    let err = |e: &dyn std::fmt::Debug| format!("cannot draw the plot: {e:?}");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let panels = root.split_evenly((1, 3));
        let goodput: fn(&Point) -> Option<f64> = |p| Some(p.goodput_percent_of_capacity);
        let p99: fn(&Point) -> Option<f64> = |p| p.p99_ms;
        let critical: fn(&Point) -> Option<f64> = |p| p.critical_success_percent;
        let top_of = |f: fn(&Point) -> Option<f64>| {
            results
                .iter()
                .flat_map(|r| r.points.iter().filter_map(f))
                .fold(1.0, f64::max)
                * 1.15
        };
        // The same panel twice over: linear percentages, and latency on a log scale (the
        // unprotected p99 is a hundred times the others).
        macro_rules! panel {
            ($area:expr, $title:expr, $unit:expr, $f:expr, $y:expr) => {{
                let f = $f;
                let mut chart = ChartBuilder::on($area)
                    .caption($title, ("sans-serif", 15))
                    .margin(8)
                    .x_label_area_size(28)
                    .y_label_area_size(48)
                    .build_cartesian_2d(0.4f64..4.1, $y)
                    .map_err(|e| err(&e))?;
                chart
                    .configure_mesh()
                    .x_desc("offered load (x capacity)")
                    .y_desc($unit)
                    .light_line_style(RGBColor(240, 240, 240))
                    .draw()
                    .map_err(|e| err(&e))?;
                for (r, color) in results.iter().zip(COLORS) {
                    let points: Vec<(f64, f64)> = r
                        .points
                        .iter()
                        .filter_map(|p| f(p).map(|y| (p.factor, y.max(1.0))))
                        .collect();
                    chart
                        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                        .map_err(|e| err(&e))?
                        .label(r.name)
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                        });
                    chart
                        .draw_series(
                            points
                                .into_iter()
                                .map(|p| Circle::new(p, 3, color.filled())),
                        )
                        .map_err(|e| err(&e))?;
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(200, 200, 200))
                    .label_font(("sans-serif", 11))
                    .draw()
                    .map_err(|e| err(&e))?;
            }};
        }
        panel!(
            &panels[0],
            "goodput (% of capacity)",
            "%",
            goodput,
            0f64..110.0
        );
        panel!(
            &panels[1],
            "p99 of 200 answers (ms, log scale)",
            "ms",
            p99,
            (10f64..top_of(p99).max(20.0)).log_scale()
        );
        panel!(
            &panels[2],
            "critical requests answered (%)",
            "%",
            critical,
            0f64..110.0
        );
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_is_compared_with_the_unloaded_p99_of_the_backend_it_ran_on() {
        let halves = scenario("capacity-halves", 3);
        let unloaded = |name: &str| {
            let phase = halves.phases.iter().find(|p| p.name == name).unwrap();
            unloaded_phase(&halves, phase.event).unwrap().name
        };
        assert_eq!(unloaded("halved"), SLOWED_UNLOADED);
        assert_eq!(unloaded("1.5x"), "warm-up");
        assert_eq!(unloaded("restored"), "warm-up");
        // The slowed backend's unloaded phase offers half of its capacity, as the warm-up does.
        let slowed = unloaded_phase(&halves, Event::Slow).unwrap();
        assert_eq!(
            slowed.from * halves.capacity / capacity_of(&halves, slowed),
            0.5
        );
        for name in ["cpu", "mixed", "critical-only"] {
            let s = scenario(name, 3);
            assert_eq!(unloaded_phase(&s, Event::None).unwrap().name, "warm-up");
        }
        assert_eq!(
            unloaded_phase(&steps_scenario(3), Event::None)
                .unwrap()
                .name,
            "warm-up"
        );
        // The closed loop has no unloaded phase of its own (the steps' warm-up stands in).
        assert!(unloaded_phase(&scenario("closed-loop", 3), Event::None).is_none());
    }

    /// A bad `--queue-delay` is refused with the flag and the rule named, before anything
    /// runs (and before the process-wide setting is touched, so these cases leave it unset).
    #[test]
    fn a_bad_queue_delay_is_refused_before_anything_runs() {
        let args = |extra: &[&str]| -> Vec<String> {
            ["overload", "--scenario", "steps"]
                .iter()
                .chain(extra)
                .map(|s| (*s).to_owned())
                .collect()
        };
        let err = run(&args(&["--queue-delay", "soon"])).unwrap_err();
        assert!(
            err.contains("`--queue-delay soon`: expected a number"),
            "{err}"
        );
        let err = run(&args(&["--queue-delay", "-1"])).unwrap_err();
        assert!(
            err.contains("`--queue-delay -1`") && err.contains("queue_delay"),
            "{err}"
        );
        let err = run(&args(&["--queue-delay"])).unwrap_err();
        assert!(err.contains("needs a value"), "{err}");
        let err = run(&args(&["--queue-delay", "0.3", "--update-benchmarks"])).unwrap_err();
        assert!(err.contains("drop `--queue-delay`"), "{err}");
        assert_eq!(service::queue_delay(), None);
    }

    #[test]
    fn the_tail_is_counted_by_the_100_ms_its_answers_were_sent_in() {
        let answer = |sent_ms, ok, latency_ms: u32| Answer {
            sent_ms,
            ok,
            latency_us: latency_ms * 1000,
        };
        let answers = [
            answer(999, true, 200),   // before the phase
            answer(1000, true, 80),   // at the bar: not over it
            answer(1001, true, 81),   // the phase's first 100 ms
            answer(1099, true, 300),  // the same bin
            answer(1100, false, 900), // refused: not an admitted answer
            answer(1650, true, 95),   // a later bin
            answer(2000, true, 500),  // after the phase
        ];
        assert_eq!(
            over_bar(&answers, 1000..2000, 80_000),
            vec![(1000, 2), (1600, 1)]
        );
        assert!(over_bar(&answers, 1000..2000, 1_000_000).is_empty());
        // The p99 is the value at rank ceil(0.99 n): of 770 answers, 7 may be slower than it.
        assert_eq!(770 - load::rank(0.99, 770), 7);
        assert_eq!(100 - load::rank(0.99, 100), 1);
        assert_eq!(1 - load::rank(0.99, 1), 0);
        let mut values: Vec<u32> = (1..=770).collect();
        assert_eq!(load::quantile(&mut values, 0.99), Some(763));
    }

    #[test]
    fn a_backend_shape_is_permits_by_milliseconds() {
        assert_eq!(parse_backend("16x20"), Ok((16, 20)));
        assert_eq!(parse_backend("4X100ms"), Ok((4, 100)));
        for bad in ["16", "x20", "16x", "ax20", "16x-1", "16x20x3"] {
            assert!(parse_backend(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn update_benchmarks_replaces_only_the_table_between_the_markers() {
        let text = format!("# B\n\nbefore\n{TABLE_BEGIN}\nold | table\n{TABLE_END}\nafter\n");
        let new = replace_between(&text, "| new |\n").unwrap();
        assert_eq!(
            new,
            format!("# B\n\nbefore\n{TABLE_BEGIN}\n\n| new |\n\n{TABLE_END}\nafter\n")
        );
        // Idempotent: a second run gives the same file.
        assert_eq!(replace_between(&new, "| new |\n").unwrap(), new);
        assert_eq!(replace_between("no markers", "x"), None);
    }
}
