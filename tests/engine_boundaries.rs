//! What the wire lets in, against a real nats-server: nothing crosses a
//! tenant, and bad input is refused, typed, and changes nothing.

mod common;

use common::prelude::*;
use mandate::domain::command::Narrow;
use mandate::domain::{Decision, DenyReason, MissionRef, Outcome};
use mandate::protocol::{command_subject, query_subject, Reply};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// 8. Tenant isolation
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_crosses_a_tenant() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let secret_agent = "secret-agent-007";
    let secret_scope = "payroll:read on salaries/**";
    let root = issue(
        &nc,
        root_issue(
            "acme-ceo",
            secret_agent,
            Some("jira:PAY-1"),
            &[secret_scope],
        ),
    )
    .await;
    let before = instance.log_position().await;
    let leaks = |reply: &Value| {
        let text = reply.to_string();
        for secret in [
            secret_agent,
            "payroll",
            "salaries",
            "acme-ceo",
            "acme",
            "PAY-1",
        ] {
            assert!(!text.contains(secret), "reply reveals {secret:?}: {text}");
        }
    };

    // Queries of another tenant's mandate: not found, and nothing in the reply.
    let globex = tenant("globex");
    let mq = json!({ "mandate": root }).to_string().into_bytes();
    for verb in ["status", "chain", "tree", "history"] {
        let reply = raw(&nc, query_subject(&globex, verb), mq.clone()).await;
        assert_refused(verb, &reply, "not_found", &[&root.to_string()]);
        leaks(&reply);
    }
    // A check is answered as for a mandate that does not exist: a deny that
    // says nothing about it, identical to one for a made-up id.
    let check = |m: MandateId| {
        json!({ "mandate": m, "action": "files:read", "resource": "docs/plan" })
            .to_string()
            .into_bytes()
    };
    let reply = raw(&nc, query_subject(&globex, "check"), check(root)).await;
    leaks(&reply);
    let decision: Decision = result_of(&reply);
    assert_eq!(decision.outcome, Outcome::Deny);
    assert!(
        matches!(decision.reason, Some(DenyReason::UnknownMandate)),
        "{decision:?}"
    );
    assert!(decision.chain.is_empty() && decision.effective.is_none());
    let made_up = MandateId::generate();
    let other = raw(&nc, query_subject(&globex, "check"), check(made_up)).await;
    let normalize = |v: &Value, m: MandateId| {
        let mut v = v.clone();
        v["result"]["at"] = Value::Null;
        v.to_string().replace(&m.to_string(), "<mandate>")
    };
    assert_eq!(normalize(&reply, root), normalize(&other, made_up));
    let reply = raw(
        &nc,
        query_subject(&globex, "list"),
        json!({ "agent": secret_agent }).to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply["ok"], json!(true), "{reply}");
    assert_eq!(reply["result"]["mandates"], json!([]), "{reply}");

    // Commands on it from the other tenant: not found either.
    let intruder = client(&nc, "globex", Actor::Admin(principal_id("globex-admin")));
    for (verb, result) in [
        ("revoke", intruder.revoke(root, None).await),
        ("pause", intruder.pause(root, None).await),
        (
            "delegate",
            client(&nc, "globex", agent(secret_agent))
                .delegate(delegation(root, "mole", &[secret_scope]))
                .await,
        ),
    ] {
        let err = result.unwrap_err();
        assert_eq!(code_of(&err), ErrorCode::NotFound, "{verb}: {err}");
        assert!(!err.to_string().contains(secret_agent), "{err}");
    }
    let r = intruder
        .revoke_agent(agent_id(secret_agent), None)
        .await
        .unwrap();
    // Only the block in globex's own registry.
    assert!(
        r.commits
            .iter()
            .all(|c| c.tree == TreeId::registry(&tenant("globex"))),
        "{r:?}"
    );
    let r = intruder
        .complete_mission(MissionRef::new("jira:PAY-1").unwrap())
        .await
        .unwrap();
    assert!(r.commits.is_empty(), "{r:?}");

    // A body naming another tenant than its subject is refused, both ways.
    let revoke_as = |body_tenant: &str| {
        let env = envelope(
            body_tenant,
            Actor::Admin(principal_id("x-admin")),
            Command::Revoke(change(root)),
        );
        serde_json::to_vec(&env).unwrap()
    };
    let reply = raw(&nc, command_subject(&globex, "revoke"), revoke_as("acme")).await;
    assert_refused(
        "acme body on a globex subject",
        &reply,
        "forbidden",
        &["tenant"],
    );
    let reply = raw(
        &nc,
        command_subject(&tenant("acme"), "revoke"),
        revoke_as("globex"),
    )
    .await;
    assert_refused(
        "globex body on an acme subject",
        &reply,
        "forbidden",
        &["tenant"],
    );

    // The one write is the block in globex's own registry.
    assert_eq!(
        instance.log_position().await,
        before + 1,
        "something was written"
    );
    let ceo = client(&nc, "acme", principal("acme-ceo"));
    assert_eq!(own(&ceo, root).await, Status::Active);
    assert!(ceo
        .check(root, "payroll:read", "salaries/ceo", None)
        .await
        .unwrap()
        .is_allowed());
    instance.stop().await;
}

