//! A real `redis-server` ([`RedisServer`]) and a real three-master Redis Cluster
//! ([`RedisCluster`]) for tests (features `redis` and `test-util`): started on free ports of
//! 127.0.0.1, without persistence, killed on drop. `redis-server` (and `redis-cli` for the
//! cluster) must be on `PATH`.

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
        // A port found free may be taken again before redis-server binds it (by another
        // test's server or an outgoing connection): then this server exits, and a plain
        // "does the port accept connections" would hand the test somebody else's server.
        // [`launch`](Self::launch) checks that the server listening is this child; on a
        // lost race, another port.
        for _ in 0..8 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port on 127.0.0.1");
            let mut s = Self { child: None, port };
            if s.launch().is_ok() {
                return s;
            }
        }
        panic!("redis-server did not start on any of 8 free ports");
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
        if let Err(why) = self.launch() {
            panic!("redis-server on port {}: {why}", self.port);
        }
    }

    /// Starts the child on `self.port` and waits until *it* listens there: the server that
    /// answers must report the child's process id (`INFO server`), and a child that exits
    /// (its port taken) is an error.
    fn launch(&mut self) -> Result<(), String> {
        self.kill();
        self.child = Some(spawn_confirmed(self.port, &[])?);
        Ok(())
    }
}

