//! What every scenario stands on: a private nats-server (or the one given
//! with `--nats`), engines served in-process over it, and the clock reads.
//!
//! Each scenario gets a fresh server and store, so a figure never depends on
//! what ran before it; with `--nats` they share the given server and the
//! figures then include whatever else that server holds. With `--cluster`
//! the scenario gets a fresh three-node cluster instead (routes on
//! loopback, a store per node) and every stream is made with three
//! replicas, as `mandate serve --replicas 3` makes them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mandate::engine::{Engine, EngineConfig, EngineError};
use mandate::log::{EventLog, JetStreamConfig, JetStreamLog};

/// Every failure of the bench program: it reports and stops.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;
pub type BenchResult<T> = Result<T, BenchError>;

/// A failure with its own message.
pub fn fail<T>(message: impl Into<String>) -> BenchResult<T> {
    Err(message.into().into())
}

/// A directory removed when dropped (the bench has no dev-dependencies).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> BenchResult<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `nats-server` the scenarios start: found as `mandate serve` finds it
/// (`NATS_SERVER_BIN`, else `nats-server` on `PATH`, else Debian's
/// `/usr/sbin/nats-server`).
pub fn server_binary() -> BenchResult<PathBuf> {
    mandate::cli::bootstrap::server_binary()
        .map_err(|e| format!("{e} (or pass --nats URL or --nats-server PATH)").into())
}

/// The version line of a nats-server binary.
pub fn server_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// A nats-server with JetStream on a free local port and a private store,
/// killed (and its store removed) when dropped.
pub struct NatsServer {
    port: u16,
    child: Child,
    _store: TempDir,
}

impl NatsServer {
    pub fn start(bin: &Path) -> BenchResult<Self> {
        Self::start_with(bin, &[])
    }

