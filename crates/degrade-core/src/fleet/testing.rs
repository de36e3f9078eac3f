//! A real `redis-server` for tests (features `redis` and `test-util`): started on a free
//! port of 127.0.0.1, without persistence, killed on drop. `redis-server` must be on `PATH`.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server` child process.
///
/// ```no_run
/// use degrade_core::fleet::testing::RedisServer;
/// let mut redis = RedisServer::start();
/// assert!(redis.url().starts_with("redis://127.0.0.1:"));
/// redis.kill();    // SIGKILL: an outage
/// redis.restart(); // back on the same port, empty
/// ```
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts one on a free port and waits (at most 10 s) until it listens.
    ///
    /// # Panics
    ///
    /// If `redis-server` cannot be started or does not listen in time: a test harness.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        Self::start_on(port)
    }

    /// Starts one on `port` and waits (at most 10 s) until it listens.
    ///
    /// # Panics
    ///
    /// If `redis-server` cannot be started or does not listen in time.
    pub fn start_on(port: u16) -> Self {
        let mut s = Self { child: None, port };
        s.restart();
        s
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL and reaps it (nothing is saved).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `SIG<name>` (`STOP` freezes it without closing its connections, `CONT` thaws it).
    ///
    /// # Panics
    ///
    /// If it is not running or `kill` fails.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} {pid}");
    }

    /// Starts it again on the same port (empty), after [`kill`](Self::kill).
    ///
    /// # Panics
    ///
    /// If `redis-server` cannot be started or does not listen within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): the redis tests need it on PATH \
                     (apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
