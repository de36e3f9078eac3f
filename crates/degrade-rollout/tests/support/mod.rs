//! A driver that succeeds at once (or fails the install of one instance) and remembers every
//! call: for tests of the journal, where the platform is not under test (`tests/process.rs`
//! drives real processes).

#![allow(dead_code, unreachable_pub)]

use degrade_core::BoxError;
use degrade_rollout::{Driver, Instance};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct Recorder {
    calls: Arc<Mutex<Vec<(String, &'static str)>>>,
    /// Installing the target on this instance fails.
    pub fail_install_of: Option<&'static str>,
    next_port: Arc<AtomicU16>,
}

impl Recorder {
    /// A driver whose install of the target on `id` fails.
    pub fn failing_install_of(id: &'static str) -> Self {
        Self {
            fail_install_of: Some(id),
            ..Self::default()
        }
    }

    fn note(&self, i: &Instance, what: &'static str) {
        self.calls.lock().unwrap().push((i.id.clone(), what));
    }

    pub fn calls(&self) -> Vec<(String, &'static str)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Driver for Recorder {
    async fn stop(&self, i: &Instance) -> Result<(), BoxError> {
        self.note(i, "stop");
        Ok(())
    }
    async fn install(&self, i: &Instance, version: &str) -> Result<(), BoxError> {
        self.note(i, "install");
        if version == "v2" && self.fail_install_of == Some(i.id.as_str()) {
            return Err("disk full".into());
        }
        Ok(())
    }
    async fn start(&self, i: &Instance) -> Result<(), BoxError> {
        self.note(i, "start");
        Ok(())
    }
    async fn health(&self, _: &Instance) -> Result<(), BoxError> {
        Ok(())
    }
    async fn allocate(&self, i: &Instance) -> Result<SocketAddr, BoxError> {
        self.note(i, "allocate");
        let port = 9000 + self.next_port.fetch_add(1, Ordering::Relaxed);
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    }
}
