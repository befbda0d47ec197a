//! Authority on the wire, with a real nats-server and engine: refusals carry
//! a machine-readable reason, widening has its own code (an ancestor's
//! narrowing counts against a delegation below it), a resource with
//! dot segments never escapes its pattern (engine and guard alike), and a
//! grantee never holds authority over its own mandate.

mod common;

use std::time::Duration;

use common::cli::{cfo_issues, mandate};
use common::fixtures::*;
use common::served::Instance;
use common::wire::{client, issued, raw, serve_one, start_guard};
use common::NatsServer;
use mandate::client::Client;

use mandate::domain::{
    Actor, CommandId, DenyReason, DomainError, ExternalCommand, MandateId, Outcome,
};
use mandate::protocol::command_subject;
use serde_json::{json, Value};

/// A server, one serving engine and a connection that the engine answers.
struct World {
    _server: NatsServer,
    _dir: tempfile::TempDir,
    instance: Instance,
    nc: async_nats::Client,
}

impl World {
    async fn start() -> Self {
        let (server, dir, instance, nc) = serve_one("acme").await;
        Self {
            _server: server,
            _dir: dir,
            instance,
            nc,
        }
    }

    fn client(&self, actor: Actor) -> Client {
        client(&self.nc, "acme", actor)
    }

    /// A world, and a root the cfo grants the planner with `grants`.
    async fn with_root(grants: &[&str]) -> (Self, MandateId) {
        let w = Self::start().await;
        let issue = root_issue("cfo", "planner", None, grants);
        let root = issued(&w.client(principal("cfo")), issue).await;
        (w, root)
    }

    /// Sends a JSON body to a command subject and returns the reply's JSON.
    async fn raw_command(&self, verb: &str, body: Value) -> Value {
        raw(
            &self.nc,
            command_subject(&acme(), verb),
            body.to_string().into_bytes(),
        )
        .await
    }

    async fn stop(self) {
        self.instance.stop().await;
    }
}

impl World {
    /// The agent `agent` sends the command `verb` with `fields`, as raw JSON
    /// on the command subject; returns the reply's JSON.
    async fn raw_as(&self, agent: &str, verb: &str, fields: Value) -> Value {
        let mut body = json!({
            "command_id": CommandId::generate(),
            "tenant": "acme",
            "actor": {"kind": "agent", "id": agent},
            "type": verb,
        });
        let fields = fields.as_object().expect("fields are an object").clone();
        body.as_object_mut().unwrap().extend(fields);
        self.raw_command(verb, body).await
    }

    /// The agent `holder` delegates `grants` under `parent` to the helper,
    /// as raw JSON.
    async fn raw_delegate(&self, holder: &str, parent: MandateId, grants: &[&str]) -> Value {
        let fields = json!({"parent": parent, "grantee": "helper", "scope": scope(grants)});
        self.raw_as(holder, "delegate", fields).await
    }
}

