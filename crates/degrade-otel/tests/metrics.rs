//! The instruments reach a real SDK meter provider with their documented names.
#![cfg(feature = "metrics")]

use degrade_core::{Controller, Level};
use degrade_otel::metrics::{ExportInstruments, Instruments};
use degrade_otel::{DropReason, ExportStats};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use std::collections::BTreeMap;

/// Every (metric name, attributes) → value, as i128 for comparison.
fn collect(exporter: &InMemoryMetricExporter) -> BTreeMap<String, Vec<(String, f64)>> {
    let mut out: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for rm in exporter.get_finished_metrics().unwrap() {
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                let mut points = Vec::new();
                macro_rules! points {
                    ($d:expr) => {
                        match $d {
                            MetricData::Gauge(g) => {
                                for p in g.data_points() {
                                    points.push((attrs(p.attributes()), p.value() as f64));
                                }
                            }
                            MetricData::Sum(s) => {
                                for p in s.data_points() {
                                    points.push((attrs(p.attributes()), p.value() as f64));
                                }
                            }
                            _ => {}
                        }
                    };
                }
                match m.data() {
                    AggregatedMetrics::F64(d) => points!(d),
                    AggregatedMetrics::U64(d) => points!(d),
                    AggregatedMetrics::I64(d) => points!(d),
                }
                points.sort_by(|a, b| a.0.cmp(&b.0));
                out.insert(m.name().to_owned(), points);
            }
        }
    }
    out
}

fn attrs<'a>(kvs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> String {
    let mut v: Vec<String> = kvs.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
    v.sort();
    v.join(",")
}

#[test]
fn every_instrument_reports_under_its_documented_name() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let meter = provider.meter("degrade");
    let m = Instruments::new(&meter);
    let stats = ExportStats::new();
    let _observe = ExportInstruments::new(&meter, stats.clone());

    let controller = Controller::new(Default::default()).unwrap();
    let t = controller.pin(Level::Heavy).unwrap();
    m.transition(&t);
    m.shed("shed", "low");
    m.shed("shed", "low");
    m.rate_limit("exporter", false, "rate_limited");
    m.breaker_transition("collector", "closed", "open");
    m.canary_weight("v2", 0.25);
    m.canary_verdict("v2", "pass");
    m.rollout_progress("fleet", 2, 5, 8, 20, 1);
    stats.record_offered(10);
    stats.record_exported(7, 1);
    stats.record_drop(DropReason::CircuitOpen, 2);

    provider.force_flush().unwrap();
    let got = collect(&exporter);
    let one = |name: &str| {
        got.get(name)
            .unwrap_or_else(|| panic!("{name} missing: {got:#?}"))
    };
    assert_eq!(one("degrade.level"), &[(String::new(), 3.0)]);
    assert_eq!(
        one("degrade.level.transitions"),
        &[("cause=pinned,from=normal,to=heavy".to_owned(), 1.0)]
    );
    assert_eq!(
        one("degrade.shed"),
        &[("priority=low,reason=shed".to_owned(), 2.0)]
    );
    assert_eq!(
        one("degrade.rate_limit.decisions"),
        &[(
            "decision=rejected,limiter=exporter,reason=rate_limited".to_owned(),
            1.0
        )]
    );
    assert_eq!(
        one("degrade.breaker.state"),
        &[("breaker=collector,state=open".to_owned(), 1.0)]
    );
    assert_eq!(one("degrade.breaker.transitions").len(), 1);
    assert_eq!(
        one("degrade.canary.weight"),
        &[("canary=v2".to_owned(), 0.25)]
    );
    assert_eq!(
        one("degrade.canary.verdicts"),
        &[("canary=v2,verdict=pass".to_owned(), 1.0)]
    );
    assert_eq!(one("degrade.rollout.batches").len(), 2);
    assert_eq!(one("degrade.rollout.instances").len(), 3);
    assert_eq!(one("degrade.otel.spans.exported"), &[(String::new(), 7.0)]);
    assert!(one("degrade.otel.spans.dropped").contains(&("reason=circuit_open".to_owned(), 2.0)));
    assert_eq!(one("degrade.otel.backlog"), &[(String::new(), 1.0)]);
}
