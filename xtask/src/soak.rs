//! `cargo xtask soak [--minutes N]`: the demo's protected stack (the same service, stack, level
//! monitor and load generator as `cargo xtask demo`) at twice the backend's capacity for N
//! minutes, watching the process for leaks.
//!
//! Every second it samples the process's resident memory (`VmRSS` in `/proc/self/status`) and
//! the number of live tokio tasks (`Handle::metrics().num_alive_tasks()`). After a warm-up (a
//! quarter of the run, at least 10 s: pools, caches and the allocator's heap fill up), it fails
//! when
//!
//! - **memory grew**: the median RSS of the last [`WINDOW`] samples is more than
//!   [`RSS_LIMIT_PERCENT`] above the median of the first [`WINDOW`] samples after warm-up; or
//! - **tasks grow without bound**: the least-squares line through the task counts after warm-up
//!   rises by more than a margin over that span (the margin is [`TASK_MARGIN_MIN`] tasks or
//!   [`TASK_MARGIN_SHARE`] of the median count, whichever is larger: the count moves with the
//!   requests in flight), *and* the highest count of the last third is above the highest of the
//!   first third. A leak of one task per ten thousand requests at 400 requests/s adds 19 tasks in
//!   8 minutes, which is about this margin; a bounded count (however noisy) keeps a flat trend.
//!
//! The process runs with one malloc arena (`GLIBC_TUNABLES=glibc.malloc.arena_max=1`; the soak
//! starts itself again with it unless `GLIBC_TUNABLES` is already set, which is the way to run
//! it with other settings). With glibc's default of up to eight arenas per core, each tokio
//! thread that allocates may get an arena of its own, and memory freed into an arena stays
//! there: on this machine RSS went up by steps of about 1.5 MiB (7.5 to 11.8 MiB in 10 minutes,
//! and back down to 10.2) while the task count stayed flat; with one arena the same run holds
//! within 0.3 MiB. The soak looks for leaks of the stack, not for the allocator's retention.
//!
//! The load generator's own bookkeeping stays flat (`Recorder::bounded`: no per-request record,
//! each second folded into per-minute figures once complete), so what grows is the stack, the
//! server or the client. Prints a per-minute table; writes `soak.json` and `soak.svg` (RSS and
//! tasks over time) into `--out` (default `target/degrade-soak`).

use crate::demo::load::{self, LoadConfig, Recorder, Second, Tally};
use crate::demo::service::{self, Protection};
use crate::demo::{self, Phase, Scenario, Server, html};
use crate::{Result, workspace_root};
use degrade_core::Level;
use http::HeaderName;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// The offered load, in multiples of the backend's capacity.
const LOAD_FACTOR: f64 = 2.0;
/// Largest accepted RSS growth after warm-up.
const RSS_LIMIT_PERCENT: f64 = 5.0;
/// Samples (seconds) in the medians that compare the RSS at the start and at the end.
const WINDOW: usize = 10;
/// Smallest margin of the task-count trend, in tasks.
const TASK_MARGIN_MIN: f64 = 20.0;
/// Margin of the task-count trend as a share of the median count after warm-up.
const TASK_MARGIN_SHARE: f64 = 0.25;
/// Idle keep-alive connections the load generator keeps. Without a limit, a moment when this
/// process does not get the CPU (the machine is shared) piles requests up in flight, the client
/// opens a connection for each, and every one of them stays open (a task on each side, and its
/// buffers) for as long as traffic keeps it warm: a high-water mark of the harness that reads
/// like a leak of the stack. 32 is four times what the client has in flight at 2x when the
/// process keeps up.
const IDLE_CONNECTIONS: usize = 32;
/// Requests the load generator has in flight at most (arrivals beyond it are counted as dropped,
/// and reported). RSS is a high-water mark: memory freed after a pile-up of requests in flight
/// (their connections, buffers and tasks) mostly stays with the process, so an uncapped pile-up
/// late in the run (a stall of this process on a shared machine) would read as growth. 64 is
/// twice the idle connections kept, well above what 2x needs when the process keeps up.
const MAX_IN_FLIGHT: u64 = 64;
/// Print a progress line this often.
const PROGRESS_EVERY: u64 = 10;

