//! Regression tests of the rejection mapping: what a peer's `RetryInfo` may contain, the
//! longest durations, and the local-rejection mark every classifier reads.

use degrade_core::rejection::{self, Rejected, retry_after_secs};
use degrade_core::{
    BoxError, Classifier, DefaultClassifier, GrpcClassifier, HttpClassifier, Level, Outcome,
    Priority, Shed,
};
use std::time::Duration;

mod proto {
    //! Just enough protobuf to write the `google.rpc.Status` a peer might send, including the
    //! values a well-behaved encoder never writes.

    pub(crate) fn varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    pub(crate) fn bytes(buf: &mut Vec<u8>, field: u64, b: &[u8]) {
        varint(buf, (field << 3) | 2);
        varint(buf, b.len() as u64);
        buf.extend_from_slice(b);
    }

    /// A `google.rpc.Status` with one `RetryInfo { retry_delay: Duration { seconds, nanos } }`,
    /// both fields written even when zero, negative values sign-extended as protobuf does.
    pub(crate) fn status_with_retry_info(seconds: i64, nanos: i64) -> Vec<u8> {
        let mut duration = Vec::new();
        varint(&mut duration, 1 << 3);
        varint(&mut duration, seconds as u64);
        varint(&mut duration, 2 << 3);
        varint(&mut duration, nanos as u64);
        let mut retry_info = Vec::new();
        bytes(&mut retry_info, 1, &duration);
        let mut any = Vec::new();
        bytes(&mut any, 1, b"type.googleapis.com/google.rpc.RetryInfo");
        bytes(&mut any, 2, &retry_info);
        let mut status = Vec::new();
        varint(&mut status, 1 << 3);
        varint(&mut status, 8);
        bytes(&mut status, 3, &any);
        status
    }
}

fn peer_status(seconds: i64, nanos: i64) -> tonic::Status {
    tonic::Status::with_details(
        tonic::Code::ResourceExhausted,
        "slow down",
        proto::status_with_retry_info(seconds, nanos).into(),
    )
}

#[test]
fn retry_delay_of_a_negative_duration_with_overflowing_nanos_does_not_panic() {
    // Issue 14: `Duration::new(u64::MAX, 1_000_000_000)` used to panic with "overflow in
    // Duration::new", killing whichever task read a peer's status.
    let d = rejection::grpc::retry_delay(&peer_status(-1, 1_000_000_000));
    // seconds + nanos / 1e9 = 0: normalised, a valid "retry now".
    assert_eq!(d, Some(Duration::ZERO));
}

#[test]
fn retry_delay_of_a_negative_duration_is_retry_now() {
    // As tonic-types' `RetryInfo` and opentelemetry-otlp read it: the peer sent a RetryInfo
    // (so the status is retryable), with no wait.
    assert_eq!(
        rejection::grpc::retry_delay(&peer_status(-1, 0)),
        Some(Duration::ZERO)
    );
    assert_eq!(
        rejection::grpc::retry_delay(&peer_status(0, -1)),
        Some(Duration::ZERO)
    );
    assert_eq!(
        rejection::grpc::retry_delay(&peer_status(i64::MIN, -999_999_999)),
        Some(Duration::ZERO)
    );
    // prost-types' own conversion negates i64::MIN: an overflow panic in debug builds.
    assert_eq!(
        rejection::grpc::retry_delay(&peer_status(i64::MIN, 0)),
        Some(Duration::ZERO)
    );
}

#[test]
fn retry_delay_of_292_billion_years_is_clamped_to_the_maximum() {
    let max = rejection::grpc::MAX_RETRY_DELAY;
    assert_eq!(max, Duration::from_secs(3600));
    assert_eq!(
        rejection::grpc::retry_delay(&peer_status(i64::MAX, 999_999_999)),
        Some(max)
    );
    assert_eq!(
        rejection::grpc::retry_delay(&peer_status(3601, 0)),
        Some(max)
    );
}

#[test]
fn retry_delay_normalises_nanos_outside_one_second() {
    let d = |s, n| rejection::grpc::retry_delay(&peer_status(s, n));
    assert_eq!(d(1, 1_500_000_000), Some(Duration::from_millis(2500)));
    assert_eq!(d(2, -500_000_000), Some(Duration::from_millis(1500)));
    assert_eq!(
        d(0, i64::from(i32::MAX)),
        Some(Duration::new(2, 147_483_647))
    );
    // Wider than an int32: protobuf keeps the low 32 bits (i32::MIN, then i32::MAX).
    assert_eq!(d(0, i64::from(i32::MAX) + 1), Some(Duration::ZERO));
    assert_eq!(
        d(0, i64::from(i32::MIN) - 1),
        Some(Duration::new(2, 147_483_647))
    );
}

