//! [`ProcessDriver`]: instances as local child processes.

use crate::instance::Instance;
use degrade_core::{BoxError, ConfigError};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use super::{CommandSpec, Driver, HealthCheck};

/// Runs each instance as a local child process: the command configured for its version on
/// its port; stop sends SIGTERM, then SIGKILL after `stop_grace`; health is an HTTP GET or a
/// TCP connect. Spare addresses make surge upgrades possible.
///
/// Each child is owned by a small supervisor task that reaps it the moment it exits, so
/// [`exited`](Driver::exited) reports a crash at once (and [`health`](Driver::health) fails
/// from then on); stop signals go through the supervisor, never to a pid that may have been
/// reused. Children are killed when the driver is dropped.
///
/// ```no_run
/// use degrade_rollout::{Driver, Instance, ProcessDriver, driver::{CommandSpec, HealthCheck}};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let server = |v: &str| CommandSpec::new("./my-server").args(["--port", "{port}", "--version", v]);
/// let driver = ProcessDriver::builder()
///     .version("v1", server("v1"))
///     .version("v2", server("v2"))
///     .health(HealthCheck::http("/healthz", 200))
///     .spare("127.0.0.1:9100".parse()?)
///     .build()?;
/// let web1 = Instance::new("web-1", "127.0.0.1:9001".parse()?, "v1");
/// driver.start(&web1).await?;
/// driver.wait_healthy(&web1, std::time::Duration::from_secs(10)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ProcessDriver {
    commands: BTreeMap<String, CommandSpec>,
    health: HealthCheck,
    stop_grace: Duration,
    quiet: bool,
    children: Mutex<HashMap<SocketAddr, Supervised>>,
    spare: Mutex<Vec<SocketAddr>>,
}

/// Builds a [`ProcessDriver`].
///
/// ```
/// use degrade_rollout::{ProcessDriver, driver::CommandSpec};
/// assert_eq!(ProcessDriver::builder().build().unwrap_err().field(), "versions");
/// let d = ProcessDriver::builder().version("v1", CommandSpec::new("true")).build().unwrap();
/// assert!(d.versions().eq(["v1"]));
/// ```
#[derive(Debug, Clone)]
pub struct ProcessDriverBuilder {
    commands: BTreeMap<String, CommandSpec>,
    health: HealthCheck,
    stop_grace: Duration,
    quiet: bool,
    spare: Vec<SocketAddr>,
}

impl ProcessDriverBuilder {
    /// The command running `version`.
    #[must_use]
    pub fn version(mut self, version: impl Into<String>, command: CommandSpec) -> Self {
        self.commands.insert(version.into(), command);
        self
    }

    /// The health check (default: TCP connect).
    #[must_use]
    pub fn health(mut self, check: HealthCheck) -> Self {
        self.health = check;
        self
    }

