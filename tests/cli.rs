//! The `mandate` binary as a newcomer uses it: the README's walkthrough on the
//! embedded engine, and exit codes that tell denied, not found, invalid input
//! and unavailable apart.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::cli::{
    cfo_changes, cfo_issues, delegate_to_analyst, exit_within, issue_root, kill, lead_delegates,
    line_with, lines, mandate, mandate_cmd, mandate_in, ok_json, says, status_while_watched,
    stdout, text,
};

/// The JSON a command printed, whatever its exit.
fn printed_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// `mandate check <mandate> finance:read reports/q3/financials` (`--json` if
/// `json`).
fn check_financials(d: &Path, mandate_id: &str, json: bool) -> Output {
    let check = ["check", mandate_id, "finance:read", "reports/q3/financials"];
    let args: Vec<&str> = json.then_some("--json").into_iter().chain(check).collect();
    mandate(d, &args)
}

/// One run of the README's walkthrough in `d`, with its own mission ref (as
/// the README's shell lines make one per run); returns the root and the
/// delegated mandate.
fn walkthrough(d: &Path, mission: &str) -> (String, String) {
    let root = issue_root(d, &["--mission-ref", mission, "--ttl", "8h"]);
    let kid = delegate_to_analyst(d, &root, &[]);

    let allowed = says(&check_financials(d, &kid, false), 0, &[]);
    assert!(
        allowed.starts_with("ALLOW: finance:read on reports/q3/financials"),
        "{allowed}"
    );

    let tree = mandate(d, &["tree", &kid]);
    says(
        &tree,
        0,
        &[
            &format!("[{mission}]"),
            &format!("{root} agent research-lead [active]"),
            &format!("└─ {kid} agent analyst [active]"),
        ],
    );

    let done = mandate(
        d,
        &["--actor", "principal:cfo", "complete", "--mission", mission],
    );
    says(&done, 0, &[]);

    // Denied (exit 1), and the reason in words, naming the ancestor that
    // ended it.
    let why = says(
        &check_financials(d, &kid, false),
        1,
        &[&format!(
            "reason: mandate is completed: ancestor {root} completed (mission {mission} completed)"
        )],
    );
    assert!(why.starts_with("DENY: "), "{why}");
    assert!(!why.contains('{'), "the reason is words, not JSON: {why}");
    // --json keeps the structure.
    let denied_json = printed_json(&check_financials(d, &kid, true));
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
    says(&history, 0, &[]);
    let h = stdout(&history);
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
    let only = stdout(&mandate(d, &["history", &kid, "--only"]));
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
    let reused = cfo_issues(
        d,
        false,
        "research-lead",
        "Evaluate Acme",
        "finance:read on reports/**",
        &["--mission-ref", "jira:FIN-42-run1"],
    );
    says(&reused, 5, &["jira:FIN-42-run1"]);

    // Not found: 3, for `status` and `check` alike. Invalid input: 2,
    // naming what was wrong.
    let unknown = "0190f5e2-7c1a-7b3e-9d2a-4f6b8c0d1e2f";
    says(&mandate(d, &["status", unknown]), 3, &[]);
    let missing_check = mandate(d, &["check", unknown, "finance:read", "reports/q3"]);
    says(
        &missing_check,
        3,
        &[&format!(
            "reason: mandate {unknown} not found in tenant default"
        )],
    );
    // Its reply names no tree: there is none.
    let missing_json = printed_json(&mandate(
        d,
        &["--json", "check", unknown, "finance:read", "reports/q3"],
    ));
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
    says(&bad, 2, &["fin*:read"]);
    let bad_actor = mandate(d, &["--actor", "root", "status", &root]);
    assert_eq!(bad_actor.status.code(), Some(2));
    // Refused by the rules (the mandate is completed): 5.
    says(&cfo_changes(d, "pause", &kid, &[]), 5, &["completed"]);
}

#[test]
fn an_unreachable_nats_server_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let out = mandate(dir.path(), &["--nats", "nats://127.0.0.1:1", "health"]);
    says(&out, 4, &["127.0.0.1:1"]);
}

