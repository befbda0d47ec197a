//! The `mandate` binary as a newcomer uses it: the README's walkthrough on the
//! embedded engine, and exit codes that tell denied, not found, invalid input
//! and unavailable apart.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::cli::{cfo_issues, mandate, text};

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

#[test]
fn the_readme_walkthrough_works_and_exit_codes_tell_outcomes_apart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = ok_json(&mandate(
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
            "--mission-ref",
            "jira:FIN-42",
            "--grant",
            "finance:read on reports/**",
            "--ttl",
            "8h",
        ],
    ))["mandate"]
        .as_str()
        .unwrap()
        .to_string();
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

    let allowed = mandate(d, &["check", &kid, "finance:read", "reports/q3/financials"]);
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed));
    assert!(text(&allowed).contains("ALLOW"));

    let tree = mandate(d, &["tree", &kid]);
    assert!(tree.status.success());
    let drawn = text(&tree);
    assert!(
        drawn.contains("research-lead") && drawn.contains("└─") && drawn.contains("analyst"),
        "{drawn}"
    );

    let done = mandate(
        d,
        &[
            "--actor",
            "principal:cfo",
            "complete",
            "--mission",
            "jira:FIN-42",
        ],
    );
    assert!(done.status.success(), "{}", text(&done));

    let denied = mandate(d, &["check", &kid, "finance:read", "reports/q3/financials"]);
    assert_eq!(
        denied.status.code(),
        Some(1),
        "denied exits 1: {}",
        text(&denied)
    );
    assert!(text(&denied).contains("DENY"));

    let history = mandate(d, &["history", &root]);
    let h = text(&history);
    assert!(
        h.contains("mandate_issued")
            && h.contains("mission_completed")
            && h.contains("on behalf of principal cfo"),
        "{h}"
    );

    // Not found: 3. Invalid input: 2, naming what was wrong.
    let missing = mandate(d, &["status", "0190f5e2-7c1a-7b3e-9d2a-4f6b8c0d1e2f"]);
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing));
    let bad = mandate(
        d,
        &[
            "--actor",
            "agent:research-lead",
            "delegate",
            &root,
            "--agent",
            "x",
            "--grant",
            "fin*:read on reports",
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("fin*:read"), "{}", text(&bad));
    let bad_actor = mandate(d, &["--actor", "root", "status", &root]);
    assert_eq!(bad_actor.status.code(), Some(2));
    // Refused by the rules (the mandate is completed): 5.
    let refused = mandate(d, &["--actor", "principal:cfo", "pause", &kid]);
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));
    assert!(text(&refused).contains("completed"), "{}", text(&refused));
}

#[test]
fn an_unreachable_nats_server_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let out = mandate(dir.path(), &["--nats", "nats://127.0.0.1:1", "health"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("127.0.0.1:1"), "{}", text(&out));
}

fn mandate_os(
    data: &Path,
    args: &[std::ffi::OsString],
    env: &[(&str, &str)],
    stdout: std::process::Stdio,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mandate"));
    cmd.arg("--data")
        .arg(data)
        .args(args)
        .env_remove("MANDATE_NATS")
        .env_remove("MANDATE_TENANT")
        .env_remove("MANDATE_ACTOR")
        .env("RUST_BACKTRACE", "1")
        .stdout(stdout)
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .expect("run the mandate binary")
        .wait_with_output()
        .expect("wait for the mandate binary")
}

fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
    args.iter().map(std::ffi::OsString::from).collect()
}

