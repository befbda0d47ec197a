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

/// One run of the README's walkthrough in `d`, with its own mission ref (as
/// the README's shell lines make one per run); returns the root and the
/// delegated mandate.
fn walkthrough(d: &Path, mission: &str) -> (String, String) {
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
            mission,
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
    assert!(
        text(&allowed).starts_with("ALLOW: finance:read on reports/q3/financials"),
        "{}",
        text(&allowed)
    );

    let tree = mandate(d, &["tree", &kid]);
    assert!(tree.status.success());
    let drawn = text(&tree);
    assert!(
        drawn.contains(&format!("[{mission}]"))
            && drawn.contains(&format!("{root} agent research-lead [active]"))
            && drawn.contains(&format!("└─ {kid} agent analyst [active]")),
        "{drawn}"
    );

    let done = mandate(
        d,
        &["--actor", "principal:cfo", "complete", "--mission", mission],
    );
    assert!(done.status.success(), "{}", text(&done));

    // Denied, and the reason in words, naming the ancestor that ended it.
    let denied = mandate(d, &["check", &kid, "finance:read", "reports/q3/financials"]);
    assert_eq!(
        denied.status.code(),
        Some(1),
        "denied exits 1: {}",
        text(&denied)
    );
    let why = text(&denied);
    assert!(why.starts_with("DENY: "), "{why}");
    assert!(
        why.contains(&format!(
            "reason: mandate is completed: ancestor {root} completed (mission {mission} completed)"
        )),
        "{why}"
    );
    assert!(!why.contains('{'), "the reason is words, not JSON: {why}");
    // --json keeps the structure.
    let denied_json: serde_json::Value = serde_json::from_slice(
        &mandate(
            d,
            &[
                "--json",
                "check",
                &kid,
                "finance:read",
                "reports/q3/financials",
            ],
        )
        .stdout,
    )
    .expect("--json check prints JSON");
    assert_eq!(denied_json["reason"]["kind"], "not_active", "{denied_json}");
    assert_eq!(
        denied_json["reason"]["cause"]["mandate"],
        root.as_str(),
        "{denied_json}"
    );

    // `history` of the delegated mandate is the whole tree's: the root's
    // issue, the delegation and the mission's completion, each with its
    // actor.
    let history = mandate(d, &["history", &kid]);
    assert!(history.status.success(), "{}", text(&history));
    let h = String::from_utf8_lossy(&history.stdout).to_string();
    let lines: Vec<&str> = h.lines().collect();
    assert_eq!(lines.len(), 3, "{h}");
    for (line, (event, of, by)) in lines.iter().zip([
        ("mandate_issued", &root, "by principal cfo"),
        ("mandate_issued", &kid, "by agent research-lead"),
        ("mission_completed", &root, "by principal cfo"),
    ]) {
        assert!(
            line.contains(event)
                && line.contains(&format!("mandate {of}"))
                && line.contains(by)
                && line.ends_with("on behalf of principal cfo"),
            "{line} in {h}"
        );
    }
    // --only: the mandate's own events.
    let only = mandate(d, &["history", &kid, "--only"]);
    let only = String::from_utf8_lossy(&only.stdout).to_string();
    assert!(
        only.lines().count() >= 1 && only.lines().all(|l| l.contains(&format!("mandate {kid}"))),
        "{only}"
    );
    (root, kid)
}

