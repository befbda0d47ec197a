//! One engine instance serving over NATS in a task, until stopped: the
//! harness of the engine and guard integration tests.

use std::path::Path;
use std::time::Duration;

use mandate::engine::{Engine, EngineConfig, EngineError};
use mandate::log::{EventLog, JetStreamConfig};

/// An engine instance on its own connection, serving until stopped.
pub struct Instance {
    pub engine: Engine,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), EngineError>>>,
}

#[allow(dead_code)]
impl Instance {
    /// An instance with the default settings, but open tenants allowed (the
    /// suites act without authentication unless they test it), beacons five
    /// times a second (so guards' leases of a second or two hold while it
    /// serves), and its projection under `dir`.
    pub async fn start(url: &str, dir: &Path) -> Self {
        let config = EngineConfig {
            allow_open_tenants: true,
            beacon_interval: Duration::from_millis(200),
            ..EngineConfig::default()
        };
        Self::start_with(url, dir, config).await
    }

    /// An instance with `config`, exactly (open tenants only if it allows
    /// them), and its projection under `dir`.
    pub async fn start_with(url: &str, dir: &Path, config: EngineConfig) -> Self {
        let nc = async_nats::connect(url).await.expect("connect the engine");
        let engine = Engine::nats(nc, dir, JetStreamConfig::default(), config)
            .await
            .expect("open the engine");
        let (tx, task) = serve_in_task(&engine);
        Self {
            engine,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops serving, waits for the drain, and drops the engine (closing its
    /// projection, so another instance may open the same directory).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("the engine stops within 15 s")
                .expect("the engine task does not panic")
                .expect("the engine stops cleanly");
        }
    }

    /// The log's last position.
    pub async fn log_position(&self) -> u64 {
        self.engine.log().last_position().await.unwrap()
    }

    /// Waits (at most 30 s: a reconnect on two busy cores can take a while)
    /// until this instance's projection has applied the whole log.
    pub async fn caught_up(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self
            .engine
            .health()
            .await
            .map(|h| h.lag == 0)
            .unwrap_or(false)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the projection never caught up with the log"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Serves `engine` in a task until the returned sender fires (or is
/// dropped); the task's result is how the engine ended.
pub fn serve_in_task(
    engine: &Engine,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), EngineError>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = engine.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(async move {
                let _ = rx.await;
            })
            .await
    });
    (tx, task)
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
