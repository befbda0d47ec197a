//! Tenancy at the edges: command ids are scoped by tenant on both logs (the
//! JetStream stream on a real nats-server, and the embedded sled log).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fixtures::*;

use common::wire::{open_engine, serve_one_with};
use common::NatsServer;
use mandate::client::Client;
use mandate::domain::command::Issue;
use mandate::domain::{
    Actor, AgentId, Command, CommandEnvelope, CommandId, ErrorCode, PrincipalId, TenantId,
};
use mandate::engine::auth::AuthConfig;
use mandate::engine::{Engine, EngineConfig};

use mandate::protocol::CommandResult;

/// A command of `actor` in tenant `t` with the given id.
fn with_id(t: &TenantId, id: CommandId, actor: Actor, command: Command) -> CommandEnvelope {
    CommandEnvelope {
        command_id: id,
        ..envelope(t.as_str(), actor, command)
    }
}

fn issue(t: &TenantId, id: CommandId, grantee: &str) -> CommandEnvelope {
    let mut issue = root_issue("cfo", grantee, None, &["reports:read on reports/**"]);
    issue.mission.purpose = format!("work of {t}");
    issue.depth = 2;
    with_id(t, id, principal("cfo"), Command::Issue(issue))
}

fn delegate(
    t: &TenantId,
    id: CommandId,
    holder: &str,
    parent: mandate::domain::MandateId,
) -> CommandEnvelope {
    let d = delegation(parent, "helper", &["reports:read on reports/q3/**"]);
    with_id(t, id, agent(holder), Command::Delegate(d))
}

fn written(r: &CommandResult, who: &str) -> mandate::domain::MandateId {
    assert!(
        !r.duplicate,
        "{who}: a first command was reported a duplicate: {r:?}"
    );
    assert_eq!(r.commits.len(), 1, "{who}: no commit written: {r:?}");
    r.mandate.expect("the command names its mandate")
}

/// Executes `cmd`, which must write one new commit (`what` names it);
/// returns the result and the mandate it names.
async fn run(
    engine: &Engine,
    cmd: CommandEnvelope,
    what: &str,
) -> (CommandResult, mandate::domain::MandateId) {
    let r = engine
        .execute(ext(cmd))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let m = written(&r, what);
    (r, m)
}

/// Two tenants use the same command ids, for an issue and then for a
/// delegation: each writes its own commit, gets its own mandate, and neither
/// can see the other's.
async fn same_command_id_in_two_tenants(engine: &Engine) {
    let (a, b) = (tenant("acme"), tenant("globex"));
    let root_id = CommandId::generate();
    let child_id = CommandId::generate();

    // Given tenant A has issued and delegated with these command ids,
    let (ra, root_a) = run(engine, issue(&a, root_id, "lead-a"), "tenant A issues").await;
    let delegate_a = delegate(&a, child_id, "lead-a", root_a);
    let (ca, child_a) = run(engine, delegate_a, "tenant A delegates").await;

    // when tenant B sends other commands under the same ids,
    let issue_b = issue(&b, root_id, "lead-b");
    let (rb, root_b) = run(engine, issue_b.clone(), "tenant B issues").await;
    let delegate_b = delegate(&b, child_id, "lead-b", root_b);
    let (cb, child_b) = run(engine, delegate_b, "tenant B delegates").await;

    // then each got its own mandates and commits,
    assert_ne!(root_a, root_b, "two tenants share a root mandate id");
    assert_ne!(child_a, child_b, "two tenants share a delegated mandate id");
    assert_ne!(ra.commits[0].tree, rb.commits[0].tree);
    assert_ne!(ra.commits[0].position, rb.commits[0].position);
    assert_ne!(ca.commits[0].position, cb.commits[0].position);
    for (result, t) in [(&rb, &b), (&cb, &b), (&ra, &a), (&ca, &a)] {
        for e in &result.commits[0].events {
            assert_eq!(&e.tenant, t, "a commit carries another tenant's event");
        }
    }
    let status_b = engine
        .status(&b, root_b, None)
        .await
        .expect("tenant B reads its root");
    assert_eq!(status_b.mandate.grantee().as_str(), "lead-b");
    // and neither sees the other's.
    for (t, foreign) in [(&b, root_a), (&b, child_a), (&a, root_b), (&a, child_b)] {
        assert!(
            engine.status(t, foreign, None).await.is_err(),
            "tenant {t} sees mandate {foreign} of the other tenant"
        );
    }
    let history_b = engine
        .history(&b, &of_tree(rb.commits[0].tree))
        .await
        .expect("tenant B reads its history");
    assert_eq!(history_b.events.len(), 2);
    assert!(history_b.events.iter().all(|e| e.tenant == b));

    // A retry by either tenant is still a duplicate of its own command.
    let again = engine
        .execute(ext(issue_b))
        .await
        .expect("tenant B retries");
    assert!(again.duplicate, "a retry wrote again: {again:?}");
    assert_eq!(again.mandate, Some(root_b));
}

