//! `cargo xtask demo`: a real axum service with a fixed capacity behind the full degrade stack
//! (a DegradeLayer driven by degrade-triggers, a keyed rate limit, a breaker, a canary between
//! two backend versions), driven by an open-loop load generator through warm-up, an overload
//! ramp to 3x capacity, a backend outage, a canary of a bad then a good version, and recovery.
//! The overload part of the scenario is then replayed against the same service unprotected and
//! behind tower's `ConcurrencyLimit` + `LoadShed`.
//!
//! It shows a live line per second, prints a per-phase summary and an accounting check, and
//! writes `summary.json`, `report.html` (self-contained, charts drawn with plotters) and
//! `overview.svg` (the comparison chart the README shows).
//!
//! Nothing is simulated except the backend's work: requests travel over real loopback TCP, the
//! DegradeLayer's adaptive limit learns the backend's capacity from the latencies it sees (no
//! threshold of this backend anywhere), the level is moved by the real `Monitor` and
//! `Controller` from the share of requests the limit refuses, the
//! breaker and the canary judge see real responses, and each layer's counters are checked
//! against what the client saw.

pub(crate) mod html;
mod live;
pub(crate) mod load;
mod report;
pub(crate) mod service;

use crate::{Result, workspace_root};
use axum::serve::ListenerExt as _;
use degrade_breaker::State as BreakerState;
use degrade_canary::{CanaryConfig, CanaryController, CanaryPhase, CanaryStep, Judgement, Verdict};
use degrade_core::ladder::{LadderConfig, LevelCause};
use degrade_core::{Level, LevelTransition, Priority};
use degrade_triggers::{AdmissionSignal, Monitor, Smoothing};
use http::HeaderName;
use service::{Backend, Candidate, Parts, Protection};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::{Instant, MissedTickBehavior};

/// How often the control loop samples the queue, ticks the monitor and records the state.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Past this many requests in flight, arrivals are dropped by the client instead of sent. Each
/// request in flight may need its own connection; staying under the listener's accept backlog
/// (1,024 in tokio) keeps a burst from overflowing it, which would turn into SYN retransmits and
/// requests that take 1, 3 or 7 s for reasons that have nothing to do with the server.
pub(crate) const MAX_OUTSTANDING: u64 = 1_000;
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const SEED: u64 = 0x00de_57ad_e5ee_d001;
/// The offered load outside the overload part, in multiples of capacity.
pub(crate) const BASE_LOAD: f64 = 0.6;

/// The offered-load mix, by priority.
pub(crate) fn mix() -> load::Mix {
    load::Mix::new([
        (Priority::Critical, 10.0),
        (Priority::High, 20.0),
        (Priority::Normal, 30.0),
        (Priority::Low, 25.0),
        (Priority::Background, 15.0),
    ])
    .expect("the demo mix is valid")
}

/// Twelve application clients share the interactive traffic (critical, high, normal); one
/// bulk-sync job sends all the low and background traffic (40 % of the load), more than its
/// quota from the start, so the keyed rate limit answers it 429 while the level is Normal, and
/// the ladder sheds its requests first once the backend is overloaded.
pub(crate) fn client_of(priority: Priority, random: u64) -> &'static str {
    const APPS: [&str; 12] = [
        "app-01", "app-02", "app-03", "app-04", "app-05", "app-06", "app-07", "app-08", "app-09",
        "app-10", "app-11", "app-12",
    ];
    match priority {
        Priority::Background | Priority::Low => "bulk-sync",
        _ => APPS[(random % APPS.len() as u64) as usize],
    }
}

const USAGE: &str = "\
Usage: cargo xtask demo [--quick] [--duration SECS] [--out DIR]
  --quick           a 20 s protected run and two 9 s comparison runs (default 90 s and 40 s)
  --duration SECS   length of the protected run; the phases keep their proportions (at least 14)
  --out DIR         where summary.json, report.html and overview.svg go
                    (default <workspace>/target/degrade-demo)";

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
                    if secs < 14 {
                        return Err(format!(
                            "--duration must be at least 14 seconds, got {secs}"
                        ));
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
            total_secs: duration.unwrap_or(if quick { 20 } else { 90 }),
            quick,
            out: out.unwrap_or_else(|| workspace_root().join("target").join("degrade-demo")),
        }))
    }
}

/// What happens to the backend when a phase starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Event {
    None,
    /// The backend's dependency goes down for the whole phase.
    Outage,
    /// A canary rollout of this candidate starts.
    Canary(Candidate),
    /// Every request takes twice as long for the whole phase: capacity halves.
    Slow,
}

