//! Fuzz-style property tests on stable Rust (proptest: arbitrary bytes and structured
//! generators, bounded to seconds) of everything the rollout reads from disk or from a
//! configuration file: a journal of arbitrary bytes is a rollout or a typed error, never a
//! panic; every cut of a valid journal resumes; arbitrary records replay or are refused;
//! arbitrary JSON is a configuration or an error.

mod support;

use degrade_rollout::discover::Pool;
use degrade_rollout::plan::{
    Direction, Record, RolloutEvent, RolloutMachine, RolloutStep, StepKind, Target,
};
use degrade_rollout::{
    Amount, AnalysisConfig, Instance, RolloutConfig, RolloutController, RolloutError,
    RolloutOutcome,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use support::Recorder;

fn fleet(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|k| {
            let addr: SocketAddr = format!("127.0.0.1:{}", 7000 + k).parse().unwrap();
            Instance::new(format!("i{k}"), addr, "v1")
        })
        .collect()
}

fn config(surge: u32) -> RolloutConfig {
    RolloutConfig {
        max_surge: Amount::Count(surge),
        min_ready: Duration::from_millis(1),
        health_interval: Duration::from_millis(1),
        healthy_threshold: 1,
        drain_timeout: Duration::from_secs(1),
        post_watch: Duration::from_millis(2),
        ..RolloutConfig::default()
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "degrade-rollout-fuzz-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.join("rollout.jsonl")
}

fn build(path: &Path, surge: u32) -> Result<RolloutController<Recorder, SocketAddr>, RolloutError> {
    RolloutController::builder(Recorder::default(), Pool::new(|i: &Instance| i.address))
        .config(config(surge))
        .journal(path)
        .instances(fleet(3))
        .target("v2")
        .build()
}

/// Two real journals: an in-place rollout that completes, and a surge rollout whose third
/// install fails and that rolls back.
fn journals() -> &'static [(u32, Vec<u8>); 2] {
    static J: OnceLock<[(u32, Vec<u8>); 2]> = OnceLock::new();
    J.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let make = |name: &str, surge: u32, driver: Recorder, outcome: RolloutOutcome| {
            let path = scratch(name);
            let r = RolloutController::builder(driver, Pool::new(|i: &Instance| i.address))
                .config(config(surge))
                .journal(&path)
                .instances(fleet(3))
                .target("v2")
                .build()
                .unwrap();
            assert_eq!(rt.block_on(r.run()).unwrap().outcome, outcome);
            let bytes = std::fs::read(&path).unwrap();
            let _ = std::fs::remove_dir_all(path.parent().unwrap());
            (surge, bytes)
        };
        let failing = Recorder::failing_install_of("i2");
        [
            make(
                "source-inplace",
                0,
                Recorder::default(),
                RolloutOutcome::Completed,
            ),
            make("source-surge", 1, failing, RolloutOutcome::RolledBack),
        ]
    })
}

fn records_of(lines: &[&[u8]]) -> Vec<Record> {
    lines[1..]
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

fn whole_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    v.pop(); // after the last newline: the torn tail, or nothing
    v
}

/// What a resumed planner shows, compared with a planner replayed from the same records.
fn view(p: &RolloutMachine) -> String {
    format!(
        "{:?} {:?} {} {:?} {:?} {:?}",
        p.phase(),
        p.current_batch(),
        p.paused(),
        p.failure(),
        p.instances(),
        p.serving()
    )
}

