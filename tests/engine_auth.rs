//! Invariant 9, second half: where a tenant requires it, the actor of a
//! command is authenticated (a `Mandate-Auth` HMAC over subject and body),
//! never taken on the body's word. Against a real nats-server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fixtures::{root_issue, with_depth};
use common::served::Instance;
use common::wire::serving;
use common::NatsServer;
use mandate::client::{Client, ClientError};
use mandate::domain::command::Issue;
use mandate::domain::{Actor, AgentId, ErrorCode, PrincipalId, TenantId};
use mandate::engine::auth::{sign, AuthConfig, AUTH_HEADER};
use mandate::engine::EngineConfig;
use mandate::log::EventLog;
use mandate::protocol::signature::SIGNATURE_HEADER;

/// cfo grants lead a root, depth 2.
fn issue() -> Issue {
    let grants = ["finance:read on reports/**"];
    with_depth(2, root_issue("cfo", "lead", None, &grants))
}

/// The code and message of a refusal; anything else fails the test.
fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Engine(body)) => (body.code, body.message),
        other => panic!("expected a refusal by the engine, got {other:?}"),
    }
}

/// Sends `body` on `subject` with `Mandate-Auth: header`; the reply's error.
async fn raw_refusal(
    nc: &async_nats::Client,
    subject: &str,
    header: &str,
    body: &serde_json::Value,
) -> (String, String) {
    let mut h = async_nats::HeaderMap::new();
    h.insert(AUTH_HEADER, header);
    let reply = nc
        .request_with_headers(
            subject.to_string(),
            h,
            serde_json::to_vec(body).unwrap().into(),
        )
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    (
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_of_a_tenant_that_requires_it_must_prove_their_actor() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let auth: AuthConfig = serde_json::from_str(
        r#"{"tenants": {"acme": {"keys": {"principal:cfo": "cfo-secret", "agent:lead": "lead-secret"}}}}"#,
    )
    .unwrap();
    let nc = async_nats::connect(server.url()).await.unwrap();
    let instance = Instance::start_with(
        &server.url(),
        dir.path(),
        EngineConfig {
            auth: Some(Arc::new(auth)),
            ..EngineConfig::default()
        },
    )
    .await;
    let engine = instance.engine.clone();
    let acme = TenantId::new("acme").unwrap();
    let cfo = Actor::Principal(PrincipalId::new("cfo").unwrap());
    let unsigned = Client::nats(nc.clone(), acme.clone(), cfo.clone())
        .with_timeout(Duration::from_millis(500));
    serving(&nc, "acme").await;
    let before = engine.log().last_position().await.unwrap();

    // No proof: refused, nothing written.
    assert_eq!(
        refusal(unsigned.issue(issue()).await),
        (
            ErrorCode::Forbidden,
            "not authenticated: tenant acme requires a Mandate-Auth header on every command"
                .to_string()
        )
    );
    // A wrong secret, or the right secret claimed for another actor: refused.
    let not_proven = (
        ErrorCode::Forbidden,
        "not authenticated: Mandate-Auth does not prove principal:cfo sent this request"
            .to_string(),
    );
    let wrong = unsigned.clone().with_secret("guess");
    assert_eq!(refusal(wrong.issue(issue()).await), not_proven);
    let lead_as_cfo = unsigned.clone().with_secret("lead-secret");
    assert_eq!(refusal(lead_as_cfo.issue(issue()).await), not_proven);
    // An actor the tenant holds no key for: refused by name.
    let ceo = Client::nats(
        nc.clone(),
        acme.clone(),
        Actor::Principal(PrincipalId::new("ceo").unwrap()),
    )
    .with_secret("anything");
    assert_eq!(
        refusal(ceo.issue(issue()).await),
        (
            ErrorCode::Forbidden,
            "not authenticated: principal:ceo has no key in tenant acme".to_string()
        )
    );
    // A header proving another actor than the body's, or malformed: refused.
    let revoke = serde_json::json!({
        "command_id": uuid::Uuid::new_v4(), "tenant": "acme", "actor": {"kind": "principal", "id": "cfo"},
        "type": "revoke", "mandate": uuid::Uuid::new_v4()
    });
    let lead = Actor::Agent(AgentId::new("lead").unwrap());
    let for_lead = sign(
        b"lead-secret",
        &lead,
        "mandate.cmd.acme.revoke",
        &serde_json::to_vec(&revoke).unwrap(),
    )
    .unwrap();
    assert_eq!(
        raw_refusal(&nc, "mandate.cmd.acme.revoke", &for_lead, &revoke).await,
        (
            "forbidden".to_string(),
            "not authenticated: Mandate-Auth is for agent:lead, but the body's actor is principal:cfo"
                .to_string()
        )
    );
    assert_eq!(
        raw_refusal(
            &nc,
            "mandate.cmd.acme.revoke",
            "v2 principal:cfo 00",
            &revoke
        )
        .await,
        (
            "forbidden".to_string(),
            "not authenticated: Mandate-Auth must be 'v1 <kind>:<id> <hex mac>'".to_string()
        )
    );
    assert_eq!(
        raw_refusal(
            &nc,
            "mandate.cmd.acme.revoke",
            "v1 principal:cfo zz",
            &revoke
        )
        .await,
        (
            "forbidden".to_string(),
            "not authenticated: Mandate-Auth mac is not hex".to_string()
        )
    );
    assert_eq!(
        engine.log().last_position().await.unwrap(),
        before,
        "a refused command wrote something"
    );

    // A body changed after signing is refused (the MAC covers the exact bytes).
    let body = serde_json::json!({
        "command_id": uuid::Uuid::new_v4(), "tenant": "acme", "actor": {"kind": "principal", "id": "cfo"},
        "type": "revoke", "mandate": uuid::Uuid::new_v4()
    });
    let signed_for = serde_json::to_vec(&body).unwrap();
    let header = sign(b"cfo-secret", &cfo, "mandate.cmd.acme.revoke", &signed_for).unwrap();
    let mut tampered = body.clone();
    tampered["type"] = "pause".into();
    assert_eq!(
        raw_refusal(&nc, "mandate.cmd.acme.pause", &header, &tampered).await,
        (
            "forbidden".to_string(),
            "not authenticated: Mandate-Auth does not prove principal:cfo sent this request"
                .to_string()
        )
    );
    assert_eq!(
        engine.log().last_position().await.unwrap(),
        before,
        "a refused command wrote something"
    );

    // The proven actor is served; a replay of the same signed command is a
    // duplicate and writes nothing more.
    let signed = unsigned.clone().with_secret("cfo-secret");
    let cmd = mandate::domain::CommandEnvelope {
        command_id: mandate::domain::CommandId::generate(),
        tenant: acme.clone(),
        actor: cfo.clone(),
        correlation_id: None,
        schema_version: 1,
        command: mandate::domain::Command::Issue(issue()),
    };
    let first = signed.send(&cmd).await.expect("a proven actor is served");
    assert!(!first.duplicate);
    let after_first = engine.log().last_position().await.unwrap();
    let again = signed.send(&cmd).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.mandate, first.mandate);
    assert_eq!(engine.log().last_position().await.unwrap(), after_first);

    // Another tenant that the configuration does not list is not open
    // unless the operator allowed open tenants.
    let unlisted = Client::nats(nc.clone(), TenantId::new("globex").unwrap(), cfo.clone());
    let err = unlisted.issue(issue()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");

    instance.stop().await;
}

/// On an open tenant (no authentication configured for it), a malformed
/// `Mandate-Auth` header is refused by name, as a malformed
/// `Mandate-Signature` is, and nothing is written; a well-formed one is not
/// checked against any key there, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_auth_header_is_refused_on_an_open_tenant_too() {
    let (_server, _dir, instance, nc) = common::wire::serve_one("acme").await;
    let before = instance.log_position().await;
    let cfo = Actor::Principal(PrincipalId::new("cfo").unwrap());
    let issue_body = || {
        let cmd = common::fixtures::envelope(
            "acme",
            cfo.clone(),
            mandate::domain::Command::Issue(issue()),
        );
        serde_json::to_value(cmd).unwrap()
    };
    let subject = "mandate.cmd.acme.issue";
    let shape = "Mandate-Auth must be 'v1 <kind>:<id> <hex mac>'";
    let mac = "0".repeat(64);
    let no_kind = format!("v1 cfo {mac}");
    let v2 = format!("v2 principal:cfo {mac}");
    let cases: Vec<(&str, &str, String)> = vec![
        (
            SIGNATURE_HEADER,
            "ed25519 cfo-1",
            "Mandate-Signature must be".into(),
        ),
        (AUTH_HEADER, "", shape.into()),
        (AUTH_HEADER, "Bearer abc", shape.into()),
        (AUTH_HEADER, "v1 principal:cfo", shape.into()),
        (AUTH_HEADER, &v2, shape.into()),
        (AUTH_HEADER, &no_kind, shape.into()),
        (
            AUTH_HEADER,
            "v1 principal:cfo zz",
            "Mandate-Auth mac is not hex".into(),
        ),
        (
            AUTH_HEADER,
            "v1 principal:cfo 00",
            "Mandate-Auth mac is 2 hex digits, not the 64 of an HMAC-SHA256".into(),
        ),
    ];
    for (name, value, says) in &cases {
        let reply =
            common::wire::raw_with_headers(&nc, subject, &[(name, value)], &issue_body()).await;
        let what = format!("{name}: {value:?}");
        common::wire::assert_refused(&what, &reply, "forbidden", &[says]);
        assert_eq!(
            reply["error"]["reason"], "not_authenticated",
            "{what}: {reply}"
        );
    }
    // A token query is proven as a command is: refused the same way.
    let token = serde_json::json!({
        "mandate": uuid::Uuid::new_v4(), "actor": {"kind": "principal", "id": "cfo"}
    });
    let reply = common::wire::raw_with_headers(
        &nc,
        "mandate.q.acme.token",
        &[(AUTH_HEADER, "v1 principal:cfo")],
        &token,
    )
    .await;
    common::wire::assert_refused("token query", &reply, "forbidden", &[shape]);
    assert_eq!(
        instance.log_position().await,
        before,
        "a refused command wrote something"
    );

    // A well-formed header, which no key of this open tenant proves or
    // disproves: served, as before.
    let header = format!("v1 principal:cfo {mac}");
    let reply =
        common::wire::raw_with_headers(&nc, subject, &[(AUTH_HEADER, &header)], &issue_body())
            .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(instance.log_position().await > before);
    instance.stop().await;
}

/// An empty secret proves nothing (anyone can compute a MAC under the empty
/// key), so an auth file holding one is refused when it is read, naming the
/// tenant and the key, as `serve --auth` reads it before it starts.
#[test]
fn an_auth_file_with_an_empty_secret_is_refused_when_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| {
        let path = dir.path().join("auth.json");
        std::fs::write(&path, text).unwrap();
        AuthConfig::load(&path)
    };
    let err =
        load(r#"{"tenants": {"acme": {"keys": {"principal:cfo": "s", "ticketing:jira": ""}}}}"#)
            .expect_err("an empty secret is refused");
    let said = err.to_string();
    assert!(
        said.contains("acme") && said.contains("ticketing:jira") && said.contains("empty secret"),
        "{said}"
    );
    load(r#"{"tenants": {"acme": {"keys": {"principal:cfo": "s", "ticketing:jira": "j"}}}}"#)
        .expect("non-empty secrets are read");
}