/// One part of the scenario: whole seconds `[start, end)`, the offered rate going linearly from
/// `from` to `to` times capacity.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) from: f64,
    pub(crate) to: f64,
    pub(crate) event: Event,
}

/// A list of phases back to back, cut at whole seconds so the per-second figures fall in
/// exactly one phase.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub(crate) phases: Vec<Phase>,
    pub(crate) capacity: f64,
    /// What limits the backend.
    pub(crate) model: service::Model,
    /// Closed-loop clients (connections re-sending at once) instead of the open-loop schedule.
    pub(crate) connections: Option<usize>,
    /// The offered mix (default: the demo's).
    pub(crate) mix: load::Mix,
}

impl Scenario {
    /// The protected run: every phase, `total` seconds long.
    fn full(total: u64) -> Self {
        let parts: [(&'static str, f64, f64, f64, Event); 7] = [
            ("warm-up", 0.12, BASE_LOAD, BASE_LOAD, Event::None),
            ("ramp", 0.10, BASE_LOAD, 3.0, Event::None),
            ("overload", 0.20, 3.0, 3.0, Event::None),
            ("outage", 0.14, BASE_LOAD, BASE_LOAD, Event::Outage),
            (
                "canary-bad",
                0.14,
                BASE_LOAD,
                BASE_LOAD,
                Event::Canary(Candidate::Bad),
            ),
            (
                "canary-good",
                0.20,
                BASE_LOAD,
                BASE_LOAD,
                Event::Canary(Candidate::Good),
            ),
            ("recovery", 0.10, BASE_LOAD, BASE_LOAD, Event::None),
        ];
        let mut phases = Vec::new();
        let mut share = 0.0;
        let mut start = 0;
        for (name, part, from, to, event) in parts {
            share += part;
            let end = ((total as f64 * share).round() as u64).max(start + 1);
            phases.push(Phase {
                name,
                start,
                end,
                from,
                to,
                event,
            });
            start = end;
        }
        Self::new(phases)
    }

    /// A scenario of `phases` on the demo's backend, open loop, the demo's mix.
    pub(crate) fn new(phases: Vec<Phase>) -> Self {
        Self {
            phases,
            capacity: service::capacity(),
            model: service::Model::Slots,
            connections: None,
            mix: mix(),
        }
    }

    /// The comparison runs: the protected run's warm-up, ramp and overload, then `recovery`
    /// seconds at the base load.
    fn overload_part(&self, recovery: u64) -> Self {
        let mut phases: Vec<Phase> = self.phases[..3].to_vec();
        let start = phases[2].end;
        phases.push(Phase {
            name: "recovery",
            start,
            end: start + recovery,
            from: BASE_LOAD,
            to: BASE_LOAD,
            event: Event::None,
        });
        Self {
            phases,
            ..self.clone()
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.phases.last().map_or(0, |p| p.end)
    }

    /// The index of the phase holding second `second` (the last one past the end).
    pub(crate) fn phase_index(&self, second: u64) -> usize {
        self.phases
            .iter()
            .position(|p| second < p.end)
            .unwrap_or(self.phases.len() - 1)
    }

    pub(crate) fn phase_at(&self, second: u64) -> &Phase {
        &self.phases[self.phase_index(second)]
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

/// The ladder: default thresholds (the queue scale maps onto them), one level at a time.
///
/// A queue is not a utilisation: over capacity it grows at (admitted rate − capacity), after
/// shedding it drains. So the ladder climbs one level at a time (`jump: false`) and lets each
/// step act for two samples (`escalate_cooldown`) before the next; a jump straight to Emergency
/// would admit critical traffic only. Recovery is stepwise, one level per dwell, and a step
/// down undone within its dwell doubles the next dwell (capped at 2x so the short `--quick` run
/// still sees the way back to Normal).
pub(crate) fn ladder_config(dwell: Duration) -> LadderConfig {
    LadderConfig {
        escalate_after: 2,
        recover_after: 4,
        dwell,
        escalate_cooldown: SAMPLE_EVERY * 2,
        jump: false,
        max_dwell: Some(dwell * 2),
        ..Default::default()
    }
}

/// The canary rollout: fewer samples and shorter bakes than the defaults (2 000 per arm, 2 min
/// per step), so a release is decided within a phase of the demo.
pub(crate) fn rollout_config(quick: bool) -> CanaryConfig {
    let mut config = CanaryConfig::default();
    let bake = Duration::from_millis(if quick { 500 } else { 2_000 });
    let weights: &[f64] = if quick {
        &[25.0, 50.0, 100.0]
    } else {
        &[10.0, 25.0, 50.0, 100.0]
    };
    config.steps = weights.iter().map(|&w| CanaryStep::new(w, bake)).collect();
    config.analysis_interval = Duration::from_millis(250);
    config.inconclusive_limit = 1_000;
    config.judge.min_samples = if quick { 40 } else { 150 };
    config
}

/// One reading of the control loop.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct ControlSample {
    pub(crate) t: f64,
    pub(crate) in_system: usize,
    /// The DegradeLayer's adaptive limit (protected run only).
    pub(crate) limit: Option<u32>,
    pub(crate) pressure: Option<f64>,
    pub(crate) level: Level,
    pub(crate) breaker: Option<BreakerState>,
    pub(crate) canary_percent: Option<f64>,
}

/// A canary decision, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct CanaryEvent {
    pub(crate) t: f64,
    pub(crate) candidate: Candidate,
    pub(crate) verdict: String,
    pub(crate) reason: &'static str,
    pub(crate) weight_percent: f64,
    pub(crate) outcome: Option<&'static str>,
    pub(crate) samples: (u64, u64),
}

/// A breaker transition, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BreakerEvent {
    pub(crate) t: f64,
    pub(crate) from: BreakerState,
    pub(crate) to: BreakerState,
}

/// Everything one run leaves behind.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) protection: Protection,
    pub(crate) scenario: Scenario,
    pub(crate) seconds: Vec<load::Second>,
    pub(crate) answers: Vec<load::Answer>,
    pub(crate) control: Vec<ControlSample>,
    pub(crate) transitions: Vec<LevelTransition>,
    pub(crate) canary: Vec<CanaryEvent>,
    pub(crate) breaker: Vec<BreakerEvent>,
    pub(crate) start: Instant,
    pub(crate) backend_calls: u64,
    pub(crate) parts: Option<Parts>,
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
    let scenario = Scenario::full(options.total_secs);
    let comparison = scenario.overload_part(if options.quick { 1 } else { 4 });
    // A short run needs the short dwell to step all the way down within its later phases.
    let dwell = if options.quick || options.total_secs < 40 {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(2)
    };
    let ladder = ladder_config(dwell);
    let rollout = rollout_config(options.quick || options.total_secs < 40);
    live::header(&scenario, &comparison, &ladder);

