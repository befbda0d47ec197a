//! Signed commands: an actor signs a command with an Ed25519 key registered
//! in the tenant (or configured by the operator), the engine verifies it and
//! records it in every event the command writes, and `verify` re-checks it
//! from the event and the key ring alone. Against a real nats-server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fixtures::{
    admin, agent, eventually, mission, principal, root_issue, tenant, ticket_issue,
};
use common::served::Instance;
use common::wire::{connect, serving};
use common::NatsServer;
use ed25519_dalek::SigningKey;
use mandate::client::{Client, ClientError, MissionPublisher};
use mandate::domain::{Actor, KeyId, KeyOwner, MandateId, Status, TreeId};
use mandate::engine::auth::{sign, AuthConfig, AUTH_HEADER};
use mandate::engine::EngineConfig;
use mandate::log::EventLog;
use mandate::protocol::signature::{self, public_key_text, SIGNATURE_HEADER};
use mandate::protocol::{KeySource, KeyStatus, MissionCompletedNotice, TreeQuery};
use serde_json::{json, Value};

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}
/// The administrator's key the operator configures for acme.
fn security_key() -> SigningKey {
    key(1)
}
/// The key configured for globex's administrator.
fn globex_key() -> SigningKey {
    key(2)
}
fn id(s: &str) -> KeyId {
    KeyId::new(s).unwrap()
}
fn owner(s: &str) -> KeyOwner {
    KeyOwner::new(s).unwrap()
}

fn auth(require: bool) -> AuthConfig {
    serde_json::from_value(json!({"tenants": {
        "acme": {
            "keys": {"principal:cfo": "cfo-secret", "agent:lead": "lead-secret",
                     "ticketing:jira": "jira-secret"},
            "signing_keys": {"security-root": {"owner": "admin:security",
                                               "public_key": public_key_text(&security_key())}},
            "require_signatures": require
        },
        "globex": {
            "signing_keys": {"globex-root": {"owner": "admin:security",
                                             "public_key": public_key_text(&globex_key())}}
        }
    }}))
    .unwrap()
}

async fn start(server: &NatsServer, dir: &std::path::Path, require: bool) -> Instance {
    Instance::start_with(
        &server.url(),
        dir,
        EngineConfig {
            auth: Some(Arc::new(auth(require))),
            ..EngineConfig::default()
        },
    )
    .await
}

/// A client of acme over `nc` acting as `actor`, signing with `key` as `key_id`.
fn signed(nc: &async_nats::Client, actor: Actor, key_id: &str, key: SigningKey) -> Client {
    Client::nats(nc.clone(), tenant("acme"), actor)
        .with_timeout(Duration::from_secs(2))
        .with_signing_key(id(key_id), key)
}

fn security(nc: &async_nats::Client) -> Client {
    signed(nc, admin("security"), "security-root", security_key())
}

/// The administrator registers `owner`'s `key` as `key_id`.
async fn register(nc: &async_nats::Client, key_id: &str, who: &str, key: &SigningKey) {
    security(nc)
        .register_key(id(key_id), owner(who), public_key_text(key), None)
        .await
        .unwrap_or_else(|e| panic!("register {key_id}: {e}"));
}

/// A server and an engine serving acme (signatures not yet required), the
/// cfo's key registered as `cfo-1`: the server, the engine's directory and
/// instance, a connection, and the cfo signing with that key.
async fn signed_acme() -> (
    NatsServer,
    tempfile::TempDir,
    Instance,
    async_nats::Client,
    Client,
) {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = start(&server, dir.path(), false).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    register(&nc, "cfo-1", "principal:cfo", &key(10)).await;
    let cfo = signed(&nc, principal("cfo"), "cfo-1", key(10));
    (server, dir, instance, nc, cfo)
}

/// The engine's reason and message of a refusal; anything else fails.
fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (String, String) {
    match r {
        Err(ClientError::Engine(b)) => (b.reason.unwrap_or_default(), b.message),
        other => panic!("expected a refusal by the engine, got {other:?}"),
    }
}