fn mandate_os(
    data: &Path,
    args: &[std::ffi::OsString],
    env: &[(&str, &str)],
    stdout: std::process::Stdio,
) -> Output {
    let mut cmd = mandate_cmd(data, &[]);
    cmd.args(args)
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
    says(&mandate(d, &issue), 2, &["--actor", "MANDATE_ACTOR"]);
    // MANDATE_ACTOR names the actor as well as --actor does.
    let named = mandate_os(
        d,
        &os(&[&["--json"][..], &issue[..]].concat()),
        &[("MANDATE_ACTOR", "principal:cfo")],
        std::process::Stdio::piped(),
    );
    let root = mandate_in(&named);
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
        says(&mandate(d, &args), 2, &["--actor"]);
    }
    // Queries keep working without an actor, and nothing changed.
    let status = mandate(d, &["--json", "status", &root]);
    assert_eq!(ok_json(&status)["effective"]["status"], "active");
    says(
        &mandate(d, &["check", &root, "finance:read", "reports/q3"]),
        0,
        &[],
    );
}

#[test]
fn huge_ttls_are_refused_as_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = issue_root(d, &[]);
    for ttl in ["99999999999d", "9223372036854775807s", "999999999999999h"] {
        let flag = format!("--ttl={ttl}");
        let grant = "finance:read on reports/**";
        let issue = cfo_issues(d, false, "research-lead", "Evaluate Acme", grant, &[&flag]);
        says(&issue, 2, &[ttl]);
        says(&lead_delegates(d, false, &root, &[&flag]), 2, &[]);
    }
}

#[test]
fn status_into_a_closed_pipe_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = issue_root(d, &[]);
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

/// Hostile argument values: every string of the invalid schema examples,
/// and values built to overflow, escape or break a parser.
fn hostile_values() -> Vec<std::ffi::OsString> {
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
    hostile
}

/// Command lines with a hostile value in each slot that takes one.
fn hostile_cases() -> Vec<Vec<std::ffi::OsString>> {
    let hostile = hostile_values();
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
    cases
}