    /// Time between SIGTERM and SIGKILL (default 10 s).
    #[must_use]
    pub fn stop_grace(mut self, grace: std::time::Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// A spare address for surge replacements (repeat for more).
    #[must_use]
    pub fn spare(mut self, address: SocketAddr) -> Self {
        self.spare.push(address);
        self
    }

    /// Whether children's stdout and stderr are discarded (default) or inherited.
    #[must_use]
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// No version, an empty program, a zero grace period, or a duplicate spare address.
    ///
    /// ```
    /// # use degrade_rollout::{ProcessDriver, driver::CommandSpec};
    /// let err = ProcessDriver::builder().version("v1", CommandSpec::new("")).build().unwrap_err();
    /// assert_eq!(err.field(), "versions.v1.program");
    /// ```
    pub fn build(self) -> Result<ProcessDriver, ConfigError> {
        if self.commands.is_empty() {
            return Err(ConfigError::new(
                "versions",
                "at least one version is needed",
            ));
        }
        for (v, c) in &self.commands {
            if c.program.as_os_str().is_empty() {
                return Err(ConfigError::new(
                    format!("versions.{v}.program"),
                    "must not be empty",
                ));
            }
        }
        if self.stop_grace.is_zero() {
            return Err(ConfigError::new("stop_grace", "must be greater than zero"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.spare.iter().find(|a| !seen.insert(**a)) {
            return Err(ConfigError::new(
                "spare",
                format!("duplicate address {dup}"),
            ));
        }
        Ok(ProcessDriver {
            commands: self.commands,
            health: self.health,
            stop_grace: self.stop_grace,
            quiet: self.quiet,
            children: Mutex::new(HashMap::new()),
            spare: Mutex::new(self.spare),
        })
    }
}

/// A signal for a supervised child.
#[derive(Debug, Clone, Copy)]
enum Signal {
    Term,
    Kill,
}

/// A child process as the driver sees it: its pid, how it exited (once it has), and the
/// channel to its supervisor.
#[derive(Debug)]
struct Supervised {
    pid: Option<u32>,
    exit: watch::Receiver<Option<String>>,
    signals: mpsc::UnboundedSender<Signal>,
}

impl Supervised {
    /// Spawns the supervisor of `child` (on the current runtime).
    fn spawn(child: Child) -> Self {
        let pid = child.id();
        let (exit_tx, exit) = watch::channel(None);
        let (signals, rx) = mpsc::unbounded_channel();
        tokio::spawn(supervise(child, rx, exit_tx));
        Self { pid, exit, signals }
    }

    /// How it exited, once it has.
    fn exit(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Waits until it has exited (or its supervisor is gone with the runtime).
    async fn wait(&mut self) {
        let _ = self.exit.wait_for(Option::is_some).await;
    }
}

/// Owns `child`: reaps it as soon as it exits and publishes how; sends it the signals the
/// driver asks for; kills it when the driver lets go of it (dropped).
async fn supervise(
    mut child: Child,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    exit: watch::Sender<Option<String>>,
) {
    let mut listening = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            signal = signals.recv(), if listening => match signal {
                Some(Signal::Term) => {
                    // The child is not reaped yet (only this task reaps it): the pid is its.
                    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                }
                Some(Signal::Kill) => {
                    let _ = child.start_kill();
                }
                None => {
                    listening = false;
                    let _ = child.start_kill();
                }
            },
        }
    };
    let why = match status {
        Ok(s) => format!("process exited ({s})"),
        Err(e) => format!("process lost: {e}"),
    };
    let _ = exit.send(Some(why));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ProcessDriver {
    /// A builder with no versions, a TCP health check and a 10 s stop grace period.
    ///
    /// ```
    /// # use degrade_rollout::ProcessDriver;
    /// assert!(ProcessDriver::builder().build().is_err());
    /// ```
    pub fn builder() -> ProcessDriverBuilder {
        ProcessDriverBuilder {
            commands: BTreeMap::new(),
            health: HealthCheck::Tcp,
            stop_grace: Duration::from_secs(10),
            quiet: true,
            spare: Vec::new(),
        }
    }

    /// The versions this driver can run.
    ///
    /// ```
    /// # use degrade_rollout::{ProcessDriver, driver::CommandSpec};
    /// let d = ProcessDriver::builder().version("b", CommandSpec::new("x")).version("a", CommandSpec::new("x")).build().unwrap();
    /// assert_eq!(d.versions().collect::<Vec<_>>(), ["a", "b"]);
    /// ```
    pub fn versions(&self) -> impl Iterator<Item = &str> {
        self.commands.keys().map(String::as_str)
    }

    /// The process id of the child serving `address`, if the driver started one that is
    /// still known to it.
    ///
    /// ```
    /// # use degrade_rollout::{ProcessDriver, driver::CommandSpec};
    /// let d = ProcessDriver::builder().version("v1", CommandSpec::new("x")).build().unwrap();
    /// assert_eq!(d.pid("127.0.0.1:1".parse().unwrap()), None);
    /// ```
    pub fn pid(&self, address: SocketAddr) -> Option<u32> {
        lock(&self.children)
            .get(&address)
            .filter(|c| c.exit().is_none())
            .and_then(|c| c.pid)
    }

    /// Checks health every 50 ms until it passes or `timeout` elapses (for bringing up the
    /// initial instances).
    ///
    /// # Errors
    ///
    /// The last health error when the time is up.
    ///
    /// ```no_run
    /// # use degrade_rollout::{Driver, Instance, ProcessDriver, driver::CommandSpec};
    /// # async fn demo(d: ProcessDriver, i: Instance) -> Result<(), degrade_core::BoxError> {
    /// d.start(&i).await?;
    /// d.wait_healthy(&i, std::time::Duration::from_secs(10)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_healthy(
        &self,
        instance: &Instance,
        timeout: Duration,
    ) -> Result<(), BoxError> {
        let started = tokio::time::Instant::now();
        loop {
            let err =
                match tokio::time::timeout(Duration::from_secs(2), self.health(instance)).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e)) => e,
                    Err(_) => "health check timed out".into(),
                };
            if crate::deadline::elapsed(started, tokio::time::Instant::now(), timeout) {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn command(&self, instance: &Instance) -> Result<Command, BoxError> {
        let spec = self
            .commands
            .get(&instance.version)
            .ok_or_else(|| format!("unknown version `{}`", instance.version))?;
        let fill = |s: &str| {
            s.replace("{port}", &instance.address.port().to_string())
                .replace("{host}", &instance.address.ip().to_string())
                .replace("{address}", &instance.address.to_string())
                .replace("{version}", &instance.version)
                .replace("{id}", &instance.id)
        };
        let program = fill(&spec.program.to_string_lossy());
        let mut cmd = Command::new(program);
        cmd.args(spec.args.iter().map(|a| fill(a)))
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if self.quiet {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        Ok(cmd)
    }
}

impl Driver for ProcessDriver {
    fn check_version(&self, version: &str) -> Result<(), ConfigError> {
        if self.commands.contains_key(version) {
            Ok(())
        } else {
            Err(ConfigError::new(
                "target",
                format!("unknown version `{version}`: the driver has no command for it"),
            ))
        }
    }

    async fn stop(&self, instance: &Instance) -> Result<(), BoxError> {
        let child = lock(&self.children).remove(&instance.address);
        let Some(mut child) = child else {
            return Ok(());
        };
        if child.exit().is_some() {
            return Ok(());
        }
        let _ = child.signals.send(Signal::Term);
        if tokio::time::timeout(self.stop_grace, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(instance = %instance.id, address = %instance.address, "no exit after SIGTERM: SIGKILL");
            let _ = child.signals.send(Signal::Kill);
            child.wait().await;
        }
        Ok(())
    }

    async fn install(&self, instance: &Instance, version: &str) -> Result<(), BoxError> {
        // A local process needs nothing installed: each version has its command.
        if self.commands.contains_key(version) {
            Ok(())
        } else {
            Err(format!("unknown version `{version}` for `{}`", instance.id).into())
        }
    }

    async fn start(&self, instance: &Instance) -> Result<(), BoxError> {
        let mut children = lock(&self.children);
        if let Some(child) = children.get(&instance.address)
            && child.exit().is_none()
        {
            return Ok(()); // already running
        }
        let child = self.command(instance)?.spawn()?;
        children.insert(instance.address, Supervised::spawn(child));
        Ok(())
    }

    async fn health(&self, instance: &Instance) -> Result<(), BoxError> {
        let exited = lock(&self.children)
            .get(&instance.address)
            .and_then(Supervised::exit);
        if let Some(why) = exited {
            return Err(why.into());
        }
        let mut stream = TcpStream::connect(instance.address).await?;
        let HealthCheck::Http {
            path,
            expect_status,
        } = &self.health
        else {
            return Ok(());
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            instance.address
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                format!(
                    "not an HTTP answer: {:?}",
                    line.lines().next().unwrap_or("")
                )
            })?;
        if status == *expect_status {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}, expected {expect_status}").into())
        }
    }

    async fn exited(&self, instance: &Instance) -> BoxError {
        let exit = lock(&self.children)
            .get(&instance.address)
            .map(|c| c.exit.clone());
        let why = match exit {
            Some(mut exit) => match exit.wait_for(Option::is_some).await {
                Ok(why) => why.clone(),
                Err(_) => None,
            },
            None => None,
        };
        match why {
            Some(why) => why.into(),
            // Not a child of this driver, or its supervisor went with the runtime: nothing
            // will be reported (the health checks still see the instance).
            None => std::future::pending().await,
        }
    }

    async fn allocate(&self, instance: &Instance) -> Result<SocketAddr, BoxError> {
        let mut spare = lock(&self.spare);
        if spare.is_empty() {
            return Err(format!("no spare address for a replacement of `{}`", instance.id).into());
        }
        Ok(spare.remove(0))
    }

    async fn release(&self, instance: &Instance) -> Result<(), BoxError> {
        let mut spare = lock(&self.spare);
        if !spare.contains(&instance.address) {
            spare.push(instance.address);
        }
        Ok(())
    }
}
