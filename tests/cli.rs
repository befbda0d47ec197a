//! The `mandate` binary as a newcomer uses it: the README's walkthrough on the
//! embedded engine, and exit codes that tell denied, not found, invalid input
//! and unavailable apart.

use std::path::Path;
use std::process::{Command, Output};

fn mandate(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mandate"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("MANDATE_NATS")
        .env_remove("MANDATE_TENANT")
        .env_remove("MANDATE_ACTOR")
        .output()
        .expect("run the mandate binary")
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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
