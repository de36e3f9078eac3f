//! The log adapter counts what it drops, by reason, exactly as the span adapter does: the
//! export body is one implementation for both.
#![cfg(feature = "logs")]

use degrade_otel::logs::{LogRecords, ServiceLogExporter};
use degrade_otel::{DropReason, ExportStats};
use opentelemetry::InstrumentationScope;
use opentelemetry::logs::{LogRecord, Logger, LoggerProvider};
use opentelemetry_sdk::logs::{
    BatchLogProcessor, LogBatch, LogExporter, SdkLogRecord, SdkLoggerProvider,
};
use std::time::Duration;
use tower::service_fn;

fn record() -> (SdkLogRecord, InstrumentationScope) {
    let mut r = SdkLoggerProvider::builder()
        .build()
        .logger("test")
        .create_log_record();
    r.set_body("hello".into());
    (r, InstrumentationScope::builder("test").build())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_drops_are_counted_by_reason() {
    let (r, s) = record();
    let batch = [(&r, &s), (&r, &s), (&r, &s)];

    // A collector that refuses: every record of the batch is dropped as an export failure.
    let stats = ExportStats::new();
    let refuse = service_fn(|_: LogRecords| async { Err::<(), _>("collector said no") });
    let exporter =
        ServiceLogExporter::new(refuse, tokio::runtime::Handle::current()).stats(stats.clone());
    assert!(exporter.export(LogBatch::new(&batch)).await.is_err());
    assert_eq!(stats.snapshot().dropped(DropReason::ExportFailed), 3);

    // A collector that never answers: dropped as timeouts.
    let hang = service_fn(|_: LogRecords| std::future::pending::<Result<(), &'static str>>());
    let exporter = ServiceLogExporter::new(hang, tokio::runtime::Handle::current())
        .timeout(Duration::from_millis(20))
        .stats(stats.clone());
    assert!(exporter.export(LogBatch::new(&batch)).await.is_err());
    assert_eq!(stats.snapshot().dropped(DropReason::Timeout), 3);

    // After shutdown: dropped as such.
    exporter
        .shutdown_with_timeout(Duration::from_secs(1))
        .unwrap();
    assert!(exporter.export(LogBatch::new(&batch[..1])).await.is_err());
    assert_eq!(stats.snapshot().dropped(DropReason::Shutdown), 1);
    assert_eq!(stats.snapshot().dropped_total(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_dropped_under_a_batch_processor_are_counted() {
    let stats = ExportStats::new();
    let refuse = service_fn(|_: LogRecords| async { Err::<(), _>("collector said no") });
    let exporter =
        ServiceLogExporter::new(refuse, tokio::runtime::Handle::current()).stats(stats.clone());
    let provider = SdkLoggerProvider::builder()
        .with_log_processor(BatchLogProcessor::builder(exporter).build())
        .build();
    let logger = provider.logger("test");
    for _ in 0..5 {
        let mut r = logger.create_log_record();
        r.set_body("hello".into());
        logger.emit(r);
    }
    let p = provider.clone();
    // The processor reports the failed export; what matters here is that it was counted.
    let _ = tokio::task::spawn_blocking(move || p.force_flush())
        .await
        .unwrap();
    assert_eq!(stats.snapshot().dropped(DropReason::ExportFailed), 5);
}