    /// As [`NatsServer::start`], with `extra` arguments after the usual ones.
    fn start_with(bin: &Path, extra: &[String]) -> BenchResult<Self> {
        let mut last = String::new();
        // A port free a moment ago may be taken when the server binds it.
        for _ in 0..5 {
            let store = TempDir::new("mandate-bench-nats")?;
            let port = free_port()?;
            let child = Command::new(bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(store.path())
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            let mut server = NatsServer {
                port,
                child,
                _store: store,
            };
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                Err(e) => last = e,
            }
        }
        fail(format!("nats-server did not start: {last}"))
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status} on port {}", self.port));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no connection on port {} within 10 s", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> BenchResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Nodes of a `--cluster` run.
pub const CLUSTER_NODES: usize = 3;

/// The replicas of every stream on a `--cluster` run: one per node.
pub const CLUSTER_REPLICAS: usize = CLUSTER_NODES;

/// How long a fresh cluster may take to elect a JetStream meta leader and
/// place a stream of three replicas, on two busy cores.
const CLUSTER_READY: Duration = Duration::from_secs(60);

/// Refuses a server binary too old for replicated streams (2.9 clusters can
/// store two appends made on one tree head: see
/// [`mandate::log::MIN_CLUSTER_SERVER`]), naming the binary and its version.
pub fn check_cluster_server(bin: &Path) -> BenchResult<String> {
    Ok(cluster_version(bin, &server_version(bin))?)
}

/// The version in `line` (what `nats-server --version` printed for `bin`,
/// "nats-server: v2.15.1") if it may run a cluster, else why not.
fn cluster_version(bin: &Path, line: &str) -> Result<String, String> {
    let version = line
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .trim_start_matches('v')
        .to_string();
    mandate::log::check_server_for_replicas(&version, CLUSTER_REPLICAS).map_err(|e| {
        format!(
            "--cluster cannot run on {} ({line}): {e}; give a newer one with --nats-server PATH or NATS_SERVER_BIN",
            bin.display()
        )
    })?;
    Ok(version)
}

/// Three routed nodes on loopback, JetStream on each with its own store,
/// started from `bin`; ready once a stream of three replicas can be made.
async fn start_cluster(bin: &Path) -> BenchResult<Vec<NatsServer>> {
    let mut last = String::new();
    // A route port free a moment ago may be taken when a node binds it.
    for _ in 0..3 {
        let name = format!("mandate-bench-{}", uuid::Uuid::new_v4().simple());
        let routes = (0..CLUSTER_NODES)
            .map(|_| free_port())
            .collect::<BenchResult<Vec<u16>>>()?;
        let all = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::with_capacity(CLUSTER_NODES);
        for (i, port) in routes.iter().enumerate() {
            let extra = [
                "--server_name".to_string(),
                format!("n{i}"),
                "--cluster_name".to_string(),
                name.clone(),
                "--cluster".to_string(),
                format!("nats://127.0.0.1:{port}"),
                "--routes".to_string(),
                all.clone(),
            ];
            nodes.push(NatsServer::start_with(bin, &extra)?);
        }
        let deadline = Instant::now() + CLUSTER_READY;
        while Instant::now() < deadline {
            match probe_replicated(&nodes[0].url()).await {
                Ok(()) => return Ok(nodes),
                Err(e) => last = e,
            }
            if let Some(exited) = nodes
                .iter_mut()
                .find_map(|n| n.child.try_wait().ok().flatten())
            {
                last = format!("a node exited with {exited}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    fail(format!(
        "the cluster could not place a stream of {CLUSTER_REPLICAS} replicas: {last}"
    ))
}

/// One attempt at making (and deleting) a stream of three replicas.
async fn probe_replicated(url: &str) -> Result<(), String> {
    let nc = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(nc);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_CLUSTER_PROBE".into(),
        subjects: vec!["bench.cluster.probe".into()],
        num_replicas: CLUSTER_REPLICAS,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.delete_stream("BENCH_CLUSTER_PROBE")
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Where one scenario runs: its NATS server (or cluster nodes), and scratch
/// space.
pub struct Env {
    /// One client URL per node (one without `--cluster`).
    urls: Vec<String>,
    servers: Vec<NatsServer>,
    /// The replicas of every stream made or opened.
    replicas: usize,
    scratch: TempDir,
}

impl Env {
    /// A fresh private server started from `bin`, or the one at `nats`.
    pub fn new(nats: Option<&str>, bin: Option<&Path>) -> BenchResult<Self> {
        let (url, servers) = match nats {
            Some(url) => (url.to_string(), vec![]),
            None => {
                let bin = match bin {
                    Some(bin) => bin.to_path_buf(),
                    None => server_binary()?,
                };
                let server = NatsServer::start(&bin)?;
                (server.url(), vec![server])
            }
        };
        Ok(Self {
            urls: vec![url],
            servers,
            replicas: 1,
            scratch: TempDir::new("mandate-bench")?,
        })
    }

    /// A fresh three-node cluster started from `bin` (checked with
    /// [`check_cluster_server`] first), every stream on three replicas.
    pub async fn cluster(bin: &Path) -> BenchResult<Self> {
        check_cluster_server(bin)?;
        let servers = start_cluster(bin).await?;
        Ok(Self {
            urls: servers.iter().map(NatsServer::url).collect(),
            servers,
            replicas: CLUSTER_REPLICAS,
            scratch: TempDir::new("mandate-bench")?,
        })
    }

    /// The first node's URL.
    pub fn url(&self) -> &str {
        &self.urls[0]
    }

    /// The nodes connections can go to (1 without `--cluster`).
    pub fn nodes(&self) -> usize {
        self.urls.len()
    }

    /// The process id of the (first) nats-server this scenario started
    /// (none with `--nats`).
    pub fn server_pid(&self) -> Option<u32> {
        self.servers.first().map(NatsServer::pid)
    }

    /// The process ids of every nats-server this scenario started.
    pub fn server_pids(&self) -> Vec<u32> {
        self.servers.iter().map(NatsServer::pid).collect()
    }

    /// The event log's configuration: the default, on this run's replicas.
    pub fn log_config(&self) -> JetStreamConfig {
        JetStreamConfig {
            replicas: self.replicas,
            ..JetStreamConfig::default()
        }
    }

    /// The replicas of every stream this run makes.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// A fresh directory under this scenario's scratch space.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// A new connection of its own (to the first node).
    pub async fn connect(&self) -> BenchResult<async_nats::Client> {
        self.connect_to(0).await
    }

    /// A new connection of its own to node `node` (modulo the nodes there
    /// are).
    pub async fn connect_to(&self, node: usize) -> BenchResult<async_nats::Client> {
        let url = &self.urls[node % self.urls.len()];
        Ok(async_nats::ConnectOptions::new()
            .subscription_capacity(1 << 20)
            .connect(url)
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?)
    }

    /// The event log, opened over a connection of its own.
    pub async fn log(&self) -> BenchResult<JetStreamLog> {
        Ok(JetStreamLog::open(self.connect().await?, self.log_config()).await?)
    }
}

/// The raw request-reply baseline: a trivial responder that answers every
/// request on a subject of its own with the request's payload, over the
/// connection it is given, until dropped.
pub struct Echo {
    subject: String,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    /// Subscribes on `nc` and answers in a task. A request sent on the same
    /// connection afterwards reaches it; one sent on another connection
    /// may arrive before the subscription is registered.
    pub async fn start(nc: &async_nats::Client) -> BenchResult<Self> {
        use futures::StreamExt;
        let subject = format!("bench.echo.{}", uuid::Uuid::new_v4().simple());
        let mut sub = nc.subscribe(subject.clone()).await?;
        let responder = nc.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(reply) = m.reply {
                    let _ = responder.publish(reply, m.payload).await;
                }
            }
        });
        Ok(Self { subject, task })
    }

    /// The subject it answers on.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One engine instance serving over NATS in a task, as `mandate serve` does,
/// until stopped, as `mandate serve` runs it (with open tenants): every
/// check it answers is recorded, through the instance's audit outbox.
pub struct Served {
    pub engine: Engine,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), EngineError>>>,
}

impl Served {
    /// Opens an engine with its projection under `dir` and serves it.
    pub async fn start(env: &Env, dir: &Path) -> BenchResult<Self> {
        Self::start_on(env, dir, 0).await
    }