#[test]
fn the_readme_walkthrough_works_twice_in_one_directory_and_exit_codes_tell_outcomes_apart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The README's shell lines make a fresh mission ref per run, so a second
    // run in the same directory works as the first did.
    walkthrough(d, "jira:FIN-42-run1");
    let (root, kid) = walkthrough(d, "jira:FIN-42-run2");

    // Reusing a completed mission's ref is refused (5), saying why.
    let reused = mandate(
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
            "--mission-ref",
            "jira:FIN-42-run1",
            "--grant",
            "finance:read on reports/**",
        ],
    );
    assert_eq!(reused.status.code(), Some(5), "{}", text(&reused));
    assert!(
        text(&reused).contains("jira:FIN-42-run1"),
        "{}",
        text(&reused)
    );

    // Not found: 3, for `status` and `check` alike. Invalid input: 2,
    // naming what was wrong.
    let unknown = "0190f5e2-7c1a-7b3e-9d2a-4f6b8c0d1e2f";
    let missing = mandate(d, &["status", unknown]);
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing));
    let missing_check = mandate(d, &["check", unknown, "finance:read", "reports/q3"]);
    assert_eq!(
        missing_check.status.code(),
        Some(3),
        "{}",
        text(&missing_check)
    );
    assert!(
        text(&missing_check).contains(&format!(
            "reason: mandate {unknown} not found in tenant default"
        )),
        "{}",
        text(&missing_check)
    );
    // Its reply names no tree: there is none.
    let missing_json: serde_json::Value = serde_json::from_slice(
        &mandate(
            d,
            &["--json", "check", unknown, "finance:read", "reports/q3"],
        )
        .stdout,
    )
    .expect("--json check prints JSON");
    assert_eq!(missing_json["reason"]["kind"], "unknown_mandate");
    assert!(missing_json.get("tree").is_none(), "{missing_json}");

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

/// The arguments of every command, with what each is for; the global options
/// apart from a command's own in its help.
#[test]
fn every_argument_has_help_and_global_options_have_their_own_heading() {
    use clap::CommandFactory;
    let cli = mandate::cli::Cli::command();
    let mut silent = Vec::new();
    for arg in cli.get_arguments() {
        if arg.get_help().is_none() {
            silent.push(format!("mandate {}", arg.get_id()));
        }
    }
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments() {
            if arg.get_help().is_none() {
                silent.push(format!("mandate {} {}", sub.get_name(), arg.get_id()));
            }
        }
    }
    assert!(silent.is_empty(), "arguments without help: {silent:?}");

    let dir = tempfile::tempdir().unwrap();
    let help = mandate(dir.path(), &["check", "--help"]);
    assert!(help.status.success(), "{}", text(&help));
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let (own, global) = help
        .split_once("Global options:")
        .unwrap_or_else(|| panic!("no global options heading: {help}"));
    assert!(
        own.contains("--at <TIME>") && own.contains("RFC 3339"),
        "{help}"
    );
    for g in ["--nats", "--data", "--tenant", "--actor", "--json"] {
        assert!(global.contains(g), "{g} not under Global options: {help}");
        assert!(!own.contains(g), "{g} among check's own options: {help}");
    }

    let watch = mandate(dir.path(), &["watch", "--help"]);
    let watch = String::from_utf8_lossy(&watch.stdout).to_string();
    assert!(!watch.contains("subtree"), "{watch}");
    assert!(
        watch.contains("chain") && watch.contains("--until-ended"),
        "{watch}"
    );
    let issue = mandate(dir.path(), &["issue", "--help"]);
    let issue = String::from_utf8_lossy(&issue.stdout).to_string();
    assert!(
        issue.contains("--principal <ID>") && issue.contains("on whose authority"),
        "{issue}"
    );
}

#[test]
fn health_prints_text_and_json_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let h = mandate(d, &["health"]);
    assert!(h.status.success(), "{}", text(&h));
    let out = String::from_utf8_lossy(&h.stdout).to_string();
    assert!(
        out.starts_with("instance ") && out.contains("(embedded)") && !out.contains('{'),
        "{out}"
    );
    assert!(out.contains("quarantined trees: none"), "{out}");
    let j = ok_json(&mandate(d, &["--json", "health"]));
    assert_eq!(j["backend"], "embedded", "{j}");
}

