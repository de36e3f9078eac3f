//! `cargo xtask demo`: a real axum service with a fixed capacity, behind the `DegradeLayer`,
//! driven by an open-loop load generator through warm-up, an overload ramp, a hold at three
//! times capacity and a recovery. Prints one line per second, the level transitions as they
//! happen, a per-phase summary and an accounting check, and writes `summary.json`.
//!
//! Nothing is simulated except the backend's work: requests travel over real loopback TCP, the
//! level is moved by the real `Controller` from a real queue measurement, and the layer's own
//! counters are checked against what the client saw.
//!
//! The signal is a simple in-process queue pressure until `degrade-triggers` lands; the later
//! HTML report will read the same per-second timeline written to `summary.json`.

mod load;
mod report;

use crate::{Result, workspace_root};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use axum::serve::ListenerExt as _;
use degrade_core::ladder::{Band, Cause, LadderConfig, Reading, Thresholds};
use degrade_core::priority::HeaderPriority;
use degrade_core::{Controller, DegradeLayer, Policy, Priority};
use http::{HeaderName, StatusCode};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};

/// Requests the backend serves at once (its fixed capacity in concurrency).
const PERMITS: usize = 8;
/// Work per request once it holds a permit. 20 ms makes the capacity 400 req/s, so the peak of
/// 3x capacity is 1,200 req/s: the client and the server share this process and, in a debug
/// build, each request costs them about half a millisecond of CPU together. At 10 ms (2,400 req/s
/// at the peak) a 2-core machine doing anything else falls behind its own schedule, and the
/// demo measures the machine instead of the server.
const SERVICE_TIME: Duration = Duration::from_millis(20);
/// The queue that reads as pressure 1.0, in multiples of `PERMITS`: pressure is requests in the
/// system (waiting for or holding a permit) over `QUEUE_SCALE * PERMITS` = 48. Busy with no
/// queue reads 0.17; the ladder's thresholds ([`ladder_config`]) are set against this scale.
const QUEUE_SCALE: usize = 6;
/// How often the signal is sampled and fed to the controller.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const PRIORITY_HEADER: &str = "x-priority";
/// Past this many requests in flight, arrivals are dropped by the client instead of sent. Each
/// request in flight may need its own connection; staying under the listener's accept backlog
/// (1,024 in tokio) keeps a burst from overflowing it, which would turn into SYN retransmits and
/// requests that take 1, 3 or 7 s for reasons that have nothing to do with the server. A healthy
/// run has a few dozen in flight.
const MAX_OUTSTANDING: u64 = 1_000;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const SEED: u64 = 0x00de_57ad_e5ee_d001;

/// The backend's capacity in requests per second: `PERMITS` requests every `SERVICE_TIME`.
fn capacity() -> f64 {
    PERMITS as f64 / SERVICE_TIME.as_secs_f64()
}

/// The offered-load mix, by priority.
fn mix() -> load::Mix {
    load::Mix::new([
        (Priority::Critical, 10.0),
        (Priority::High, 20.0),
        (Priority::Normal, 30.0),
        (Priority::Low, 25.0),
        (Priority::Background, 15.0),
    ])
    .expect("the demo mix is valid")
}

const USAGE: &str = "\
Usage: cargo xtask demo [--quick] [--duration SECS] [--out DIR]
  --quick           a 20 s run (default 60 s) with a 1 s dwell (default 2 s)
  --duration SECS   total length; the phases keep their proportions (at least 8)
  --out DIR         where summary.json goes (default <workspace>/target/degrade-demo)";

#[derive(Debug)]
struct Options {
    total_secs: u64,
    quick: bool,
    out: PathBuf,
}

impl Options {
    /// `None` for `--help` (the usage has been printed).
    fn parse(args: &[String]) -> Result<Option<Self>> {
        let mut quick = false;
        let mut duration = None;
        let mut out = None;
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let mut value = |name: &str| {
                iter.next()
                    .cloned()
                    .ok_or_else(|| format!("`{name}` needs a value\n\n{USAGE}"))
            };
            match arg.as_str() {
                "--quick" => quick = true,
                "--duration" => {
                    let text = value("--duration")?;
                    let secs: u64 = text
                        .parse()
                        .map_err(|_| format!("--duration: `{text}` is not a whole number"))?;
                    if secs < 8 {
                        return Err(format!("--duration must be at least 8 seconds, got {secs}"));
                    }
                    duration = Some(secs);
                }
                "--out" => out = Some(PathBuf::from(value("--out")?)),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return Ok(None);
                }
                other => return Err(format!("unexpected argument `{other}`\n\n{USAGE}")),
            }
        }
        Ok(Some(Self {
            total_secs: duration.unwrap_or(if quick { 20 } else { 60 }),
            quick,
            out: out.unwrap_or_else(|| workspace_root().join("target").join("degrade-demo")),
        }))
    }
}