    /// As [`Served::start`], connected to node `node` of a cluster (modulo
    /// its nodes), with every stream on the run's replicas.
    pub async fn start_on(env: &Env, dir: &Path, node: usize) -> BenchResult<Self> {
        let engine = Engine::nats(
            env.connect_to(node).await?,
            dir,
            env.log_config(),
            // The audit of checks stays on, as `mandate serve` runs it: a
            // remote check's figure includes sending its record.
            EngineConfig {
                allow_open_tenants: true,
                replicas: env.replicas(),
                // For the `tokens` scenario; nothing else asks for one.
                tokens: Some(std::sync::Arc::new(
                    mandate::engine::tokens::TokenKeys::ephemeral()?,
                )),
                ..EngineConfig::default()
            },
        )
        .await?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = engine.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(async move {
                    let _ = rx.await;
                })
                .await
        });
        // Serving starts in the task: wait until it answers, so a
        // scenario's first command does not find no one subscribed.
        let probe = env.connect_to(node).await?;
        let subject = format!("mandate.q.{}.health", crate::gen::tenant());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let asked = tokio::time::timeout(
                Duration::from_millis(500),
                probe.request(subject.clone(), "{}".into()),
            )
            .await;
            match asked {
                Ok(Ok(_)) => break,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                _ => return fail("the engine did not answer within 10 s of starting"),
            }
        }
        Ok(Self {
            engine,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// [`Served::caught_up`], and its projection written out: what is
    /// timed next is the command path, not sled writing a bulk load out in
    /// the background.
    pub async fn settled(&self, what: &str) -> BenchResult<()> {
        self.caught_up(what).await?;
        self.engine.store().flush().await?;
        Ok(())
    }

    /// Waits until the projection has applied the whole log, saying how far
    /// it is on stderr every few seconds.
    pub async fn caught_up(&self, what: &str) -> BenchResult<()> {
        let mut said = Instant::now();
        // A server ingesting a bulk load (the 100,000-mandate trees of
        // `growth`) may answer a stream request after its timeout: such a
        // read is asked again, until they fail for this long in a row.
        const UNANSWERED_FOR: Duration = Duration::from_secs(120);
        let mut failing_since: Option<Instant> = None;
        loop {
            let read = async {
                let h = self.engine.health().await?;
                let last = self.engine.log().last_position().await?;
                BenchResult::Ok((h, last))
            };
            let (h, last) = match read.await {
                Ok(read) => {
                    failing_since = None;
                    read
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > UNANSWERED_FOR {
                        return Err(e);
                    }
                    progress(&format!(
                        "{what}: the engine's position not read ({e}); asking again"
                    ));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if h.lag == 0 && h.position >= last {
                return Ok(());
            }
            if said.elapsed() > Duration::from_secs(5) {
                progress(&format!(
                    "{what}: projection at {} of {}",
                    h.position, h.log_position
                ));
                said = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops serving and waits for the drain (the projection is flushed).
    pub async fn stop(mut self) -> BenchResult<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.map_err(|e| format!("engine task: {e}"))??;
        }
        Ok(())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A line of progress on stderr (stdout carries only results).
pub fn progress(message: &str) {
    eprintln!("  .. {message}");
}

/// Resident memory of process `pid` (VmRSS), in bytes.
pub fn rss_bytes(pid: u32) -> BenchResult<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("unreadable VmRSS line {line:?}"))?;
    Ok(kib * 1024)
}

/// CPU time (user and system) process `pid` has used so far, or this
/// process's with `None`; from `/proc/<pid>/stat`.
pub fn cpu_time(pid: Option<u32>) -> BenchResult<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count the fields after its closing one. utime and stime are fields
    // 14 and 15, so the 12th and 13th after it.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("unreadable {path}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> BenchResult<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no field {} in {path}", i + 3).into())
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(
        total as f64 / clock_ticks_per_second(),
    ))
}

/// The unit of the times in `/proc/<pid>/stat`.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it takes no pointer.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// An engine serving in a process of its own (this program again, with
/// `--engine-process`: [`crate::rebuild::engine_process`]), so that what the
/// process uses (memory, CPU) is the engine's and nothing else's; stopped
/// (stdin closed, then killed if it lingers) when dropped.
pub struct EngineProcess(std::process::Child);

impl EngineProcess {
    /// Starts it with its projection under `env.dir(name)`, and waits until
    /// it serves.
    pub fn start(env: &Env, name: &str) -> BenchResult<Self> {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["memory", "--nats", env.url(), "--engine-process"])
            .arg(env.dir(name))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or("no stdout of the engine process")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        if line.trim() != "serving" {
            let _ = child.kill();
            return Err(format!("the engine process did not start (said {line:?})").into());
        }
        Ok(Self(child))
    }

    pub fn rss(&self) -> BenchResult<u64> {
        rss_bytes(self.0.id())
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        // Closing stdin stops it cleanly; kill it if it lingers.
        drop(self.0.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the engine behind NATS reports no lag at `position` or past,
/// saying how far it is every few seconds (for `what`).
pub async fn engine_caught_up(
    nc: &async_nats::Client,
    position: u64,
    what: &str,
) -> BenchResult<()> {
    let subject = format!("mandate.q.{}.health", crate::gen::tenant());
    let mut said = Instant::now();
    loop {
        let reply = nc.request(subject.clone(), "{}".into()).await?;
        let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        let at = v["result"]["position"].as_u64().unwrap_or(0);
        if at >= position && v["result"]["lag"].as_u64() == Some(0) {
            return Ok(());
        }
        if said.elapsed() > Duration::from_secs(5) {
            progress(&format!("{what}: projection at {at} of {position}"));
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_needs_a_server_of_2_10_or_later() {
        let bin = Path::new("nats-server");
        for ok in ["nats-server: v2.10.0", "nats-server: v2.15.1"] {
            assert_eq!(
                cluster_version(bin, ok).as_deref(),
                Ok(&ok["nats-server: v".len()..])
            );
        }
        for old in [
            "nats-server: v2.9.10",
            "nats-server: v1.4.1",
            "unknown (no such file)",
            "",
        ] {
            let e = cluster_version(bin, old).unwrap_err();
            assert!(e.starts_with("--cluster cannot run on nats-server"), "{e}");
            assert!(e.contains("2.10 or later"), "{e}");
        }
    }
}