#[tokio::test]
async fn command_ids_are_scoped_by_tenant_on_jetstream() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nc = async_nats::connect(server.url()).await.unwrap();
    let engine = open_engine(nc, dir.path()).await;
    same_command_id_in_two_tenants(&engine).await;
}

#[tokio::test]
async fn command_ids_are_scoped_by_tenant_on_the_embedded_log() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::embedded(dir.path(), EngineConfig::default())
        .await
        .unwrap();
    same_command_id_in_two_tenants(&engine).await;
}

// ---------------------------------------------------------------------------
// Open tenants are an explicit choice when serving over NATS
// ---------------------------------------------------------------------------

fn cfo() -> Actor {
    principal("cfo")
}

fn root(t: &TenantId) -> Issue {
    match issue(t, CommandId::generate(), "lead").command {
        Command::Issue(i) => i,
        _ => unreachable!("issue() builds an issue"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_auth_is_refused_over_nats_by_default() {
    // Given an instance serving over NATS with the default settings (no auth
    // configuration, no open tenants),
    let (_server, _dir, instance, nc) = serve_one_with("acme", EngineConfig::default()).await;
    let before = instance.log_position().await;

    // when anyone calls themselves an administrator of an unlisted tenant,
    let admin = Client::nats(
        nc.clone(),
        tenant("acme"),
        Actor::Admin(PrincipalId::new("anyone").unwrap()),
    );
    let err = admin
        .issue(root(&tenant("acme")))
        .await
        .expect_err("an unauthenticated command of an unlisted tenant was served");

    // then the command is refused, typed, naming the tenant and how to open
    // it, and nothing is written.
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    let message = err.to_string();
    assert!(message.contains("acme"), "{message}");
    assert!(message.contains("--allow-open-tenants"), "{message}");
    let bulk = admin
        .revoke_agent(AgentId::new("lead").unwrap(), None)
        .await
        .expect_err("an unauthenticated bulk command of an unlisted tenant was served");
    assert_eq!(bulk.code(), Some(ErrorCode::Forbidden), "{bulk}");
    assert_eq!(
        instance.log_position().await,
        before,
        "a refused command wrote something"
    );
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tenants_are_served_only_when_allowed_and_listed_ones_still_need_proof() {
    // Given an instance that lists acme in its auth configuration and allows
    // open tenants,
    let auth: AuthConfig =
        serde_json::from_str(r#"{"tenants": {"acme": {"keys": {"principal:cfo": "cfo-secret"}}}}"#)
            .unwrap();
    let (_server, _dir, instance, nc) = serve_one_with(
        "acme",
        EngineConfig {
            auth: Some(Arc::new(auth)),
            allow_open_tenants: true,
            ..EngineConfig::default()
        },
    )
    .await;
    let before = instance.log_position().await;

    // when an unproven command comes for the listed tenant, it is refused
    // and writes nothing;
    let acme = Client::nats(nc.clone(), tenant("acme"), cfo());
    let err = acme
        .issue(root(&tenant("acme")))
        .await
        .expect_err("a listed tenant was served without its proof");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    assert!(err.to_string().contains("Mandate-Auth"), "{err}");
    assert_eq!(instance.log_position().await, before);
    // with its proof it is served,
    acme.clone()
        .with_secret("cfo-secret")
        .issue(root(&tenant("acme")))
        .await
        .expect("a proven actor of a listed tenant is served");

    // and an unlisted tenant is open: served without any proof.
    let globex = Client::nats(nc.clone(), tenant("globex"), cfo());
    let r = globex
        .issue(root(&tenant("globex")))
        .await
        .expect("an open tenant is served when open tenants are allowed");
    assert!(!r.duplicate && r.mandate.is_some(), "{r:?}");
    instance.stop().await;
}

/// `mandate serve` says at start, as a warning, that open tenants are allowed.
#[test]
fn serve_warns_at_start_when_open_tenants_are_allowed() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command as Process, Stdio};

    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Process::new(env!("CARGO_BIN_EXE_mandate"))
        .args([
            "serve",
            "--nats",
            &server.url(),
            "--allow-open-tenants",
            "--data",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mandate serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let warning = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("OPEN TENANTS ALLOWED") => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let warning = warning.unwrap_or_else(|| {
        panic!(
            "serve never warned about open tenants; it said:\n{}",
            seen.join("\n")
        )
    });
    assert!(warning.contains("WARN"), "{warning}");
}