/// One part of the scenario: whole seconds `[start, end)`, the offered rate going linearly from
/// `from` to `to` times capacity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) from: f64,
    pub(crate) to: f64,
}

/// The four phases, 20 % / 25 % / 30 % / 25 % of the run, cut at whole seconds so the
/// per-second figures fall in exactly one phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scenario {
    pub(crate) phases: [Phase; 4],
    pub(crate) capacity: f64,
}

impl Scenario {
    fn new(total: u64) -> Self {
        let cut = |share: f64| (total as f64 * share).round() as u64;
        let (a, b, c) = (cut(0.20), cut(0.45), cut(0.75));
        let phase = |name, start, end, from, to| Phase {
            name,
            start,
            end,
            from,
            to,
        };
        Self {
            phases: [
                phase("warm-up", 0, a, 0.5, 0.5),
                phase("ramp", a, b, 0.5, 3.0),
                phase("overload", b, c, 3.0, 3.0),
                phase("recovery", c, total, 0.5, 0.5),
            ],
            capacity: capacity(),
        }
    }

    fn total(&self) -> u64 {
        self.phases[3].end
    }

    /// The phase holding second `second` (the last one past the end).
    pub(crate) fn phase_at(&self, second: u64) -> &Phase {
        self.phases
            .iter()
            .find(|p| second < p.end)
            .unwrap_or(&self.phases[3])
    }

    /// Target offered rate (requests per second) at `t`.
    pub(crate) fn rate_at(&self, t: Duration) -> f64 {
        let phase = self.phase_at(t.as_secs());
        let span = (phase.end - phase.start) as f64;
        let into = (t.as_secs_f64() - phase.start as f64).clamp(0.0, span);
        let factor = phase.from + (phase.to - phase.from) * into / span.max(f64::MIN_POSITIVE);
        factor * self.capacity
    }
}

/// The ladder for a queue signal in front of a fixed-capacity backend.
///
/// A queue is not a utilisation: below capacity it stays near empty, above it it grows without
/// bound at (admitted rate - capacity), and after shedding it drains. The defaults (thresholds
/// 0.70 / 0.80 / 0.90 / 0.95, jump) suit a signal that rises in proportion to load, like CPU;
/// fed a queue they were tried here and misbehave in two ways:
///
/// * **Jump lands on Emergency.** Over capacity the queue crosses every threshold within the two
///   samples `escalate_after` needs, so `jump` always goes to Emergency, which admits critical
///   traffic only (10 % of 3x = 30 % of capacity). Escalating one level at a time (`jump:
///   false`) lets each step take effect first.
/// * **Thresholds close together overshoot.** At 3x capacity the right share lies between Heavy
///   (admits 20 % = 0.6x capacity) and Moderate (45 % = 1.35x): the ladder settles at Heavy and,
///   once per dwell, probes Moderate, where the queue grows by ~18 requests per sample. The
///   backlog of that probe drains at Heavy at about the rate it grew, so with Emergency only
///   0.05 above Heavy the residue of a probe often read as "Heavy is not enough". Here the first
///   three levels sit low (the queue is 4, 7 and 11 requests deep beyond the busy permits) and
///   Emergency at a full scale of 48 in the system, which only a queue that keeps growing at
///   Heavy reaches. `escalate_cooldown` (200 ms) gives a step two samples to act.
///
/// The exits sit below the enters for hysteresis; `recover_after` 3 and the dwell make recovery
/// stepwise, one level per dwell.
fn ladder_config(dwell: Duration) -> LadderConfig {
    LadderConfig {
        thresholds: Thresholds {
            light: Band {
                enter: 0.25,
                exit: 0.18,
            },
            moderate: Band {
                enter: 0.32,
                exit: 0.25,
            },
            heavy: Band {
                enter: 0.40,
                exit: 0.32,
            },
            emergency: Band {
                enter: 1.00,
                exit: 0.80,
            },
        },
        escalate_after: 2,
        recover_after: 3,
        dwell,
        escalate_cooldown: Duration::from_millis(200),
        jump: false,
        // Shedding empties the queue at once, so a step down under sustained overload is
        // undone within a fraction of a second; the recovery backoff stretches the next dwell
        // (2x per premature step). Capped at 2x here so the short recovery phase of `--quick`
        // still sees the way back to Normal.
        max_dwell: Some(dwell * 2),
        ..Default::default()
    }
}

/// The backend: a fixed number of permits, and a count of the requests in it (waiting for a
/// permit or holding one), which is the queue signal.
#[derive(Debug)]
struct Backend {
    permits: Semaphore,
    in_system: AtomicUsize,
}

