//! `cargo xtask mutants`: mutation testing of the pure state machines and cells with
//! cargo-mutants, one scope at a time, and the score of each (caught / viable).
//!
//! A scope is a package, the files of it whose mutants count, and the test targets that run for
//! each mutant (`--lib --tests`: unit and integration tests, no doc tests, which compile one
//! binary each and would multiply the time per mutant). Every scope writes its own
//! `target/mutants/<scope>/mutants.out/` and builds in one shared `target/mutants/build`, so the
//! dependencies are compiled once for all scopes and the workspace's own `target/debug` is never
//! touched. The work happens in cargo-mutants' copy of the tree, never in the checkout.
//!
//! A scope whose package has a test target too slow to run for every mutant (the planner's
//! real child processes) leaves it out of its first pass and gives the mutants that pass missed
//! a slow pass with it (`target/mutants/<scope>-slow/`): every mutant still meets every test,
//! in a fraction of the time. A mutant counts as caught when any pass catches it.
//!
//! Some mutants only show under concurrency (a seqlock that accepts an odd sequence, a
//! compare-and-swap ordering): the ordinary tests cannot see them, the loom models can. For a
//! scope with loom models, the mutants the first pass missed go through a second pass with
//! `RUSTFLAGS=--cfg degrade_loom`, in release, running the models (`target/mutants/build-loom`,
//! `target/mutants/<scope>-loom/`). A mutant counts as caught when either pass catches it.
//!
//! Code compiled only for tests (`mod loom_models` under `cfg(all(test, degrade_loom))`, which
//! cargo-mutants does not recognise as test code) is excluded.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use crate::{Result, Step, seconds, workspace_root};

/// The caught share (of viable mutants) every scope must reach.
const GOAL_PERCENT: f64 = 90.0;

/// What one cargo-mutants run covers.
struct Scope {
    name: &'static str,
    package: &'static str,
    /// Relative to the workspace root.
    files: &'static [&'static str],
    /// Features for the build: `None` for `--all-features`.
    features: Option<&'static str>,
    /// Arguments for `cargo test`: the test targets (given to the build too, so a pass builds
    /// only what it runs; see [`split_tests`]), then `--` and the test binaries' arguments.
    tests: &'static [&'static str],
    /// Arguments for `cargo test` in the slow pass: test targets too slow to run for every
    /// mutant (real child processes), run only for the mutants `tests` missed (`None`: every
    /// test target is in `tests`).
    slow: Option<&'static [&'static str]>,
    /// Arguments for `cargo test` in the loom pass (`None`: the scope has no loom models).
    loom: Option<&'static [&'static str]>,
    /// What it is, for `--list`.
    what: &'static str,
}

const LIB_AND_TESTS: &[&str] = &["--lib", "--tests"];