/// Asserts `reply` (to `case`) is refused with `code` and the
/// machine-readable `reason`.
fn assert_refused_for(case: &str, reply: &Value, code: &str, reason: &str) {
    assert_eq!(reply["ok"], json!(false), "{case}: {reply}");
    assert_eq!(reply["error"]["code"], json!(code), "{case}: {reply}");
    assert_eq!(reply["error"]["reason"], json!(reason), "{case}: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_refusals_carry_a_machine_readable_reason() {
    let (w, root) = World::with_root(&["finance:* on reports/**"]).await;

    // (case, reply, reason): each is refused as `forbidden`.
    let cases = [
        (
            "someone other than the holder delegates",
            w.raw_delegate("mallory", root, &["finance:read on reports/q3"])
                .await,
            "not_grantee",
        ),
        (
            "a stranger pauses",
            w.raw_as("mallory", "pause", json!({"mandate": root})).await,
            "not_authorized",
        ),
    ];
    for (case, reply, reason) in cases {
        assert_refused_for(case, &reply, "forbidden", reason);
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widening_delegation_is_refused_as_widens_not_as_bad_input() {
    let (w, root) = World::with_root(&["finance:read on reports/q3/*"]).await;
    assert_refused_for(
        "a widening delegation",
        &w.raw_delegate("planner", root, &["finance:* on reports/**"])
            .await,
        "widens",
        "scope_widens",
    );
    // Malformed input keeps its own code.
    let reply = w
        .raw_command(
            "delegate",
            json!({"type": "delegate", "tenant": "acme", "parent": "not-a-uuid"}),
        )
        .await;
    assert_eq!(reply["error"]["code"], json!("invalid_input"), "{reply}");
    w.stop().await;
}

/// An ancestor narrowed or shortened after a delegation limits what the
/// delegated mandate may pass on: a delegation of a grant the root withdrew
/// is refused as `widens` naming the root, and a delegation's default end is
/// the root's earlier one, not its parent's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegation_of_what_a_narrowed_ancestor_withdrew_is_refused_as_widens() {
    let (w, root) = World::with_root(&["finance:read on reports/**"]).await;
    let kid = w
        .client(agent("planner"))
        .delegate(delegation(root, "analyst", &["finance:read on reports/**"]))
        .await
        .expect("delegate")
        .mandate
        .unwrap();
    let cfo = w.client(principal("cfo"));
    cfo.narrow(root, scope(&["finance:read on reports/q3/*"]))
        .await
        .expect("narrow the root");
    let root_end = chrono::Utc::now() + chrono::Duration::minutes(10);
    let root_end = chrono::DateTime::from_timestamp(root_end.timestamp(), 0).unwrap();
    cfo.renew(root, root_end).await.expect("shorten the root");

    let reply = w
        .raw_delegate("analyst", kid, &["finance:read on reports/**"])
        .await;
    assert_refused_for(
        "a delegation of what the root withdrew",
        &reply,
        "widens",
        "scope_widens",
    );
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&root.to_string()), "{reply}");

    // What the root still grants passes, and ends with the root.
    let analyst = w.client(agent("analyst"));
    let helper = analyst
        .delegate(delegation(kid, "helper", &["finance:read on reports/q3/*"]))
        .await
        .expect("a delegation within what the chain grants")
        .mandate
        .unwrap();
    let held = analyst.status(helper, None).await.unwrap().mandate;
    assert_eq!(held.not_after(), root_end);
    w.stop().await;
}

/// `..`, `.` and empty segments never reach a pattern: `reports/**` must not
/// allow `reports/../hr/salaries`, on the engine or in a guard, and both
/// answer the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_do_not_escape_a_resource_pattern_on_engine_or_guard() {
    let (w, root) = World::with_root(&["finance:read on reports/**"]).await;
    let planner = w.client(agent("planner"));
    let guard = start_guard(planner.clone(), root, Duration::from_secs(10)).await;
    // The pattern does allow what lies under it, on both paths.
    assert_eq!(
        planner
            .check(root, "finance:read", "reports/q3/summary", None)
            .await
            .expect("check")
            .outcome,
        Outcome::Allow
    );
    assert_eq!(
        guard.check("finance:read", "reports/q3/summary").outcome,
        Outcome::Allow
    );
    for resource in [
        "reports/../hr/salaries",
        "reports/./../hr",
        "reports/..",
        "reports/.",
        "reports//hr",
    ] {
        let on_engine = planner
            .check(root, "finance:read", resource, None)
            .await
            .expect("check");
        let on_guard = guard.check("finance:read", resource);
        for (path, d) in [("engine", &on_engine), ("guard", &on_guard)] {
            assert_eq!(d.outcome, Outcome::Deny, "{path} on {resource}: {d:?}");
            assert!(
                matches!(d.reason, Some(DenyReason::InvalidRequest { .. })),
                "{path} on {resource}: {d:?}"
            );
        }
    }
    w.stop().await;
}

