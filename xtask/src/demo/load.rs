//! An open-loop HTTP load generator: Poisson arrivals at a rate that may change over time, a
//! priority and a client drawn per request, outcomes recorded per second and per priority.
//!
//! Open loop means an arrival never waits for an earlier response: the offered rate is what the
//! schedule says, however slow the server gets. A closed-loop generator (N workers, each sending
//! its next request when the previous one returns) slows down with the server and hides exactly
//! the overload we want to show (coordinated omission).
//!
//! `cargo xtask demo` and `cargo xtask bench overload` both drive their servers with [`run`],
//! each with its own rate schedule, so nothing here knows about phases.

use degrade_core::Priority;
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The header a degrade rejection carries (`degrade_core::rejection::http::REJECTION_HEADER`):
/// `shed` from the DegradeLayer, `circuit_open` from the breaker, a rate limit cause otherwise.
const REJECTION_HEADER: &str = "degrade-rejection";

/// A small seeded PRNG (splitmix64). Good enough for inter-arrival times and priority draws, and
/// it keeps a run reproducible without a `rand` dependency.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponential variate with mean `1 / rate`: the gap between two Poisson arrivals.
    pub(crate) fn exponential(&mut self, rate: f64) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        -(1.0 - self.next_f64()).ln() / rate
    }
}

/// The share of each priority in the offered load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mix {
    /// Weights by `Priority::index()`, normalised to sum to 1.
    shares: [f64; 5],
}

impl Mix {
    /// Weights in any unit (they are normalised); fails unless they are finite, non-negative
    /// and not all zero.
    pub(crate) fn new(weights: [(Priority, f64); 5]) -> Result<Self, String> {
        let mut shares = [0.0; 5];
        for (priority, weight) in weights {
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(format!(
                    "mix weight of {priority} must be >= 0, got {weight}"
                ));
            }
            shares[priority.index()] += weight;
        }
        let total: f64 = shares.iter().sum();
        if total <= 0.0 {
            return Err("mix weights are all zero".to_owned());
        }
        shares.iter_mut().for_each(|share| *share /= total);
        Ok(Self { shares })
    }

    /// The share of `priority`, in `[0, 1]`.
    pub(crate) fn share(&self, priority: Priority) -> f64 {
        self.shares[priority.index()]
    }

    /// The priority for a uniform draw `u` in `[0, 1)`.
    fn pick(&self, u: f64) -> Priority {
        let mut acc = 0.0;
        for priority in Priority::ALL {
            acc += self.shares[priority.index()];
            if u < acc {
                return priority;
            }
        }
        // Rounding left `acc` a hair below 1: the last priority with any weight.
        *Priority::ALL
            .iter()
            .rev()
            .find(|p| self.shares[p.index()] > 0.0)
            .unwrap_or(&Priority::Normal)
    }
}

/// What to send, how fast and for how long.
#[derive(Debug, Clone)]
pub(crate) struct LoadConfig<R> {
    /// Every request is `GET uri`.
    pub(crate) uri: Uri,
    /// Arrivals stop after this long (measured from [`Recorder::new`]).
    pub(crate) duration: Duration,
    /// Offered rate in requests per second at an elapsed time.
    pub(crate) rate: R,
    pub(crate) mix: Mix,
    /// The request header carrying the priority name.
    pub(crate) priority_header: HeaderName,
    /// The request header carrying the client's name.
    pub(crate) client_header: HeaderName,
    /// The client sending a request of this priority, given a uniform random number.
    pub(crate) client_of: fn(Priority, u64) -> &'static str,
    pub(crate) seed: u64,
    /// Per request, from send to the last body byte; past it the request counts as an error.
    pub(crate) timeout: Duration,
    /// Arrivals beyond this many requests in flight are counted as dropped, not sent, so a dead
    /// server cannot make the generator exhaust memory or file descriptors.
    pub(crate) max_outstanding: u64,
    /// Idle keep-alive connections the client's pool keeps at most (`usize::MAX`: hyper's
    /// default, no limit). Beyond it a connection is closed when its request is done, so a burst
    /// of requests in flight does not leave as many idle connections (each a task on both
    /// sides, and buffers) open for as long as traffic keeps them warm.
    pub(crate) max_idle_connections: usize,
}