/// The pure state machines and lock-free cells, smallest first.
const SCOPES: &[Scope] = &[
    Scope {
        name: "gcra",
        package: "degrade-ratelimit",
        files: &["crates/degrade-ratelimit/src/state.rs"],
        // Not `redis`: the fleet tests run against a real redis-server and test the Lua
        // script, not this cell.
        features: Some("http,grpc,axum,governor"),
        tests: LIB_AND_TESTS,
        // The cell's models are unit tests (`mod loom_models`); the other unit tests touch
        // loom's atomics outside a model under this cfg and would fail.
        slow: None,
        loom: Some(&["--lib", "loom_models"]),
        what: "ratelimit's GCRA cell: decide, rescale, the parameter table",
    },
    Scope {
        name: "canary",
        package: "degrade-canary",
        files: &[
            "crates/degrade-canary/src/machine.rs",
            "crates/degrade-canary/src/judge/mod.rs",
            "crates/degrade-canary/src/judge/evidence.rs",
        ],
        features: None,
        // The targets that exercise the machine or the judge: their unit tests, the judge's
        // (`judge`, `judge_props`, `sim`: the judge on simulated traffic, `mutants_canary`), the machine's
        // (`rollout`, `mutants_rollout`, `config` and `fuzz_store`: what `new` and `resume`
        // refuse), and the judge through the real router and controller (`what_counts`,
        // `timing`). The slow pass, for the mutants these miss, has the rest: the router alone
        // (`service`, `proptests`: 20 s, `alloc`), the key extractors (`fuzz`), the file store
        // on real files and processes (`store`), real axum servers (`axum`) and the Redis
        // fleet with real processes (`fleet`, about a minute), and the lib's `fleet::` unit
        // tests, which start a real redis-server (one of them fails now and then on a loaded
        // machine, which would count a mutant as caught). Each mutant builds and links 10 test
        // binaries instead of 16.
        tests: &[
            "--lib",
            "--test",
            "config",
            "--test",
            "fuzz_store",
            "--test",
            "judge",
            "--test",
            "judge_props",
            "--test",
            "mutants_canary",
            "--test",
            "mutants_rollout",
            "--test",
            "rollout",
            "--test",
            "sim",
            "--test",
            "timing",
            "--test",
            "what_counts",
            "--",
            "--skip",
            "fleet::",
        ],
        slow: Some(&[
            "--lib",
            "--test",
            "alloc",
            "--test",
            "axum",
            "--test",
            "fuzz",
            "--test",
            "proptests",
            "--test",
            "service",
            "--test",
            "store",
            "--test",
            "fleet",
        ]),
        loom: None,
        what: "canary's rollout state machine and judge",
    },
    Scope {
        name: "ladder-windows",
        package: "degrade-core",
        files: &[
            "crates/degrade-core/src/ladder.rs",
            "crates/degrade-core/src/window.rs",
            "crates/degrade-core/src/counter.rs",
        ],
        features: None,
        // The lib's `limit::` tests (8 s of the 22 s the unmutated tree's tests take: the
        // admission simulator) are skipped: `limit/` uses none of these files, so they cannot
        // catch a mutant of them.
        tests: &["--lib", "--tests", "--", "--skip", "limit::"],
        slow: None,
        loom: Some(&["--test", "loom"]),
        what: "degrade-core's ladder and sliding windows",
    },
    Scope {
        name: "cells",
        package: "degrade-core",
        files: &[
            "crates/degrade-core/src/recycle.rs",
            "crates/degrade-core/src/limit/lease.rs",
        ],
        features: None,
        // The targets that exercise the recycled objects (their unit tests) and the limiter's
        // per-thread leases: the lib's `limit::` tests, the leases through the layer on real
        // threads stepped one at a time (`leases`), `mutants_cells`, admission and the limit law through the
        // layer (`admission`, `limit_law`, `service`). The slow pass, for the mutants these
        // miss, has the rest of the package's targets; the loom pass the two cells' models.
        tests: &[
            "--lib",
            "--test",
            "admission",
            "--test",
            "leases",
            "--test",
            "limit_law",
            "--test",
            "mutants_cells",
            "--test",
            "service",
        ],
        slow: Some(&[
            "--test",
            "alloc",
            "--test",
            "axum",
            "--test",
            "config",
            "--test",
            "durations",
            "--test",
            "fuzz",
            "--test",
            "histogram",
            "--test",
            "loom",
            "--test",
            "mutants_ladder",
            "--test",
            "mutants_timing",
            "--test",
            "mutants_window",
            "--test",
            "priority_order",
            "--test",
            "proptests",
            "--test",
            "rejection",
            "--test",
            "stall",
            "--test",
            "tail_wait",
        ]),
        loom: Some(&["--lib", "loom_models"]),
        what: "degrade-core's recycled objects and the limiter's per-thread leases",
    },
    Scope {
        name: "breaker",
        package: "degrade-breaker",
        files: &["crates/degrade-breaker/src/state.rs"],
        features: None,
        tests: LIB_AND_TESTS,
        slow: None,
        loom: Some(&["--test", "loom"]),
        what: "the breaker state machine",
    },
    Scope {
        name: "planner",
        package: "degrade-rollout",
        files: &[
            "crates/degrade-rollout/src/plan/mod.rs",
            "crates/degrade-rollout/src/plan/types.rs",
            "crates/degrade-rollout/src/plan/protocol.rs",
            "crates/degrade-rollout/src/plan/ops.rs",
            "crates/degrade-rollout/src/plan/machine.rs",
            "crates/degrade-rollout/src/plan/handle.rs",
            "crates/degrade-rollout/src/plan/apply.rs",
            "crates/degrade-rollout/src/plan/drive.rs",
            "crates/degrade-rollout/src/plan/watch.rs",
        ],
        features: Some("testserver"),
        // Every test target but `process`, which drives real child processes through the
        // driver and the planner (15-25 s a run): it runs in the slow pass, for the mutants
        // these missed, so every mutant still meets every test. A new test file of the
        // package must be added here or to `slow`.
        tests: &[
            "--lib",
            "--test",
            "analysis",
            "--test",
            "config",
            "--test",
            "durations",
            "--test",
            "eject",
            "--test",
            "fuzz",
            "--test",
            "journal",
            "--test",
            "mutants_planner",
            "--test",
            "plan",
            "--test",
            "proptests",
        ],
        slow: Some(&["--test", "process"]),
        loom: None,
        what: "the rolling-upgrade planner",
    },
];