#[test]
fn the_cli_never_panics_on_hostile_input() {
    let cases = hostile_cases();
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
                let root = std::ffi::OsString::from(issue_root(d, &[]));
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

/// An engine serving acme over its own nats-server (with the data
/// directory of its projection), the cfo's client to it, and a root the cfo
/// issued to lead, with `depth` levels of delegation below.
async fn served_root(
    depth: u32,
) -> (
    common::NatsServer,
    tempfile::TempDir,
    common::served::Instance,
    mandate::client::Client,
    mandate::domain::MandateId,
) {
    use common::fixtures::{principal, root_issue, with_depth};
    let (server, dir, instance, nc) = common::wire::serve_one("acme").await;
    let cfo = common::wire::client(&nc, "acme", principal("cfo"))
        .with_timeout(Duration::from_millis(700));
    let grants = ["finance:read on reports/**"];
    let root = cfo
        .issue(with_depth(depth, root_issue("cfo", "lead", None, &grants)))
        .await
        .unwrap()
        .mandate
        .unwrap();
    (server, dir, instance, cfo, root)
}

/// `mandate watch` in acme over the nats-server at `url`, with `args`.
fn watch_over(url: &str, args: &[&str]) -> Command {
    let mut watch = Command::new(env!("CARGO_BIN_EXE_mandate"));
    watch
        .args(["--nats", url, "--tenant", "acme", "watch"])
        .args(args)
        .env_remove("MANDATE_ACTOR");
    watch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_into_a_closed_pipe_stops_at_its_first_signal() {
    use std::io::BufRead;

    let (server, _dir, instance, cfo, root) = served_root(1).await;

    // `mandate watch` with its reader already gone.
    let (reader, writer) = std::io::pipe().expect("create a pipe");
    drop(reader);
    let mut watch = watch_over(&server.url(), &[&root.to_string()])
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
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
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    says(&help, 0, &[]);
    let help = stdout(&help);
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

    let watch = stdout(&mandate(dir.path(), &["watch", "--help"]));
    assert!(!watch.contains("subtree"), "{watch}");
    assert!(
        watch.contains("chain") && watch.contains("--until-ended"),
        "{watch}"
    );
    let issue = stdout(&mandate(dir.path(), &["issue", "--help"]));
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
    says(&h, 0, &[]);
    let out = stdout(&h);
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
    let root = issue_root(d, &[]);
    let parent_end = ok_json(&mandate(d, &["--json", "status", &root]))["mandate"]["not_after"]
        .as_str()
        .unwrap()
        .to_string();
    let parent_end: chrono::DateTime<chrono::Utc> = parent_end.parse().unwrap();
    let end = (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let kid = delegate_to_analyst(d, &root, &["--not-after", &end]);
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
    let widens = lead_delegates(d, false, &root, &["--not-after", &later]);
    says(&widens, 5, &["not_after"]);
    // Not both a lifetime and an end.
    let both = lead_delegates(d, false, &root, &["--not-after", &end, "--ttl", "1h"]);
    says(&both, 2, &[]);

    // The chain, root first, then the mandate.
    let chain = mandate(d, &["chain", &kid]);
    says(&chain, 0, &["effective active"]);
    let out = stdout(&chain);
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
    let revoked = cfo_changes(d, "revoke", &root, &["--reason", "deal off"]);
    says(&revoked, 0, &[]);
    let out = stdout(&mandate(d, &["chain", &kid]));
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
    says(&demo, 0, &[]);
    let out = stdout(&demo);
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

#[test]
fn a_data_directory_held_by_another_process_is_unavailable_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // `watch` on the embedded engine keeps the directory open.
    says(
        &status_while_watched(d),
        4,
        &[
            "another `mandate` process holds",
            &d.display().to_string(),
            "is in use by another mandate process",
            "run `mandate serve` in one shell",
            "--nats",
        ],
    );
}

#[test]
fn watch_until_ended_exits_at_once_on_an_ended_mandate_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = issue_root(d, &[]);
    says(&cfo_changes(d, "complete", &root, &[]), 0, &[]);
    let out = mandate(d, &["watch", "--until-ended", &root]);
    says(&out, 0, &[]);
    assert!(
        stdout(&out).contains(&format!(
            "mandate {root} has ended: it is completed: itself completed"
        )),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_until_ended_exits_when_an_ancestor_ends() {
    use common::fixtures::{agent, delegation};

    let (server, _dir, instance, cfo, root) = served_root(2).await;
    let kid = cfo
        .as_actor(agent("lead"))
        .delegate(delegation(
            root,
            "fetcher",
            &["finance:read on reports/q3/*"],
        ))
        .await
        .unwrap()
        .mandate
        .unwrap();

    let mut watch = watch_over(&server.url(), &["--until-ended", &kid.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mandate watch");
    let err = lines(watch.stderr.take().unwrap());
    assert!(
        line_with(&err, "watching", Duration::from_secs(30)).is_some(),
        "watch never started"
    );
    // Still running while the mandate is live: a pause is not an end.
    cfo.pause(root, Some("hold".into())).await.unwrap();
    cfo.resume(root, None).await.unwrap();
    assert!(watch.try_wait().unwrap().is_none(), "watch exited early");
    cfo.revoke(root, Some("deal off".into())).await.unwrap();
    let status = exit_within(&mut watch, Duration::from_secs(20), "watch --until-ended");
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
        says(&mandate(d, &all), 4, &["no engine is serving"]);
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
    let first = line_with(
        &lines(serve.stderr.take().unwrap()),
        "",
        Duration::from_secs(30),
    )
    .expect("a log line");
    kill(&mut serve);
    assert!(!first.trim().is_empty(), "no log line");
    assert!(
        !first.contains('\u{1b}'),
        "colour codes in the log: {first:?}"
    );
}

#[test]
fn approvals_by_command_are_used_once_and_refusals_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let issued = ok_json(&mandate(
        d,
        &[
            "--json",
            "--actor",
            "principal:carol",
            "issue",
            "--principal",
            "carol",
            "--agent",
            "support-bot",
            "--purpose",
            "Answer tickets",
            "--grant",
            "payments:refund on tickets/**",
            "--step-up",
            "payments:refund",
            "--ttl",
            "8h",
        ],
    ));
    let m = issued["mandate"].as_str().unwrap().to_string();
    let bot = ["--actor", "agent:support-bot"];
    let request = [
        "--action",
        "payments:refund",
        "--resource",
        "tickets/T-1",
        "--params",
        r#"{"cents": 4999}"#,
    ];
    // Without approval: the check needs one (exit 1, as denied).
    says(
        &mandate(d, &["check", &m, "payments:refund", "tickets/T-1"]),
        1,
        &[],
    );
    let mut args = vec!["--json"];
    args.extend(bot);
    args.extend(["request-approval", &m]);
    args.extend(request);
    let requested = ok_json(&mandate(d, &args));
    let approval = requested["commits"][0]["events"][0]["approval"]
        .as_str()
        .unwrap()
        .to_string();
    let use_it = |params: &str| {
        let mut args = bot.to_vec();
        args.extend(["use-approval", &approval, "--mandate", &m]);
        args.extend(&request[..4]);
        args.extend(["--params", params]);
        mandate(d, &args)
    };
    says(&use_it(r#"{"cents": 4999}"#), 5, &["pending"]);
    says(
        &mandate(
            d,
            &[
                "--actor",
                "agent:support-bot",
                "approve",
                &approval,
                "--mandate",
                &m,
            ],
        ),
        5,
        &["may not approve"],
    );
    says(
        &mandate(
            d,
            &[
                "--actor",
                "principal:carol",
                "approve",
                &approval,
                "--mandate",
                &m,
            ],
        ),
        0,
        &["approval_granted"],
    );
    says(&use_it(r#"{"cents": 9999}"#), 5, &["params_hash"]);
    says(&use_it(r#"{"cents":4999}"#), 0, &["approval_used"]);
    says(&use_it(r#"{"cents": 4999}"#), 5, &["already used"]);
    says(&use_it("not json"), 2, &["--params"]);
    says(
        &mandate(
            d,
            &[
                "--actor",
                "principal:carol",
                "deny-approval",
                "nope",
                "--mandate",
                &m,
            ],
        ),
        2,
        &["approval id"],
    );
}

/// `mandate serve --nats URL --allow-open-tenants` on `d`, once an engine
/// answers on URL (at most 30 s).
fn serve_over_nats(d: &Path, url: &str) -> std::process::Child {
    let mut serve = mandate_cmd(d, &["--nats", url, "serve", "--allow-open-tenants"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run mandate serve");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while mandate(d, &["--nats", url, "health"]).status.code() != Some(0) {
        assert!(
            serve.try_wait().unwrap().is_none(),
            "mandate serve --nats exited"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "mandate serve --nats never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    serve
}

/// Every file under `dir`, with its size and modification time.
fn listing(dir: &Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            }
            all.push((entry.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    all.sort();
    all
}

/// A data directory served over NATS, once its `serve` has stopped: a
/// command without `--nats` is unavailable (4), names the directory and how
/// to reach its engine, and writes nothing into it (no in-process log, no
/// holds in its projection), so the restarted `serve` answers as before.
/// While it runs, a second `serve` on the directory is unavailable (4) too.
#[test]
fn a_directory_served_over_nats_is_never_opened_by_the_in_process_engine() {
    let server = common::NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let over = |args: &[&str]| {
        let mut all = vec!["--nats", url.as_str()];
        all.extend(args);
        mandate(d, &all)
    };
    let mut serve = serve_over_nats(d, &url);
    let root = mandate_in(&over(&[
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
    ]));

    let second = over(&["serve", "--allow-open-tenants"]);
    says(
        &second,
        4,
        &["is held by another process", "another --data"],
    );

    kill(&mut serve);
    let before = listing(d);
    let named = d.display().to_string();
    for args in [
        vec!["status", root.as_str()],
        vec!["check", root.as_str(), "finance:read", "reports/q3/x"],
        vec!["--actor", "principal:cfo", "revoke", root.as_str()],
        vec!["rebuild"],
    ] {
        says(
            &mandate(d, &args),
            4,
            &[&named, "served over NATS", "--nats URL"],
        );
    }
    assert!(!d.join("log").exists(), "an in-process log was created");
    assert_eq!(listing(d), before, "the data directory was written to");

    let mut serve = serve_over_nats(d, &url);
    says(
        &over(&["check", &root, "finance:read", "reports/q3/x"]),
        0,
        &["ALLOW"],
    );
    let health = says(&over(&["health"]), 0, &[]);
    assert!(!health.contains("BACKWARDS"), "{health}");
    kill(&mut serve);
}

/// More replicas than the server can keep is a configuration the start
/// refuses: invalid (2), naming it, not internal (6).
#[test]
fn serve_refuses_replicas_the_server_cannot_keep_as_invalid_input() {
    let server = common::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let refused = mandate(
        dir.path(),
        &[
            "--nats",
            &url,
            "serve",
            "--allow-open-tenants",
            "--replicas",
            "3",
        ],
    );
    says(&refused, 2, &["replica", "configuration refused"]);
}
