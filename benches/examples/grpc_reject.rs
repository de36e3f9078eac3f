//! The cost of a gRPC rejection's `tonic::Status` with a `google.rpc.RetryInfo` detail, timed
//! as the minimum over repetitions (see `min_of_reps.rs` for why the minimum):
//!
//! * `tonic-types`: [`degrade_core::rejection::grpc::status`] as it is now, the detail built from
//!   tonic-types' generated `google.rpc` messages (`pb::Status`, `pb::RetryInfo`) encoded by
//!   prost into one buffer, the message moved in and out rather than copied (the bytes of
//!   `StatusExt::with_error_details`, which copies the message and fills a ten-detail vector);
//! * `hand-written`: the same status built by the hand-written protobuf encoder it replaced
//!   (issue 19), pasted below from degrade-core at commit `3b2d8a5^` as the "before" reference;
//! * `no-detail`: the same status without a detail (`retry_after` unknown), the floor of both.
//!
//! The members take turns for three rounds. Both full members build everything the reject path builds: the message, the details, the
//! `degrade-rejection` metadata and the `Rejected` source. Run:
//!
//! ```text
//! cargo run --release -p degrade-benches --example grpc_reject
//! ```

use degrade_benches::min_ns_per_call;
use degrade_core::rejection::{Rejected, Rejection, grpc};
use degrade_core::{Level, Priority, Shed};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const CALLS: u32 = 100_000;
const REPETITIONS: u32 = 40;
const ROUNDS: u32 = 3;

/// The fastest repetition's time per call, in nanoseconds.
fn min_ns(mut f: impl FnMut() -> tonic::Status) -> f64 {
    min_ns_per_call(CALLS, REPETITIONS, || {
        black_box(f());
    })
}

// ---- BEFORE (reference only): degrade-core's hand-written encoder, as of 3b2d8a5^ ----------

/// The largest `google.protobuf.Duration` (10 000 years).
const PROTO_MAX_SECS: u64 = 315_576_000_000;
const RETRY_INFO_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

fn before_status(rejection: &dyn Rejection) -> tonic::Status {
    let code = tonic::Code::from_i32(rejection.kind().grpc_code());
    let message = rejection.to_string();
    let mut status = match rejection.retry_after() {
        Some(delay) => {
            let details = encode_status_with_retry_info(code as i32, &message, delay);
            tonic::Status::with_details(code, message, details.into())
        }
        None => tonic::Status::new(code, message),
    };
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(rejection.reason()) {
        status.metadata_mut().insert("degrade-rejection", v);
    }
    status.set_source(Arc::new(Rejected::of(rejection)));
    status
}

fn encode_status_with_retry_info(code: i32, message: &str, delay: Duration) -> Vec<u8> {
    let delay = delay.min(Duration::from_secs(PROTO_MAX_SECS));
    let mut duration = Vec::with_capacity(16);
    put_varint_field(&mut duration, 1, delay.as_secs());
    put_varint_field(&mut duration, 2, u64::from(delay.subsec_nanos()));
    let mut retry_info = Vec::with_capacity(20);
    put_bytes_field(&mut retry_info, 1, &duration);
    let mut any = Vec::with_capacity(64);
    put_bytes_field(&mut any, 1, RETRY_INFO_URL.as_bytes());
    put_bytes_field(&mut any, 2, &retry_info);
    let mut status = Vec::with_capacity(96 + message.len());
    put_varint_field(&mut status, 1, u64::from(code.unsigned_abs()));
    put_bytes_field(&mut status, 2, message.as_bytes());
    put_bytes_field(&mut status, 3, &any);
    status
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_varint_field(buf: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        put_varint(buf, field << 3);
        put_varint(buf, v);
    }
}

fn put_bytes_field(buf: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(buf, (field << 3) | 2);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

// ---- END of the "before" reference -----------------------------------------------------------

/// A rejection with no known retry delay: the status without a detail.
#[derive(Debug)]
struct NoDelay(Shed);

impl std::fmt::Display for NoDelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for NoDelay {}

impl Rejection for NoDelay {
    fn kind(&self) -> degrade_core::rejection::RejectionKind {
        self.0.kind()
    }
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    fn reason(&self) -> &'static str {
        self.0.reason()
    }
}

fn main() {
    let shed = Shed::new(Level::Heavy, Priority::Low, Duration::from_millis(1500));
    // Same bytes on the wire: the two encoders agree before they are timed.
    let (after, before) = (grpc::status(&shed), before_status(&shed));
    assert_eq!(after.details(), before.details());
    assert_eq!(
        grpc::retry_delay(&before),
        Some(Duration::from_millis(1500))
    );
    let no_delay = NoDelay(shed.clone());
    // The members take turns, three rounds, so that none alone pays for a warm-up or a
    // neighbour's burst of work.
    let mut best = [f64::INFINITY; 3];
    for _ in 0..ROUNDS {
        best[0] = best[0].min(min_ns(|| grpc::status(black_box(&shed))));
        best[1] = best[1].min(min_ns(|| before_status(black_box(&shed))));
        best[2] = best[2].min(min_ns(|| grpc::status(black_box(&no_delay))));
    }
    println!(
        "gRPC rejection status, ns per status (min of {ROUNDS} rounds × {REPETITIONS} × {CALLS}):"
    );
    for (name, ns) in ["tonic-types", "hand-written", "no-detail"]
        .iter()
        .zip(best)
    {
        println!("  {name:<13} {ns:>8.1}");
    }
}
