//! The OS readers against fixture trees under `tests/fixtures/`: cgroup v2 with and without
//! limits (on the process's cgroup or a parent), `memory.high` only, hybrid mounts, cgroup v1
//! only, PSI lines, and missing or malformed files, which read as unknown or as an error the
//! monitor logs — never a panic.

use degrade_core::{Controller, ManualClock, ladder::LadderConfig};
use degrade_triggers::os::{
    CpuConfig, CpuSignal, CpuSource, MemoryConfig, MemorySignal, MemorySource, PsiConfig, PsiKind,
    PsiResource, PsiScope, PsiSignal, SignalEnv,
};
use degrade_triggers::{Monitor, Signal, TriggersConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

fn fixture(name: &str) -> SignalEnv {
    SignalEnv::with_root(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
}

/// A writable copy of a fixture tree, so a test can move the counters between samples.
fn copy_fixture(name: &str) -> PathBuf {
    fn copy(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            let to = dst.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &to);
            } else {
                std::fs::copy(entry.path(), &to).unwrap();
            }
        }
    }
    let dst = std::env::temp_dir().join(format!("degrade-triggers-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    copy(&fixture(name).root, &dst);
    dst
}

fn cpu(env: &SignalEnv, source: CpuSource) -> CpuSignal {
    CpuSignal::new(
        CpuConfig {
            source,
            ..Default::default()
        },
        env,
    )
    .unwrap()
}

fn memory(env: &SignalEnv, source: MemorySource) -> MemorySignal {
    MemorySignal::new(
        MemoryConfig {
            source,
            ..Default::default()
        },
        env,
    )
    .unwrap()
}

fn psi(env: &SignalEnv, resource: PsiResource, kind: PsiKind, scope: PsiScope) -> PsiSignal {
    PsiSignal::new(
        PsiConfig {
            resource,
            kind,
            scope,
            ..Default::default()
        },
        env,
    )
    .unwrap()
}

#[test]
fn cgroup_is_found_through_proc_self_cgroup() {
    let cg = fixture("cgroup-limited").cgroup().unwrap();
    assert!(cg.dir().ends_with("sys/fs/cgroup/app.slice/app.service"));
    let cg = fixture("cgroup-hybrid").cgroup().unwrap();
    assert!(
        cg.dir()
            .starts_with(fixture("cgroup-hybrid").root.join("sys/fs/cgroup/unified"))
    );
    assert!(fixture("cgroup-v1").cgroup().is_none());
    assert!(fixture("does-not-exist").cgroup().is_none());
}

#[test]
fn cgroup_cpu_is_usage_over_time_times_quota_plus_throttling() {
    let root = copy_fixture("cgroup-limited");
    let env = SignalEnv::with_root(&root);
    let stat = root.join("sys/fs/cgroup/app.slice/app.service/cpu.stat");
    let mut cpu = cpu(&env, CpuSource::Auto);
    let t0 = Instant::now();
    assert_eq!(cpu.sample(t0).unwrap(), None, "a rate needs two readings");

    // 1.6 CPU-seconds over 1 s against the 2-CPU quota: 80 %, Moderate exactly; no throttling.
    std::fs::write(
        &stat,
        "usage_usec 6600000\nnr_periods 1010\nnr_throttled 10\n",
    )
    .unwrap();
    let s = cpu.sample(t0 + Duration::from_secs(1)).unwrap().unwrap();
    assert!((s.value - 80.0).abs() < 1e-9, "{s:?}");
    assert!((s.pressure - 0.80).abs() < 1e-12, "{s:?}");

    // Little usage but half the periods throttled: throttling (50 % → Heavy) drives.
    std::fs::write(
        &stat,
        "usage_usec 6700000\nnr_periods 1020\nnr_throttled 15\n",
    )
    .unwrap();
    let s = cpu.sample(t0 + Duration::from_secs(2)).unwrap().unwrap();
    assert!((s.value - 5.0).abs() < 1e-9, "{s:?}");
    assert!((s.pressure - 0.90).abs() < 1e-12, "{s:?}");
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_quota_on_a_parent_cgroup_applies() {
    let root = copy_fixture("cgroup-parent-limit");
    let env = SignalEnv::with_root(&root);
    let mut cpu = cpu(&env, CpuSource::Cgroup);
    let t0 = Instant::now();
    assert_eq!(cpu.sample(t0).unwrap(), None);
    // The pod's 0.5 CPU quota, and the pod's own usage: 0.45 CPU-s in 1 s is 90 %.
    std::fs::write(
        root.join("sys/fs/cgroup/kubepods/pod1/cpu.stat"),
        "usage_usec 1450000\nnr_periods 20\nnr_throttled 0\n",
    )
    .unwrap();
    let s = cpu.sample(t0 + Duration::from_secs(1)).unwrap().unwrap();
    assert!((s.value - 90.0).abs() < 1e-9, "{s:?}");

    // Memory: the pod's 512 MiB limit against the pod's 256 MiB in use.
    let s = memory(&env, MemorySource::Cgroup)
        .sample(t0)
        .unwrap()
        .unwrap();
    assert!((s.value - 50.0).abs() < 1e-9, "{s:?}");
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn cgroup_memory_against_max_then_high() {
    let t = Instant::now();
    let s = memory(&fixture("cgroup-limited"), MemorySource::Auto)
        .sample(t)
        .unwrap()
        .unwrap();
    assert!((s.value - 85.0).abs() < 1e-6, "{s:?}");
    assert!((s.pressure - 0.80).abs() < 1e-6, "85 % is Moderate: {s:?}");
    let s = memory(&fixture("cgroup-memory-high"), MemorySource::Cgroup)
        .sample(t)
        .unwrap()
        .unwrap();
    assert!((s.value - 90.0).abs() < 1e-9, "{s:?}");
}

#[test]
fn without_limits_cgroup_sources_fail_and_auto_falls_back_to_the_host() {
    let env = fixture("cgroup-unlimited");
    let t = Instant::now();
    let err = cpu(&env, CpuSource::Cgroup).sample(t).unwrap_err();
    assert!(err.message().contains("no cpu.max quota"), "{err}");
    let err = memory(&env, MemorySource::Cgroup).sample(t).unwrap_err();
    assert!(err.message().contains("no memory limit"), "{err}");
    // Auto: host figures through sysinfo. CPU needs two refreshes MINIMUM_CPU_UPDATE_INTERVAL
    // apart; a sample sooner than that repeats the previous value instead of refreshing.
    let mut host = cpu(&env, CpuSource::Auto);
    assert_eq!(host.sample(t).unwrap(), None);
    assert_eq!(host.sample(t + Duration::from_millis(10)).unwrap(), None);
    let s = memory(&env, MemorySource::Auto).sample(t).unwrap().unwrap();
    assert!(s.value > 0.0 && s.value <= 100.0, "{s:?}");
    let err = memory(&fixture("cgroup-v1"), MemorySource::Cgroup)
        .sample(t)
        .unwrap_err();
    assert!(err.message().contains("no cgroup v2"), "{err}");
}

#[test]
fn process_memory_reads_vm_rss_against_the_configured_limit() {
    let env = fixture("cgroup-limited");
    let mut m = MemorySignal::new(
        MemoryConfig {
            source: MemorySource::Process,
            limit: Some(1 << 30),
            ..Default::default()
        },
        &env,
    )
    .unwrap();
    let s = m.sample(Instant::now()).unwrap().unwrap();
    assert!((s.value - 50.0).abs() < 1e-9, "512 MiB of 1 GiB: {s:?}");
    // Without a configured limit, the cgroup's.
    let mut m = memory(&env, MemorySource::Process);
    let s = m.sample(Instant::now()).unwrap().unwrap();
    assert!((s.value - 50.0).abs() < 1e-9, "{s:?}");
}

#[test]
fn psi_prefers_the_cgroup_then_the_system_and_reads_avg10() {
    let env = fixture("cgroup-limited");
    let t = Instant::now();
    let s = psi(&env, PsiResource::Cpu, PsiKind::Some, PsiScope::Auto)
        .sample(t)
        .unwrap()
        .unwrap();
    assert_eq!(s.value, 30.0, "the cgroup's cpu.pressure");
    let s = psi(&env, PsiResource::Cpu, PsiKind::Some, PsiScope::System)
        .sample(t)
        .unwrap()
        .unwrap();
    assert_eq!(s.value, 1.0, "/proc/pressure/cpu");
    let s = psi(&env, PsiResource::Memory, PsiKind::Full, PsiScope::Auto)
        .sample(t)
        .unwrap()
        .unwrap();
    assert_eq!(s.value, 1.0);
    // No io.pressure in the cgroup: Auto falls back to the system's; 45 % is past Heavy (40).
    let s = psi(&env, PsiResource::Io, PsiKind::Some, PsiScope::Auto)
        .sample(t)
        .unwrap()
        .unwrap();
    assert_eq!(s.value, 45.0);
    assert!(s.pressure > 0.90 && s.pressure < 0.95, "{s:?}");
    // Cgroup scope with no file: the kernel has none, unknown without an error.
    assert_eq!(
        psi(&env, PsiResource::Io, PsiKind::Some, PsiScope::Cgroup)
            .sample(t)
            .unwrap(),
        None
    );
}

#[test]
fn psi_is_unknown_where_the_kernel_has_none() {
    let t = Instant::now();
    for resource in [PsiResource::Cpu, PsiResource::Memory, PsiResource::Io] {
        let mut s = psi(
            &fixture("cgroup-v1"),
            resource,
            PsiKind::Some,
            PsiScope::Auto,
        );
        assert_eq!(s.sample(t).unwrap(), None, "{resource:?}");
    }
    // Before Linux 5.13 cpu.pressure has no `full` line.
    let env = fixture("cgroup-hybrid");
    assert_eq!(
        psi(&env, PsiResource::Cpu, PsiKind::Full, PsiScope::Auto)
            .sample(t)
            .unwrap(),
        None
    );
    let s = psi(&env, PsiResource::Cpu, PsiKind::Some, PsiScope::Cgroup)
        .sample(t)
        .unwrap()
        .unwrap();
    assert_eq!(s.value, 7.0);
}

#[test]
fn malformed_files_are_errors_not_panics() {
    let env = fixture("cgroup-malformed");
    let t = Instant::now();
    for source in [CpuSource::Auto, CpuSource::Cgroup] {
        let err = cpu(&env, source).sample(t).unwrap_err();
        assert!(err.message().contains("cpu.max"), "{err}");
    }
    for source in [
        MemorySource::Auto,
        MemorySource::Cgroup,
        MemorySource::Process,
    ] {
        assert!(memory(&env, source).sample(t).is_err(), "{source:?}");
    }
    let err = psi(&env, PsiResource::Cpu, PsiKind::Some, PsiScope::Auto)
        .sample(t)
        .unwrap_err();
    assert!(err.message().contains("cpu.pressure"), "{err}");
    // Not UTF-8.
    assert!(
        psi(&env, PsiResource::Io, PsiKind::Some, PsiScope::System)
            .sample(t)
            .is_err()
    );
}

#[test]
fn the_monitor_reads_failing_readers_as_unknown_and_keeps_going() {
    let clock = ManualClock::new();
    let controller = Controller::with_clock(LadderConfig::default(), clock.clone()).unwrap();
    let config = TriggersConfig {
        root: fixture("cgroup-malformed").root,
        psi: vec![PsiConfig::default()],
        ..Default::default()
    };
    let mut monitor: Monitor<ManualClock> = config.monitor(controller).unwrap();
    for _ in 0..5 {
        clock.advance(Duration::from_secs(1));
        assert!(monitor.tick().is_none());
    }
    let snap = monitor.snapshot();
    assert_eq!(snap.ticks, 5);
    for name in ["cpu", "memory", "psi.cpu.some"] {
        let r = snap.signal(name).unwrap();
        assert!(r.failing, "{name}");
        assert_eq!(r.pressure, None, "{name}");
    }
}