/// Sends `body` on `subject` with the headers given; the whole reply.
async fn send(
    nc: &async_nats::Client,
    subject: &str,
    body: &Value,
    auth: Option<&str>,
    sig: Option<&str>,
) -> Value {
    let headers: Vec<(&str, &str)> = [(AUTH_HEADER, auth), (SIGNATURE_HEADER, sig)]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
        .collect();
    common::wire::raw_with_headers(nc, subject, &headers, body).await
}

/// A raw issue by the cfo, as JSON.
fn issue_body() -> Value {
    let mut body = serde_json::to_value(root_issue(
        "cfo",
        "lead",
        None,
        &["finance:read on reports/**"],
    ))
    .unwrap();
    let obj = body.as_object_mut().unwrap();
    obj.insert("type".into(), "issue".into());
    obj.insert("command_id".into(), json!(uuid::Uuid::new_v4()));
    obj.insert("tenant".into(), "acme".into());
    obj.insert("actor".into(), json!({"kind": "principal", "id": "cfo"}));
    body
}

fn of_mandate(m: MandateId) -> TreeQuery {
    serde_json::from_value(json!({ "mandate": m })).unwrap()
}

fn of_registry() -> TreeQuery {
    serde_json::from_value(json!({ "tree": TreeId::registry(&tenant("acme")) })).unwrap()
}

const ISSUE: &str = "mandate.cmd.acme.issue";

fn header(key: &SigningKey, key_id: &str, subject: &str, body: &Value) -> String {
    signature::sign(
        key,
        &id(key_id),
        subject,
        &serde_json::to_vec(body).unwrap(),
    )
    .unwrap()
}

/// Asserts that `verify` finds `what` intact, with exactly `signatures`
/// recorded signatures and none failing.
async fn verified(client: &Client, what: &str, q: TreeQuery, signatures: u64) {
    let v = client.verify(q).await.unwrap();
    assert!(v.intact, "{what}: {v:?}");
    assert_eq!(
        (v.signatures, v.signature_failures.len()),
        (signatures, 0),
        "{what}: {v:?}"
    );
}