#[test]
fn every_cut_of_a_valid_journal_resumes_from_its_whole_lines() {
    for (k, (surge, bytes)) in journals().iter().enumerate() {
        let dir = scratch(&format!("cut{k}"));
        for cut in 0..=bytes.len() {
            let prefix = &bytes[..cut];
            // A new file each time: rewriting one in place makes ext4 flush it on close.
            let path = dir.with_file_name(format!("cut-{cut}.jsonl"));
            std::fs::write(&path, prefix).unwrap();
            let r =
                build(&path, *surge).unwrap_or_else(|e| panic!("cut at {cut} of journal {k}: {e}"));
            let lines = whole_lines(prefix);
            let expected = if lines.is_empty() {
                RolloutMachine::new(config(*surge), fleet(3), "v2").unwrap()
            } else {
                RolloutMachine::replay(config(*surge), fleet(3), "v2", &records_of(&lines)).unwrap()
            };
            assert_eq!(view(r.machine()), view(&expected), "cut at {cut}");
            assert_eq!(std::fs::read(&path).unwrap(), prefix, "build never writes");
            std::fs::remove_file(&path).unwrap();
        }
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/fuzz.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_are_a_journal_or_a_typed_error(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let path = scratch("bytes");
        std::fs::write(&path, &bytes).unwrap();
        match build(&path, 0) {
            Ok(_) | Err(RolloutError::CorruptJournal(_)) | Err(RolloutError::Config(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
        prop_assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_valid_journal_with_a_torn_tail_resumes(
        which in 0usize..2,
        cut in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 1..300),
    ) {
        let (surge, bytes) = &journals()[which];
        let lines = whole_lines(bytes);
        let k = cut.index(lines.len() + 1);
        let mut file: Vec<u8> = lines[..k].iter().flat_map(|l| [*l, b"\n"].concat()).collect();
        file.extend_from_slice(&tail);
        let path = scratch("tail");
        std::fs::write(&path, &file).unwrap();
        let r = build(&path, *surge);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        prop_assert!(r.is_ok(), "{:?}", r.err());
    }

    #[test]
    fn a_bad_line_before_the_last_is_refused_with_its_number(
        which in 0usize..2,
        at in any::<prop::sample::Index>(),
        junk in prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 1..200),
    ) {
        prop_assume!(serde_json::from_slice::<serde_json::Value>(&junk).is_err());
        prop_assume!(!junk.iter().all(u8::is_ascii_whitespace));
        let (surge, bytes) = &journals()[which];
        let mut lines = whole_lines(bytes);
        let i = at.index(lines.len() - 1); // never the last line
        lines[i] = &junk;
        let file: Vec<u8> = lines.iter().flat_map(|l| [*l, b"\n"].concat()).collect();
        let path = scratch("junk");
        std::fs::write(&path, &file).unwrap();
        let r = build(&path, *surge);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        match r {
            Err(RolloutError::CorruptJournal(c)) => prop_assert_eq!(c.line, i + 1),
            other => panic!("line {} replaced: {:?}", i + 1, other.map(|_| ())),
        }
    }

    #[test]
    fn arbitrary_records_replay_or_are_refused(records in prop::collection::vec(record(), 0..40)) {
        if let Ok(mut p) = RolloutMachine::replay(config(1), fleet(3), "v2", &records) {
            // A planner that accepted them keeps working.
            let now = tokio::time::Instant::now();
            let _ = p.handle(RolloutEvent::Tick, now);
            let _ = p.next_wake();
            let _ = p.handle(RolloutEvent::Abort, now + Duration::from_secs(3600));
        }
    }

    #[test]
    fn arbitrary_json_is_a_config_or_an_error(v in json(), n in any::<usize>()) {
        let text = v.to_string();
        if let Ok(cfg) = serde_json::from_str::<RolloutConfig>(&text) {
            let _ = cfg.validate();
            let _ = cfg.limits(n);
        }
        if let Ok(a) = serde_json::from_str::<AnalysisConfig>(&text) {
            let _ = a.validate();
        }
        let _ = serde_json::from_str::<Amount>(&text);
        let _ = serde_json::from_str::<Record>(&text);
    }

    #[test]
    fn near_valid_configs_are_a_config_or_an_error(v in config_json(), n in 0usize..1_000_000) {
        if let Ok(cfg) = serde_json::from_value::<RolloutConfig>(v)
            && let Ok(l) = cfg.limits(n)
        {
            prop_assert!(l.unavailable <= n.max(1));
        }
    }

    #[test]
    fn arbitrary_text_is_a_config_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<RolloutConfig>(&bytes);
        let _ = serde_json::from_slice::<Amount>(&bytes);
        let _ = serde_json::from_slice::<Record>(&bytes);
    }
}

fn step() -> impl Strategy<Value = RolloutStep> {
    let kinds = [
        StepKind::Allocate,
        StepKind::Drain,
        StepKind::Stop,
        StepKind::Install,
        StepKind::Start,
        StepKind::Probe,
        StepKind::Bake,
        StepKind::Release,
        StepKind::Swap,
    ];
    (prop::sample::select(kinds.to_vec()), any::<bool>()).prop_map(|(kind, next)| RolloutStep {
        kind,
        target: if next { Target::Next } else { Target::Current },
    })
}

fn record() -> impl Strategy<Value = Record> {
    let id = prop::sample::select(vec!["i0", "i1", "i2", "x"]).prop_map(str::to_owned);
    let batch = prop_oneof![0usize..4, any::<usize>()];
    let outcome = prop::sample::select(vec![
        RolloutOutcome::Completed,
        RolloutOutcome::Aborted,
        RolloutOutcome::RolledBack,
        RolloutOutcome::RollbackFailed,
    ]);
    prop_oneof![
        (any::<bool>(), batch.clone()).prop_map(|(up, batch)| Record::BatchStarted {
            direction: if up {
                Direction::Upgrade
            } else {
                Direction::Rollback
            },
            batch,
        }),
        (id.clone(), step(), prop::option::of(1024u16..2048)).prop_map(|(id, step, port)| {
            Record::StepDone {
                id,
                step,
                address: port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            }
        }),
        (
            prop::option::of(id),
            prop::option::of(prop::sample::select(vec![Target::Current, Target::Next])),
            ".{0,20}"
        )
            .prop_map(|(id, target, reason)| Record::Failed { id, target, reason }),
        outcome
            .clone()
            .prop_map(|outcome| Record::WatchStarted { outcome }),
        Just(Record::RollbackStarted),
        batch.prop_map(|batch| Record::AnalysisPassed { batch }),
        Just(Record::Paused),
        Just(Record::Resumed),
        Just(Record::AbortRequested),
        outcome.prop_map(|outcome| Record::Finished { outcome }),
    ]
}

/// Arbitrary JSON, a few levels deep.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The configuration's own field names, and a few others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "max_surge",
            "max_unavailable",
            "min_ready",
            "progress_deadline",
            "health_interval",
            "healthy_threshold",
            "failure_threshold",
            "startup_grace",
            "drain_timeout",
            "health_timeout",
            "analysis",
            "judge",
            "duration",
            "interval",
            "warmup",
            "require_pass",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,10}",
    ]
}