const USAGE: &str = "\
Usage: cargo xtask mutants [--scope NAME]... [--list] [-- <cargo-mutants args>]
  --scope NAME   run only this scope (repeatable); default: every scope, smallest first
  --list         print the scopes and how many mutants each has, run nothing
  after --       passed to cargo-mutants, e.g. `-- --iterate` (retest only the mutants not
                 caught last time, timeouts counting as caught; the score then covers only
                 those: run without it for the full score) or `-- -j 2`
Needs cargo-mutants; installs it with `cargo install cargo-mutants --locked` when missing.
Results: target/mutants/<scope>/mutants.out/ (missed.txt, caught.txt, outcomes.json).";

/// Runs the scopes; see the module documentation.
pub(crate) fn run(args: &[String]) -> Result {
    let mut selected: Vec<&Scope> = Vec::new();
    let mut list = false;
    let mut passthrough: Vec<String> = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--scope" => {
                let name = iter.next().ok_or("`--scope` needs a name")?;
                let scope = SCOPES
                    .iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| format!("no scope `{name}`; scopes: {}", scope_names()))?;
                selected.push(scope);
            }
            "--list" => list = true,
            "--" => {
                passthrough = iter.cloned().collect();
                break;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unexpected argument `{other}`\n\n{USAGE}")),
        }
    }
    if selected.is_empty() {
        selected = SCOPES.iter().collect();
    }
    let root = workspace_root();
    ensure_cargo_mutants(&root)?;
    if list {
        for scope in &selected {
            let count = count_mutants(&root, scope)?;
            println!(
                "{:<15} {:>4} mutants  {} ({})",
                scope.name,
                count,
                scope.what,
                scope.files.join(", ")
            );
        }
        return Ok(());
    }

    let _lock = lock_build_dir(&root.join("target").join("mutants"))?;
    let started = Instant::now();
    let mut results = Vec::new();
    for scope in selected {
        results.push(run_scope(&root, scope, &passthrough)?);
    }
    println!("\n{}", table(&results));
    for result in &results {
        if !result.survivors.is_empty() {
            println!("survivors in {} ({}):", result.scope, result.out.display());
            for survivor in &result.survivors {
                println!("  {survivor}");
            }
        }
    }
    println!("==> mutants: done in {}", seconds(started));
    if passthrough.iter().any(|a| a == "--iterate") {
        // The score covers the re-tested mutants only (the survivors of earlier runs, the
        // hardest): not the scope's, so not held against the goal.
        println!(
            "==> --iterate: the scores cover the re-tested mutants only; the scope's is the \
             earlier runs' caught plus these, over the full run's viable mutants"
        );
        return Ok(());
    }
    let below: Vec<String> = results
        .iter()
        .filter(|r| r.score().is_some_and(|s| s < GOAL_PERCENT))
        .map(|r| format!("{} {:.1} %", r.scope, r.score().unwrap_or_default()))
        .collect();
    if below.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "below the goal of {GOAL_PERCENT} % caught: {}",
            below.join(", ")
        ))
    }
}