/// The principal's pause holds against the grantor (its holder below the
/// principal), and the refusal says why in a machine-readable way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grantor_cannot_undo_its_principals_pause() {
    let (w, root) = World::with_root(&["finance:* on reports/**"]).await;
    let planner = w.client(agent("planner"));
    let child = planner
        .delegate(delegation(
            root,
            "helper",
            &["finance:read on reports/q3/*"],
        ))
        .await
        .expect("delegate")
        .mandate
        .expect("a delegation names its mandate");
    let cfo = w.client(principal("cfo"));
    cfo.pause(child, Some("audit".into())).await.expect("pause");

    let err = planner.resume(child, None).await.unwrap_err();
    assert_eq!(err.reason(), Some("paused_from_above"), "{err}");
    let status = cfo.status(child, None).await.expect("status");
    assert_eq!(status.mandate.status(), mandate::domain::Status::Paused);

    cfo.resume(child, None)
        .await
        .expect("the principal lifts its own pause");
    w.stop().await;
}

/// A library caller cannot act as the engine itself: a command from outside
/// is an `ExternalCommand`, which cannot carry a system actor, so nobody
/// completes a mission as the intake, or expires a mandate as the
/// scheduler, by calling the library instead of the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_caller_cannot_act_as_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = mandate::engine::Engine::embedded(dir.path(), Default::default())
        .await
        .expect("open the engine");
    let mission = mandate::domain::MissionRef::new("jira:LIB-1").unwrap();
    let issue = envelope(
        "acme",
        principal("cfo"),
        mandate::domain::Command::Issue(with_depth(
            2,
            root_issue(
                "cfo",
                "planner",
                Some("jira:LIB-1"),
                &["finance:read on reports/**"],
            ),
        )),
    );
    let root = engine
        .execute(ExternalCommand::new(issue).expect("a principal is not reserved"))
        .await
        .expect("issue")
        .mandate
        .expect("an issue names its mandate");

    let as_intake = envelope(
        "acme",
        Actor::mission_intake(),
        mandate::domain::Command::CompleteMission(mandate::domain::command::CompleteMission {
            mission_ref: mission,
        }),
    );
    let expected = DomainError::ReservedActor {
        actor: "system mission-intake".into(),
    };
    assert_eq!(
        ExternalCommand::new(as_intake.clone()),
        Err(expected.clone())
    );
    assert_eq!(
        ExternalCommand::from_json(&serde_json::to_vec(&as_intake).unwrap()),
        Err(expected)
    );
    let as_scheduler = envelope(
        "acme",
        Actor::expiry(),
        mandate::domain::Command::Expire(mandate::domain::command::Target { mandate: root }),
    );
    assert_eq!(
        ExternalCommand::try_from(as_scheduler).map_err(|e| e.reason()),
        Err("reserved_actor")
    );

    // Nor through a bulk command, which only ever comes from outside.
    let bulk = mandate::protocol::BulkEnvelope {
        command_id: CommandId::generate(),
        tenant: acme(),
        actor: Actor::mission_intake(),
        correlation_id: None,
        schema_version: mandate::domain::SCHEMA_VERSION,
        bulk: mandate::protocol::Bulk::RevokeAgent {
            agent: agent_id("planner"),
            reason: None,
        },
    };
    let err = engine.execute_bulk(bulk).await.unwrap_err();
    assert_eq!(
        err.to_body().reason.as_deref(),
        Some("reserved_actor"),
        "{err}"
    );

    let status = engine.status(&acme(), root, None).await.expect("status");
    assert_eq!(status.effective.status, mandate::domain::Status::Active);
}

/// The CLI reports a widening delegation as refused (exit 5), not as bad
/// input (exit 2).
#[test]
fn the_cli_exits_5_on_a_widening_delegation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let grant = "finance:read on reports/q3/*";
    let issued = cfo_issues(d, true, "lead", "exit codes", grant, &["--ttl", "1h"]);
    assert!(issued.status.success(), "{issued:?}");
    let root: Value = serde_json::from_slice(&issued.stdout).expect("--json prints JSON");
    let root = root["mandate"].as_str().expect("the mandate id");
    let wider = mandate(
        d,
        &[
            "--actor",
            "agent:lead",
            "delegate",
            root,
            "--agent",
            "helper",
            "--grant",
            "finance:* on reports/**",
        ],
    );
    assert_eq!(wider.status.code(), Some(5), "{wider:?}");
}