/// Counts for one priority (in one second, or summed over a span).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Tally {
    /// Arrivals, sent or not.
    pub(crate) offered: u64,
    /// 200 responses.
    pub(crate) ok: u64,
    /// 503 `degrade-rejection: shed`: refused by the DegradeLayer at the current level.
    pub(crate) shed: u64,
    /// 429: refused by the rate limit.
    pub(crate) rate_limited: u64,
    /// 503 `degrade-rejection: circuit_open`: refused by the open breaker.
    pub(crate) circuit_open: u64,
    /// 503 without a degrade header: tower's LoadShed in the comparison run.
    pub(crate) overloaded: u64,
    /// Any other status (the backend's 500s).
    pub(crate) errors: u64,
    /// No answer: connection errors and client timeouts.
    pub(crate) timeouts: u64,
    /// Not sent: too many requests were already in flight.
    pub(crate) dropped: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, other: &Tally) {
        self.offered += other.offered;
        self.ok += other.ok;
        self.shed += other.shed;
        self.rate_limited += other.rate_limited;
        self.circuit_open += other.circuit_open;
        self.overloaded += other.overloaded;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.dropped += other.dropped;
    }

    /// Refused by a protection, whichever.
    pub(crate) fn rejected(&self) -> u64 {
        self.shed + self.rate_limited + self.circuit_open + self.overloaded
    }

    /// Arrivals with an outcome.
    pub(crate) fn settled(&self) -> u64 {
        self.ok + self.rejected() + self.errors + self.timeouts + self.dropped
    }

    /// Arrivals that have not been answered (yet).
    pub(crate) fn pending(&self) -> u64 {
        self.offered - self.settled()
    }

    /// Share of the offered requests answered 200, in percent (`None` when nothing was offered).
    pub(crate) fn success_percent(&self) -> Option<f64> {
        (self.offered > 0).then(|| 100.0 * self.ok as f64 / self.offered as f64)
    }
}

/// Everything about the requests *sent* in one second of the run (outcomes are filed under the
/// second of the send, so a second's figures add up once its requests have returned).
#[derive(Debug, Clone, Default)]
pub(crate) struct Second {
    /// By `Priority::index()`.
    pub(crate) tally: [Tally; 5],
    /// Latency of each 200 response in microseconds, by `Priority::index()`. A plain vector:
    /// this is a demo and a benchmark driver, not the library's hot path.
    pub(crate) latency_us: [Vec<u32>; 5],
    /// The latest the generator sent an arrival of this second, in microseconds after its
    /// scheduled time. More than a few milliseconds means the process did not get the CPU to
    /// keep the schedule: arrivals then leave in bursts and the run says more about the
    /// machine than about the server.
    pub(crate) max_send_lag_us: u32,
    /// Answers served by the candidate version (`v2` in the body): successes, errors.
    pub(crate) v2: [u64; 2],
    /// 200 responses that *completed* in this second, whenever they were sent: the goodput.
    pub(crate) completed_ok: u64,
}

impl Second {
    pub(crate) fn total(&self) -> Tally {
        let mut total = Tally::default();
        self.tally.iter().for_each(|t| total.add(t));
        total
    }

    pub(crate) fn add(&mut self, other: &Second) {
        for i in 0..5 {
            self.tally[i].add(&other.tally[i]);
            self.latency_us[i].extend_from_slice(&other.latency_us[i]);
        }
        self.max_send_lag_us = self.max_send_lag_us.max(other.max_send_lag_us);
        self.v2[0] += other.v2[0];
        self.v2[1] += other.v2[1];
        self.completed_ok += other.completed_ok;
    }
}