#[test]
fn chain_shows_the_authority_chain_and_delegate_takes_not_after() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = issue_as_cfo(d);
    let parent_end = ok_json(&mandate(d, &["--json", "status", &root]))["mandate"]["not_after"]
        .as_str()
        .unwrap()
        .to_string();
    let parent_end: chrono::DateTime<chrono::Utc> = parent_end.parse().unwrap();
    let end = (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
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
            "--not-after",
            &end,
        ],
    ))["mandate"]
        .as_str()
        .unwrap()
        .to_string();
    let status = ok_json(&mandate(d, &["--json", "status", &kid]));
    let got: chrono::DateTime<chrono::Utc> = status["mandate"]["not_after"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(got, end.parse::<chrono::DateTime<chrono::Utc>>().unwrap());

    // Later than the parent: refused as widening (5), naming the moment.
    let later = (parent_end + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let widens = mandate(
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
            "--not-after",
            &later,
        ],
    );
    assert_eq!(widens.status.code(), Some(5), "{}", text(&widens));
    assert!(text(&widens).contains("not_after"), "{}", text(&widens));
    // Not both a lifetime and an end.
    let both = mandate(
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
            "--not-after",
            &end,
            "--ttl",
            "1h",
        ],
    );
    assert_eq!(both.status.code(), Some(2), "{}", text(&both));

    // The chain, root first, then the mandate.
    let chain = mandate(d, &["chain", &kid]);
    assert!(chain.status.success(), "{}", text(&chain));
    let out = String::from_utf8_lossy(&chain.stdout).to_string();
    assert!(out.contains("effective active"), "{out}");
    let root_line = out
        .lines()
        .position(|l| l.starts_with(&format!("{root} principal cfo → agent research-lead")))
        .unwrap_or_else(|| panic!("no root link: {out}"));
    let kid_line = out
        .lines()
        .position(|l| l.starts_with(&format!("  {kid} agent research-lead → agent analyst")))
        .unwrap_or_else(|| panic!("no delegated link: {out}"));
    assert!(root_line < kid_line, "{out}");
    let j = ok_json(&mandate(d, &["--json", "chain", &kid]));
    assert_eq!(j["chain"].as_array().map(Vec::len), Some(2), "{j}");

    // Ended through its ancestor: the chain says by whom.
    let revoked = mandate(
        d,
        &[
            "--actor",
            "principal:cfo",
            "revoke",
            &root,
            "--reason",
            "deal off",
        ],
    );
    assert!(revoked.status.success(), "{}", text(&revoked));
    let chain = mandate(d, &["chain", &kid]);
    let out = String::from_utf8_lossy(&chain.stdout).to_string();
    assert!(
        out.contains(&format!(
            "effective revoked: ancestor {root} revoked (deal off)"
        )),
        "{out}"
    );
}

#[test]
fn the_demo_ends_naming_the_fetcher_and_gives_reasons_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let demo = mandate(dir.path(), &["demo"]);
    let out = String::from_utf8_lossy(&demo.stdout).to_string();
    assert!(demo.status.success(), "{}", text(&demo));
    assert_eq!(
        out.lines().last(),
        Some("The fetcher was refused after the mission completed."),
        "{out}"
    );
    assert!(
        out.contains("tries reports/q3/financials again: Deny — mandate is completed: ancestor"),
        "{out}"
    );
    assert!(!out.contains("{\""), "{out}");
}

/// Reads `child`'s stderr until a line starting with `prefix`; returns it.
fn stderr_line(child: &mut std::process::Child, prefix: &str) -> String {
    use std::io::BufRead;
    let stderr = child.stderr.as_mut().expect("stderr piped");
    let mut reader = std::io::BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "stderr closed before a line starting with {prefix:?}"
        );
        if line.starts_with(prefix) {
            return line;
        }
    }
}

/// Waits for `child` to exit, killing it and failing after `secs`.
fn exit_within(child: &mut std::process::Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{what} did not exit in time");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_data_directory_held_by_another_process_is_unavailable_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = issue_as_cfo(d);
    // `watch` on the embedded engine keeps the directory open.
    let mut holder = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .arg("--data")
        .arg(d)
        .args(["watch", &root])
        .env_remove("MANDATE_NATS")
        .env_remove("MANDATE_ACTOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mandate watch");
    stderr_line(&mut holder, "watching");
    let out = mandate(d, &["status", &root]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let message = text(&out);
    assert!(
        message.contains("another `mandate` process holds")
            && message.contains(&d.display().to_string())
            && message.contains("mandate serve")
            && message.contains("--nats"),
        "{message}"
    );
}

#[test]
fn watch_until_ended_exits_at_once_on_an_ended_mandate_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = issue_as_cfo(d);
    let done = mandate(d, &["--actor", "principal:cfo", "complete", &root]);
    assert!(done.status.success(), "{}", text(&done));
    let out = mandate(d, &["watch", "--until-ended", &root]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "mandate {root} has ended: it is completed: itself completed"
        )),
        "{}",
        text(&out)
    );
}