#[test]
fn status_for_the_longest_retry_after_encodes_a_valid_delay() {
    let shed = Shed::new(Level::Heavy, Priority::Low, Duration::MAX);
    let s = rejection::grpc::status(&shed);
    assert_eq!(
        rejection::grpc::retry_delay(&s),
        Some(rejection::grpc::MAX_RETRY_DELAY)
    );
}

#[test]
fn retry_after_secs_of_the_longest_duration_saturates() {
    assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    assert_eq!(retry_after_secs(Duration::new(u64::MAX, 0)), u64::MAX);
    assert_eq!(retry_after_secs(Duration::new(u64::MAX - 1, 1)), u64::MAX);
    let res: http::Response<()> =
        rejection::http::response(&Shed::new(Level::Heavy, Priority::Low, Duration::MAX));
    assert_eq!(res.headers()["retry-after"], u64::MAX.to_string().as_str());
}

fn shed() -> Shed {
    Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(1))
}

#[test]
fn every_classifier_ignores_a_local_http_rejection() {
    let res: http::Response<()> = rejection::http::response(&shed());
    assert_eq!(
        Classifier::<_, BoxError>::classify_response(&HttpClassifier::default(), &res),
        Outcome::Ignored
    );
    assert_eq!(
        Classifier::<_, BoxError>::classify_response(&GrpcClassifier::default(), &res),
        Outcome::Ignored
    );
}

#[test]
fn every_classifier_ignores_a_local_grpc_rejection() {
    let res: http::Response<()> = rejection::grpc::response(&shed());
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(
        Classifier::<_, BoxError>::classify_response(&GrpcClassifier::default(), &res),
        Outcome::Ignored
    );
    assert_eq!(
        Classifier::<_, BoxError>::classify_response(&HttpClassifier::default(), &res),
        Outcome::Ignored
    );
}

#[test]
fn every_classifier_ignores_a_local_rejection_status() {
    let status = rejection::grpc::status(&shed());
    let boxed: BoxError = Box::new(rejection::grpc::status(&shed()));
    type Res = http::Response<()>;
    assert_eq!(
        Classifier::<Res, _>::classify_error(&GrpcClassifier::default(), &status),
        Outcome::Ignored
    );
    for c in [
        &GrpcClassifier::default() as &dyn Classifier<Res, BoxError>,
        &HttpClassifier::default(),
        &DefaultClassifier,
    ] {
        assert_eq!(c.classify_error(&boxed), Outcome::Ignored);
    }
    assert_eq!(
        Classifier::<Res, _>::classify_error(&DefaultClassifier, &status),
        Outcome::Ignored
    );
}

#[test]
fn every_classifier_ignores_a_rejection_error() {
    type Res = http::Response<()>;
    let boxed: BoxError = Box::new(shed());
    for c in [
        &GrpcClassifier::default() as &dyn Classifier<Res, BoxError>,
        &HttpClassifier::default(),
        &DefaultClassifier,
    ] {
        assert_eq!(c.classify_error(&boxed), Outcome::Ignored);
    }
    // A service whose error type is a rejection type itself.
    assert_eq!(
        Classifier::<Res, Shed>::classify_error(&HttpClassifier::default(), &shed()),
        Outcome::Ignored
    );
    assert_eq!(
        Classifier::<Res, Rejected>::classify_error(&DefaultClassifier, &Rejected::of(&shed())),
        Outcome::Ignored
    );
}

#[test]
fn a_remote_rejection_counts_as_a_failure() {
    // What a client sees of another service's degrade layer: the header and metadata travel,
    // the mark does not. The remote service is overloaded; its client's breaker should know.
    let http_res = http::Response::builder()
        .status(503)
        .header("degrade-rejection", "shed")
        .body(())
        .unwrap();
    assert_eq!(
        Classifier::<_, BoxError>::classify_response(&HttpClassifier::default(), &http_res),
        Outcome::Failure
    );
    let grpc_res = http::Response::builder()
        .header("grpc-status", "14")
        .header("degrade-rejection", "shed")
        .body(())
        .unwrap();
    assert_eq!(
        Classifier::<_, BoxError>::classify_response(&GrpcClassifier::default(), &grpc_res),
        Outcome::Failure
    );
    // A status decoded from the wire has no source.
    let local = rejection::grpc::status(&shed());
    let mut wire = http::HeaderMap::new();
    local.add_header(&mut wire).unwrap();
    let remote = tonic::Status::from_header_map(&wire).unwrap();
    assert_eq!(remote.metadata().get("degrade-rejection").unwrap(), "shed");
    assert_eq!(
        Classifier::<http::Response<()>, _>::classify_error(&GrpcClassifier::default(), &remote),
        Outcome::Failure
    );
}