/// Objects of the configuration's fields with plausible and extreme values: durations in
/// humantime (up to absurd sizes), counts and percentages beyond their ranges.
fn config_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let duration = prop_oneof![
        (
            0u64..10_000,
            prop::sample::select(vec!["ms", "s", "m", "h", "d", "y"])
        )
            .prop_map(|(n, u)| Value::String(format!("{n}{u}"))),
        any::<u64>().prop_map(|n| Value::String(format!("{n}s"))),
        Just(Value::String(
            "18446744073709551615s 999999999ns".to_owned()
        )),
        ".{0,8}".prop_map(Value::String),
    ];
    let amount = prop_oneof![
        any::<u32>().prop_map(Value::from),
        any::<u32>().prop_map(|p| Value::String(format!("{p}%"))),
        any::<i64>().prop_map(Value::from),
        ".{0,6}".prop_map(Value::String),
    ];
    let count = prop_oneof![
        any::<u32>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from)
    ];
    (
        prop::option::of(amount.clone()),
        prop::option::of(amount),
        prop::option::of(duration.clone()),
        prop::option::of(duration.clone()),
        prop::option::of(duration.clone()),
        prop::option::of(count.clone()),
        prop::option::of(count),
        prop::option::of(duration.clone()),
        prop::option::of(duration),
    )
        .prop_map(|(s, u, mr, pd, hi, ht, ft, sg, dt)| {
            let mut m = serde_json::Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            };
            put("max_surge", s);
            put("max_unavailable", u);
            put("min_ready", mr);
            put("progress_deadline", pd);
            put("health_interval", hi);
            put("healthy_threshold", ht);
            put("failure_threshold", ft);
            put("startup_grace", sg);
            put("drain_timeout", dt);
            Value::Object(m)
        })
}