fn issue_as_cfo(d: &Path) -> String {
    let grant = "finance:read on reports/**";
    ok_json(&cfo_issues(
        d,
        true,
        "research-lead",
        "Evaluate Acme",
        grant,
        &[],
    ))["mandate"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_command_that_changes_authority_must_say_who_acts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Given no --actor and no MANDATE_ACTOR, when issuing, then exit 2 with
    // a message that says how to name the actor.
    let issue = [
        "issue",
        "--principal",
        "cfo",
        "--agent",
        "research-lead",
        "--purpose",
        "Evaluate Acme",
        "--grant",
        "finance:read on reports/**",
    ];
    let anonymous = mandate(d, &issue);
    assert_eq!(anonymous.status.code(), Some(2), "{}", text(&anonymous));
    assert!(
        text(&anonymous).contains("--actor") && text(&anonymous).contains("MANDATE_ACTOR"),
        "{}",
        text(&anonymous)
    );
    // MANDATE_ACTOR names the actor as well as --actor does.
    let named = mandate_os(
        d,
        &os(&[&["--json"][..], &issue[..]].concat()),
        &[("MANDATE_ACTOR", "principal:cfo")],
        std::process::Stdio::piped(),
    );
    let root = ok_json(&named)["mandate"].as_str().unwrap().to_string();
    // Every command that changes authority refuses without an actor, and
    // changes nothing.
    for args in [
        vec!["pause", root.as_str()],
        vec!["resume", root.as_str()],
        vec!["revoke", root.as_str()],
        vec!["complete", root.as_str()],
        vec!["complete", "--mission", "jira:FIN-42"],
        vec!["revoke-agent", "research-lead"],
        vec!["revoke-principal", "cfo"],
        vec![
            "delegate",
            root.as_str(),
            "--agent",
            "analyst",
            "--grant",
            "finance:read on reports/q3/*",
        ],
    ] {
        let out = mandate(d, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("--actor"), "{args:?}: {}", text(&out));
    }
    // Queries keep working without an actor, and nothing changed.
    let status = mandate(d, &["--json", "status", &root]);
    assert_eq!(ok_json(&status)["effective"]["status"], "active");
    let check = mandate(d, &["check", &root, "finance:read", "reports/q3"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
}

#[test]
fn huge_ttls_are_refused_as_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = issue_as_cfo(d);
    for ttl in ["99999999999d", "9223372036854775807s", "999999999999999h"] {
        let flag = format!("--ttl={ttl}");
        let issue = mandate(
            d,
            &[
                "--actor",
                "principal:cfo",
                "issue",
                "--principal",
                "cfo",
                "--agent",
                "research-lead",
                "--purpose",
                "Evaluate Acme",
                "--grant",
                "finance:read on reports/**",
                &flag,
            ],
        );
        assert_eq!(
            issue.status.code(),
            Some(2),
            "issue {flag}: {}",
            text(&issue)
        );
        assert!(text(&issue).contains(ttl), "issue {flag}: {}", text(&issue));
        let delegate = mandate(
            d,
            &[
                "--actor",
                "agent:research-lead",
                "delegate",
                &root,
                "--agent",
                "analyst",
                "--grant",
                "finance:read on reports/q3/*",
                &flag,
            ],
        );
        assert_eq!(
            delegate.status.code(),
            Some(2),
            "delegate {flag}: {}",
            text(&delegate)
        );
    }
}

#[test]
fn status_into_a_closed_pipe_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = issue_as_cfo(d);
    // A pipe whose reading end is closed before the command starts: every
    // write to it fails with a broken pipe, as under `| head -1` once head
    // has exited.
    let (reader, writer) = std::io::pipe().expect("create a pipe");
    drop(reader);
    let out = mandate_os(d, &os(&["status", &root]), &[], writer.into());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Every string of the invalid examples under `schemas/examples/`.
fn corpus_strings() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Number(n) => out.push(n.to_string()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".invalid.json") {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            walk(&v, &mut out);
        }
    }
    assert!(out.len() >= 20, "too few corpus strings: {out:?}");
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_cli_never_panics_on_hostile_input() {
    use std::os::unix::ffi::OsStringExt;
    let mut hostile: Vec<std::ffi::OsString> =
        corpus_strings().into_iter().map(Into::into).collect();
    for s in [
        "99999999999d",
        "-5h",
        "0s",
        "-9223372036854775808s",
        "9223372036854775807d",
        "1y",
        "h",
        "",
        "..",
        "reports/../secrets",
        "finance:read on ../../etc/passwd",
        "finance:read on reports/..",
        "finance:read on",
        " on ",
        "principal:",
        "admin:",
        ":",
        "mandate.evt.>",
        "*",
        ">",
        "line\nbreak",
        "9999-12-31T23:59:59Z",
        "-262143-01-01T00:00:00Z",
    ] {
        hostile.push(s.into());
    }
    hostile.push("x".repeat(100_000).into());
    hostile.push(format!("finance:read on {}", "a/".repeat(40_000)).into());
    hostile.push(std::ffi::OsString::from_vec(vec![0x66, 0xff, 0xfe, 0x80]));

    let v = |s: &str| std::ffi::OsString::from(s);
    let mut cases: Vec<Vec<std::ffi::OsString>> = Vec::new();
    for h in &hostile {
        let issue = |slot: usize| {
            let mut a = vec![
                v("--actor"),
                v("principal:cfo"),
                v("issue"),
                v("--principal"),
                v("cfo"),
                v("--agent"),
                v("research-lead"),
                v("--purpose"),
                v("p"),
                v("--grant"),
                v("finance:read on reports/**"),
                v("--ttl"),
                v("1h"),
            ];
            a[slot] = h.clone();
            a
        };
        // ROOT stands for a live mandate of the data directory the case
        // runs in.
        cases.extend([
            vec![v("status"), h.clone()],
            vec![v("--tenant"), h.clone(), v("status"), v("ROOT")],
            vec![v("--actor"), h.clone(), v("revoke"), v("ROOT")],
            issue(10),
            issue(12),
            vec![
                v("--actor"),
                v("agent:research-lead"),
                v("delegate"),
                v("ROOT"),
                v("--agent"),
                h.clone(),
                v("--grant"),
                h.clone(),
                v("--ttl"),
                h.clone(),
            ],
            vec![
                v("check"),
                v("ROOT"),
                h.clone(),
                h.clone(),
                v("--at"),
                h.clone(),
            ],
        ]);
    }
    assert!(cases.len() >= 250, "only {} hostile cases", cases.len());
    // Three workers, each with its own data directory (the embedded engine
    // is one process at a time).
    let workers = 3;
    std::thread::scope(|scope| {
        for w in 0..workers {
            let cases = &cases;
            scope.spawn(move || {
                let dir = tempfile::tempdir().unwrap();
                let d = dir.path();
                let root = std::ffi::OsString::from(issue_as_cfo(d));
                for args in cases.iter().skip(w).step_by(workers) {
                    let args: Vec<_> = args
                        .iter()
                        .map(|a| if a == "ROOT" { root.clone() } else { a.clone() })
                        .collect();
                    let out = mandate_os(d, &args, &[], std::process::Stdio::piped());
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let shown: Vec<String> = args
                        .iter()
                        .map(|a| a.to_string_lossy().chars().take(80).collect())
                        .collect();
                    assert_ne!(
                        out.status.code(),
                        Some(101),
                        "{shown:?} exited 101: {stderr}"
                    );
                    assert!(!stderr.contains("panicked"), "{shown:?}: {stderr}");
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_into_a_closed_pipe_stops_at_its_first_signal() {
    use common::fixtures::{principal, root_issue, with_depth};
    use std::io::BufRead;

    let (server, _dir, instance, nc) = common::wire::serve_one("acme").await;
    let cfo = common::wire::client(&nc, "acme", principal("cfo"))
        .with_timeout(std::time::Duration::from_millis(700));
    let grants = ["finance:read on reports/**"];
    let root = cfo
        .issue(with_depth(1, root_issue("cfo", "lead", None, &grants)))
        .await
        .unwrap()
        .mandate
        .unwrap();

    // `mandate watch` with its reader already gone.
    let (reader, writer) = std::io::pipe().expect("create a pipe");
    drop(reader);
    let mut watch = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args(["--nats", &server.url(), "--tenant", "acme", "watch"])
        .arg(root.to_string())
        .env_remove("MANDATE_ACTOR")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mandate watch");
    let mut stderr = std::io::BufReader::new(watch.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(first.starts_with("watching"), "{first}");

    // Signals until it stops (its subscription may reach the server after
    // the first of them).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = watch.kill();
            panic!("mandate watch kept running with nobody reading its output");
        }
        cfo.pause(root, None).await.unwrap();
        cfo.resume(root, None).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(!rest.contains("panicked"), "{rest}");
    instance.stop().await;
}
