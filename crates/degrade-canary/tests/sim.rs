//! A small run of the simulator (feature `sim`): the real router and controller on simulated
//! traffic. The full table is `cargo run -p degrade-canary --release --features sim --example
//! judge_sim -- --runs 1000` (figures in the README).
#![cfg(feature = "sim")]

use degrade_canary::sim::{Effects, Regression, Scenario, SimConfig, simulate_runs};

fn cfg() -> SimConfig {
    let mut cfg = SimConfig::default();
    cfg.seed = 7;
    cfg
}

#[test]
fn a_good_release_with_every_effect_is_promoted() {
    let r = simulate_runs(
        &cfg(),
        &Scenario::new("A/A", Effects::all(), Regression::none()),
        0..3,
    );
    assert_eq!(r.rolled_back, 0, "{r:?}");
}

#[test]
fn an_error_regression_is_rolled_back() {
    let r = simulate_runs(
        &cfg(),
        &Scenario::new("errors", Effects::none(), Regression::errors(0.015)),
        0..3,
    );
    assert_eq!(r.rolled_back, 3, "{r:?}");
}

#[test]
fn a_latency_regression_is_rolled_back_within_the_minimum_samples() {
    let r = simulate_runs(
        &cfg(),
        &Scenario::new("latency", Effects::none(), Regression::latency(1.3)),
        0..3,
    );
    assert_eq!(r.rolled_back_within_min_samples, 3, "{r:?}");
}
