//! The [`Driver`]: how instances are drained, stopped, upgraded, started and checked on a
//! platform, and [`ProcessDriver`] for local processes.

use crate::instance::Instance;
use degrade_core::{BoxError, ConfigError};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

mod process;

pub use process::{ProcessDriver, ProcessDriverBuilder};

/// The platform operations a rollout needs. Implement it for your platform (systemd units,
/// containers, VMs); [`ProcessDriver`] runs local processes.
///
/// Every operation must be idempotent: after a controller restart, a step whose completion
/// was not journaled is performed again (stopping a stopped instance or starting a running
/// one succeeds without doing anything).
///
/// The controller has already taken an instance out of the balancer and waited for its
/// in-flight requests before calling [`drain`](Driver::drain), which is for platform-side
/// draining (deregistering from an external load balancer); the default does nothing.
///
/// ```
/// use degrade_rollout::{Driver, Instance};
/// use degrade_core::BoxError;
///
/// #[derive(Debug)]
/// struct Noop;
/// impl Driver for Noop {
///     async fn stop(&self, _: &Instance) -> Result<(), BoxError> { Ok(()) }
///     async fn install(&self, _: &Instance, _version: &str) -> Result<(), BoxError> { Ok(()) }
///     async fn start(&self, _: &Instance) -> Result<(), BoxError> { Ok(()) }
///     async fn health(&self, _: &Instance) -> Result<(), BoxError> { Ok(()) }
/// }
/// ```
pub trait Driver: Send + Sync + 'static {
    /// Rejects a version the driver cannot install (checked before the rollout starts).
    /// The default accepts every version.
    fn check_version(&self, version: &str) -> Result<(), ConfigError> {
        let _ = version;
        Ok(())
    }

    /// Platform-side drain of an instance already out of the balancer. Default: nothing.
    fn drain(&self, instance: &Instance) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = instance;
        async { Ok(()) }
    }

    /// Stops the instance (succeeds when it is not running).
    fn stop(&self, instance: &Instance) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Installs `version` on the (stopped) instance.
    fn install(
        &self,
        instance: &Instance,
        version: &str,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Starts the instance with the version it has (`instance.version`).
    fn start(&self, instance: &Instance) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// One health check: `Ok` when healthy.
    fn health(&self, instance: &Instance) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Resolves when the instance's process exits — crashes, is killed, or is stopped by
    /// someone else than the rollout — with how it exited. The rollout watches every instance
    /// it starts on the target version this way until it ends (including the post-rollout
    /// watch) and rolls back when one exits; it drops the future when it no longer cares
    /// (exits it caused itself are ignored). The default never resolves: on a platform that
    /// cannot tell, the watch's health checks see a dead instance after `failure_threshold`
    /// checks instead of at once.
    ///
    /// ```
    /// use degrade_rollout::{Driver, Instance};
    /// use degrade_core::BoxError;
    /// # #[derive(Debug)] struct Noop;
    /// # impl Driver for Noop {
    /// #     async fn stop(&self, _: &Instance) -> Result<(), BoxError> { Ok(()) }
    /// #     async fn install(&self, _: &Instance, _: &str) -> Result<(), BoxError> { Ok(()) }
    /// #     async fn start(&self, _: &Instance) -> Result<(), BoxError> { Ok(()) }
    /// #     async fn health(&self, _: &Instance) -> Result<(), BoxError> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let i = Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1");
    /// // A driver that cannot tell never reports an exit.
    /// let exit = tokio::time::timeout(std::time::Duration::from_millis(10), Noop.exited(&i)).await;
    /// assert!(exit.is_err());
    /// # }
    /// ```
    fn exited(&self, instance: &Instance) -> impl Future<Output = BoxError> + Send {
        let _ = instance;
        std::future::pending()
    }

    /// A spare address for a surge replacement of `instance`. The default refuses: a driver
    /// without spare capacity supports only in-place upgrades (max surge 0).
    fn allocate(
        &self,
        instance: &Instance,
    ) -> impl Future<Output = Result<SocketAddr, BoxError>> + Send {
        let _ = instance;
        async {
            Err::<SocketAddr, BoxError>("this driver has no spare addresses for a surge".into())
        }
    }

    /// Gives back the address of a retired (stopped) instance. Default: nothing.
    fn release(&self, instance: &Instance) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = instance;
        async { Ok(()) }
    }
}

impl<D: Driver> Driver for Arc<D> {
    fn check_version(&self, version: &str) -> Result<(), ConfigError> {
        (**self).check_version(version)
    }
    fn drain(&self, instance: &Instance) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).drain(instance)
    }
    fn stop(&self, instance: &Instance) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).stop(instance)
    }
    fn install(
        &self,
        instance: &Instance,
        version: &str,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).install(instance, version)
    }
    fn start(&self, instance: &Instance) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).start(instance)
    }
    fn health(&self, instance: &Instance) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).health(instance)
    }
    fn exited(&self, instance: &Instance) -> impl Future<Output = BoxError> + Send {
        (**self).exited(instance)
    }
    fn allocate(
        &self,
        instance: &Instance,
    ) -> impl Future<Output = Result<SocketAddr, BoxError>> + Send {
        (**self).allocate(instance)
    }
    fn release(&self, instance: &Instance) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).release(instance)
    }
}

/// The command that runs one version. In `program` and `args`, `{port}`, `{host}`,
/// `{address}`, `{version}` and `{id}` are replaced by the instance's values.
///
/// ```
/// use degrade_rollout::driver::CommandSpec;
/// let c = CommandSpec::new("/usr/bin/server").args(["--port", "{port}", "--version", "{version}"]);
/// assert_eq!(c.args.len(), 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandSpec {
    /// The program.
    pub program: PathBuf,
    /// Its arguments (with placeholders).
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl CommandSpec {
    /// A command without arguments.
    ///
    /// ```
    /// # use degrade_rollout::driver::CommandSpec;
    /// assert!(CommandSpec::new("server").args.is_empty());
    /// ```
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Appends arguments.
    ///
    /// ```
    /// # use degrade_rollout::driver::CommandSpec;
    /// assert_eq!(CommandSpec::new("s").args(["-v"]).args, vec!["-v"]);
    /// ```
    #[must_use]
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable.
    ///
    /// ```
    /// # use degrade_rollout::driver::CommandSpec;
    /// assert_eq!(CommandSpec::new("s").env("RUST_LOG", "info").env.len(), 1);
    /// ```
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// How [`ProcessDriver`] checks health.
///
/// ```
/// use degrade_rollout::driver::HealthCheck;
/// let h = HealthCheck::http("/healthz", 200);
/// assert!(matches!(h, HealthCheck::Http { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthCheck {
    /// `GET path` over HTTP/1.1 must answer `expect_status`.
    Http {
        /// The path, e.g. `/healthz`.
        path: String,
        /// The expected status code.
        expect_status: u16,
    },
    /// A TCP connection must succeed.
    Tcp,
}

impl HealthCheck {
    /// An HTTP check.
    ///
    /// ```
    /// # use degrade_rollout::driver::HealthCheck;
    /// assert_eq!(HealthCheck::http("/", 204), HealthCheck::Http { path: "/".into(), expect_status: 204 });
    /// ```
    pub fn http(path: impl Into<String>, expect_status: u16) -> Self {
        HealthCheck::Http {
            path: path.into(),
            expect_status,
        }
    }
}