/// Asserts `reply` is a `not_authenticated` refusal whose message holds
/// every one of `mentions`.
fn not_authenticated(what: &str, reply: &Value, mentions: &[&str]) {
    assert_eq!(reply["ok"], false, "{what}: {reply}");
    assert_eq!(
        reply["error"]["reason"], "not_authenticated",
        "{what}: {reply}"
    );
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    for m in mentions {
        assert!(
            message.contains(m),
            "{what}: {message:?} should mention {m:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_key_bootstraps_registration_and_signed_commands_are_recorded_and_verify() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = start(&server, dir.path(), false).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;

    // The operator's configured key signs the first registration.
    let registered = security(&nc)
        .register_key(
            id("cfo-1"),
            owner("principal:cfo"),
            public_key_text(&key(10)),
            None,
        )
        .await
        .expect("a configured administrator key registers the cfo's key");
    let e = &registered.commits[0].events[0];
    assert_eq!(
        registered.commits[0].tree,
        TreeId::registry(&tenant("acme"))
    );
    let sig = e.signature.as_ref().expect("the registration is signed");
    assert_eq!(sig.key_id, id("security-root"));
    assert_eq!(sig.owner, owner("admin:security"));

    // The cfo signs an issue with the registered key.
    let cfo = signed(&nc, principal("cfo"), "cfo-1", key(10));
    let issued = cfo
        .issue(ticket_issue("jira:SIG-1"))
        .await
        .expect("signed issue");
    let m = issued.mandate.unwrap();
    let history = cfo.history(of_mandate(m)).await.unwrap();
    let recorded = history.events[0]
        .signature
        .as_ref()
        .expect("the event records the signature");
    assert_eq!(recorded.key_id, id("cfo-1"));
    assert_eq!(recorded.owner, owner("principal:cfo"));
    assert_eq!(serde_json::to_value(recorded.alg).unwrap(), "EdDSA");
    assert_eq!(recorded.subject, ISSUE);
    assert_eq!(recorded.command["command_id"], json!(issued.command_id));
    // An auditor re-verifies it with the public key alone.
    signature::verify_recorded(recorded, &public_key_text(&key(10))).expect("re-verifies");
    assert!(signature::verify_recorded(recorded, &public_key_text(&key(11))).is_err());
    // An unsigned command (HMAC, the tenant does not require signatures)
    // records none: the field is absent, not null.
    let hmac = Client::nats(nc.clone(), tenant("acme"), principal("cfo")).with_secret("cfo-secret");
    hmac.pause(m, None).await.expect("HMAC still works");
    let raw = serde_json::to_value(&hmac.history(of_mandate(m)).await.unwrap().events[1]).unwrap();
    assert!(raw.get("signature").is_none(), "{raw}");

    verified(&cfo, "the tree", of_mandate(m), 1).await;
    verified(&cfo, "the registry", of_registry(), 1).await;

    // The ring: the configured key, then the registered one.
    let ring = cfo.keys().await.unwrap();
    let listed: Vec<(String, KeySource, KeyStatus)> = ring
        .keys
        .iter()
        .map(|k| (k.key_id.to_string(), k.source, k.status))
        .collect();
    assert_eq!(
        listed,
        vec![
            (
                "security-root".into(),
                KeySource::Configured,
                KeyStatus::Active
            ),
            ("cfo-1".into(), KeySource::Registered, KeyStatus::Active),
        ]
    );
    assert!(!ring.require_signatures);
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_that_does_not_verify_is_refused_by_name_and_writes_nothing() {
    let (_server, _dir, instance, nc, _) = signed_acme().await;
    register(&nc, "lead-1", "agent:lead", &key(20)).await;
    register(&nc, "cfo-old", "principal:cfo", &key(12)).await;
    security(&nc)
        .revoke_key(id("cfo-old"), Some("laptop lost".into()))
        .await
        .unwrap();
    let before = instance.engine.log().last_position().await.unwrap();

    let body = issue_body();
    let good = header(&key(10), "cfo-1", ISSUE, &body);
    // Tampered body: another grantee after signing.
    let mut tampered = body.clone();
    tampered["grantee"] = json!("analyst");
    // Another tenant's configured key (globex's administrator's).
    let mut as_security = body.clone();
    as_security["actor"] = json!({"kind": "admin", "id": "security"});
    let forged = header(&key(99), "cfo-1", ISSUE, &body);
    let hmac = sign(
        b"cfo-secret",
        &principal("cfo"),
        ISSUE,
        &serde_json::to_vec(&body).unwrap(),
    )
    .unwrap();
    // What, the body sent, its HMAC, its signature header, what the refusal names.
    type BadSignature<'a> = (&'a str, &'a Value, Option<&'a str>, String, &'a [&'a str]);
    let cases: Vec<BadSignature> = vec![
        (
            "tampered body",
            &tampered,
            None,
            good.clone(),
            &["does not match", "cfo-1"],
        ),
        (
            // Signed for another subject (another tenant's), sent on this one.
            "wrong subject",
            &body,
            None,
            header(&key(10), "cfo-1", "mandate.cmd.globex.issue", &body),
            &["does not match"],
        ),
        // Another private key under the cfo's key id.
        (
            "wrong key",
            &body,
            None,
            forged.clone(),
            &["does not match", "cfo-1"],
        ),
        (
            "unknown key",
            &body,
            None,
            header(&key(10), "cfo-9", ISSUE, &body),
            &["cfo-9", "neither configures nor registers"],
        ),
        (
            // Signing after its revocation.
            "revoked key",
            &body,
            None,
            header(&key(12), "cfo-old", ISSUE, &body),
            &["cfo-old", "revoked"],
        ),
        (
            // The lead's key on the cfo's command.
            "key of another actor",
            &body,
            None,
            header(&key(20), "lead-1", ISSUE, &body),
            &["lead-1 belongs to agent:lead", "principal cfo"],
        ),
        (
            "another tenant's key",
            &as_security,
            None,
            header(&globex_key(), "globex-root", ISSUE, &as_security),
            &[
                "globex-root",
                "tenant acme neither configures nor registers",
            ],
        ),
        // A bad signature never falls back to a valid HMAC.
        (
            "bad signature with a good HMAC",
            &body,
            Some(&hmac),
            forged.clone(),
            &["does not match"],
        ),
        (
            "malformed header",
            &body,
            Some(&hmac),
            "ed25519 cfo-1".to_string(),
            &["Mandate-Signature must be"],
        ),
    ];
    for (what, sent, hmac, signature, names) in cases {
        not_authenticated(
            what,
            &send(&nc, ISSUE, sent, hmac, Some(&signature)).await,
            names,
        );
    }
    assert_eq!(
        instance.engine.log().last_position().await.unwrap(),
        before,
        "a refused command writes nothing"
    );
    // The very same body, properly signed, is accepted.
    let ok = send(&nc, ISSUE, &body, None, Some(&good)).await;
    assert_eq!(ok["ok"], true, "{ok}");
    assert!(instance.engine.log().last_position().await.unwrap() > before);
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_commands_follow_the_ring_rules_and_refusals_write_nothing() {
    let (_server, _dir, instance, nc, cfo) = signed_acme().await;
    let before = instance.engine.log().last_position().await.unwrap();
    let sec = security(&nc);

    // A non-administrator registers a key for someone else.
    let (reason, message) = refusal(
        cfo.register_key(
            id("lead-x"),
            owner("agent:lead"),
            public_key_text(&key(20)),
            None,
        )
        .await,
    );
    assert_eq!(reason, "key_forbidden", "{message}");
    assert!(
        message.contains("principal cfo may not register_key key lead-x of agent:lead"),
        "{message}"
    );
    // Key ids are never reused: a registered one, a configured one.
    for taken in ["cfo-1", "security-root"] {
        let (reason, _) = refusal(
            sec.register_key(
                id(taken),
                owner("principal:cfo"),
                public_key_text(&key(13)),
                None,
            )
            .await,
        );
        assert_eq!(reason, "key_id_taken", "{taken}");
    }
    // Not an Ed25519 point (y = 2 does not decompress), nor 32 bytes.
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    for (bad, why) in [
        (base64_url(&not_a_point), "not a valid Ed25519 point"),
        (base64_url(&[1u8; 16]), "is 16 bytes"),
    ] {
        let (reason, message) = refusal(
            sec.register_key(id("bad"), owner("principal:cfo"), bad, None)
                .await,
        );
        assert_eq!(reason, "invalid_field", "{message}");
        assert!(message.contains(why), "{message}");
    }
    // A configured key is retired by the operator, not revoked here.
    let (reason, _) = refusal(sec.revoke_key(id("security-root"), None).await);
    assert_eq!(reason, "key_configured");
    let (reason, _) = refusal(sec.revoke_key(id("nope"), None).await);
    assert_eq!(reason, "key_not_found");
    // The lead (HMAC) may not revoke the cfo's key.
    let lead = Client::nats(nc.clone(), tenant("acme"), agent("lead")).with_secret("lead-secret");
    let (reason, _) = refusal(lead.revoke_key(id("cfo-1"), None).await);
    assert_eq!(reason, "key_forbidden");
    assert_eq!(
        instance.engine.log().last_position().await.unwrap(),
        before,
        "refused key commands write nothing"
    );

    // An agent registers its own key (HMAC-proven), and revokes it; revoking
    // again is refused, and its id is never taken again.
    lead.register_key(
        id("lead-1"),
        owner("agent:lead"),
        public_key_text(&key(20)),
        None,
    )
    .await
    .expect("an agent registers its own key");
    lead.revoke_key(id("lead-1"), None)
        .await
        .expect("and revokes it");
    let (reason, _) = refusal(lead.revoke_key(id("lead-1"), None).await);
    assert_eq!(reason, "key_already_revoked");
    let (reason, _) = refusal(
        sec.register_key(
            id("lead-1"),
            owner("agent:lead"),
            public_key_text(&key(21)),
            None,
        )
        .await,
    );
    assert_eq!(reason, "key_id_taken");
    instance.stop().await;
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_refuses_the_old_key_accepts_the_new_and_history_still_verifies() {
    let (_server, _dir, instance, nc, old) = signed_acme().await;
    let m: MandateId = old
        .issue(ticket_issue("jira:ROT-1"))
        .await
        .unwrap()
        .mandate
        .unwrap();

    // The cfo rotates its own key, signing with the old one: one commit.
    let rotated = old
        .rotate_key(id("cfo-1"), id("cfo-2"), public_key_text(&key(11)), None)
        .await
        .expect("the owner rotates its key");
    let types: Vec<&str> = rotated.commits[0]
        .events
        .iter()
        .map(|e| e.body.type_name())
        .collect();
    assert_eq!(types, ["key_registered", "key_revoked"]);

    let (reason, message) = refusal(old.pause(m, None).await);
    assert_eq!(reason, "not_authenticated");
    assert!(message.contains("cfo-1, revoked"), "{message}");
    let new = signed(&nc, principal("cfo"), "cfo-2", key(11));
    new.pause(m, None).await.expect("the new key signs");

    // The issue signed before the rotation still verifies (the key was
    // valid then), and so does the pause signed after it.
    verified(&new, "the tree", of_mandate(m), 2).await;
    verified(&new, "the registry", of_registry(), 3).await;
    let ring = new.keys().await.unwrap();
    let status = |k: &str| {
        ring.keys
            .iter()
            .find(|x| x.key_id.as_str() == k)
            .map(|x| x.status)
    };
    assert_eq!(status("cfo-1"), Some(KeyStatus::Revoked));
    assert_eq!(status("cfo-2"), Some(KeyStatus::Active));
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_migrates_from_hmac_to_required_signatures_and_completions_keep_their_hmac() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nc = connect(&server).await;

    // 1. HMAC only, as before.
    let instance = start(&server, dir.path(), false).await;
    serving(&nc, "acme").await;
    let hmac = Client::nats(nc.clone(), tenant("acme"), principal("cfo"))
        .with_secret("cfo-secret")
        .with_timeout(Duration::from_secs(2));
    let first = hmac
        .issue(ticket_issue("jira:MIG-1"))
        .await
        .expect("HMAC")
        .mandate
        .unwrap();
    // 2. The administrator registers the cfo's key; 3. the cfo signs.
    register(&nc, "cfo-1", "principal:cfo", &key(10)).await;
    let cfo = signed(&nc, principal("cfo"), "cfo-1", key(10));
    cfo.pause(first, None)
        .await
        .expect("signed while not required");
    instance.stop().await;

    // 4. The operator requires signatures.
    let instance = start(&server, dir.path(), true).await;
    serving(&nc, "acme").await;
    let before = instance.engine.log().last_position().await.unwrap();
    let (reason, message) = refusal(hmac.resume(first, None).await);
    assert_eq!(reason, "not_authenticated");
    assert!(
        message.contains("requires a Mandate-Signature header on every command"),
        "{message}"
    );
    let bare = Client::nats(nc.clone(), tenant("acme"), principal("cfo"))
        .with_timeout(Duration::from_secs(2));
    let (reason, _) = refusal(bare.resume(first, None).await);
    assert_eq!(reason, "not_authenticated");
    assert_eq!(instance.engine.log().last_position().await.unwrap(), before);
    cfo.resume(first, None)
        .await
        .expect("a signed command is accepted");
    let second = cfo
        .issue(ticket_issue("jira:MIG-2"))
        .await
        .unwrap()
        .mandate
        .unwrap();
    assert!(cfo.keys().await.unwrap().require_signatures);

    // A ticketing system's completion keeps its HMAC.
    MissionPublisher::Nats(Box::new(async_nats::jetstream::new(nc.clone())))
        .completed_signed(
            &tenant("acme"),
            &mission("jira:MIG-2"),
            &MissionCompletedNotice::default(),
            "ticketing:jira",
            b"jira-secret",
        )
        .await
        .unwrap();
    eventually("the ticketing system's completion is applied", || {
        let cfo = cfo.clone();
        async move {
            cfo.status(second, None)
                .await
                .is_ok_and(|s| s.effective.status == Status::Completed)
        }
    })
    .await;
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_generates_registers_and_signs_with_keys() {
    use common::cli::{mandate, ok_json, says};
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let data = files.path().join("cli-data");
    let (sec_pem, cfo_pem) = (files.path().join("sec.pem"), files.path().join("cfo.pem"));
    let keygen = |file: &std::path::Path| {
        let out = mandate(&data, &["keys", "keygen", "--out", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", common::cli::text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let sec_pk = keygen(&sec_pem);
    let cfo_pk = keygen(&cfo_pem);
    // Never overwritten.
    let again = mandate(
        &data,
        &["keys", "keygen", "--out", sec_pem.to_str().unwrap()],
    );
    assert!(!again.status.success());
    let auth: AuthConfig = serde_json::from_value(json!({"tenants": {"acme": {
        "signing_keys": {"security-root": {"owner": "admin:security", "public_key": sec_pk}},
        "require_signatures": true}}}))
    .unwrap();
    let instance = Instance::start_with(
        &server.url(),
        dir.path(),
        EngineConfig {
            auth: Some(Arc::new(auth)),
            ..EngineConfig::default()
        },
    )
    .await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    let url = server.url();
    let run = move |args: Vec<String>| {
        let data = data.clone();
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut all = vec!["--nats".to_string(), url, "--tenant".into(), "acme".into()];
                all.extend(args);
                let all: Vec<&str> = all.iter().map(String::as_str).collect();
                mandate(&data, &all)
            })
            .await
            .unwrap()
        }
    };
    let args = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let (sec, cfo) = (sec_pem.to_str().unwrap(), cfo_pem.to_str().unwrap());

    let out = run(args(&[
        "--actor",
        "admin:security",
        "--signing-key",
        sec,
        "--key-id",
        "security-root",
        "keys",
        "register",
        "cfo-cli",
        "--owner",
        "principal:cfo",
        "--public-key-of",
        cfo,
    ]))
    .await;
    assert!(out.status.success(), "{}", common::cli::text(&out));
    // Unsigned, on a tenant that requires signatures: refused.
    let issue = [
        "issue",
        "--principal",
        "cfo",
        "--agent",
        "lead",
        "--purpose",
        "cli",
        "--grant",
        "finance:read on reports/**",
    ];
    let mut unsigned = args(&["--actor", "principal:cfo"]);
    unsigned.extend(args(&issue));
    says(&run(unsigned).await, 5, &["requires a Mandate-Signature"]);
    let mut signed = args(&[
        "--json",
        "--actor",
        "principal:cfo",
        "--signing-key",
        cfo,
        "--key-id",
        "cfo-cli",
    ]);
    signed.extend(args(&issue));
    let out = run(signed).await;
    let reply = ok_json(&out);
    assert_eq!(
        reply["commits"][0]["events"][0]["signature"]["key_id"], "cfo-cli",
        "{reply}"
    );
    let ring = ok_json(&run(args(&["--json", "keys", "list"])).await);
    assert_eq!(ring["keys"][1]["public_key"], json!(cfo_pk), "{ring}");
    assert_eq!(ring["require_signatures"], true);
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_bulk_command_and_mission_completion_record_their_signature_in_every_event() {
    let (_server, _dir, instance, nc, cfo) = signed_acme().await;
    let done = cfo
        .issue(ticket_issue("jira:BULK-1"))
        .await
        .unwrap()
        .mandate
        .unwrap();
    let swept = cfo
        .issue(root_issue(
            "cfo",
            "lead",
            None,
            &["finance:read on reports/**"],
        ))
        .await
        .unwrap()
        .mandate
        .unwrap();

    // The cfo completes the mission: each tree's completion carries the
    // signature of the command it serves.
    let completed = cfo.complete_mission(mission("jira:BULK-1")).await.unwrap();
    let events: Vec<_> = completed.commits.iter().flat_map(|c| &c.events).collect();
    assert!(!events.is_empty());
    for e in &events {
        let sig = e
            .signature
            .as_ref()
            .expect("a completion records its signature");
        assert_eq!(sig.command["command_id"], json!(completed.command_id));
    }
    // The administrator deprovisions the lead: the block and every revoke.
    let swept_by = security(&nc)
        .revoke_agent(mandate::domain::AgentId::new("lead").unwrap(), None)
        .await
        .unwrap();
    let types: Vec<&str> = swept_by
        .commits
        .iter()
        .flat_map(|c| &c.events)
        .map(|e| {
            assert_eq!(
                e.signature.as_ref().map(|s| s.key_id.as_str()),
                Some("security-root"),
                "{e:?}"
            );
            e.body.type_name()
        })
        .collect();
    assert_eq!(types, ["agent_blocked", "mandate_revoked"]);
    for (what, q) in [
        ("completed tree", of_mandate(done)),
        ("swept tree", of_mandate(swept)),
        ("registry", of_registry()),
    ] {
        let v = cfo.verify(q).await.unwrap();
        assert!(v.intact, "{what}: {v:?}");
        assert!(v.signatures >= 2, "{what}: {v:?}");
        assert!(v.signature_failures.is_empty(), "{what}: {v:?}");
    }
    instance.stop().await;
}

/// A token is a credential, so its query is authenticated as a command is:
/// where signatures are required, an HMAC alone gets no token, a signed
/// query does, and a forged signature is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_signatures_are_required_a_token_query_must_be_signed_too() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nc = connect(&server).await;
    let instance = Instance::start_with(
        &server.url(),
        dir.path(),
        EngineConfig {
            auth: Some(Arc::new(auth(true))),
            tokens: Some(Arc::new(
                mandate::engine::tokens::TokenKeys::ephemeral().unwrap(),
            )),
            ..EngineConfig::default()
        },
    )
    .await;
    serving(&nc, "acme").await;
    register(&nc, "cfo-1", "principal:cfo", &key(10)).await;
    let cfo = signed(&nc, principal("cfo"), "cfo-1", key(10));
    let root = cfo
        .issue(ticket_issue("jira:TOK-1"))
        .await
        .expect("a signed issue")
        .mandate
        .unwrap();

    let hmac = Client::nats(nc.clone(), tenant("acme"), principal("cfo"))
        .with_secret("cfo-secret")
        .with_timeout(Duration::from_secs(2));
    let (reason, message) = refusal(hmac.token(root, None, None).await);
    assert_eq!(reason, "not_authenticated");
    assert!(message.contains("token query"), "{message}");

    let forged = signed(&nc, principal("cfo"), "cfo-1", key(11));
    let (reason, _) = refusal(forged.token(root, None, None).await);
    assert_eq!(reason, "not_authenticated");

    let token = cfo.token(root, None, None).await.expect("a signed query");
    assert!(token.token.split('.').count() == 3, "{}", token.token);
    instance.stop().await;
}
