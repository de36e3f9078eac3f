//! Measures the judge by simulation: A/A false rollbacks, and detection of a 0.5 % → 2 % error
//! rate and of a +30 % p99, under the default rollout's look schedule.
//!
//! ```text
//! cargo run -p degrade-canary --release --example judge_sim -- --runs 1000
//! ```
//!
//! Options: `--runs N` (default 100), `--seed S` (default 1), `--requests-per-look N`
//! (default 5000), `--alpha A` and `--min-samples N` (default: the judge's defaults). Prints a
//! Markdown table.

use degrade_canary::sim::{Scenario, SimConfig, SimResult, simulate};
use std::time::Instant;

fn usage(flag: &str, value: &str) -> ! {
    eprintln!(
        "usage: judge_sim [--runs N] [--seed S] [--requests-per-look N] [--alpha A] [--min-samples N] (got {flag} {value})"
    );
    std::process::exit(2);
}

fn main() {
    let mut cfg = SimConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        if flag == "--alpha" {
            match value.parse::<f64>() {
                Ok(a) => cfg.rollout.judge.alpha = a,
                Err(_) => usage(&flag, &value),
            }
            continue;
        }
        let parsed = value.parse::<u64>();
        match (flag.as_str(), parsed) {
            ("--min-samples", Ok(v)) => cfg.rollout.judge.min_samples = v,
            ("--runs", Ok(v)) => cfg.runs = u32::try_from(v).unwrap_or(u32::MAX),
            ("--seed", Ok(v)) => cfg.seed = v,
            ("--requests-per-look", Ok(v)) if v > 0 => cfg.requests_per_look = v,
            _ => usage(&flag, &value),
        }
    }
    if let Err(e) = cfg.rollout.validate() {
        eprintln!("{e}");
        std::process::exit(2);
    }
    let scenarios = [
        Scenario::a_a(),
        Scenario::errors(0.005, 0.02),
        Scenario::latency(1.3),
    ];
    let started = Instant::now();
    let results: Vec<SimResult> = std::thread::scope(|s| {
        let handles: Vec<_> = scenarios
            .iter()
            .map(|sc| {
                let cfg = &cfg;
                s.spawn(move || simulate(cfg, sc))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    let judge = &cfg.rollout.judge;
    println!(
        "judge: alpha {} per test, beta {}, error ratio {}, latency ratio {}, min samples {} per arm; \
         {} requests per {:?} look; steps {:?} % with bake {:?}; {} runs per scenario, seed {}\n",
        judge.alpha,
        judge.beta,
        judge.error_ratio,
        judge.latency_ratio,
        judge.min_samples,
        cfg.requests_per_look,
        cfg.rollout.analysis_interval,
        cfg.rollout
            .steps
            .iter()
            .map(|s| s.weight_percent)
            .collect::<Vec<_>>(),
        cfg.rollout.steps[0].bake,
        cfg.runs,
        cfg.seed,
    );
    println!(
        "| scenario | runs | rolled back | within min samples | promoted | stuck | canary samples at rollback (median / p95) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (sc, r) in scenarios.iter().zip(&results) {
        println!(
            "| {} | {} | {:.2} % | {:.2} % | {:.2} % | {} | {} / {} |",
            sc.name,
            r.runs,
            100.0 * r.rollback_rate(),
            100.0 * r.detection_within_min_samples(),
            100.0 * f64::from(r.promoted) / f64::from(r.runs.max(1)),
            r.stuck,
            r.median_samples_at_rollback()
                .map_or_else(|| "-".to_owned(), |m| m.to_string()),
            r.samples_at_rollback_quantile(0.95)
                .map_or_else(|| "-".to_owned(), |m| m.to_string()),
        );
    }
    eprintln!("\n({:.1} s)", started.elapsed().as_secs_f64());
}