/// One answered request, for measures finer than a second (reaction and recovery times).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer {
    /// When it was scheduled, in milliseconds since the start.
    pub(crate) sent_ms: u32,
    /// Answered 200.
    pub(crate) ok: bool,
    /// Send to last byte, for 200 answers.
    pub(crate) latency_us: u32,
}

/// Where the generator files outcomes; readable while the run goes on (for a live view).
///
/// [`Recorder::new`] keeps everything for the report: every second and every answer. A soak
/// runs for many minutes and measures the process's memory, so [`Recorder::bounded`] keeps no
/// answers, and its owner takes each second away once it is complete ([`Recorder::take_before`]):
/// the recorder's memory then stays flat and cannot pass for a leak of the stack under test.
#[derive(Debug)]
pub(crate) struct Recorder {
    start: Instant,
    seconds: Mutex<Seconds>,
    /// `None`: answers are not kept.
    answers: Option<Mutex<Vec<Answer>>>,
    outstanding: AtomicU64,
}

/// The seconds still held: `list[i]` is second `first + i`.
#[derive(Debug, Default)]
struct Seconds {
    first: usize,
    list: VecDeque<Second>,
    /// Outcomes that arrived for a second already taken away (they are not counted anywhere).
    late: u64,
}

impl Recorder {
    /// Time zero of the run is now; keeps every second and every answer.
    pub(crate) fn new() -> Arc<Self> {
        Self::with_answers(true)
    }

    /// Time zero of the run is now; keeps no answers, and seconds only until
    /// [`Recorder::take_before`] takes them.
    pub(crate) fn bounded() -> Arc<Self> {
        Self::with_answers(false)
    }