    let mut runs = Vec::new();
    for (protection, scenario) in [
        (Protection::Degrade, &scenario),
        (Protection::Unprotected, &comparison),
        (Protection::Tower, &comparison),
    ] {
        runs.push(run_one(protection, scenario, &ladder, &rollout).await?);
    }

    let summary = report::Summary::new(&runs, &ladder, &rollout);
    summary.print();
    let paths = summary.write(&options.out)?;
    let html = html::write(&options.out, &summary, &runs)?;
    println!();
    for path in paths.iter().chain(&html) {
        println!("wrote {}", path.display());
    }
    if summary.accounting_ok() {
        Ok(())
    } else {
        Err("accounting MISMATCH (see above)".to_owned())
    }
}

/// One run of `scenario` against the backend behind `protection`.
pub(crate) async fn run_one(
    protection: Protection,
    scenario: &Scenario,
    ladder: &LadderConfig,
    rollout: &CanaryConfig,
) -> Result<Run> {
    let backend = Backend::with_model(scenario.model);
    let (app, parts) = service::app(protection, &backend, ladder)?;
    let server = Server::start(app).await?;
    let addr = server.addr;
    live::run_header(protection, scenario, addr);

    let recorder = load::Recorder::new();
    let start = recorder.start();
    let stop_control = Arc::new(AtomicBool::new(false));
    let control = tokio::spawn(control_loop(ControlLoop {
        parts: parts.clone(),
        backend: Arc::clone(&backend),
        scenario: scenario.clone(),
        rollout: rollout.clone(),
        start,
        stop: Arc::clone(&stop_control),
        state: Arc::clone(&live::STATE),
    }));

    let rate_scenario = scenario.clone();
    let config = load::LoadConfig {
        uri: format!("http://{addr}/work")
            .parse()
            .map_err(|err| format!("bad uri: {err}"))?,
        duration: Duration::from_secs(scenario.total()),
        rate: move |t| rate_scenario.rate_at(t),
        mix: scenario.mix,
        priority_header: HeaderName::from_static(service::PRIORITY_HEADER),
        client_header: HeaderName::from_static(service::CLIENT_HEADER),
        client_of,
        seed: SEED,
        timeout: CLIENT_TIMEOUT,
        max_outstanding: MAX_OUTSTANDING,
        max_idle_connections: usize::MAX,
    };
    let generator = match scenario.connections {
        Some(n) => tokio::spawn(load::run_closed(config, n, Arc::clone(&recorder))),
        None => tokio::spawn(load::run(config, Arc::clone(&recorder))),
    };
    live::follow(scenario, &recorder, start).await;

    // Every request sent has an outcome once the generator returns (answer or timeout).
    generator
        .await
        .map_err(|err| format!("load generator failed: {err}"))?;
    stop_control.store(true, Ordering::Relaxed);
    let (control, canary, breaker) = control
        .await
        .map_err(|err| format!("control loop failed: {err}"))?;

    server.stop().await?;
    let transitions = parts
        .as_ref()
        .map(|p| p.controller.handle().history())
        .unwrap_or_default();
    Ok(Run {
        protection,
        scenario: scenario.clone(),
        seconds: recorder.seconds(),
        answers: recorder.answers(),
        control,
        transitions,
        canary,
        breaker,
        start,
        backend_calls: backend.calls.load(Ordering::Relaxed),
        parts,
    })
}