impl Backend {
    /// Queue pressure in `[0, 1]`: requests in the system over `QUEUE_SCALE × PERMITS`.
    fn pressure(&self) -> f64 {
        let in_system = self.in_system.load(Ordering::Relaxed);
        (in_system as f64 / (QUEUE_SCALE * PERMITS) as f64).clamp(0.0, 1.0)
    }
}

/// Counts a request in the backend for as long as its handler future lives, including when
/// the client gives up and hyper drops the future mid-wait.
struct InSystem<'a>(&'a AtomicUsize);

impl<'a> InSystem<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InSystem<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn work(State(backend): State<Arc<Backend>>) -> (StatusCode, &'static str) {
    let _counted = InSystem::enter(&backend.in_system);
    // Waiting here is the backend's queue: over capacity, latency rises with it.
    let Ok(_permit) = backend.permits.acquire().await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "backend closed");
    };
    // This sleep models the backend's work (CPU, a database call) while it holds one of its
    // few permits; it is not used as a clock.
    tokio::time::sleep(SERVICE_TIME).await;
    (StatusCode::OK, "ok")
}

/// One reading of the signal, for the timeline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) t: Duration,
    pub(crate) pressure: f64,
}

/// Runs the demo; see the module documentation.
pub(crate) fn run(args: &[String]) -> Result {
    let Some(options) = Options::parse(args)? else {
        return Ok(());
    };
    // The demo's own runtime: xtask's other commands stay synchronous and dependency-light.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the tokio runtime: {err}"))?;
    runtime.block_on(demo(options))
}

async fn demo(options: Options) -> Result {
    let scenario = Scenario::new(options.total_secs);
    // A short run needs the short dwell to step all the way down within its recovery phase.
    let dwell = if options.quick || options.total_secs < 40 {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(2)
    };
    let ladder = ladder_config(dwell);
    let controller =
        Controller::new(ladder.clone()).map_err(|err| format!("ladder config: {err}"))?;
    let handle = controller.handle();
    let layer = DegradeLayer::builder(handle.clone())
        .policy(Policy::default())
        .prioritize(
            HeaderPriority::new(PRIORITY_HEADER, Priority::Normal)
                .map_err(|err| format!("priority header: {err}"))?,
        )
        .retry_after(Duration::from_secs(1))
        .build()
        .map_err(|err| format!("degrade layer: {err}"))?
        .http();

    // --- the service ------------------------------------------------------------------------
    let backend = Arc::new(Backend {
        permits: Semaphore::new(PERMITS),
        in_system: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/work", get(work))
        .with_state(Arc::clone(&backend))
        .layer(layer.clone());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|err| format!("cannot bind 127.0.0.1:0: {err}"))?;
    let addr = listener
        .local_addr()
        .map_err(|err| format!("no local address: {err}"))?;
    // TCP_NODELAY on the server side too, for the same reason as on the client.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = server_stopped.await;
            })
            .await
    });

    print_header(&scenario, &ladder, addr);

    // --- the signal -------------------------------------------------------------------------
    let recorder = load::Recorder::new();
    let start = recorder.start();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(
        controller.clone(),
        Arc::clone(&backend),
        start,
        Arc::clone(&samples),
        Arc::clone(&stop_sampling),
    ));

    // --- the load ---------------------------------------------------------------------------
    let config = load::LoadConfig {
        uri: format!("http://{addr}/work")
            .parse()
            .map_err(|err| format!("bad uri: {err}"))?,
        duration: Duration::from_secs(scenario.total()),
        rate: move |t| scenario.rate_at(t),
        mix: mix(),
        priority_header: HeaderName::from_static(PRIORITY_HEADER),
        seed: SEED,
        timeout: CLIENT_TIMEOUT,
        max_outstanding: MAX_OUTSTANDING,
    };
    let generator = tokio::spawn(load::run(config, Arc::clone(&recorder)));

    // --- the live view: one line per second, for the second that just ended ------------------
    for second in 0..scenario.total() {
        tokio::time::sleep_until(start + Duration::from_secs(second + 1)).await;
        let line = live_line(
            &scenario,
            second,
            &recorder.second(second as usize),
            &controller,
        );
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }

    // Every request sent has an outcome once the generator returns (answer or timeout).
    generator
        .await
        .map_err(|err| format!("load generator failed: {err}"))?;
    stop_sampling.store(true, Ordering::Relaxed);
    sampler
        .await
        .map_err(|err| format!("sampler failed: {err}"))?;
    let snapshot = layer.snapshot();

    // --- shut down: the client is gone with the generator, so the server's connections close --
    let _ = stop_server.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => return Err(format!("server failed: {err}")),
        Ok(Err(err)) => return Err(format!("server task failed: {err}")),
        Err(_) => return Err("server did not shut down within 5 s".to_owned()),
    }

    let samples = samples
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let summary = report::Summary::new(
        &scenario,
        &ladder,
        &recorder.seconds(),
        &samples,
        &handle.history(),
        start,
        &snapshot,
    );
    summary.print();
    let path = summary.write(&options.out)?;
    println!("\nwrote {}", path.display());
    if summary.accounting.ok {
        Ok(())
    } else {
        Err("accounting MISMATCH (see above)".to_owned())
    }
}