const USAGE: &str = "\
Usage: cargo xtask soak [--minutes N] [--out DIR]
  --minutes N   length of the run (default 10; at least 0.5, fractions allowed)
  --out DIR     where soak.json and soak.svg go (default <workspace>/target/degrade-soak)
Runs the demo's protected stack at 2x capacity; fails if RSS grows more than 5 % after the
warm-up or the number of tokio tasks grows without bound. Runs with one malloc arena
(GLIBC_TUNABLES=glibc.malloc.arena_max=1) unless GLIBC_TUNABLES is set: glibc's per-thread
arenas keep freed memory and move RSS by steps that are not leaks.";

#[derive(Debug)]
struct Options {
    secs: u64,
    out: PathBuf,
}

impl Options {
    fn parse(args: &[String]) -> Result<Option<Self>> {
        let mut minutes = 10.0;
        let mut out = None;
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            match arg.as_str() {
                "--minutes" => {
                    let text = iter.next().ok_or("`--minutes` needs a value")?;
                    minutes = text
                        .parse::<f64>()
                        .ok()
                        .filter(|m| m.is_finite() && *m >= 0.5 && *m <= 24.0 * 60.0)
                        .ok_or_else(|| {
                            format!("--minutes: `{text}` is not a number of minutes in 0.5..=1440")
                        })?;
                }
                "--out" => {
                    out = Some(PathBuf::from(iter.next().ok_or("`--out` needs a value")?));
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return Ok(None);
                }
                other => return Err(format!("unexpected argument `{other}`\n\n{USAGE}")),
            }
        }
        Ok(Some(Self {
            secs: (minutes * 60.0).round() as u64,
            out: out.unwrap_or_else(|| workspace_root().join("target").join("degrade-soak")),
        }))
    }
}

/// Runs the soak; see the module documentation.
pub(crate) fn run(args: &[String]) -> Result {
    let Some(options) = Options::parse(args)? else {
        return Ok(());
    };
    if read_rss_kib().is_none() {
        return Err("the soak reads /proc/self/status (VmRSS): Linux only".to_owned());
    }
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        return run_with_one_arena(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the tokio runtime: {err}"))?;
    runtime.block_on(soak(options))
}

/// The malloc setting the soak runs with (see the module documentation).
const ONE_ARENA: &str = "glibc.malloc.arena_max=1";

/// Runs this same command again in a child process with one malloc arena.
fn run_with_one_arena(args: &[String]) -> Result {
    let exe = std::env::current_exe().map_err(|err| format!("cannot find xtask itself: {err}"))?;
    println!("soak: running with GLIBC_TUNABLES={ONE_ARENA} (one malloc arena, see `soak --help`)");
    let status = std::process::Command::new(exe)
        .arg("soak")
        .args(args)
        .env("GLIBC_TUNABLES", ONE_ARENA)
        .status()
        .map_err(|err| format!("cannot start the soak: {err}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the soak failed ({status})"))
    }
}

/// One reading, every second.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    /// Seconds since the start.
    t: u64,
    rss_kib: u64,
    tasks: usize,
    level: Level,
    /// Requests in the backend (waiting for or holding a permit).
    in_system: usize,
    /// Requests the client has in flight.
    outstanding: u64,
}

/// One minute of traffic (requests filed under the second they were sent in).
#[derive(Debug, Clone, Serialize)]
struct Minute {
    minute: u64,
    tally: Tally,
    /// p99 of the 200 answers, milliseconds.
    p99_ms: Option<f64>,
    /// 200 answers completed per second.
    goodput_rps: f64,
    rss_kib_max: u64,
    tasks_min: usize,
    tasks_max: usize,
    /// The most requests the client had in flight at a sample.
    in_flight_max: u64,
    /// Seconds sampled at each level, by `Level::index()`.
    level_secs: [u64; 5],
}

