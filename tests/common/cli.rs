//! Running the `mandate` binary, and the steps of the README's walkthrough
//! the CLI suites share. Not every test binary uses every helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `mandate` binary on the data directory `data`, with `args`, and none
/// of the `MANDATE_*` settings of the environment it runs in.
pub fn mandate_cmd(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mandate"));
    c.arg("--data")
        .arg(data)
        .args(args)
        .env_remove("MANDATE_NATS")
        .env_remove("MANDATE_TENANT")
        .env_remove("MANDATE_ACTOR");
    c
}

/// Runs [`mandate_cmd`] to its end.
pub fn mandate(data: &Path, args: &[&str]) -> Output {
    mandate_cmd(data, args)
        .output()
        .expect("run the mandate binary")
}

/// Standard output followed by standard error.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Standard output alone.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Asserts `out` exited with `code` and said each of `needles` (on stdout
/// or stderr); returns all it said.
pub fn says(out: &Output, code: i32, needles: &[&str]) -> String {
    let said = text(out);
    assert_eq!(out.status.code(), Some(code), "{said}");
    for needle in needles {
        assert!(said.contains(needle), "{needle:?} not said: {said}");
    }
    said
}

/// The JSON a successful `--json` command printed.
pub fn ok_json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// The mandate a successful `--json` issue or delegate names.
pub fn mandate_in(out: &Output) -> String {
    ok_json(out)["mandate"]
        .as_str()
        .expect("the result names its mandate")
        .to_string()
}

/// `mandate issue` on the embedded engine under `data`, as principal cfo: a
/// root to `agent` for `purpose` granting `grant`, with `more` arguments
/// after, and `--json` output if `json`.
pub fn cfo_issues(
    data: &Path,
    json: bool,
    agent: &str,
    purpose: &str,
    grant: &str,
    more: &[&str],
) -> Output {
    let mut args = vec!["--actor", "principal:cfo"];
    if json {
        args.push("--json");
    }
    args.extend(["issue", "--principal", "cfo", "--agent", agent]);
    args.extend(["--purpose", purpose, "--grant", grant]);
    args.extend(more);
    mandate(data, &args)
}

/// The walkthrough's first step: the cfo issues research-lead a root to
/// evaluate Acme, reading every report, with `more` arguments after (e.g.
/// `--mission-ref`); returns its id.
pub fn issue_root(data: &Path, more: &[&str]) -> String {
    let grant = "finance:read on reports/**";
    mandate_in(&cfo_issues(
        data,
        true,
        "research-lead",
        "Evaluate Acme",
        grant,
        more,
    ))
}

/// `mandate delegate` as research-lead: `parent` to the analyst for the Q3
/// reports, with `more` arguments after (`--json` output if `json`).
pub fn lead_delegates(data: &Path, json: bool, parent: &str, more: &[&str]) -> Output {
    let mut args = vec!["--actor", "agent:research-lead"];
    if json {
        args.push("--json");
    }
    args.extend(["delegate", parent, "--agent", "analyst"]);
    args.extend(["--grant", "finance:read on reports/q3/*"]);
    args.extend(more);
    mandate(data, &args)
}

/// The walkthrough's second step: research-lead delegates `parent` to the
/// analyst for the Q3 reports; returns the new mandate's id.
pub fn delegate_to_analyst(data: &Path, parent: &str, more: &[&str]) -> String {
    mandate_in(&lead_delegates(data, true, parent, more))
}

/// `mandate <verb> <mandate>` as principal cfo (pause, resume, revoke,
/// complete), with `more` arguments after.
pub fn cfo_changes(data: &Path, verb: &str, mandate_id: &str, more: &[&str]) -> Output {
    let mut args = vec!["--actor", "principal:cfo", verb, mandate_id];
    args.extend(more);
    mandate(data, &args)
}

/// Lines a child prints on one of its pipes, as they come. The pipe is read
/// to its end, so the child never blocks on a full pipe.
pub fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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
pub fn line_with(rx: &mpsc::Receiver<String>, needle: &str, within: Duration) -> Option<String> {
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

/// Waits for `child` to exit; kills it and fails, naming `what`, after
/// `within`.
pub fn exit_within(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `cmd` without stdin; returns it and the lines of its stdout and
/// of its stderr, as they come.
pub fn spawn_reading(cmd: &mut Command) -> (Child, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the mandate binary");
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    (child, out, err)
}

/// `mandate watch <mandate>` on `data`, once it says it is watching: the
/// process, and the lines it prints on stdout.
pub fn watching(data: &Path, mandate_id: &str) -> (Child, mpsc::Receiver<String>) {
    let (watch, out, err) = spawn_reading(&mut mandate_cmd(data, &["watch", mandate_id]));
    assert!(
        line_with(&err, "watching", Duration::from_secs(30)).is_some(),
        "watch never started"
    );
    (watch, out)
}

/// `mandate status <root>` while a `watch` on the in-process engine holds
/// `data`: the walkthrough's root, watched.
pub fn status_while_watched(data: &Path) -> Output {
    let root = issue_root(data, &[]);
    let (mut holder, _) = watching(data, &root);
    let out = mandate(data, &["status", &root]);
    kill(&mut holder);
    out
}

/// Stops a child this test started, and reaps it.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `mandate serve` on `data` with `args` and then `listen_flag ADDR`, ADDR
/// a free local address for one of its HTTP listeners, its stderr written to
/// `log`; returned (the process and ADDR) once ADDR accepts connections. A
/// port taken between the choice and the bind (another test's) makes the
/// process exit saying it cannot listen there: then it starts again on
/// another port, five times at most. Any other exit fails the test.
pub async fn serve_listening(
    data: &Path,
    args: &[&str],
    listen_flag: &str,
    log: &Path,
) -> (Child, String) {
    for _attempt in 0..5 {
        let addr = format!("127.0.0.1:{}", super::free_port());
        let mut all = args.to_vec();
        all.extend_from_slice(&[listen_flag, &addr]);
        let mut child = mandate_cmd(data, &all)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start mandate serve");
        let deadline = Instant::now() + super::fixtures::PATIENCE;
        let mut ended = child.try_wait().unwrap().is_some();
        while !ended && std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "{listen_flag} {addr} never listened"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
            ended = child.try_wait().unwrap().is_some();
        }
        if ended {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            assert!(said.contains("cannot listen there"), "serve ended: {said}");
            continue;
        }
        return (child, addr);
    }
    panic!("no free port for {listen_flag} in five attempts");
}