async fn served_acme(
    server: &common::NatsServer,
    dir: &Path,
) -> (common::served::Instance, mandate::client::Client) {
    use mandate::client::Client;
    use mandate::domain::{Actor, PrincipalId, TenantId};
    let instance = common::served::Instance::start(&server.url(), dir).await;
    let nc = async_nats::connect(server.url()).await.unwrap();
    let cfo = Client::nats(
        nc,
        TenantId::new("acme").unwrap(),
        Actor::Principal(PrincipalId::new("cfo").unwrap()),
    )
    .with_timeout(std::time::Duration::from_millis(700));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while cfo.health().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "engine never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (instance, cfo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_until_ended_exits_when_an_ancestor_ends() {
    use mandate::domain::command::{Delegate, Issue};
    use mandate::domain::{Actor, AgentId, Mission, PrincipalId, Scope};

    let server = common::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (instance, cfo) = served_acme(&server, dir.path()).await;
    let root = cfo
        .issue(Issue {
            principal: PrincipalId::new("cfo").unwrap(),
            grantee: AgentId::new("lead").unwrap(),
            mission: Mission {
                purpose: "watch until ended".into(),
                mission_ref: None,
            },
            scope: Scope::parse(["finance:read on reports/**"]).unwrap(),
            not_after: chrono::Utc::now() + chrono::Duration::hours(1),
            depth: 2,
            step_up: vec![],
            supervisors: vec![],
        })
        .await
        .unwrap()
        .mandate
        .unwrap();
    let kid = cfo
        .as_actor(Actor::Agent(AgentId::new("lead").unwrap()))
        .delegate(Delegate {
            parent: root,
            grantee: AgentId::new("fetcher").unwrap(),
            scope: Scope::parse(["finance:read on reports/q3/*"]).unwrap(),
            not_after: None,
            depth: None,
            step_up: vec![],
            supervisors: vec![],
        })
        .await
        .unwrap()
        .mandate
        .unwrap();

    let mut watch = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args([
            "--nats",
            &server.url(),
            "--tenant",
            "acme",
            "watch",
            "--until-ended",
        ])
        .arg(kid.to_string())
        .env_remove("MANDATE_ACTOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mandate watch");
    stderr_line(&mut watch, "watching");
    // Still running while the mandate is live: a pause is not an end.
    cfo.pause(root, Some("hold".into())).await.unwrap();
    cfo.resume(root, None).await.unwrap();
    assert!(watch.try_wait().unwrap().is_none(), "watch exited early");
    cfo.revoke(root, Some("deal off".into())).await.unwrap();
    let status = exit_within(&mut watch, 20, "watch --until-ended");
    let mut out = String::new();
    std::io::Read::read_to_string(watch.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.lines().last().is_some_and(|l| l
            == format!(
                "mandate {kid} has ended: it is revoked: ancestor {root} revoked (deal off)"
            )),
        "{out}"
    );
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_engine_serving_is_unavailable() {
    let server = common::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = server.url();
    for args in [
        vec!["status", "0190f5e2-7c1a-7b3e-9d2a-4f6b8c0d1e2f"],
        vec!["health"],
        vec!["demo"],
    ] {
        let mut all = vec!["--nats", url.as_str()];
        all.extend(&args);
        let out = mandate(d, &all);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("no engine is serving"),
            "{args:?}: {}",
            text(&out)
        );
    }
}

#[test]
fn serve_writes_no_colour_codes_into_a_redirected_log() {
    let server = common::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .arg("--data")
        .arg(dir.path())
        .args(["--nats", &server.url(), "serve", "--allow-open-tenants"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mandate serve");
    // Its first log line (a warning about open tenants, or its start).
    let first = stderr_line(&mut serve, "");
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(!first.trim().is_empty(), "no log line");
    assert!(
        !first.contains('\u{1b}'),
        "colour codes in the log: {first:?}"
    );
}