    fn with_answers(keep: bool) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            seconds: Mutex::new(Seconds::default()),
            answers: keep.then(|| Mutex::new(Vec::new())),
            outstanding: AtomicU64::new(0),
        })
    }

    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    /// Requests sent and not yet answered.
    pub(crate) fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// A copy of second `index` (empty if nothing was sent in it, or if it was taken).
    pub(crate) fn second(&self, index: usize) -> Second {
        let seconds = self.lock();
        index
            .checked_sub(seconds.first)
            .and_then(|i| seconds.list.get(i))
            .cloned()
            .unwrap_or_default()
    }

    /// A copy of every second still held, from the first one held.
    pub(crate) fn seconds(&self) -> Vec<Second> {
        self.lock().list.iter().cloned().collect()
    }

    /// Removes and returns the seconds before `index` not taken yet, oldest first. Outcomes
    /// that arrive later for them are dropped and counted in [`Recorder::late`].
    pub(crate) fn take_before(&self, index: usize) -> Vec<Second> {
        let mut seconds = self.lock();
        let mut taken = Vec::new();
        while seconds.first < index {
            taken.push(seconds.list.pop_front().unwrap_or_default());
            seconds.first += 1;
        }
        taken
    }

    /// Outcomes that arrived after their second had been taken.
    pub(crate) fn late(&self) -> u64 {
        self.lock().late
    }

    /// Every answered request so far (not the timeouts and drops), in completion order; empty
    /// for a [`Recorder::bounded`] recorder.
    pub(crate) fn answers(&self) -> Vec<Answer> {
        self.answers.as_ref().map_or_else(Vec::new, |answers| {
            answers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seconds> {
        // A panicking request task cannot leave the counters half-written: every update is
        // one field at a time, so the data is still good after a poison.
        self.seconds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut Second)) {
        let mut seconds = self.lock();
        let Some(i) = index.checked_sub(seconds.first) else {
            seconds.late += 1;
            return;
        };
        if seconds.list.len() <= i {
            seconds.list.resize_with(i + 1, Second::default);
        }
        f(&mut seconds.list[i]);
    }

    fn record_answer(&self, answer: Answer) {
        if let Some(answers) = &self.answers {
            answers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(answer);
        }
    }
}

/// One request's fate, as the client saw it.
enum Outcome {
    Ok(Duration, bool),
    Shed,
    RateLimited,
    CircuitOpen,
    Overloaded,
    Error(bool),
    Timeout,
}

/// Which protection refused a request, from its status and `degrade-rejection` header; `None`
/// for an answer of the service itself.
fn rejection(status: StatusCode, header: Option<&[u8]>) -> Option<Outcome> {
    match (status, header) {
        (StatusCode::TOO_MANY_REQUESTS, _) => Some(Outcome::RateLimited),
        (StatusCode::SERVICE_UNAVAILABLE, Some(b"shed")) => Some(Outcome::Shed),
        (StatusCode::SERVICE_UNAVAILABLE, Some(b"circuit_open")) => Some(Outcome::CircuitOpen),
        (StatusCode::SERVICE_UNAVAILABLE, Some(_)) => Some(Outcome::RateLimited),
        (StatusCode::SERVICE_UNAVAILABLE, None) => Some(Outcome::Overloaded),
        _ => None,
    }
}

/// Runs the arrivals of `config` and returns once every request sent has been answered or has
/// timed out. Outcomes go to `recorder`, whose start is time zero of the schedule.
pub(crate) async fn run<R>(config: LoadConfig<R>, recorder: Arc<Recorder>)
where
    R: Fn(Duration) -> f64,
{
    let mut connector = HttpConnector::new();
    // Without it, Nagle's algorithm adds up to 40 ms to small requests: latency we would
    // wrongly blame on the server.
    connector.set_nodelay(true);
    // One shared pooled client: a connection per request in flight at most, reused afterwards.
    let client: Client<HttpConnector, Empty<&'static [u8]>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(config.max_idle_connections)
        .build(connector);

    let mut rng = SplitMix64::new(config.seed);
    let mut tasks = JoinSet::new();
    let start = recorder.start();
    // The schedule in seconds since start: each arrival draws the gap to the next one from the
    // rate at its own time (piecewise-constant thinning would be exact, but the rate changes
    // slowly next to the gaps, so this is close enough for a demo and a benchmark).
    let mut next = 0.0_f64;
    let end = config.duration.as_secs_f64();
    loop {
        let now = start.elapsed().as_secs_f64();
        // Every arrival whose time has come is sent now. Timers have millisecond resolution, so
        // at thousands of requests per second several arrivals share one wake-up; they still
        // never wait for a response.
        while next <= now && next < end {
            let at = Duration::from_secs_f64(next);
            let lag_us = ((now - next) * 1e6) as u32;
            let priority = config.mix.pick(rng.next_f64());
            let client_name = (config.client_of)(priority, rng.next_u64());
            send(
                &config,
                &client,
                &recorder,
                &mut tasks,
                Arrival {
                    at,
                    priority,
                    client: client_name,
                    lag_us,
                },
            );
            let rate = (config.rate)(at);
            // A zero rate means a pause: look again a millisecond later.
            next += if rate > 0.0 {
                rng.exponential(rate)
            } else {
                0.001
            };
        }
        if next >= end {
            break;
        }
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep_until(start + Duration::from_secs_f64(next)).await;
    }
    while tasks.join_next().await.is_some() {}
}

/// One scheduled request.
struct Arrival {
    at: Duration,
    priority: Priority,
    client: &'static str,
    lag_us: u32,
}

fn send<R>(
    config: &LoadConfig<R>,
    client: &Client<HttpConnector, Empty<&'static [u8]>>,
    recorder: &Arc<Recorder>,
    tasks: &mut JoinSet<()>,
    arrival: Arrival,
) {
    let Arrival {
        at,
        priority,
        client: client_name,
        lag_us,
    } = arrival;
    let index = at.as_secs() as usize;
    let p = priority.index();
    recorder.update(index, |s| {
        s.tally[p].offered += 1;
        s.max_send_lag_us = s.max_send_lag_us.max(lag_us);
    });
    if recorder.outstanding() >= config.max_outstanding {
        recorder.update(index, |s| s.tally[p].dropped += 1);
        return;
    }
    let request = Request::get(config.uri.clone())
        .header(
            config.priority_header.clone(),
            HeaderValue::from_static(priority.as_str()),
        )
        .header(
            config.client_header.clone(),
            HeaderValue::from_static(client_name),
        )
        .body(Empty::new());
    let request = match request {
        Ok(request) => request,
        Err(_) => {
            recorder.update(index, |s| s.tally[p].timeouts += 1);
            return;
        }
    };
    recorder.outstanding.fetch_add(1, Ordering::Relaxed);
    tasks.spawn(exchange(
        client.clone(),
        Arc::clone(recorder),
        config.timeout,
        request,
        at,
        p,
    ));
}

/// Sends one request and files its outcome under the second of `at`.
async fn exchange(
    client: Client<HttpConnector, Empty<&'static [u8]>>,
    recorder: Arc<Recorder>,
    timeout: Duration,
    request: Request<Empty<&'static [u8]>>,
    at: Duration,
    p: usize,
) {
    let index = at.as_secs() as usize;
    {
        let sent = Instant::now();
        let exchange = async {
            let response = client.request(request).await.map_err(drop)?;
            let status = response.status();
            let refused = rejection(
                status,
                response
                    .headers()
                    .get(REJECTION_HEADER)
                    .map(HeaderValue::as_bytes),
            );
            // Read the whole body: the latency ends at the last byte, and an unread body would
            // keep the connection out of the pool.
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(drop)?
                .to_bytes();
            let v2 = body.starts_with(b"v2");
            Ok::<_, ()>(match (status, refused) {
                (StatusCode::OK, _) => Outcome::Ok(sent.elapsed(), v2),
                (_, Some(refused)) => refused,
                (_, None) => Outcome::Error(v2),
            })
        };
        let outcome = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(())) | Err(_) => Outcome::Timeout,
        };
        let ok = matches!(outcome, Outcome::Ok(..));
        if !matches!(outcome, Outcome::Timeout) {
            let latency_us = match outcome {
                Outcome::Ok(latency, _) => u32::try_from(latency.as_micros()).unwrap_or(u32::MAX),
                _ => 0,
            };
            let answer = Answer {
                sent_ms: u32::try_from(at.as_millis()).unwrap_or(u32::MAX),
                ok,
                latency_us,
            };
            recorder.record_answer(answer);
        }
        recorder.update(index, |s| match outcome {
            Outcome::Ok(latency, v2) => {
                s.tally[p].ok += 1;
                s.v2[0] += u64::from(v2);
                let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
                s.latency_us[p].push(micros);
            }
            Outcome::Shed => s.tally[p].shed += 1,
            Outcome::RateLimited => s.tally[p].rate_limited += 1,
            Outcome::CircuitOpen => s.tally[p].circuit_open += 1,
            Outcome::Overloaded => s.tally[p].overloaded += 1,
            Outcome::Error(v2) => {
                s.tally[p].errors += 1;
                s.v2[1] += u64::from(v2);
            }
            Outcome::Timeout => s.tally[p].timeouts += 1,
        });
        if ok {
            let done = recorder.start.elapsed().as_secs() as usize;
            recorder.update(done, |s| s.completed_ok += 1);
        }
        recorder.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closed-loop load, as wrk makes it: `connections` clients, each sending its next request as
/// soon as it has the answer to the previous one (a refusal included), until `config.duration`.
/// The offered rate is whatever the server's answers allow; `config.rate` is not used.
pub(crate) async fn run_closed<R>(
    config: LoadConfig<R>,
    connections: usize,
    recorder: Arc<Recorder>,
) where
    R: Fn(Duration) -> f64,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<&'static [u8]>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let config = Arc::new(ClosedConfig {
        uri: config.uri,
        duration: config.duration,
        mix: config.mix,
        priority_header: config.priority_header,
        client_header: config.client_header,
        client_of: config.client_of,
        timeout: config.timeout,
    });
    let mut tasks = JoinSet::new();
    for c in 0..connections {
        let (client, recorder, config) =
            (client.clone(), Arc::clone(&recorder), Arc::clone(&config));
        let seed = config_seed(c);
        tasks.spawn(async move {
            let mut rng = SplitMix64::new(seed);
            loop {
                let at = recorder.start().elapsed();
                if at >= config.duration {
                    break;
                }
                let priority = config.mix.pick(rng.next_f64());
                let p = priority.index();
                recorder.update(at.as_secs() as usize, |s| s.tally[p].offered += 1);
                let request = Request::get(config.uri.clone())
                    .header(
                        config.priority_header.clone(),
                        HeaderValue::from_static(priority.as_str()),
                    )
                    .header(
                        config.client_header.clone(),
                        HeaderValue::from_static((config.client_of)(priority, rng.next_u64())),
                    )
                    .body(Empty::new());
                let Ok(request) = request else { break };
                recorder.outstanding.fetch_add(1, Ordering::Relaxed);
                exchange(
                    client.clone(),
                    Arc::clone(&recorder),
                    config.timeout,
                    request,
                    at,
                    p,
                )
                .await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

struct ClosedConfig {
    uri: Uri,
    duration: Duration,
    mix: Mix,
    priority_header: HeaderName,
    client_header: HeaderName,
    client_of: fn(Priority, u64) -> &'static str,
    timeout: Duration,
}

fn config_seed(connection: usize) -> u64 {
    0x5EED_0000_0000_0000 ^ (connection as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The `q`-quantile (nearest rank) of `values`, sorting them; `None` when empty.
pub(crate) fn quantile(values: &mut [u32], q: f64) -> Option<u32> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(values[rank(q, values.len()) - 1])
}

/// The rank (from 1) of the `q` quantile among `n > 0` sorted values, as [`quantile`] takes
/// it: the smallest value with at least `q` of them at or below it.
pub(crate) fn rank(q: f64, n: usize) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_gaps_have_the_right_mean() {
        let mut rng = SplitMix64::new(7);
        let n = 200_000;
        let mean = (0..n).map(|_| rng.exponential(800.0)).sum::<f64>() / n as f64;
        assert!((mean * 800.0 - 1.0).abs() < 0.01, "mean gap {mean}");
    }

    #[test]
    fn the_mix_draws_each_priority_at_its_share() {
        let mix = Mix::new([
            (Priority::Critical, 10.0),
            (Priority::High, 20.0),
            (Priority::Normal, 30.0),
            (Priority::Low, 25.0),
            (Priority::Background, 15.0),
        ])
        .unwrap();
        let mut rng = SplitMix64::new(1);
        let mut counts = [0u32; 5];
        let n = 100_000;
        for _ in 0..n {
            counts[mix.pick(rng.next_f64()).index()] += 1;
        }
        for p in Priority::ALL {
            let share = f64::from(counts[p.index()]) / f64::from(n);
            assert!((share - mix.share(p)).abs() < 0.01, "{p}: {share}");
        }
    }

    #[test]
    fn a_bounded_recorder_forgets_taken_seconds_and_counts_late_outcomes() {
        let recorder = Recorder::bounded();
        recorder.update(0, |s| s.tally[0].offered += 1);
        recorder.update(2, |s| s.tally[0].offered += 3);
        let taken = recorder.take_before(2);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].tally[0].offered, 1);
        assert_eq!(taken[1].tally[0].offered, 0);
        assert_eq!(recorder.second(2).tally[0].offered, 3);
        assert_eq!(recorder.second(0).tally[0].offered, 0);
        recorder.update(1, |s| s.tally[0].ok += 1);
        assert_eq!(recorder.late(), 1);
        assert_eq!(recorder.seconds().len(), 1);
        recorder.record_answer(Answer {
            sent_ms: 0,
            ok: true,
            latency_us: 1,
        });
        assert!(recorder.answers().is_empty());
        assert!(recorder.take_before(1).is_empty());
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(quantile(&mut v, 0.5), Some(50));
        assert_eq!(quantile(&mut v, 0.99), Some(99));
        assert_eq!(quantile(&mut v, 1.0), Some(100));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
