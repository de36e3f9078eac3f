//! The live view: one progress bar per phase, redrawn every second on a terminal (one line per
//! second otherwise, e.g. in CI logs), with the adaptive limit, the level, admitted / refused, p99, the breaker's
//! state and the canary's weight; level, breaker and canary events on their own lines.

use super::load::{self, Recorder};
use super::service::{self, Protection};
use super::{ControlSample, Scenario};
use degrade_breaker::State as BreakerState;
use degrade_core::ladder::LadderConfig;
use degrade_core::{Level, LevelTransition};
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::time::Instant;

/// The latest control-loop state, for the progress line.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    level: AtomicU8,
    /// 0 none, 1 closed, 2 half-open, 3 open, 4 other.
    breaker: AtomicU8,
    /// Basis points, `u32::MAX` for none.
    canary_bp: AtomicU32,
    /// The adaptive limit, `u32::MAX` for none.
    limit: AtomicU32,
}

impl Shared {
    pub(crate) fn set(&self, sample: &ControlSample) {
        self.level
            .store(sample.level.index() as u8, Ordering::Relaxed);
        let breaker = match sample.breaker {
            None => 0,
            Some(BreakerState::Closed) => 1,
            Some(BreakerState::HalfOpen) => 2,
            Some(BreakerState::Open) => 3,
            Some(_) => 4,
        };
        self.breaker.store(breaker, Ordering::Relaxed);
        let bp = sample
            .canary_percent
            .map_or(u32::MAX, |p| (p * 100.0).round() as u32);
        self.canary_bp.store(bp, Ordering::Relaxed);
        self.limit
            .store(sample.limit.unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    fn reset(&self) {
        self.limit.store(u32::MAX, Ordering::Relaxed);
        self.level.store(0, Ordering::Relaxed);
        self.breaker.store(0, Ordering::Relaxed);
        self.canary_bp.store(u32::MAX, Ordering::Relaxed);
    }
}

pub(crate) static STATE: LazyLock<Arc<Shared>> = LazyLock::new(Arc::default);

fn tty() -> bool {
    std::io::stdout().is_terminal()
}

/// Prints `text` on its own line (clearing a progress bar being drawn on a terminal).
pub(crate) fn note(text: &str) {
    let mut out = std::io::stdout().lock();
    let clear = if tty() { "\r\x1b[2K" } else { "" };
    let _ = writeln!(out, "{clear}  >> {text}");
    let _ = out.flush();
}

pub(crate) fn transition(tr: &LevelTransition, t: Duration) {
    note(&format!(
        "t={:.1}s level {} -> {} ({}: {} {:.2} {} {:.2}, after {:.1}s at {})",
        t.as_secs_f64(),
        tr.from,
        tr.to,
        tr.cause,
        tr.signal.as_deref().unwrap_or("-"),
        tr.value.unwrap_or(f64::NAN),
        super::relation(tr.cause),
        tr.threshold.unwrap_or(f64::NAN),
        tr.time_at_previous.as_secs_f64(),
        tr.from,
    ));
}

pub(crate) fn header(full: &Scenario, comparison: &Scenario, ladder: &LadderConfig) {
    println!(
        "degrade demo: a backend of {} permits x {} ms = capacity {:.0} req/s, on 127.0.0.1",
        service::permits(),
        service::service_time().as_millis(),
        full.capacity
    );
    println!(
        "protected stack: DegradeLayer (queue signal -> degrade-triggers Monitor -> ladder) -> \
         RateLimitLayer keyed by {} ({}/s, burst {}) -> BreakerLayer -> Canary(v1, v2) -> backend",
        service::CLIENT_HEADER,
        service::rate_limit().quota,
        service::rate_limit().burst.unwrap_or(0),
    );
    println!(
        "admission: the DegradeLayer's adaptive limit (learnt, nothing of the backend \
         configured); ladder: escalate_after {} (jump {}, cooldown {:?}), recover_after {}, \
         dwell {:?}, driven by the share of requests the limit refuses",
        ladder.escalate_after,
        ladder.jump,
        ladder.escalate_cooldown,
        ladder.recover_after,
        ladder.dwell,
    );
    println!(
        "mix: critical 10% high 20% normal 30% low 25% background 15% (twelve app clients send \
         critical, high and normal; bulk-sync sends all low and background)"
    );
    println!(
        "runs: degrade {} s, then the overload part ({} s) unprotected and behind tower's \
         ConcurrencyLimit({}) + LoadShed",
        full.total(),
        comparison.total(),
        service::tower_limit()
    );
}

pub(crate) fn run_header(protection: Protection, scenario: &Scenario, addr: SocketAddr) {
    STATE.reset();
    let phases = scenario
        .phases
        .iter()
        .map(|p| {
            let rate = |x: f64| format!("{:.0}", x * scenario.capacity);
            if p.from == p.to {
                format!("{} {}-{}s @{}/s", p.name, p.start, p.end, rate(p.from))
            } else {
                format!(
                    "{} {}-{}s {}->{}/s",
                    p.name,
                    p.start,
                    p.end,
                    rate(p.from),
                    rate(p.to)
                )
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "\n=== run: {} (GET http://{addr}/work) ===",
        protection.name()
    );
    println!("phases: {phases}");
}

/// Draws the progress line once a second until the scenario's end.
pub(crate) async fn follow(scenario: &Scenario, recorder: &Recorder, start: Instant) {
    let tty = tty();
    for second in 0..scenario.total() {
        tokio::time::sleep_until(start + Duration::from_secs(second + 1)).await;
        let phase = scenario.phase_at(second);
        let line = line(scenario, second, &recorder.second(second as usize));
        let last_of_phase = second + 1 == phase.end;
        let mut out = std::io::stdout().lock();
        if tty {
            let end = if last_of_phase { "\n" } else { "" };
            let _ = write!(out, "\r\x1b[2K{line}{end}");
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

fn line(scenario: &Scenario, second: u64, s: &load::Second) -> String {
    let phase = scenario.phase_at(second);
    let width = 12;
    let span = (phase.end - phase.start).max(1);
    let done = second + 1 - phase.start;
    let filled = ((done * width) / span) as usize;
    let bar: String = "#".repeat(filled) + &".".repeat(width as usize - filled);
    let total = s.total();
    let mut latencies: Vec<u32> = s.latency_us.iter().flatten().copied().collect();
    let p99 = super::report::ms(load::quantile(&mut latencies, 0.99));
    let state = &*STATE;
    let level = Level::ALL[usize::from(state.level.load(Ordering::Relaxed)).min(4)];
    let breaker = match state.breaker.load(Ordering::Relaxed) {
        0 => "-",
        1 => "closed",
        2 => "half-open",
        3 => "OPEN",
        _ => "other",
    };
    let canary = match state.canary_bp.load(Ordering::Relaxed) {
        u32::MAX => "-".to_owned(),
        bp => format!("{:.0}%", f64::from(bp) / 100.0),
    };
    let crit = s.tally[degrade_core::Priority::Critical.index()];
    let limit = match state.limit.load(Ordering::Relaxed) {
        u32::MAX => "-".to_owned(),
        l => l.to_string(),
    };
    format!(
        "[{:<11} {bar} {done:>2}/{span}s] {:>4}/s limit {limit:>3} level {:<9} ok {:>4} shed {:>4} 429 {:>3} open {:>3} \
         err {:>3}{} | crit {}/{} | p99 {p99:>7} | breaker {breaker:<9} canary {canary}",
        phase.name,
        total.offered,
        level.as_str(),
        total.ok,
        total.shed + total.overloaded,
        total.rate_limited,
        total.circuit_open,
        total.errors,
        if total.timeouts + total.dropped > 0 {
            format!(" timeout {} drop {}", total.timeouts, total.dropped)
        } else {
            String::new()
        },
        crit.ok,
        crit.offered,
    )
}