#[derive(Debug, Serialize)]
struct RssVerdict {
    baseline_kib: u64,
    final_kib: u64,
    peak_kib: u64,
    growth_percent: f64,
    limit_percent: f64,
    ok: bool,
}

#[derive(Debug, Serialize)]
struct TaskVerdict {
    median: f64,
    /// Least-squares slope after warm-up, tasks per minute.
    slope_per_minute: f64,
    /// What the trend line rises over the span after warm-up.
    trend_rise: f64,
    margin: f64,
    first_third_max: usize,
    last_third_max: usize,
    ok: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    minutes: f64,
    load_factor: f64,
    offered_rps: f64,
    capacity_rps: f64,
    warm_up_secs: u64,
    /// `GLIBC_TUNABLES` of the run.
    glibc_tunables: Option<String>,
    rss: RssVerdict,
    tasks: TaskVerdict,
    totals: Tally,
    /// Outcomes that came back after their second had been folded (0 unless a request
    /// outlived the client's timeout).
    late_outcomes: u64,
    /// Level changes during the run.
    level_transitions: u64,
    per_minute: Vec<Minute>,
    samples: Vec<Sample>,
}

async fn soak(options: Options) -> Result {
    let total = options.secs;
    let warm_up = (total / 4).max(10).min(total.saturating_sub(WINDOW as u64));
    let capacity = service::capacity();
    let ladder = demo::ladder_config(Duration::from_secs(2));
    let backend = service::Backend::new();
    let (app, parts) = service::app(Protection::Degrade, &backend, &ladder)?;
    let parts = parts.ok_or("the protected stack has no parts")?;
    let server = Server::start(app).await?;
    println!(
        "soak: {:.1} min at {LOAD_FACTOR}x capacity ({:.0} req/s offered, capacity {capacity:.0} \
         req/s), the demo's protected stack on http://{}/work; warm-up {warm_up} s",
        total as f64 / 60.0,
        LOAD_FACTOR * capacity,
        server.addr
    );

    let recorder = Recorder::bounded();
    let start = recorder.start();
    let config = LoadConfig {
        uri: format!("http://{}/work", server.addr)
            .parse()
            .map_err(|err| format!("bad uri: {err}"))?,
        duration: Duration::from_secs(total),
        rate: move |_| LOAD_FACTOR * capacity,
        mix: demo::mix(),
        priority_header: HeaderName::from_static(service::PRIORITY_HEADER),
        client_header: HeaderName::from_static(service::CLIENT_HEADER),
        client_of: demo::client_of,
        seed: demo::SEED,
        timeout: demo::CLIENT_TIMEOUT,
        max_outstanding: MAX_IN_FLIGHT,
        max_idle_connections: IDLE_CONNECTIONS,
    };
    let generator = tokio::spawn(load::run(config, Arc::clone(&recorder)));
    let mut monitor = demo::admission_monitor(&parts);
    let metrics = tokio::runtime::Handle::current().metrics();

    // A second is complete once every request sent in it has an answer or has timed out.
    let settle = demo::CLIENT_TIMEOUT.as_secs() + 1;
    // Written once up front, so the pages of the samples are resident before the baseline is
    // taken rather than touched one by one during the run.
    let blank = Sample {
        t: 0,
        rss_kib: 0,
        tasks: 0,
        level: Level::Normal,
        in_system: 0,
        outstanding: 0,
    };
    let mut samples: Vec<Sample> = vec![blank; total as usize + 16];
    samples.clear();
    let mut minutes = Minutes::default();
    let mut interval = tokio::time::interval(demo::SAMPLE_EVERY);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_sample = 0;
    let mut transitions: u64 = 0;
    while !generator.is_finished() {
        interval.tick().await;
        if monitor.tick().is_some() {
            transitions += 1;
        }
        let t = Instant::now().saturating_duration_since(start).as_secs();
        if t < next_sample {
            continue;
        }
        next_sample = t + 1;
        let sample = Sample {
            t,
            rss_kib: read_rss_kib().unwrap_or(0),
            tasks: metrics.num_alive_tasks(),
            level: parts.controller.level(),
            in_system: backend.in_system(),
            outstanding: recorder.outstanding(),
        };
        samples.push(sample);
        minutes.sample(&sample);
        if let Some(done) = t.checked_sub(settle) {
            for second in recorder.take_before(done as usize) {
                minutes.second(second);
            }
        }
        if t.is_multiple_of(PROGRESS_EVERY) {
            println!(
                "t={t:>5}s level={:<9} rss={:>6.1} MiB tasks={:>4} in backend={:>3} \
                 in flight={:>4} | {}",
                sample.level.as_str(),
                sample.rss_kib as f64 / 1024.0,
                sample.tasks,
                sample.in_system,
                sample.outstanding,
                minutes.last_second_line()
            );
        }
    }
    generator
        .await
        .map_err(|err| format!("load generator failed: {err}"))?;
    // Every request has an outcome now; 200s completing late are filed under their completion
    // second, at most the client's timeout after the end.
    for second in recorder.take_before((total + settle + 1) as usize) {
        minutes.second(second);
    }
    server.stop().await?;

    let post: Vec<&Sample> = samples.iter().filter(|s| s.t >= warm_up).collect();
    let rss = rss_verdict(&post.iter().map(|s| s.rss_kib).collect::<Vec<_>>());
    let tasks = task_verdict(
        &post
            .iter()
            .map(|s| (s.t as f64, s.tasks as f64))
            .collect::<Vec<_>>(),
    );
    let per_minute = minutes.finish();
    let mut totals = Tally::default();
    per_minute.iter().for_each(|m| totals.add(&m.tally));
    let report = Report {
        minutes: total as f64 / 60.0,
        load_factor: LOAD_FACTOR,
        offered_rps: LOAD_FACTOR * capacity,
        capacity_rps: capacity,
        warm_up_secs: warm_up,
        glibc_tunables: std::env::var("GLIBC_TUNABLES").ok(),
        rss,
        tasks,
        totals,
        late_outcomes: recorder.late(),
        level_transitions: transitions,
        per_minute,
        samples,
    };
    print_report(&report);
    let paths = write(&options.out, &report)?;
    for path in paths {
        println!("wrote {}", path.display());
    }
    let mut failures = Vec::new();
    if !report.rss.ok {
        failures.push(format!(
            "RSS grew {:.1} % after warm-up (limit {RSS_LIMIT_PERCENT} %)",
            report.rss.growth_percent
        ));
    }
    if !report.tasks.ok {
        failures.push(format!(
            "tokio tasks grow without bound: the trend rises {:.1} tasks (margin {:.1}) and the \
             last third peaks at {} (first third {})",
            report.tasks.trend_rise,
            report.tasks.margin,
            report.tasks.last_third_max,
            report.tasks.first_third_max
        ));
    }
    if report.totals.pending() != 0 {
        failures.push(format!(
            "{} requests have no outcome",
            report.totals.pending()
        ));
    }
    if failures.is_empty() {
        println!("soak: ok");
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// The per-minute figures, built one sample and one complete second at a time; the latencies of
/// a minute are dropped once it is done.
#[derive(Debug, Default)]
struct Minutes {
    done: Vec<Minute>,
    /// The seconds of the minute being folded (index: second of the run).
    current: Option<(u64, Second)>,
    /// Per minute, from the samples.
    sampled: Vec<Sampled>,
    next_second: u64,
    last: Option<Tally>,
}

/// What the samples of one minute add up to.
#[derive(Debug, Clone, Copy, Default)]
struct Sampled {
    rss_kib_max: u64,
    tasks: Option<(usize, usize)>,
    in_flight_max: u64,
    level_secs: [u64; 5],
}

impl Minutes {
    fn sample(&mut self, sample: &Sample) {
        let minute = (sample.t / 60) as usize;
        if self.sampled.len() <= minute {
            self.sampled.resize(minute + 1, Sampled::default());
        }
        let entry = &mut self.sampled[minute];
        entry.rss_kib_max = entry.rss_kib_max.max(sample.rss_kib);
        entry.tasks = Some(match entry.tasks {
            None => (sample.tasks, sample.tasks),
            Some((min, max)) => (min.min(sample.tasks), max.max(sample.tasks)),
        });
        entry.in_flight_max = entry.in_flight_max.max(sample.outstanding);
        entry.level_secs[sample.level.index()] += 1;
    }

    /// Folds the next complete second.
    fn second(&mut self, second: Second) {
        let index = self.next_second;
        self.next_second += 1;
        let minute = index / 60;
        if self.current.as_ref().is_some_and(|(m, _)| *m != minute) {
            self.close();
        }
        self.last = Some(second.total());
        match &mut self.current {
            Some((_, acc)) => acc.add(&second),
            None => self.current = Some((minute, second)),
        }
    }

    fn close(&mut self) {
        let Some((minute, mut acc)) = self.current.take() else {
            return;
        };
        let mut latencies: Vec<u32> = acc.latency_us.iter().flatten().copied().collect();
        let sampled = self
            .sampled
            .get(minute as usize)
            .copied()
            .unwrap_or_default();
        let (tasks_min, tasks_max) = sampled.tasks.unwrap_or_default();
        let tally = acc.total();
        acc.latency_us = Default::default();
        self.done.push(Minute {
            minute,
            tally,
            p99_ms: load::quantile(&mut latencies, 0.99).map(|us| f64::from(us) / 1000.0),
            goodput_rps: acc.completed_ok as f64 / 60.0,
            rss_kib_max: sampled.rss_kib_max,
            tasks_min,
            tasks_max,
            in_flight_max: sampled.in_flight_max,
            level_secs: sampled.level_secs,
        });
    }

    fn last_second_line(&self) -> String {
        match &self.last {
            None => "traffic figures follow once a second is complete".to_owned(),
            Some(t) => format!(
                "second {}: offered {} 200 {} shed {} 429 {} breaker {} errors {} timeouts {}",
                self.next_second.saturating_sub(1),
                t.offered,
                t.ok,
                t.shed,
                t.rate_limited,
                t.circuit_open,
                t.errors,
                t.timeouts + t.dropped
            ),
        }
    }

    fn finish(mut self) -> Vec<Minute> {
        self.close();
        // The seconds after the last arrival hold only completions: fold them into the last
        // minute with traffic.
        while self.done.len() > 1 && self.done.last().is_some_and(|m| m.tally.offered == 0) {
            if let Some(extra) = self.done.pop()
                && let Some(last) = self.done.last_mut()
            {
                last.goodput_rps += extra.goodput_rps;
            }
        }
        self.done
    }
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

/// RSS after warm-up (one value a second): the median of the last [`WINDOW`] against the
/// median of the first [`WINDOW`].
fn rss_verdict(rss: &[u64]) -> RssVerdict {
    let window = WINDOW.min(rss.len());
    let baseline = median(&rss[..window]);
    let last = median(&rss[rss.len() - window..]);
    let growth_percent = if baseline == 0 {
        0.0
    } else {
        100.0 * (last as f64 - baseline as f64) / baseline as f64
    };
    RssVerdict {
        baseline_kib: baseline,
        final_kib: last,
        peak_kib: rss.iter().copied().max().unwrap_or(0),
        growth_percent,
        limit_percent: RSS_LIMIT_PERCENT,
        ok: growth_percent <= RSS_LIMIT_PERCENT,
    }
}

/// Task counts after warm-up, as (seconds, count); see the module documentation.
fn task_verdict(points: &[(f64, f64)]) -> TaskVerdict {
    let n = points.len() as f64;
    let counts: Vec<u64> = points.iter().map(|p| p.1 as u64).collect();
    let median = median(&counts) as f64;
    let margin = TASK_MARGIN_MIN.max(TASK_MARGIN_SHARE * median);
    let (slope, span) = if points.len() < 2 {
        (0.0, 0.0)
    } else {
        let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
        let sxy: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_y)).sum();
        let sxx: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        (slope, points[points.len() - 1].0 - points[0].0)
    };
    let third = points.len() / 3;
    let max_of = |part: &[(f64, f64)]| part.iter().map(|p| p.1 as usize).max().unwrap_or(0);
    let first_third_max = max_of(&points[..third]);
    let last_third_max = max_of(&points[points.len() - third..]);
    let trend_rise = slope * span;
    TaskVerdict {
        median,
        slope_per_minute: slope * 60.0,
        trend_rise,
        margin,
        first_third_max,
        last_third_max,
        ok: !(trend_rise > margin && last_third_max > first_third_max),
    }
}

/// `VmRSS` of this process in KiB, from `/proc/self/status`.
fn read_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn print_report(report: &Report) {
    println!();
    println!(
        "| minute | offered | 200 | shed | 429 | breaker 503 | errors | timeouts+dropped | goodput/s \
         | p99 ms | RSS max MiB | tasks min..max | in flight max | level seconds N/L/M/H/E |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for m in &report.per_minute {
        let t = &m.tally;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {:.1} | {}..{} | {} | {} |",
            m.minute,
            t.offered,
            t.ok,
            t.shed,
            t.rate_limited,
            t.circuit_open,
            t.errors,
            t.timeouts + t.dropped,
            m.goodput_rps,
            m.p99_ms.map_or("-".to_owned(), |v| format!("{v:.1}")),
            m.rss_kib_max as f64 / 1024.0,
            m.tasks_min,
            m.tasks_max,
            m.in_flight_max,
            m.level_secs
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("/")
        );
    }
    let r = &report.rss;
    let k = &report.tasks;
    println!();
    println!(
        "RSS after the {} s warm-up: {:.1} MiB -> {:.1} MiB (medians of the first and last {WINDOW} \
         s), {:+.2} % (limit {} %), peak {:.1} MiB: {}",
        report.warm_up_secs,
        r.baseline_kib as f64 / 1024.0,
        r.final_kib as f64 / 1024.0,
        r.growth_percent,
        r.limit_percent,
        r.peak_kib as f64 / 1024.0,
        if r.ok { "ok" } else { "FAIL" }
    );
    println!(
        "tokio tasks after warm-up: median {:.0}, trend {:+.2} tasks/min ({:+.1} over the run, \
         margin {:.0}), max first third {} / last third {}: {}",
        k.median,
        k.slope_per_minute,
        k.trend_rise,
        k.margin,
        k.first_third_max,
        k.last_third_max,
        if k.ok { "ok" } else { "FAIL" }
    );
    let t = &report.totals;
    println!(
        "requests: offered {}, 200 {}, shed {}, 429 {}, breaker 503 {}, errors {}, timeouts {}, \
         dropped {}, no outcome {}, late outcomes {}; level changes {}",
        t.offered,
        t.ok,
        t.shed,
        t.rate_limited,
        t.circuit_open,
        t.errors,
        t.timeouts,
        t.dropped,
        t.pending(),
        report.late_outcomes,
        report.level_transitions
    );
}