/// Holds `target/mutants/run.lock` for the whole run, or refuses when another run holds it.
///
/// Every scope builds in the one `target/mutants/build`, each run from its own copy of the tree.
/// Cargo names a workspace member's artifacts the same whatever the copy's path, so two runs at
/// once overwrite each other's builds of a crate they share, and a run's test phase can find
/// the other run's build fresh and test it instead of its own mutant (seen: a `TimingSampler`
/// mutant "missed" while a run over `recycle.rs` rebuilt degrade-core next to it).
fn lock_build_dir(dir: &Path) -> Result<fs::File> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("run.lock");
    let file =
        fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(format!(
            "another `cargo xtask mutants` is running ({} is locked): two runs in the same \
             build directory would test each other's builds; wait for it or stop it",
            path.display()
        )),
        Err(fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

fn scope_names() -> String {
    SCOPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

/// `cargo mutants --version`, installing cargo-mutants first when that fails.
fn ensure_cargo_mutants(root: &Path) -> Result {
    let found = cargo()
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if found {
        return Ok(());
    }
    println!("==> cargo-mutants is not installed: installing it (about two minutes, once)");
    Step::cargo(
        "install cargo-mutants",
        ["install", "cargo-mutants", "--locked"],
    )
    .run(root)
}

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Mutant names (regexes) never generated: test-only code cargo-mutants cannot tell apart
/// (`mod loom_models` under `cfg(all(test, degrade_loom))`, `mod tests` under
/// `cfg(all(test, not(degrade_loom)))`).
const EXCLUDE_RE: &[&str] = &["loom_models", "[ :]tests::"];

/// The arguments that select a scope's mutants and build (everything but the output).
fn select_args(scope: &Scope) -> Vec<String> {
    let mut args: Vec<String> = vec!["mutants".into(), "--package".into(), scope.package.into()];
    for re in EXCLUDE_RE {
        args.extend(["--exclude-re".into(), (*re).into()]);
    }
    for file in scope.files {
        args.extend(["--file".into(), (*file).into()]);
    }
    match scope.features {
        None => args.push("--all-features".into()),
        Some(features) => args.extend(["--features".into(), features.into()]),
    }
    args
}

fn count_mutants(root: &Path, scope: &Scope) -> Result<usize> {
    let out = cargo()
        .args(select_args(scope))
        .arg("--list")
        .current_dir(root)
        .output()
        .map_err(|err| format!("cannot run cargo mutants --list: {err}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo mutants --list failed for {}: {}",
            scope.name,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// The counts of one scope's run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counts {
    caught: usize,
    /// Skipped by `--iterate`: caught or unviable in an earlier run (cargo-mutants does not
    /// tell which), so outside this run's score.
    skipped: usize,
    missed: usize,
    timeout: usize,
    unviable: usize,
    /// Missed by the first pass's tests, caught by the slow pass's (a failure or a timeout).
    caught_by_slow: usize,
    /// Missed by the tests, caught by the loom models (a failure or a timeout).
    caught_by_loom: usize,
}

impl Counts {
    /// Mutants that compile: the denominator of the score.
    fn viable(&self) -> usize {
        self.detected() + self.missed
    }

    /// Caught by a failing test or by a timeout (an infinite loop the tests notice), in either
    /// pass.
    fn detected(&self) -> usize {
        self.caught + self.timeout + self.caught_by_slow + self.caught_by_loom
    }
}

struct ScopeResult {
    scope: &'static str,
    counts: Counts,
    survivors: Vec<String>,
    secs: f64,
    out: PathBuf,
}

impl ScopeResult {
    fn score(&self) -> Option<f64> {
        let viable = self.counts.viable();
        (viable > 0).then(|| 100.0 * self.counts.detected() as f64 / viable as f64)
    }
}

fn run_scope(root: &Path, scope: &Scope, passthrough: &[String]) -> Result<ScopeResult> {
    let started = Instant::now();
    println!(
        "==> mutants {}: {} in {}",
        scope.name,
        scope.what,
        scope.files.join(", ")
    );
    let target = root.join("target").join("mutants");
    if passthrough.iter().any(|a| a == "--iterate") {
        carry_timeouts_forward(&target.join(scope.name).join("mutants.out"))?;
    }
    let dir = cargo_mutants(
        root,
        &target.join(scope.name),
        &target.join("build"),
        select_args(scope),
        passthrough,
        scope.tests,
        None,
    )?;
    let mut counts = read_counts(&dir)?;
    let mut survivors = lines(&dir.join("missed.txt"));
    let mut out = dir;
    if let (Some(slow), false) = (scope.slow, survivors.is_empty()) {
        println!(
            "==> mutants {}: {} missed; the slow tests ({}) get a try at them",
            scope.name,
            survivors.len(),
            slow.join(" ")
        );
        let slow_dir = cargo_mutants(
            root,
            &target.join(format!("{}-slow", scope.name)),
            &target.join("build"),
            survivor_args(scope, &survivors),
            &[],
            slow,
            None,
        )?;
        let slow_counts = read_counts(&slow_dir)?;
        counts.caught_by_slow = slow_counts.caught + slow_counts.timeout;
        counts.missed = slow_counts.missed;
        survivors = lines(&slow_dir.join("missed.txt"));
        out = slow_dir;
    }
    if let (Some(loom), false) = (scope.loom, survivors.is_empty()) {
        println!(
            "==> mutants {}: {} missed; the loom models get a try at them",
            scope.name,
            survivors.len()
        );
        let mut args = survivor_args(scope, &survivors);
        // Release, as `cargo xtask lint` runs the models: loom explores every interleaving.
        // The targets go to cargo in both phases, so only the models are built.
        args.extend(["--profile".into(), "release".into()]);
        for arg in loom {
            args.push(format!("--cargo-arg={arg}"));
        }
        let loom_dir = cargo_mutants(
            root,
            &target.join(format!("{}-loom", scope.name)),
            &target.join("build-loom"),
            args,
            &[],
            &[],
            Some("--cfg degrade_loom"),
        )?;
        let loom_counts = read_counts(&loom_dir)?;
        counts.caught_by_loom = loom_counts.caught + loom_counts.timeout;
        counts.missed = loom_counts.missed;
        survivors = lines(&loom_dir.join("missed.txt"));
        out = loom_dir;
    }
    Ok(ScopeResult {
        scope: scope.name,
        counts,
        survivors,
        secs: started.elapsed().as_secs_f64(),
        out,
    })
}

/// Before an `--iterate` run: adds the last run's timeouts to its `previously_caught.txt`.
///
/// cargo-mutants' `--iterate` skips the mutants an earlier run caught or found unviable, but
/// tests the timeouts again, each for the whole test timeout (a minute or more): most of an
/// iterating run's time, to learn again what this tool already counts as caught (a loop that
/// never ends). Carried into `previously_caught.txt`, which cargo-mutants reads and writes back
/// with the newly caught, they stay skipped in every later `--iterate` run. The first pass's
/// survivors are still all tested again, so the slow pass sees every one it misses.
fn carry_timeouts_forward(out: &Path) -> Result {
    let timeouts = lines(&out.join("timeout.txt"));
    if timeouts.is_empty() {
        return Ok(());
    }
    let path = out.join("previously_caught.txt");
    let mut caught = lines(&path);
    let before = caught.len();
    for name in timeouts {
        if !caught.contains(&name) {
            caught.push(name);
        }
    }
    if caught.len() > before {
        println!(
            "==> --iterate: {} timeouts of the last run counted as caught (not run again)",
            caught.len() - before
        );
        let mut text = caught.join("\n");
        text.push('\n');
        fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The scope's selection narrowed to the mutants named in `survivors` (an earlier pass's
/// `missed.txt`), for a later pass.
fn survivor_args(scope: &Scope, survivors: &[String]) -> Vec<String> {
    let mut args = select_args(scope);
    for name in survivors {
        args.extend(["--re".into(), format!("^{}$", regex_escape(name))]);
    }
    args
}

/// One cargo-mutants run; returns its `mutants.out` directory.
fn cargo_mutants(
    root: &Path,
    out: &Path,
    target_dir: &Path,
    mut args: Vec<String>,
    passthrough: &[String],
    tests: &[&str],
    rustflags: Option<&str>,
) -> Result<PathBuf> {
    fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    args.extend([
        "--output".into(),
        out.display().to_string(),
        // The per-mutant limit: three times the unmutated tree's test time, and never less than
        // a minute (the machine may be shared, and a mutant may be slower without looping).
        "--timeout-multiplier".into(),
        "3".into(),
        "--minimum-test-timeout".into(),
        "60".into(),
        "--build-timeout-multiplier".into(),
        "4".into(),
    ]);
    args.extend(passthrough.iter().cloned());
    let (cargo_args, test_args) = split_tests(tests);
    args.extend(cargo_args);
    args.push("--".into());
    args.extend(test_args);
    let mut command = cargo();
    // No debug info for the workspace's own crates either (the dependencies have none already):
    // it changes no test's outcome, and linking each mutant's dozen test binaries without it
    // is most of the time a mutant's build saves.
    command
        .args(&args)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .env("CARGO_PROFILE_TEST_DEBUG", "false")
        .current_dir(root);
    let mut shown = format!(
        "CARGO_TARGET_DIR={} CARGO_PROFILE_DEV_DEBUG=false CARGO_PROFILE_TEST_DEBUG=false",
        target_dir.display()
    );
    if let Some(flags) = rustflags {
        command.env("RUSTFLAGS", flags);
        shown.push_str(&format!(" RUSTFLAGS='{flags}'"));
    }
    // The survivors' regexes make the loom pass's command line long; show the start.
    let mut line = args.join(" ");
    if line.len() > 400 {
        line.truncate(400);
        line.push_str(" ...");
    }
    println!("==> {shown} cargo {line}");
    let status = command
        .status()
        .map_err(|err| format!("could not start cargo mutants: {err}"))?;
    let dir = out.join("mutants.out");
    // 0: all caught; 2: some missed; 3: some timed out. Anything else is a failed run.
    if matches!(status.code(), Some(0 | 2 | 3)) {
        Ok(dir)
    } else {
        Err(format!(
            "cargo mutants failed ({status}); see {}",
            dir.display()
        ))
    }
}

/// A pass's `cargo test` arguments split for cargo-mutants: the target selection (`--lib`,
/// `--test NAME`, `--tests`) as `--cargo-arg`s, which cargo-mutants gives to the build phase
/// (`cargo test --no-run`) as well as to the test phase, and the test binaries' own arguments
/// (from a `--` on) for the test phase only.
///
/// After cargo-mutants' own `--` the selection would reach the test phase only: the build phase
/// would compile and link every test target of the package for every mutant, also those the
/// pass never runs (the slow pass's), which is most of a mutant's time in a package with many
/// test targets.
fn split_tests(tests: &[&str]) -> (Vec<String>, Vec<String>) {
    let at = tests.iter().position(|a| *a == "--").unwrap_or(tests.len());
    let cargo_args = tests[..at]
        .iter()
        .map(|a| format!("--cargo-arg={a}"))
        .collect();
    let test_args = tests[at..].iter().map(|a| (*a).to_owned()).collect();
    (cargo_args, test_args)
}

/// `text` with the regex metacharacters escaped (those `regex::escape` escapes).
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The counts from `outcomes.json` (and `previously_caught.txt` after `--iterate`).
fn read_counts(dir: &Path) -> Result<Counts> {
    let path = dir.join("outcomes.json");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let count = |field: &str| {
        json.get(field)
            .and_then(serde_json::Value::as_u64)
            .map(|n| n as usize)
            .ok_or_else(|| format!("{}: no `{field}` count", path.display()))
    };
    Ok(Counts {
        caught: count("caught")?,
        skipped: lines(&dir.join("previously_caught.txt")).len(),
        missed: count("missed")?,
        timeout: count("timeout")?,
        unviable: count("unviable")?,
        caught_by_slow: 0,
        caught_by_loom: 0,
    })
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn table(results: &[ScopeResult]) -> String {
    let mut out = String::from(
        "| scope | caught | timeout | caught by slow tests | caught by loom | missed | unviable | score (caught / viable) | time |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let c = &r.counts;
        let caught = if c.skipped > 0 {
            format!("{} ({} skipped by --iterate)", c.caught, c.skipped)
        } else {
            c.caught.to_string()
        };
        out.push_str(&format!(
            "| {} | {caught} | {} | {} | {} | {} | {} | {} | {:.0} min |\n",
            r.scope,
            c.timeout,
            c.caught_by_slow,
            c.caught_by_loom,
            c.missed,
            c.unviable,
            r.score().map_or("-".to_owned(), |s| format!(
                "{s:.1} % ({}/{})",
                c.detected(),
                c.viable()
            )),
            r.secs / 60.0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_counts_timeouts_as_caught_and_ignores_unviable_mutants() {
        let result = ScopeResult {
            scope: "x",
            counts: Counts {
                caught: 85,
                skipped: 7,
                missed: 10,
                timeout: 3,
                unviable: 40,
                caught_by_slow: 1,
                caught_by_loom: 1,
            },
            survivors: Vec::new(),
            secs: 0.0,
            out: PathBuf::new(),
        };
        assert_eq!(result.counts.viable(), 100);
        assert_eq!(result.score(), Some(90.0));
    }

    #[test]
    fn the_targets_of_a_pass_reach_the_build_and_its_test_arguments_only_the_tests() {
        let (cargo_args, test_args) =
            split_tests(&["--lib", "--test", "judge", "--", "--skip", "limit::"]);
        assert_eq!(
            cargo_args,
            [
                "--cargo-arg=--lib",
                "--cargo-arg=--test",
                "--cargo-arg=judge"
            ]
        );
        assert_eq!(test_args, ["--", "--skip", "limit::"]);
        assert_eq!(split_tests(LIB_AND_TESTS).1, Vec::<String>::new());
    }

    #[test]
    fn survivor_names_match_themselves_as_regexes() {
        let name = "crates/x/src/state.rs:85:25: replace && with || in ParamTable::load -> u64";
        assert_eq!(
            regex_escape(name),
            "crates/x/src/state\\.rs:85:25: replace \\&\\& with \\|\\| in ParamTable::load \\-> u64"
        );
    }

    /// A scope that names its test targets one by one must name every one of them, in a pass:
    /// a test file added later would otherwise never meet a mutant.
    #[test]
    fn a_scope_that_lists_its_test_targets_lists_all_of_them() {
        let root = workspace_root();
        for scope in SCOPES.iter().filter(|s| !s.tests.contains(&"--tests")) {
            let crate_dir = scope.files[0].split("/src/").next().unwrap();
            let named: Vec<&str> = scope
                .tests
                .iter()
                .chain(scope.slow.unwrap_or_default())
                .copied()
                .collect();
            let listed: Vec<&str> = named
                .windows(2)
                .filter(|w| w[0] == "--test")
                .map(|w| w[1])
                .collect();
            for entry in fs::read_dir(root.join(crate_dir).join("tests")).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "rs") {
                    let stem = path.file_stem().unwrap().to_str().unwrap();
                    assert!(
                        listed.contains(&stem),
                        "{}: tests/{stem}.rs runs in no pass",
                        scope.name
                    );
                }
            }
        }
    }

    #[test]
    fn an_iterating_run_counts_the_last_runs_timeouts_as_caught_once() {
        let out = env::temp_dir().join(format!("xtask-mutants-{}", std::process::id()));
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("timeout.txt"), "a.rs:1:1: t1\nb.rs:2:2: t2\n").unwrap();
        fs::write(
            out.join("previously_caught.txt"),
            "b.rs:2:2: t2\nc.rs:3:3: c\n",
        )
        .unwrap();
        carry_timeouts_forward(&out).unwrap();
        carry_timeouts_forward(&out).unwrap();
        assert_eq!(
            lines(&out.join("previously_caught.txt")),
            ["b.rs:2:2: t2", "c.rs:3:3: c", "a.rs:1:1: t1"]
        );
        fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn a_second_run_is_refused_while_the_first_holds_the_build_directory() {
        let dir = env::temp_dir().join(format!("xtask-mutants-lock-{}", std::process::id()));
        let first = lock_build_dir(&dir).unwrap();
        let err = lock_build_dir(&dir).unwrap_err();
        assert!(
            err.contains("another `cargo xtask mutants` is running"),
            "{err}"
        );
        drop(first);
        drop(lock_build_dir(&dir).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_scope_file_exists_in_its_package() {
        let root = workspace_root();
        for scope in SCOPES {
            for file in scope.files {
                assert!(root.join(file).is_file(), "{}: {file}", scope.name);
            }
        }
    }
}
