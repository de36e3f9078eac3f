//! `FileStore` on real files: concurrent writers (threads and real processes) never leave a
//! torn or unparsable state, a corrupt state file is a clear error (never a panic), and
//! temporary files of dead writers are cleaned.

use degrade_canary::{
    Canary, CanaryConfig, CanaryController, CanaryPhase, CanaryState, CorruptState, FileStore,
    StateStore,
};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

const WRITER_ENV: &str = "DEGRADE_CANARY_STORE_WRITER";

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("canary-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A state whose fields all derive from `n`, so a torn mix of two saves is detectable.
fn state(writer: u32, n: u32) -> CanaryState {
    let v = writer * 1_000_000 + n;
    CanaryState {
        phase: CanaryPhase::Progressing,
        step: v as usize,
        weight_bp: v,
        inconclusive: v,
    }
}

fn consistent(s: &CanaryState) -> bool {
    s.step as u32 == s.weight_bp && s.weight_bp == s.inconclusive
}

fn temps(d: &Path) -> Vec<String> {
    std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".tmp"))
        .collect()
}

fn write_many(path: &Path, writer: u32, n: u32) {
    let store = FileStore::new(path);
    for k in 0..n {
        store.save(&state(writer, k)).expect("save");
    }
}

/// Not a test of its own: the body of a writer process started by
/// `two_processes_and_two_threads_never_tear_the_state_file` (it does nothing otherwise).
#[test]
fn store_writer_process() {
    if let Ok(spec) = std::env::var(WRITER_ENV) {
        let (path, writer) = spec.rsplit_once('|').unwrap();
        write_many(Path::new(path), writer.parse().unwrap(), 300);
    }
}

#[test]
fn two_processes_and_two_threads_never_tear_the_state_file() {
    let d = dir("hammer");
    let path = d.join("state.json");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (1..=2)
        .map(|w| {
            Command::new(&exe)
                .args(["--exact", "store_writer_process", "--test-threads", "1"])
                .env(WRITER_ENV, format!("{}|{w}", path.display()))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let threads: Vec<_> = (3..=4)
        .map(|w| {
            let p = path.clone();
            std::thread::spawn(move || write_many(&p, w, 300))
        })
        .collect();
    // Read all along: every state read is whole and one that some writer saved.
    let reader = FileStore::new(&path);
    let mut reads = 0u32;
    let mut running = true;
    let mut children = children;
    while running {
        if let Some(s) = reader.load().expect("never unparsable") {
            assert!(consistent(&s), "torn state {s:?}");
            reads += 1;
        }
        running = threads.iter().any(|t| !t.is_finished())
            || children.iter_mut().any(|c| c.try_wait().unwrap().is_none());
    }
    for t in threads {
        t.join().unwrap();
    }
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a writer process failed");
    }
    let last = reader.load().unwrap().expect("a state");
    assert!(
        consistent(&last) && last.weight_bp % 1_000_000 == 299,
        "{last:?}"
    );
    assert!(reads > 0);
    assert!(
        temps(&d).is_empty(),
        "no temporary file left: {:?}",
        temps(&d)
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn threads_saving_at_once_leave_a_whole_state() {
    let d = dir("threads");
    let path = d.join("state.json");
    std::thread::scope(|s| {
        for w in 1..=4 {
            let p = &path;
            s.spawn(move || write_many(p, w, 200));
        }
        s.spawn(|| {
            let r = FileStore::new(&path);
            for _ in 0..2_000 {
                if let Some(st) = r.load().expect("never unparsable") {
                    assert!(consistent(&st), "torn state {st:?}");
                }
            }
        });
    });
    assert!(consistent(&FileStore::new(&path).load().unwrap().unwrap()));
    assert!(temps(&d).is_empty());
    let _ = std::fs::remove_dir_all(&d);
}

fn corrupt_error(path: &Path) -> io::Error {
    let err = FileStore::new(path)
        .load()
        .expect_err("a corrupt file is an error");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let c = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<CorruptState>())
        .expect("a CorruptState inside");
    assert_eq!(c.path, path);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    err
}

#[test]
fn a_corrupt_state_file_is_a_clear_error_never_a_panic() {
    let d = dir("corrupt");
    let path = d.join("state.json");
    let good = serde_json::to_vec(&state(0, 7)).unwrap();
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"   \n".to_vec(),
        good[..good.len() / 2].to_vec(),
        b"\xff\xfe garbage".to_vec(),
        br#"{"phase":"progressing","step":-1,"weight_bp":0,"inconclusive":0}"#.to_vec(),
        br#"{"phase":"exploded","step":1,"weight_bp":0,"inconclusive":0}"#.to_vec(),
        vec![b'['; 60_000],
    ];
    for bytes in cases {
        std::fs::write(&path, &bytes).unwrap();
        corrupt_error(&path);
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "left as it was");
    }
    // A wrong path, say a large log file, is refused without being read whole.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap();
    let err = corrupt_error(&path);
    assert!(err.to_string().contains("larger than 64 KiB"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn a_controller_refuses_to_start_on_a_corrupt_state_file() {
    let d = dir("controller");
    let path = d.join("state.json");
    std::fs::write(&path, b"{\"phase\": \"promo").unwrap();
    let svc = || tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) });
    let router = Canary::builder().build(svc(), svc());
    let err = CanaryController::builder(CanaryConfig::default(), router.handle())
        .store(FileStore::new(&path))
        .start()
        .expect_err("refused");
    let io = err.downcast_ref::<io::Error>().expect("the store's error");
    assert!(
        io.get_ref().is_some_and(|e| e.is::<CorruptState>()),
        "{err}"
    );
    assert_eq!(router.weight().get(), 0, "the router was not touched");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn stale_temp_files_of_dead_writers_are_removed_on_load() {
    let d = dir("stale");
    let path = d.join("state.json");
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let old = SystemTime::now() - Duration::from_secs(120);
    let stale = d.join(format!("state.json.{dead}.3.tmp"));
    let recent = d.join(format!("state.json.{dead}.4.tmp"));
    let mine = d.join(format!("state.json.{}.9.tmp", std::process::id()));
    let other = d.join("state.json.backup.tmp");
    for p in [&stale, &recent, &mine, &other] {
        std::fs::write(p, b"{").unwrap();
        if p != &recent {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }
    assert_eq!(FileStore::new(&path).load().unwrap(), None);
    assert!(
        !stale.exists(),
        "an old temp file of a dead writer is removed"
    );
    assert!(
        recent.exists(),
        "a recent one is kept (its writer may be in another pid namespace)"
    );
    assert!(mine.exists(), "one of this process is kept");
    assert!(other.exists(), "other files are not touched");
    let _ = std::fs::remove_dir_all(&d);
}