/// The result of a raw reply that must be `ok`.
fn result_of<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value::<Reply<T>>(v.clone())
        .unwrap_or_else(|e| panic!("reply does not decode ({e}): {v}"))
        .into_result()
        .unwrap_or_else(|e| panic!("expected a result, got {e:?}"))
}

// ---------------------------------------------------------------------------
// 9. Bad input over the wire
// ---------------------------------------------------------------------------

type BadInput = (&'static str, String, Vec<u8>, &'static [&'static str]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_the_wire_is_refused_typed_and_changes_nothing() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let root = issue(&nc, planner_root("jira:FIN-9")).await;
    let before = instance.log_position().await;
    assert!(before > 0);
    let acme = tenant("acme");

    // A valid command, as JSON, to spoil one way at a time.
    let valid = |command: Command| {
        serde_json::to_value(envelope("acme", principal("cfo"), command)).unwrap()
    };
    let revoke = valid(Command::Revoke(change(root)));
    let bytes = |v: &Value| serde_json::to_vec(v).unwrap();
    // `command` with `field` set to `value`.
    let spoiled = |command: &Value, field: &str, value: Value| {
        let mut v = command.clone();
        v[field] = value;
        bytes(&v)
    };

    // (what, subject, body, what the message must mention); each is refused
    // as `invalid_input`
    let cases: Vec<BadInput> = vec![
        (
            "malformed JSON",
            command_subject(&acme, "revoke"),
            br#"{"command_id": "#.to_vec(),
            &["malformed command"],
        ),
        (
            "not an object",
            command_subject(&acme, "revoke"),
            b"[1,2,3]".to_vec(),
            &["malformed command", "object"],
        ),
        (
            "unknown type",
            command_subject(&acme, "frobnicate"),
            spoiled(&revoke, "type", json!("frobnicate")),
            &["unknown command type", "frobnicate"],
        ),
        (
            "subject verb differs from the body type",
            command_subject(&acme, "pause"),
            bytes(&revoke),
            &["\"pause\"", "\"revoke\"", "does not match"],
        ),
        (
            "body over 64 KiB",
            command_subject(&acme, "revoke"),
            spoiled(&revoke, "reason", json!("x".repeat(70 * 1024))),
            &["exceeds the limit of 65536 bytes"],
        ),
        (
            "hostile tenant in the body",
            command_subject(&tenant("a-b"), "revoke"),
            spoiled(&revoke, "tenant", json!("a.b")),
            &["tenant", "\"a.b\""],
        ),
        (
            "wildcard tenant in the body",
            command_subject(&acme, "revoke"),
            spoiled(&revoke, "tenant", json!(">")),
            &["tenant", "\">\""],
        ),
        (
            "hostile tenant in the subject",
            "mandate.cmd.a$b.revoke".to_string(),
            bytes(&revoke),
            &["tenant", "a$b"],
        ),
        (
            "over-long tenant in the subject",
            format!("mandate.q.{}.status", "t".repeat(65)),
            json!({ "mandate": root }).to_string().into_bytes(),
            &["tenant", "longer than 64 bytes"],
        ),
        (
            "the engine's own actor in the body",
            command_subject(&acme, "complete_mission"),
            spoiled(
                &valid(Command::CompleteMission(
                    mandate::domain::command::CompleteMission {
                        mission_ref: MissionRef::new("jira:FIN-9").unwrap(),
                    },
                )),
                "actor",
                json!({ "kind": "system", "id": "mission-intake" }),
            ),
            &["system mission-intake", "reserved"],
        ),
        (
            "an expiry sent from outside",
            command_subject(&acme, "expire"),
            spoiled(
                &valid(Command::Expire(mandate::domain::command::Target {
                    mandate: root,
                })),
                "actor",
                json!({ "kind": "system", "id": "expiry" }),
            ),
            &["system expiry", "reserved"],
        ),
        (
            "unknown schema version",
            command_subject(&acme, "revoke"),
            spoiled(&revoke, "schema_version", json!(2)),
            &["unknown schema version 2"],
        ),
        (
            "invalid scope pattern",
            command_subject(&acme, "narrow"),
            spoiled(
                &valid(Command::Narrow(Narrow {
                    mandate: root,
                    scope: scope(&["finance:read on reports/q3/*"]),
                })),
                "scope",
                json!([{ "action": "finance:re*d", "resource": "reports/**" }]),
            ),
            &["finance:re*d"],
        ),
        (
            "a bulk command of the wrong verb",
            command_subject(&acme, "revoke_principal"),
            bytes(&json!({
                "command_id": CommandId::generate(),
                "tenant": "acme",
                "actor": { "kind": "admin", "id": "it" },
                "type": "revoke_agent",
                "agent": "planner",
            })),
            &["does not match", "revoke_agent"],
        ),
        (
            "a malformed query",
            query_subject(&acme, "status"),
            br#"{"mandate":"not-a-uuid"}"#.to_vec(),
            &["malformed status query"],
        ),
        (
            "a query with an unknown field",
            query_subject(&acme, "status"),
            json!({ "mandate": root, "as_admin": true })
                .to_string()
                .into_bytes(),
            &["as_admin"],
        ),
        (
            "an unknown query verb",
            query_subject(&acme, "dump"),
            b"{}".to_vec(),
            &["unknown query verb", "dump"],
        ),
    ];
    for (what, subject, body, mentions) in &cases {
        let reply = raw(&nc, subject.clone(), body.clone()).await;
        let message = assert_refused(what, &reply, "invalid_input", mentions);
        assert!(
            message.len() < 1024,
            "{what}: an unbounded message: {message}"
        );
    }

    assert_eq!(
        instance.log_position().await,
        before,
        "bad input wrote something"
    );
    let cfo = client(&nc, "acme", principal("cfo"));
    assert_eq!(own(&cfo, root).await, Status::Active);
    // The mission was not completed by the forged intake actor either.
    assert_mission_open(&cfo, planner_root("jira:FIN-9")).await;
    instance.stop().await;
}

// ---------------------------------------------------------------------------
// Replies the server would not carry
// ---------------------------------------------------------------------------

/// A reply larger than the server's `max_payload` (here an `audit` with a
/// huge `limit`) is answered at once with a typed error naming both sizes
/// and what to ask instead, not left unsent for the caller to time out on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_servers_max_payload_is_an_error_not_a_silence() {
    const MAX_PAYLOAD: usize = 32 * 1024;
    let server = NatsServer::start_with_config(|store| {
        let path = store.join("small-payload.conf");
        let text = format!(
            "jetstream {{ store_dir: \"{}\" }}\nmax_payload: {MAX_PAYLOAD}\n",
            store.display()
        );
        std::fs::write(&path, text).unwrap();
        path
    });
    let dir = tempfile::tempdir().unwrap();
    let engine_nc = async_nats::connect(server.url()).await.unwrap();
    let log = mandate::log::JetStreamConfig {
        max_message_size: MAX_PAYLOAD / 2,
        ..Default::default()
    };
    let config = mandate::engine::EngineConfig {
        allow_open_tenants: true,
        ..Default::default()
    };
    let engine = mandate::engine::Engine::nats(engine_nc, dir.path(), log, config)
        .await
        .expect("open the engine");
    let (_stop, _task) = common::served::serve_in_task(&engine);
    let nc = connect(&server).await;
    serving(&nc, "acme").await;

    let root = issue(
        &nc,
        root_issue("cfo", "lead", None, &["finance:read on reports/**"]),
    )
    .await;
    let lead = client(&nc, "acme", agent("lead")).with_timeout(Duration::from_secs(5));
    // About 300 bytes of audit record each: far more than MAX_PAYLOAD.
    const CHECKS: usize = 200;
    let padding = "x".repeat(200);
    for i in 0..CHECKS {
        let resource = format!("reports/{padding}{i}");
        lead.check(root, "finance:read", &resource, None)
            .await
            .expect("check");
    }
    eventually("every check is in the audit", || {
        let lead = lead.clone();
        async move { matches!(lead.audit(root, 10).await, Ok(r) if r.records.len() == 10) }
    })
    .await;

    let started = std::time::Instant::now();
    let refused = lead.audit(root, 1_000_000).await;
    let took = started.elapsed();
    let body = match refused {
        Err(ClientError::Engine(body)) => body,
        other => panic!("expected an error reply, got {other:?} after {took:?}"),
    };
    assert_eq!(body.code, ErrorCode::InvalidInput, "{body:?}");
    assert!(
        body.message
            .contains(&format!("max_payload of {MAX_PAYLOAD} bytes"))
            && body.message.contains("a smaller `limit`"),
        "{}",
        body.message
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // A reply that fits still goes out.
    assert_eq!(lead.audit(root, 10).await.unwrap().records.len(), 10);
}