/// A server for an app on `127.0.0.1:0` (or a listener of the caller's), until [`Server::stop`].
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub(crate) async fn start(app: axum::Router) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|err| format!("cannot bind 127.0.0.1:0: {err}"))?;
        Self::serve(listener, app)
    }

    /// Serves `app` on a bound `listener` (inside the runtime), until [`Server::stop`].
    pub(crate) fn serve(listener: TcpListener, app: axum::Router) -> Result<Self> {
        let addr = listener
            .local_addr()
            .map_err(|err| format!("no local address: {err}"))?;
        // TCP_NODELAY on the server side too, for the same reason as on the client.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self { addr, stop, task })
    }

    /// Graceful shutdown: open connections finish their requests (10 s at most).
    pub(crate) async fn stop(self) -> Result {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(err))) => Err(format!("server failed: {err}")),
            Ok(Err(err)) => Err(format!("server task failed: {err}")),
            Err(_) => Err("server did not shut down within 10 s".to_owned()),
        }
    }
}

/// The degrade-triggers `Monitor` that moves the level: the share of requests the adaptive
/// limit refuses (`AdmissionSignal`), sampled every `SAMPLE_EVERY` without smoothing. No
/// threshold of this backend's in it: the limit does the admission, the level the rest
/// (sampling, batching).
pub(crate) fn admission_monitor(parts: &Parts) -> Monitor {
    Monitor::new(parts.controller.clone())
        .interval(SAMPLE_EVERY)
        .smoothing(Smoothing::none())
        .signal(AdmissionSignal::new(&parts.degrade))
}

struct ControlLoop {
    parts: Option<Parts>,
    backend: Arc<Backend>,
    scenario: Scenario,
    rollout: CanaryConfig,
    start: Instant,
    stop: Arc<AtomicBool>,
    state: Arc<live::Shared>,
}