fn write(dir: &std::path::Path, report: &Report) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let json = dir.join("soak.json");
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(&json, text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    let svg = dir.join("soak.svg");
    std::fs::write(&svg, chart(report)?)
        .map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
    Ok(vec![json, svg])
}

/// RSS and tasks over time, one above the other, the warm-up marked.
fn chart(report: &Report) -> Result<String> {
    let total = report.samples.last().map_or(1, |s| s.t + 1);
    let phase = |name, start, end| Phase {
        name,
        start,
        end,
        from: LOAD_FACTOR,
        to: LOAD_FACTOR,
        event: demo::Event::None,
    };
    let scenario = Scenario {
        phases: vec![
            phase("warm-up", 0, report.warm_up_secs),
            phase(
                "measured",
                report.warm_up_secs,
                total.max(report.warm_up_secs + 1),
            ),
        ],
        capacity: report.capacity_rps,
        ..Scenario::new(Vec::new())
    };
    let series = |f: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        report.samples.iter().map(|s| (s.t as f64, f(s))).collect()
    };
    let limit = report.rss.baseline_kib as f64 * (1.0 + RSS_LIMIT_PERCENT / 100.0) / 1024.0;
    let rss = [
        html::Line::new(
            "RSS (MiB)",
            html::RUN_COLORS[0],
            series(|s| s.rss_kib as f64 / 1024.0),
        ),
        html::Line::new(
            "baseline + 5 %",
            html::RUN_COLORS[1],
            vec![(report.warm_up_secs as f64, limit), (total as f64, limit)],
        ),
    ];
    let tasks = [
        html::Line::new(
            "live tokio tasks",
            html::RUN_COLORS[0],
            series(|s| s.tasks as f64),
        ),
        html::Line::new(
            "requests in flight (client)",
            html::RUN_COLORS[2],
            series(|s| s.outstanding as f64),
        ),
    ];
    html::two_line_charts(
        (960, 560),
        (
            &format!("soak at {LOAD_FACTOR}x capacity: resident memory"),
            "MiB",
            &rss,
        ),
        ("tokio tasks", "tasks", &tasks),
        &scenario,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_memory_passes_and_five_percent_more_fails() {
        let flat: Vec<u64> = (0..100).map(|i| 20_000 + (i % 7) * 50).collect();
        assert!(rss_verdict(&flat).ok);
        let mut grown = flat.clone();
        grown.extend(std::iter::repeat_n(21_500, 20));
        let verdict = rss_verdict(&grown);
        assert!(!verdict.ok, "{verdict:?}");
        assert!((verdict.growth_percent - 7.5).abs() < 1.0, "{verdict:?}");
    }

    #[test]
    fn a_transient_rss_spike_is_not_growth() {
        let mut rss: Vec<u64> = vec![20_000; 100];
        rss[50] = 40_000;
        let verdict = rss_verdict(&rss);
        assert!(verdict.ok);
        assert_eq!(verdict.peak_kib, 40_000);
    }

    #[test]
    fn a_noisy_bounded_task_count_passes() {
        // In-flight requests come and go: 30..90 tasks, no trend.
        let mut rng = load::SplitMix64::new(3);
        let points: Vec<(f64, f64)> = (0..480)
            .map(|t| (f64::from(t), 30.0 + (rng.next_f64() * 60.0).floor()))
            .collect();
        let verdict = task_verdict(&points);
        assert!(verdict.ok, "{verdict:?}");
    }

    #[test]
    fn a_steady_task_leak_fails() {
        // One task leaked every 10 s over 8 minutes: 48 more at the end, on top of the noise.
        let mut rng = load::SplitMix64::new(4);
        let points: Vec<(f64, f64)> = (0..480)
            .map(|t| {
                let t = f64::from(t);
                (
                    t,
                    40.0 + (t / 10.0).floor() + (rng.next_f64() * 20.0).floor(),
                )
            })
            .collect();
        let verdict = task_verdict(&points);
        assert!(!verdict.ok, "{verdict:?}");
        assert!((verdict.slope_per_minute - 6.0).abs() < 1.0, "{verdict:?}");
    }

    #[test]
    fn minutes_fold_seconds_and_samples() {
        let mut minutes = Minutes::default();
        for t in 0..120 {
            minutes.sample(&Sample {
                t,
                rss_kib: 1000 + t,
                tasks: 10 + (t as usize % 3),
                level: Level::Normal,
                in_system: 0,
                outstanding: 0,
            });
            let mut second = Second::default();
            second.tally[0].offered = 2;
            second.tally[0].ok = 2;
            second.latency_us[0] = vec![1_000, 3_000];
            second.completed_ok = 2;
            minutes.second(second);
        }
        // Completions after the last arrival join the last minute.
        minutes.second(Second {
            completed_ok: 60,
            ..Default::default()
        });
        let done = minutes.finish();
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].tally.offered, 120);
        assert_eq!(done[1].rss_kib_max, 1119);
        assert_eq!((done[1].tasks_min, done[1].tasks_max), (10, 12));
        assert_eq!(done[1].level_secs[0], 60);
        assert_eq!(done[0].p99_ms, Some(3.0));
        assert!((done[1].goodput_rps - 3.0).abs() < 1e-9);
    }
}