fn print_header(scenario: &Scenario, ladder: &LadderConfig, addr: std::net::SocketAddr) {
    println!("degrade demo: GET http://{addr}/work behind DegradeLayer (http mode)");
    println!(
        "backend: {PERMITS} permits x {} ms service time = capacity {:.0} req/s; \
         signal: queue pressure = in-system / {} sampled every {} ms",
        SERVICE_TIME.as_millis(),
        scenario.capacity,
        QUEUE_SCALE * PERMITS,
        SAMPLE_EVERY.as_millis(),
    );
    let t = &ladder.thresholds;
    println!(
        "ladder: enter light {:.2} moderate {:.2} heavy {:.2} emergency {:.2}; escalate_after {} \
         (jump {}, cooldown {:?}), recover_after {}, dwell {:?}",
        t.light.enter,
        t.moderate.enter,
        t.heavy.enter,
        t.emergency.enter,
        ladder.escalate_after,
        ladder.jump,
        ladder.escalate_cooldown,
        ladder.recover_after,
        ladder.dwell,
    );
    println!(
        "mix: critical 10% high 20% normal 30% low 25% background 15% (header {PRIORITY_HEADER})"
    );
    let phases = scenario
        .phases
        .iter()
        .map(|p| {
            let rate = |x: f64| format!("{:.0}", x * scenario.capacity);
            if p.from == p.to {
                format!("{} {}-{}s @ {}/s", p.name, p.start, p.end, rate(p.from))
            } else {
                let (from, to) = (rate(p.from), rate(p.to));
                format!("{} {}-{}s {from}->{to}/s", p.name, p.start, p.end)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    println!("phases: {phases}\n");
}

/// Samples the queue every `SAMPLE_EVERY`, feeds the controller and prints each transition.
async fn sample(
    controller: Controller,
    backend: Arc<Backend>,
    start: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
) {
    let mut interval = tokio::time::interval(SAMPLE_EVERY);
    // After a stall, sample at the normal pace rather than in a burst of stale readings.
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        interval.tick().await;
        let pressure = backend.pressure();
        let t = start.elapsed();
        samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Sample { t, pressure });
        if let Some(transition) = controller.observe(&[Reading::new("queue", pressure)]) {
            let relation = match transition.cause {
                Cause::Recovered => "<",
                Cause::Escalated | Cause::Pinned => ">=",
            };
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(
                stdout,
                "  >> t={:.1}s level {} -> {} ({}: {} {:.2} {relation} {:.2}, after {:.1}s at {})",
                t.as_secs_f64(),
                transition.from,
                transition.to,
                transition.cause,
                transition.signal.as_deref().unwrap_or("-"),
                transition.value.unwrap_or(f64::NAN),
                transition.threshold.unwrap_or(f64::NAN),
                transition.time_at_previous.as_secs_f64(),
                transition.from,
            );
            let _ = stdout.flush();
        }
    }
}

fn live_line(
    scenario: &Scenario,
    second: u64,
    s: &load::Second,
    controller: &Controller,
) -> String {
    let short = |p: Priority| match p {
        Priority::Critical => "crit",
        Priority::High => "high",
        Priority::Normal => "norm",
        Priority::Low => "low",
        Priority::Background => "bg",
    };
    let by_priority = Priority::ALL
        .iter()
        .rev()
        .map(|&p| {
            let t = s.tally[p.index()];
            format!("{} {:>4}/{:<4}", short(p), t.ok, t.shed)
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut latencies: Vec<u32> = s.latency_us.iter().flatten().copied().collect();
    let p50 = report::ms(load::quantile(&mut latencies, 0.50));
    let p99 = report::ms(load::quantile(&mut latencies, 0.99));
    let total = s.total();
    let mut extra = String::new();
    if total.errors + total.dropped > 0 {
        extra = format!(" err {} drop {}", total.errors, total.dropped);
    }
    if total.pending() > 0 {
        extra.push_str(&format!(" (pending {})", total.pending()));
    }
    if s.max_send_lag_us > report::LATE_US {
        extra.push_str(&format!(
            " GENERATOR LATE {}",
            report::ms(Some(s.max_send_lag_us))
        ));
    }
    format!(
        "t={:>3}s phase={:<8} rate={:>4}/s level={:<9} | {by_priority} (admitted/shed) | p50 {p50} p99 {p99}{extra}",
        second + 1,
        scenario.phase_at(second).name,
        total.offered,
        controller.level().as_str(),
    )
}