/// Every `SAMPLE_EVERY`: applies the phase's event, ticks the monitor (which feeds the ladder),
/// ticks the canary controller on its analysis interval, and records the state.
async fn control_loop(
    cl: ControlLoop,
) -> (Vec<ControlSample>, Vec<CanaryEvent>, Vec<BreakerEvent>) {
    let ControlLoop {
        parts,
        backend,
        scenario,
        rollout,
        start,
        stop,
        state,
    } = cl;
    let mut samples = Vec::new();
    let mut canary_events = Vec::new();
    let mut breaker_events = Vec::new();
    let mut monitor = parts.as_ref().map(admission_monitor);
    // Every breaker transition, not only those a 50 ms sample happens to see: a failed probe
    // reopens the breaker within microseconds.
    let mut breaker_transitions = parts.as_ref().map(|p| p.breaker.subscribe());
    let mut canary: Option<(Candidate, CanaryController)> = None;
    let mut last_analysis = start;
    let mut phase_index = usize::MAX;
    let mut interval = tokio::time::interval(SAMPLE_EVERY);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        interval.tick().await;
        let now = Instant::now();
        let t = now.saturating_duration_since(start);
        let index = scenario.phase_index(t.as_secs());
        if index != phase_index && t.as_secs() < scenario.total() {
            phase_index = index;
            let phase = scenario.phases[index];
            backend.set_outage(phase.event == Event::Outage);
            backend.set_slowdown(if phase.event == Event::Slow { 2.0 } else { 1.0 });
            if let (Event::Canary(candidate), Some(p)) = (phase.event, &parts) {
                backend.deploy(candidate);
                match CanaryController::builder(rollout.clone(), p.canary.clone()).build() {
                    Ok(controller) => canary = Some((candidate, controller)),
                    Err(err) => live::note(&format!("cannot start the canary rollout: {err}")),
                }
                last_analysis = now;
                canary_events.push(CanaryEvent {
                    t: t.as_secs_f64(),
                    candidate,
                    verdict: "started".to_owned(),
                    reason: "rollout started",
                    weight_percent: f64::from(p.canary.weight().get()) / 100.0,
                    outcome: None,
                    samples: (0, 0),
                });
            }
        }
        let mut pressure = None;
        if let Some(monitor) = monitor.as_mut() {
            if let Some(transition) = monitor.tick() {
                live::transition(&transition, t);
            }
            pressure = monitor.snapshot().signals.first().and_then(|s| s.pressure);
        }
        if let Some((candidate, controller)) = canary.as_mut()
            && now.saturating_duration_since(last_analysis) >= rollout.analysis_interval
        {
            last_analysis = now;
            let before = controller.state();
            match controller.tick().await {
                Ok(judgement) => {
                    let after = controller.state();
                    if after != before || judgement.verdict == Verdict::Fail {
                        let event =
                            canary_event(t, *candidate, &judgement, after.phase, after.weight_bp);
                        live::note(&format!(
                            "t={:.1}s canary {:?}: {} ({}) -> weight {:.0}%{}",
                            event.t,
                            candidate,
                            event.verdict,
                            event.reason,
                            event.weight_percent,
                            event.outcome.map(|o| format!(", {o}")).unwrap_or_default()
                        ));
                        canary_events.push(event);
                    }
                    if after.phase.is_terminal() {
                        canary = None;
                    }
                }
                Err(err) => live::note(&format!("canary controller failed: {err}")),
            }
        }
        let level = parts
            .as_ref()
            .map_or(Level::Normal, |p| p.controller.level());
        let breaker = parts.as_ref().map(|p| p.breaker.state());
        while let Some(Ok(tr)) = breaker_transitions.as_mut().map(|rx| rx.try_recv()) {
            let at = tr.at.saturating_duration_since(start).as_secs_f64();
            live::note(&format!(
                "t={at:.1}s breaker {:?} -> {:?} ({:?}{})",
                tr.from,
                tr.to,
                tr.reason,
                tr.wait
                    .map(|w| format!(", next probe in {w:?}"))
                    .unwrap_or_default()
            ));
            breaker_events.push(BreakerEvent {
                t: at,
                from: tr.from,
                to: tr.to,
            });
        }
        let canary_percent = parts
            .as_ref()
            .map(|p| f64::from(p.canary.weight().get()) / 100.0);
        let sample = ControlSample {
            t: t.as_secs_f64(),
            in_system: backend.in_system(),
            limit: parts
                .as_ref()
                .and_then(|p| p.degrade_snapshot().limit.map(|l| l.limit)),
            pressure,
            level,
            breaker,
            canary_percent,
        };
        state.set(&sample);
        samples.push(sample);
    }
    (samples, canary_events, breaker_events)
}

fn canary_event(
    t: Duration,
    candidate: Candidate,
    judgement: &Judgement,
    phase: CanaryPhase,
    weight_bp: u32,
) -> CanaryEvent {
    CanaryEvent {
        t: t.as_secs_f64(),
        candidate,
        verdict: judgement.verdict.to_string(),
        reason: judgement.reason,
        weight_percent: f64::from(weight_bp) / 100.0,
        outcome: match phase {
            CanaryPhase::Promoted => Some("promoted"),
            CanaryPhase::RolledBack => Some("rolled back"),
            _ => None,
        },
        samples: judgement.samples,
    }
}

/// Milliseconds (two decimals) from microseconds.
pub(crate) fn report_ms(micros: Option<u32>) -> Option<f64> {
    report::ms_value(micros)
}

/// What `LevelCause` reads as in a transition line.
pub(crate) fn relation(cause: LevelCause) -> &'static str {
    match cause {
        LevelCause::Recovered => "<",
        LevelCause::Escalated | LevelCause::Pinned => ">=",
    }
}