/// Starts `redis-server --port <port> <extra…>` (no persistence) and waits until *it* listens
/// there: the server that answers must report the child's process id (`INFO server`). A child
/// that exits (its port was taken meanwhile) or another server answering is an error — the
/// caller picks another port — so a test never gets somebody else's server.
fn spawn_confirmed(port: u16, extra: &[&str]) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(extra)
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
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let fail = |mut child: Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        Err(why)
    };
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server on {port} exited ({status}): the port is taken"
            ));
        }
        match server_pid(port) {
            Some(p) if p == pid => return Ok(child),
            Some(other) => {
                return fail(
                    child,
                    format!("another redis-server (pid {other}) has port {port}"),
                );
            }
            None if Instant::now() >= deadline => {
                return fail(
                    child,
                    format!("redis-server did not listen on {port} within 10 s"),
                );
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The process id of the redis-server listening on `port` (`INFO server`'s `process_id`), or
/// `None` while nothing answers.
fn server_pid(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    // The section is a few hundred bytes; read until the field has come (bounded).
    let mut reply = Vec::with_capacity(4096);
    let mut buf = [0u8; 1024];
    while reply.len() < 64 * 1024 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(rest) = text.split("process_id:").nth(1)
            && let Some(line) = rest.split("\r\n").next()
            && rest.contains("\r\n")
        {
            return line.trim().parse().ok();
        }
    }
    None
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port whose cluster-bus port (`port + 10000`) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Runs `redis-cli -p <port> <args>` and returns its standard output.
///
/// # Panics
///
/// If `redis-cli` is not on `PATH`.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `redis-server --cluster-enabled yes`.
#[derive(Debug)]
struct ClusterNode {
    child: Option<Child>,
    port: u16,
}

impl ClusterNode {
    fn start(port: u16, dir: &std::path::Path, node_timeout_ms: u32) -> Result<Self, String> {
        let config = format!("nodes-{port}.conf");
        let timeout = node_timeout_ms.to_string();
        let dir = dir.to_string_lossy();
        let child = spawn_confirmed(
            port,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &config,
                "--cluster-node-timeout",
                &timeout,
                "--dir",
                &dir,
            ],
        )?;
        Ok(Self {
            child: Some(child),
            port,
        })
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A real Redis Cluster for tests (features `redis` and `test-util`): three masters (and
/// replicas if asked) on free ports of 127.0.0.1, joined by `redis-cli --cluster create`,
/// without persistence, killed on drop. `redis-server` and `redis-cli` must be on `PATH`.
///
/// ```no_run
/// use degrade_core::fleet::testing::RedisCluster;
/// let mut cluster = RedisCluster::start();
/// assert_eq!(cluster.urls().len(), 3);
/// let owner = cluster.owner("my-key").unwrap(); // the master serving the key's slot
/// cluster.kill(owner);    // SIGKILL
/// cluster.restart(owner); // back on the same port, with its cluster config
/// cluster.wait_ok();
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    dir: std::path::PathBuf,
    node_timeout_ms: u32,
}

impl RedisCluster {
    /// Three masters, no replicas, a 5 s node timeout; waits until the cluster is ok.
    ///
    /// # Panics
    ///
    /// If the nodes cannot be started or the cluster is not ok within 30 s.
    pub fn start() -> Self {
        Self::start_with(0, 5000)
    }

    /// Three masters with `replicas` replicas each; `node_timeout_ms` is the cluster's node
    /// timeout (how long before a silent master is failed over).
    ///
    /// # Panics
    ///
    /// If the nodes cannot be started or the cluster is not ok within 30 s.
    pub fn start_with(replicas: usize, node_timeout_ms: u32) -> Self {
        let ports: Vec<u16> = (0..3 * (1 + replicas))
            .map(|_| free_cluster_port())
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "degrade-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let nodes: Vec<ClusterNode> = ports
            .iter()
            .map(|&p| {
                // A port lost to another test between the check and the bind: another one.
                ClusterNode::start(p, &dir, node_timeout_ms).unwrap_or_else(|_| {
                    (0..8)
                        .find_map(|_| {
                            ClusterNode::start(free_cluster_port(), &dir, node_timeout_ms).ok()
                        })
                        .expect("a cluster node on one of 8 free ports")
                })
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self {
            nodes,
            dir,
            node_timeout_ms,
        };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every running node reports `cluster_state:ok` and knows all the others.
    ///
    /// # Panics
    ///
    /// If that takes more than 30 s.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let known = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info = cli(n.port, &["cluster", "info"]);
                info.contains("cluster_state:ok") && info.contains(&known)
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "cluster never reached state ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:<port>` of every node, in the order started.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// The index of the running master that serves `key`'s slot (answers `GET` with neither
    /// `MOVED` nor `CLUSTERDOWN` nor another error), if any.
    pub fn owner(&self, key: &str) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.child.is_some() && {
                let out = cli(n.port, &["get", key]);
                !["MOVED", "CLUSTERDOWN", "ERR"]
                    .iter()
                    .any(|e| out.contains(e))
            }
        })
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its port, with its cluster configuration file (it rejoins as
    /// the node it was; its data is gone). Call [`wait_ok`](Self::wait_ok) after.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        let port = self.nodes[i].port;
        self.nodes[i] = ClusterNode::start(port, &self.dir, self.node_timeout_ms)
            .unwrap_or_else(|why| panic!("cluster node restart: {why}"));
    }

    /// Waits until every replica's link to its master is up (a replica that never synced
    /// refuses to fail over: its data is too old).
    ///
    /// # Panics
    ///
    /// If that takes more than 30 s.
    pub fn wait_replicas_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.nodes.iter().all(|n| {
            let info = cli(n.port, &["info", "replication"]);
            info.contains("role:master") || info.contains("master_link_status:up")
        }) {
            assert!(Instant::now() < deadline, "replicas never synced");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A node dropped on its own (a cluster whose start failed part-way) does not outlive the test.
impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::RedisServer;

    /// A server asked for a port another server already holds does not mistake the other
    /// one for itself (its child exits, or the one answering has another process id).
    #[test]
    fn a_server_whose_port_is_taken_is_refused_not_mistaken_for_the_other() {
        let held = RedisServer::start();
        let port = held.port();
        let second = std::panic::catch_unwind(|| RedisServer::start_on(port));
        assert!(second.is_err(), "started on a port another server holds");
        // The first one is untouched, and a fresh start finds a port of its own.
        let other = RedisServer::start();
        assert_ne!(other.port(), port);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    }
}
