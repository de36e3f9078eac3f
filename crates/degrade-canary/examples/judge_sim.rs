//! Measures the canary judge by simulation through the real router and controller: for each
//! traffic effect (and all together), the A/A false-rollback rate and the detection rates of
//! errors 0.5 % → 2 % and of a latency +30 % regression, under the default rollout.
//!
//! ```text
//! cargo run -p degrade-canary --release --features sim --example judge_sim -- --runs 1000
//! ```
//!
//! Options: `--runs N` (default 100), `--seed S` (default 1), `--threads N` (default: all
//! cores), `--rows SUBSTRING` (only the effect rows whose name contains it), `--columns LIST`
//! (comma-separated among `aa`, `errors`, `latency`; default all three), `--users N`,
//! `--rate R` (requests per second), `--alpha A`, `--min-samples N` and `--max-key-share S`
//! (default: the judge's defaults), `--timing-every N` (the router times only 1 call in `N`,
//! a power of two ≤ 16, of each arm at every step: its sampled timing at its heaviest, which
//! on its own it uses only when both arms have ≥ 16,000 calls per analysis; default: the
//! router decides, as in a service). Prints a Markdown table.

use degrade_canary::sim::{Effects, Regression, Scenario, SimConfig, SimResult, simulate_runs};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

fn usage(flag: &str, value: &str) -> ! {
    eprintln!(
        "usage: judge_sim [--runs N] [--seed S] [--threads N] [--rows SUBSTRING] \
         [--columns aa,errors,latency] [--users N] \
         [--rate R] [--alpha A] [--min-samples N] [--max-key-share S] [--timing-every N] \
         (got {flag} {value})"
    );
    std::process::exit(2);
}

fn main() {
    let mut cfg = SimConfig::default();
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut filter = String::new();
    let mut columns = String::from("aa,errors,latency");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        let int = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| usage(&flag, &value))
        };
        let float = || {
            value
                .parse::<f64>()
                .unwrap_or_else(|_| usage(&flag, &value))
        };
        match flag.as_str() {
            "--runs" => cfg.runs = u32::try_from(int()).unwrap_or(u32::MAX),
            "--seed" => cfg.seed = int(),
            "--threads" => threads = usize::try_from(int()).unwrap_or(1).max(1),
            "--rows" => filter = value.clone(),
            "--columns" => columns = value.clone(),
            "--users" => cfg.users = usize::try_from(int()).unwrap_or(1).max(1),
            "--rate" => cfg.rate = float(),
            "--alpha" => cfg.rollout.judge.alpha = float(),
            "--min-samples" => cfg.rollout.judge.min_samples = int(),
            "--max-key-share" => cfg.rollout.judge.max_key_share = float(),
            "--timing-every" => cfg.timing_every = Some(int()),
            _ => usage(&flag, &value),
        }
    }
    if let Err(e) = cfg.rollout.validate() {
        eprintln!("{e}");
        std::process::exit(2);
    }
    let regressions = [
        ("aa", "A/A", Regression::none()),
        ("errors", "errors +1.5 pt", Regression::errors(0.015)),
        ("latency", "latency x1.3", Regression::latency(1.3)),
    ];
    let wanted: Vec<bool> = regressions
        .iter()
        .map(|(id, _, _)| columns.split(',').any(|c| c.trim() == *id))
        .collect();
    if !wanted.contains(&true) {
        usage("--columns", &columns);
    }
    let rows: Vec<(&str, Effects)> = Effects::rows()
        .into_iter()
        .filter(|(name, _)| name.contains(filter.as_str()))
        .collect();
    // Every (row, column) cell in table order; the columns not asked for are not simulated.
    let scenarios: Vec<Scenario> = rows
        .iter()
        .flat_map(|(name, fx)| {
            regressions
                .iter()
                .map(move |(_, r, reg)| Scenario::new(format!("{name} / {r}"), *fx, *reg))
        })
        .collect();

    // Jobs of a few runs each, taken by the threads in turn.
    const CHUNK: u32 = 25;
    let jobs: Vec<(usize, std::ops::Range<u32>)> = (0..scenarios.len())
        .filter(|s| wanted[s % regressions.len()])
        .flat_map(|s| {
            (0..cfg.runs)
                .step_by(CHUNK as usize)
                .map(move |a| (s, a..(a + CHUNK).min(cfg.runs)))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<SimResult>> = Mutex::new(vec![SimResult::default(); scenarios.len()]);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((sc, range)) = jobs.get(i) else {
                        break;
                    };
                    let r = simulate_runs(&cfg, &scenarios[*sc], range.clone());
                    results.lock().expect("results")[*sc].merge(&r);
                }
            });
        }
    });
    let results = results.into_inner().expect("results");

    let judge = &cfg.rollout.judge;
    println!(
        "judge: alpha {} per test, error ratio {}, latency ratio {}, max key share {}, min samples {} per arm; \
         {} req/s from {} users sticky by user; look every {:?}; steps {:?} % with bake {:?}; \
         {} runs per cell, seed {}; timing: {}\n",
        judge.alpha,
        judge.error_ratio,
        judge.latency_ratio,
        judge.max_key_share,
        judge.min_samples,
        cfg.rate,
        cfg.users,
        cfg.rollout.analysis_interval,
        cfg.rollout
            .steps
            .iter()
            .map(|s| s.weight_percent)
            .collect::<Vec<_>>(),
        cfg.rollout.steps[0].bake,
        cfg.runs,
        cfg.seed,
        cfg.timing_every.map_or_else(
            || "the router decides".to_owned(),
            |n| format!("1 call in {n} of each arm"),
        ),
    );
    println!(
        "| effects | A/A false rollback (stuck) | errors 0.5 % → 2 % detected (within min samples) | latency +30 % detected (within min samples) | canary samples at rollback, errors / latency (median) | mean time to verdict, A/A / errors / latency |"
    );
    println!("|---|---|---|---|---|---|");
    // A cell whose column was not asked for (`--columns`) prints "-".
    let ran = |r: &SimResult| r.runs > 0;
    let pct = |a: u32, r: &SimResult| {
        if ran(r) {
            format!("{:.1} %", 100.0 * f64::from(a) / f64::from(r.runs))
        } else {
            "-".to_owned()
        }
    };
    let med = |r: &SimResult| {
        r.samples_at_rollback_quantile(0.5)
            .map_or_else(|| "-".to_owned(), |m| m.to_string())
    };
    let mean_time = |r: &SimResult| {
        r.mean_secs_to_end()
            .map_or_else(|| "-".to_owned(), |s| format!("{:.0} s", s))
    };
    for (i, (name, _)) in rows.iter().enumerate() {
        let (aa, err, lat) = (&results[3 * i], &results[3 * i + 1], &results[3 * i + 2]);
        let stuck = if ran(aa) {
            format!("{}", aa.stuck)
        } else {
            "-".to_owned()
        };
        println!(
            "| {name} | {} ({stuck}) | {} ({}) | {} ({}) | {} / {} | {} / {} / {} |",
            pct(aa.rolled_back, aa),
            pct(err.rolled_back, err),
            pct(err.rolled_back_within_min_samples, err),
            pct(lat.rolled_back, lat),
            pct(lat.rolled_back_within_min_samples, lat),
            med(err),
            med(lat),
            mean_time(aa),
            mean_time(err),
            mean_time(lat),
        );
    }
    let requests: u64 = results.iter().map(|r| r.requests).sum();
    eprintln!(
        "\n({:.1} s, {} requests through the router, {} threads)",
        started.elapsed().as_secs_f64(),
        requests,
        threads
    );
}
