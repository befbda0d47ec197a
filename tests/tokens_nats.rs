//! Mandate tokens against a real nats-server and served engines: the claims
//! name the chain and never outlive it; tampered, foreign-key, expired and
//! `alg: none` tokens are refused; tokens are refused for mandates that are
//! not live and for callers that are not entitled; a rotation keeps the old
//! tokens valid while the old key is listed; offline verification keeps
//! accepting a token after its root is revoked (the documented window) while
//! verification with liveness refuses it; and `mandate serve --jwks-http`
//! serves the same JWK set over HTTP.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::Utc;
use common::cli::{mandate, says, serve_listening, stdout};
use common::http_get;
use common::prelude::*;
use mandate::client::{TokenError, TokenVerifier};
use mandate::domain::Grant;
use mandate::engine::auth::{AuthConfig, TenantKeys};
use mandate::engine::tokens::{write_new_key, TokenKeys};
use mandate::engine::EngineConfig;
use mandate::protocol::token::{Jwks, TokenClaims, TokenQuery, TokenReply};
use mandate::protocol::Consistency;

const MAX_TTL: Duration = Duration::from_secs(120);

fn config(keys: TokenKeys) -> EngineConfig {
    EngineConfig {
        allow_open_tenants: true,
        beacon_interval: Duration::from_millis(200),
        tokens: Some(Arc::new(keys)),
        token_max_ttl: MAX_TTL,
        ..EngineConfig::default()
    }
}

fn acme_as(nc: &async_nats::Client, actor: Actor) -> Client {
    client(nc, "acme", actor)
}

/// The cfo's root for the lead, and the lead's delegation to the analyst
/// ending at `child_end` (None: the root's).
async fn chain_of_two(
    nc: &async_nats::Client,
    child_end: Option<chrono::DateTime<Utc>>,
) -> (MandateId, MandateId) {
    let root = issue(
        nc,
        root_issue("cfo", "lead", None, &["finance:read on reports/**"]),
    )
    .await;
    let child = acme_as(nc, agent("lead"))
        .delegate(Delegate {
            not_after: child_end,
            ..delegation(root, "analyst", &["finance:read on reports/q3/*"])
        })
        .await
        .expect("delegate")
        .mandate
        .unwrap();
    (root, child)
}

fn header_of(token: &str) -> serde_json::Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Asserts `doc` validates against `schemas/<name>.json`.
fn conforms(name: &str, doc: &serde_json::Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{name}.json"));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = validator.iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{name}: {errors:?} in {doc}");
}

fn refusal(e: &ClientError) -> (ErrorCode, Option<String>) {
    (code_of(e), e.reason().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_name_the_chain_and_never_outlive_it() {
    let (_server, _dir, _i, nc) =
        serve_one_with("acme", config(TokenKeys::ephemeral().unwrap())).await;
    let child_end = Utc::now() + chrono::Duration::seconds(90);
    let (root, child) = chain_of_two(&nc, Some(child_end)).await;
    let analyst = acme_as(&nc, agent("analyst"));
    let verifier = TokenVerifier::from_engine(&analyst).await.unwrap();

    let reply = analyst.token(child, None, None).await.expect("a token");
    // The raw replies follow their schemas.
    let body = serde_json::json!({"mandate": child, "actor": {"kind": "agent", "id": "analyst"}, "ttl": 60, "aud": "x"});
    conforms("query-token", &body);
    let raw_token = raw(
        &nc,
        "mandate.q.acme.token".into(),
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(raw_token["ok"], true, "{raw_token}");
    conforms("reply-token", &raw_token);
    let raw_jwks = raw(&nc, "mandate.q.acme.jwks".into(), b"{}".to_vec()).await;
    conforms("reply-jwks", &raw_jwks);
    conforms("jwks", &raw_jwks["result"]);
    let payload = raw_token["result"]["token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    let payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(
        payload, raw_token["result"]["claims"],
        "the reply's claims are the payload"
    );
    conforms("token-claims", &payload);
    let refused = raw(
        &nc,
        "mandate.q.acme.token".into(),
        serde_json::to_vec(
            &serde_json::json!({"mandate": child, "actor": {"kind": "agent", "id": "lead"}}),
        )
        .unwrap(),
    )
    .await;
    conforms("reply-token", &refused);
    let header = header_of(&reply.token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], serde_json::json!(reply.kid));
    let c = verifier.verify(&reply.token).expect("verifies offline");
    assert_eq!(c, reply.claims, "the reply's claims are the signed ones");
    assert_eq!(c.sub, "cfo");
    assert_eq!(c.iss, "mandate/acme");
    assert_eq!(c.tenant, tenant("acme"));
    assert_eq!(c.mandate, child);
    assert_eq!(c.aud, None);
    assert_eq!(c.scope, vec!["finance:read on reports/q3/*".to_string()]);
    let chain = analyst.chain(child, None).await.unwrap();
    assert_eq!(c.tree, chain.tree);
    // RFC 8693: the holder outermost, the root's grantee innermost.
    let actors: Vec<(String, MandateId)> = c
        .act
        .actors()
        .iter()
        .map(|a| (a.sub.clone(), a.mandate))
        .collect();
    assert_eq!(
        actors,
        vec![("analyst".into(), child), ("lead".into(), root)]
    );
    assert_eq!(c.iat, c.nbf);
    assert!(
        c.exp <= child_end.timestamp(),
        "exp {} after the chain's end {child_end}",
        c.exp
    );
    assert!(c.exp - c.iat <= 90 && c.exp > c.iat);
    uuid::Uuid::parse_str(&c.jti).expect("jti is a UUID");

    // The root's own token: capped by the maximum lifetime, even when more is asked.
    let lead = acme_as(&nc, agent("lead"));
    let long = lead.token(root, Some(100_000), None).await.unwrap().claims;
    assert_eq!(long.exp - long.iat, MAX_TTL.as_secs() as i64);
    assert_eq!(long.act.actors().len(), 1);
    assert_eq!(long.act.sub, "lead");
    let short = lead.token(root, Some(30), None).await.unwrap().claims;
    assert_eq!(short.exp - short.iat, 30);
    assert_ne!(short.jti, long.jti, "every token has its own id");

    // The principal and an administrator may get one too; the token still
    // names the holder as the actor.
    for asker in [principal("cfo"), admin("security")] {
        let c = acme_as(&nc, asker)
            .token(child, None, None)
            .await
            .unwrap()
            .claims;
        assert_eq!(c.act.sub, "analyst");
        assert_eq!(c.sub, "cfo");
    }

    // Audience: required to match when configured, and a token naming one is
    // refused by a verifier that expects none.
    let aimed = analyst
        .token(child, None, Some("reports-api".into()))
        .await
        .unwrap();
    assert_eq!(aimed.claims.aud.as_deref(), Some("reports-api"));
    assert!(matches!(
        verifier.verify(&aimed.token),
        Err(TokenError::Audience { .. })
    ));
    let for_api = verifier.clone().with_audience("reports-api");
    for_api.verify(&aimed.token).expect("the right audience");
    assert!(matches!(
        verifier
            .clone()
            .with_audience("payroll")
            .verify(&aimed.token),
        Err(TokenError::Audience { .. })
    ));
    assert!(matches!(
        for_api.verify(&reply.token),
        Err(TokenError::Audience { .. })
    ));
    // Issuer, when configured.
    verifier
        .clone()
        .with_issuer("mandate/acme")
        .verify(&reply.token)
        .unwrap();
    assert!(matches!(
        verifier
            .clone()
            .with_issuer("mandate/globex")
            .verify(&reply.token),
        Err(TokenError::Issuer { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_foreign_expired_and_unsigned_tokens_are_refused() {
    let (_server, _dir, _i, nc) =
        serve_one_with("acme", config(TokenKeys::ephemeral().unwrap())).await;
    let (_root, child) = chain_of_two(&nc, None).await;
    let analyst = acme_as(&nc, agent("analyst"));
    let jwks = analyst.jwks().await.unwrap();
    let verifier = TokenVerifier::new(&jwks).unwrap();
    let TokenReply { token, kid, claims } = analyst.token(child, None, None).await.unwrap();
    verifier
        .verify(&token)
        .expect("the untouched token verifies");
    let parts: Vec<&str> = token.split('.').collect();

    // A wider scope in the payload, the signature kept.
    let mut wider: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    wider["scope"] = serde_json::json!(["finance:* on **"]);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&wider).unwrap()),
        parts[2]
    );
    assert!(
        matches!(verifier.verify(&forged), Err(TokenError::Signature)),
        "payload tampered"
    );
    // A later exp, the signature kept.
    let mut later = wider.clone();
    later["scope"] = serde_json::json!(claims.scope);
    later["exp"] = serde_json::json!(claims.exp + 3600);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&later).unwrap()),
        parts[2]
    );
    assert!(
        matches!(verifier.verify(&forged), Err(TokenError::Signature)),
        "exp tampered"
    );
    // One bit of the signature flipped.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let forged = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    assert!(
        matches!(verifier.verify(&forged), Err(TokenError::Signature)),
        "signature tampered"
    );
    // Not three parts, not base64url.
    for broken in [
        "",
        "a.b",
        &format!("{token}.x"),
        &format!("{}.{}.!!", parts[0], parts[1]),
    ] {
        assert!(
            matches!(verifier.verify(broken), Err(TokenError::Malformed(_))),
            "{broken:?}"
        );
    }

    // alg none, unsigned; and HS256 keyed with the public key.
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{none_header}.{}.", parts[1]);
    assert!(matches!(verifier.verify(&unsigned), Err(TokenError::Algorithm(a)) if a == "none"));
    let hs_header = b64(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#).as_bytes());
    let hs = format!("{hs_header}.{}.{}", parts[1], parts[2]);
    assert!(matches!(verifier.verify(&hs), Err(TokenError::Algorithm(a)) if a == "HS256"));
    // No kid.
    let no_kid = b64(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    assert!(matches!(
        verifier.verify(&format!("{no_kid}.{}.{}", parts[1], parts[2])),
        Err(TokenError::Malformed(_))
    ));

    // Another engine's keys: its JWKS does not know the kid; and its key
    // published under this kid does not verify the signature.
    let other = TokenKeys::ephemeral().unwrap().jwks();
    assert!(matches!(
        TokenVerifier::new(&other).unwrap().verify(&token),
        Err(TokenError::UnknownKey(k)) if k == kid
    ));
    let mut impostor = other.clone();
    impostor.keys[0].kid = kid.clone();
    assert!(matches!(
        TokenVerifier::new(&impostor).unwrap().verify(&token),
        Err(TokenError::Signature)
    ));
    // A set with a key of another type is refused whole.
    let mut foreign = jwks.clone();
    foreign.keys[0].crv = "X25519".into();
    assert!(matches!(
        TokenVerifier::new(&foreign),
        Err(TokenError::Key(_))
    ));

    // Expired: past exp beyond the leeway; at exp itself without leeway.
    let at = |secs: i64| chrono::DateTime::from_timestamp(secs, 0).unwrap();
    assert!(matches!(
        verifier.verify_at(&token, at(claims.exp + 6)),
        Err(TokenError::Expired(_))
    ));
    verifier
        .verify_at(&token, at(claims.exp + 4))
        .expect("within the default leeway of 5 s");
    let strict = verifier.clone().with_leeway(Duration::ZERO);
    assert!(matches!(
        strict.verify_at(&token, at(claims.exp)),
        Err(TokenError::Expired(_))
    ));
    strict.verify_at(&token, at(claims.exp - 1)).unwrap();
    // Not yet valid.
    assert!(matches!(
        strict.verify_at(&token, at(claims.nbf - 1)),
        Err(TokenError::NotYetValid(_))
    ));
    // A real expiry: a token of one second, checked after it ended.
    let brief = analyst.token(child, Some(1), None).await.unwrap();
    assert_eq!(brief.claims.exp - brief.claims.iat, 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(matches!(
        strict.verify(&brief.token),
        Err(TokenError::Expired(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refused_for_dead_paused_unknown_mandates_and_strangers() {
    // This instance serves acme (and globex) only: another, keyless one
    // serves a tenant of its own below.
    let (server, _dir, _i, nc) = serve_one_with(
        "acme",
        EngineConfig {
            tenants: vec![tenant("acme"), tenant("globex")],
            ..config(TokenKeys::ephemeral().unwrap())
        },
    )
    .await;
    let (root, child) = chain_of_two(&nc, None).await;
    let analyst = acme_as(&nc, agent("analyst"));
    let cfo = acme_as(&nc, principal("cfo"));

    // Strangers: another agent (even the one above), another principal.
    for stranger in [agent("intruder"), agent("lead"), principal("cto")] {
        let e = acme_as(&nc, stranger.clone())
            .token(child, None, None)
            .await
            .unwrap_err();
        assert_eq!(
            refusal(&e),
            (ErrorCode::Forbidden, Some("not_grantee".into())),
            "{stranger}: {e}"
        );
        assert!(e.to_string().contains("analyst"), "{e}");
    }
    // The engine's own actors are never accepted from the wire.
    let e = analyst
        .token_with(TokenQuery {
            mandate: child,
            actor: Actor::System(agent_id("expiry")),
            ttl: None,
            aud: None,
            consistency: Consistency::Fresh,
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), ErrorCode::InvalidInput, "{e}");
    // Bad ttl and audience, named.
    let e = analyst.token(child, Some(0), None).await.unwrap_err();
    assert_eq!(code_of(&e), ErrorCode::InvalidInput);
    assert!(e.to_string().contains("ttl"), "{e}");
    let e = analyst
        .token(child, None, Some(String::new()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("aud"), "{e}");
    let e = analyst
        .token(child, None, Some("x".repeat(300)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("aud"), "{e}");
    // An audience is an identifier: a control character in it (a terminal
    // escape, a line break) is refused, not signed into the token.
    for aud in ["reports\u{1b}[2J", "reports\napi", "reports\tapi"] {
        let e = analyst
            .token(child, None, Some(aud.to_string()))
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), ErrorCode::InvalidInput, "{aud:?}: {e}");
        assert!(e.to_string().contains("aud"), "{aud:?}: {e}");
        assert!(e.to_string().contains("control character"), "{aud:?}: {e}");
    }
    // Unknown fields and a missing actor, on the raw subject.
    let reply = raw(
        &nc,
        "mandate.q.acme.token".into(),
        serde_json::to_vec(&serde_json::json!({"mandate": child})).unwrap(),
    )
    .await;
    assert_refused(
        "a token query without actor",
        &reply,
        "invalid_input",
        &["actor"],
    );
    let reply = raw(
        &nc,
        "mandate.q.acme.token".into(),
        serde_json::to_vec(&serde_json::json!({
            "mandate": child, "actor": {"kind": "agent", "id": "analyst"}, "scope": "**"
        }))
        .unwrap(),
    )
    .await;
    assert_refused(
        "a token query with an unknown field",
        &reply,
        "invalid_input",
        &["scope"],
    );

    // Only a fresh read issues a token: a lagging instance's `local` answer
    // could predate a revoke.
    for level in [Consistency::Local, Consistency::AtLeast(1)] {
        let e = analyst
            .token_with(TokenQuery {
                mandate: child,
                actor: agent("analyst"),
                ttl: None,
                aud: None,
                consistency: level,
            })
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), ErrorCode::InvalidInput, "{e}");
        assert!(e.to_string().contains("fresh"), "{e}");
    }
    // Unknown mandate; another tenant's mandate is unknown too.
    let e = analyst
        .token(MandateId::generate(), None, None)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), ErrorCode::NotFound, "{e}");
    let e = client(&nc, "globex", agent("analyst"))
        .token(child, None, None)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), ErrorCode::NotFound, "{e}");

    // Paused from above: not active, named.
    cfo.pause(root, None).await.unwrap();
    let e = analyst.token(child, None, None).await.unwrap_err();
    assert_eq!(
        refusal(&e),
        (ErrorCode::InvalidState, Some("not_active".into())),
        "{e}"
    );
    assert!(
        e.to_string().contains(&root.to_string()),
        "names the cause: {e}"
    );
    cfo.resume(root, None).await.unwrap();
    analyst
        .token(child, None, None)
        .await
        .expect("active again");
    // Revoked from above: terminal.
    cfo.revoke(root, None).await.unwrap();
    let e = analyst.token(child, None, None).await.unwrap_err();
    assert_eq!(
        refusal(&e),
        (ErrorCode::Terminal, Some("terminal".into())),
        "{e}"
    );

    // An engine without a key refuses every token and the key set, and says
    // how to give it one.
    let dir = tempfile::tempdir().unwrap();
    let keyless = Instance::start_with(
        &server.url(),
        dir.path(),
        EngineConfig {
            allow_open_tenants: true,
            tenants: vec![tenant("keyless")],
            ..EngineConfig::default()
        },
    )
    .await;
    serving(&nc, "keyless").await;
    let c = client(&nc, "keyless", principal("cfo"));
    let m = issued(&c, root_issue("cfo", "lead", None, &["a on b"])).await;
    let e = c.token(m, None, None).await.unwrap_err();
    assert_eq!(code_of(&e), ErrorCode::Unavailable, "{e}");
    assert!(e.to_string().contains("--token-key"), "{e}");
    let e = c.jwks().await.unwrap_err();
    assert_eq!(code_of(&e), ErrorCode::Unavailable, "{e}");
    keyless.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_requires_proof_gives_tokens_only_to_proven_callers() {
    let keys = BTreeMap::from([
        ("principal:cfo".to_string(), "cfo-secret".to_string()),
        ("agent:lead".to_string(), "lead-secret".to_string()),
    ]);
    let auth = AuthConfig {
        tenants: BTreeMap::from([(
            "acme".to_string(),
            TenantKeys {
                keys,
                ..TenantKeys::default()
            },
        )]),
    };
    let (_server, _dir, _i, nc) = serve_one_with(
        "acme",
        EngineConfig {
            auth: Some(Arc::new(auth)),
            ..config(TokenKeys::ephemeral().unwrap())
        },
    )
    .await;
    let cfo = acme_as(&nc, principal("cfo")).with_secret("cfo-secret");
    let root = issued(&cfo, root_issue("cfo", "lead", None, &["a on b"])).await;
    let unproven = acme_as(&nc, agent("lead"));
    let e = unproven.token(root, None, None).await.unwrap_err();
    assert_eq!(
        refusal(&e),
        (ErrorCode::Forbidden, Some("not_authenticated".into())),
        "{e}"
    );
    let wrong = acme_as(&nc, agent("lead")).with_secret("guess");
    assert_eq!(
        code_of(&wrong.token(root, None, None).await.unwrap_err()),
        ErrorCode::Forbidden
    );
    let lead = acme_as(&nc, agent("lead")).with_secret("lead-secret");
    let t = lead
        .token(root, None, None)
        .await
        .expect("a proven grantee");
    // The key set is public: no proof needed.
    let jwks = unproven.jwks().await.unwrap();
    TokenVerifier::new(&jwks).unwrap().verify(&t.token).unwrap();
}

fn key_file(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let kid = write_new_key(&path).unwrap();
    (path, kid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_keeps_old_tokens_valid_while_the_old_key_is_listed() {
    let server = NatsServer::start();
    let nc = connect(&server).await;
    let keys = tempfile::tempdir().unwrap();
    let (old, old_kid) = key_file(keys.path(), "old.pem");
    let (new, new_kid) = key_file(keys.path(), "new.pem");
    assert_ne!(old_kid, new_kid);
    // The same file gives the same kid (a thumbprint), and twice is refused.
    assert_eq!(
        TokenKeys::load(std::slice::from_ref(&old)).unwrap().kids(),
        vec![old_kid.as_str()]
    );
    let e = TokenKeys::load(&[old.clone(), old.clone()]).unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    std::fs::write(keys.path().join("junk.pem"), "not a key").unwrap();
    let e = TokenKeys::load(&[keys.path().join("junk.pem")]).unwrap_err();
    assert!(e.to_string().contains("junk.pem"), "{e}");
    assert!(
        write_new_key(&old).is_err(),
        "a key file is never overwritten"
    );

    let data = tempfile::tempdir().unwrap();
    let start = |files: Vec<PathBuf>| {
        let (url, dir) = (server.url(), data.path().to_path_buf());
        async move {
            let i =
                Instance::start_with(&url, &dir, config(TokenKeys::load(&files).unwrap())).await;
            i
        }
    };
    let before = start(vec![old.clone()]).await;
    serving(&nc, "acme").await;
    let root = issue(&nc, root_issue("cfo", "lead", None, &["a on b"])).await;
    let lead = acme_as(&nc, agent("lead"));
    let t_old = lead.token(root, None, None).await.unwrap();
    assert_eq!(t_old.kid, old_kid);
    before.stop().await;

    // The new key signs; the old one is still listed.
    let during = start(vec![new.clone(), old.clone()]).await;
    serving(&nc, "acme").await;
    let jwks = lead.jwks().await.unwrap();
    let kids: Vec<&str> = jwks.keys.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(
        kids,
        vec![new_kid.as_str(), old_kid.as_str()],
        "signing key first"
    );
    let verifier = TokenVerifier::new(&jwks).unwrap();
    verifier
        .verify(&t_old.token)
        .expect("an old token verifies while its key is listed");
    let t_new = lead.token(root, None, None).await.unwrap();
    assert_eq!(t_new.kid, new_kid);
    assert_eq!(header_of(&t_new.token)["kid"], serde_json::json!(new_kid));
    verifier.verify(&t_new.token).unwrap();
    during.stop().await;

    // The old key dropped: its tokens no longer verify.
    let after = start(vec![new.clone()]).await;
    serving(&nc, "acme").await;
    let verifier = TokenVerifier::from_engine(&lead).await.unwrap();
    assert!(
        matches!(verifier.verify(&t_old.token), Err(TokenError::UnknownKey(k)) if k == old_kid)
    );
    verifier.verify(&t_new.token).unwrap();
    after.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_live_refuses_a_token_once_its_root_is_revoked() {
    let (_server, _dir, _i, nc) =
        serve_one_with("acme", config(TokenKeys::ephemeral().unwrap())).await;
    let (root, child) = chain_of_two(&nc, None).await;
    let analyst = acme_as(&nc, agent("analyst"));
    let token = analyst.token(child, None, None).await.unwrap().token;
    let verifier = TokenVerifier::from_engine(&analyst).await.unwrap();
    // The resource server's own client and guard.
    let server_side = acme_as(&nc, agent("reports-api"));
    let guard = start_guard(server_side.clone(), child, Duration::from_secs(2)).await;
    let live: TokenClaims = verifier
        .verify_live(&token, &server_side)
        .await
        .expect("live");
    assert_eq!(live.mandate, child);
    verifier
        .verify_with_guard(&token, &guard)
        .expect("live by the guard");
    // A guard of another mandate says nothing about this token.
    let other = start_guard(server_side.clone(), root, Duration::from_secs(2)).await;
    assert!(matches!(
        verifier.verify_with_guard(&token, &other),
        Err(TokenError::Mismatch(_))
    ));
    // Another tenant's client does not vouch for it either.
    let globex = client(&nc, "globex", agent("reports-api"));
    assert!(matches!(
        verifier.verify_live(&token, &globex).await,
        Err(TokenError::Tenant { .. })
    ));

    // A narrowing of the mandate: the token claims a grant it lost.
    let wide = analyst.token(child, None, None).await.unwrap().token;
    acme_as(&nc, agent("lead"))
        .narrow(child, scope(&["finance:read on reports/q3/summary"]))
        .await
        .unwrap();
    match verifier.verify_live(&wide, &server_side).await {
        Err(TokenError::Narrowed { mandate, grant }) => {
            assert_eq!(mandate, child);
            assert_eq!(grant, "finance:read on reports/q3/*");
        }
        other => panic!("verify_live after a narrowing: {other:?}"),
    }
    let narrow = analyst.token(child, None, None).await.unwrap().token;
    verifier
        .verify_live(&narrow, &server_side)
        .await
        .expect("a token issued after the narrowing");

    acme_as(&nc, principal("cfo"))
        .revoke(root, Some("stop".into()))
        .await
        .unwrap();

    // The window: offline, the token still verifies until its exp.
    verifier
        .verify(&token)
        .expect("offline verification cannot know of the revoke");
    // With liveness it does not.
    match verifier.verify_live(&token, &server_side).await {
        Err(TokenError::NotLive { mandate, status }) => {
            assert_eq!(mandate, child);
            assert_eq!(status, "revoked");
        }
        other => panic!("verify_live after the revoke: {other:?}"),
    }
    eventually("the guard hears of the revoke", || async {
        matches!(
            verifier.verify_with_guard(&token, &guard),
            Err(TokenError::NotLive { .. })
        )
    })
    .await;
    // And no new token is issued for it.
    assert_eq!(
        code_of(&analyst.token(child, None, None).await.unwrap_err()),
        ErrorCode::Terminal
    );
}

/// A request the grant `g` (`ACTION on RESOURCE`) allows: each wildcard
/// made a concrete segment.
fn instance_of(g: &Grant) -> (String, String) {
    let concrete = |p: String| p.replace("**", "x/y").replace('*', "x");
    (
        concrete(g.action.to_string()),
        concrete(g.resource.to_string()),
    )
}

/// After an ancestor's narrowing, a new token claims what the whole chain
/// still grants, not the mandate's own wider grants: a service that reads
/// the claim offline allows nothing the engine's check denies. Its `exp`
/// never passes the chain's earliest `not_after`, and a mandate left with
/// nothing gets no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_after_an_ancestors_narrowing_claims_only_what_the_chain_grants() {
    let (_server, _dir, _i, nc) =
        serve_one_with("acme", config(TokenKeys::ephemeral().unwrap())).await;
    // The analyst holds `finance:read on reports/q3/*` under a root of
    // `reports/**`.
    let (root, child) = chain_of_two(&nc, None).await;
    let cfo = acme_as(&nc, principal("cfo"));
    cfo.narrow(
        root,
        scope(&[
            "finance:read on reports/q3/summary",
            "finance:read on reports/q4/*",
        ]),
    )
    .await
    .unwrap();
    let root_end = Utc::now() + chrono::Duration::seconds(60);
    cfo.renew(root, root_end).await.unwrap();
    let analyst = acme_as(&nc, agent("analyst"));
    let reply = analyst.token(child, None, None).await.expect("a token");
    let verifier = TokenVerifier::from_engine(&analyst).await.unwrap();
    let claims = verifier.verify(&reply.token).expect("a valid token");
    assert_eq!(claims.scope, ["finance:read on reports/q3/summary"]);
    // Every grant it claims, the engine allows...
    for claimed in &claims.scope {
        let (action, resource) = instance_of(&claimed.parse().unwrap());
        let d = cfo.check(child, &action, &resource, None).await.unwrap();
        assert!(d.is_allowed(), "{claimed}: {d:?}");
    }
    // ...and what the analyst's own grant names but the root withdrew, the
    // engine denies and no claimed grant covers.
    let d = cfo
        .check(child, "finance:read", "reports/q3/other", None)
        .await
        .unwrap();
    assert!(!d.is_allowed(), "{d:?}");
    let withdrawn: Grant = "finance:read on reports/q3/other".parse().unwrap();
    assert!(!claims
        .scope
        .iter()
        .any(|c| c.parse::<Grant>().unwrap().covers(&withdrawn)));
    // It ends with the root, before the maximum lifetime.
    assert_eq!(claims.exp, root_end.timestamp());
    // A liveness check reads the claim the way it was written.
    verifier
        .verify_live(&reply.token, &analyst)
        .await
        .expect("a token issued after the narrowing is live");

    // Narrowed to nothing the analyst holds: no token at all.
    cfo.narrow(root, scope(&["finance:read on reports/q4/*"]))
        .await
        .unwrap();
    let refused = analyst.token(child, None, None).await.unwrap_err();
    assert_eq!(
        refusal(&refused),
        (ErrorCode::InvalidState, Some("no_authority".into())),
        "{refused}"
    );
}

/// Standard output of a command that succeeded.
fn ok_out(out: &std::process::Output) -> String {
    says(out, 0, &[]);
    stdout(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_publishes_the_keys_over_http_and_the_cli_gets_tokens() {
    let server = NatsServer::start();
    let nc = connect(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("token.pem");
    // token-keygen prints the kid, and never overwrites.
    let out = mandate(&data, &["token-keygen", "--out", key.to_str().unwrap()]);
    let kid = ok_out(&out).trim().to_string();
    assert_eq!(
        TokenKeys::load(std::slice::from_ref(&key)).unwrap().kids(),
        vec![kid.as_str()]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by its owner only");
    }
    let again = mandate(&data, &["token-keygen", "--out", key.to_str().unwrap()]);
    says(&again, 2, &["token.pem"]);
    // --jwks-http without a key, and a bad key file, stop the start.
    let bad = mandate(
        &data,
        &[
            "--nats",
            &server.url(),
            "serve",
            "--jwks-http",
            "127.0.0.1:0",
        ],
    );
    says(&bad, 2, &["--token-key"]);
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let bad = mandate(
        &data,
        &[
            "--nats",
            &server.url(),
            "serve",
            "--token-key",
            junk.to_str().unwrap(),
        ],
    );
    says(&bad, 2, &["junk.pem"]);
    let bad = mandate(
        &data,
        &[
            "--nats",
            &server.url(),
            "serve",
            "--token-key",
            key.to_str().unwrap(),
            "--token-max-ttl",
            "soon",
        ],
    );
    says(&bad, 2, &["--token-max-ttl"]);

    let log = dir.path().join("serve.log");
    let url = server.url();
    let (mut child, addr) = serve_listening(
        &data,
        &[
            "--nats",
            &url,
            "serve",
            "--allow-open-tenants",
            "--token-key",
            key.to_str().unwrap(),
        ],
        "--jwks-http",
        &log,
    )
    .await;
    serving(&nc, "acme").await;

    let a = addr.clone();
    let (status, headers, body) =
        tokio::task::spawn_blocking(move || http_get(&a, "/.well-known/jwks.json"))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let over_http: Jwks = serde_json::from_str(&body).unwrap();
    conforms("jwks", &serde_json::from_str(&body).unwrap());
    let lead = acme_as(&nc, agent("lead"));
    assert_eq!(
        over_http,
        lead.jwks().await.unwrap(),
        "HTTP and the query agree"
    );
    assert_eq!(over_http.keys.len(), 1);
    let raw_key: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        raw_key["keys"][0],
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": over_http.keys[0].x, "kid": kid, "alg": "EdDSA", "use": "sig"})
    );
    let a = addr.clone();
    let (status, _, _) = tokio::task::spawn_blocking(move || http_get(&a, "/jwks"))
        .await
        .unwrap();
    assert_eq!(status, 404);

    // The CLI: the token alone on stdout, or the whole reply with --json.
    let root = issue(&nc, root_issue("cfo", "lead", None, &["a on b"])).await;
    let url = server.url();
    let cli = |args: &[&str]| {
        let mut all = vec!["--nats", url.as_str(), "--tenant", "acme"];
        all.extend_from_slice(args);
        mandate(&data, &all)
    };
    let root_s = root.to_string();
    let out = cli(&[
        "--actor",
        "agent:lead",
        "token",
        &root_s,
        "--ttl",
        "45s",
        "--aud",
        "api",
    ]);
    let token = ok_out(&out).trim().to_string();
    let verifier = TokenVerifier::new(&over_http).unwrap().with_audience("api");
    let c = verifier
        .verify(&token)
        .expect("the CLI's token verifies with the HTTP keys");
    assert_eq!(c.exp - c.iat, 45);
    let out = cli(&["--json", "--actor", "agent:lead", "token", &root_s]);
    let reply: TokenReply = serde_json::from_str(&ok_out(&out)).unwrap();
    assert_eq!(reply.kid, kid);
    TokenVerifier::new(&over_http)
        .unwrap()
        .verify(&reply.token)
        .unwrap();
    // Without --actor: refused, saying who may ask.
    let out = cli(&["token", &root_s]);
    says(&out, 2, &["--actor"]);
    // A stranger: forbidden.
    let out = cli(&["--actor", "agent:intruder", "token", &root_s]);
    assert_ne!(out.status.code(), Some(0));
    // `mandate jwks` prints the set.
    let out = cli(&["jwks"]);
    let printed: Jwks = serde_json::from_str(&ok_out(&out)).unwrap();
    assert_eq!(printed, over_http);

    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_loading_the_same_key_issues_tokens_one_jwks_verifies() {
    let server = NatsServer::start();
    let nc = connect(&server).await;
    let keys = tempfile::tempdir().unwrap();
    let (file, kid) = key_file(keys.path(), "shared.pem");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let one = Instance::start_with(
        &server.url(),
        a.path(),
        config(TokenKeys::load(std::slice::from_ref(&file)).unwrap()),
    )
    .await;
    let two = Instance::start_with(
        &server.url(),
        b.path(),
        config(TokenKeys::load(std::slice::from_ref(&file)).unwrap()),
    )
    .await;
    all_serving(&nc, "acme", &[&one, &two]).await;
    // Each instance's own key set is the same set.
    assert_eq!(one.engine.jwks().unwrap(), two.engine.jwks().unwrap());
    let root = issue(&nc, root_issue("cfo", "lead", None, &["a on b"])).await;
    let lead = acme_as(&nc, agent("lead"));
    let verifier = TokenVerifier::from_engine(&lead).await.unwrap();
    // The queue group spreads the requests over both instances.
    for _ in 0..20 {
        let t = lead.token(root, None, None).await.unwrap();
        assert_eq!(t.kid, kid);
        verifier.verify(&t.token).unwrap();
    }
    // Asked of each instance directly, in process.
    for i in [&one, &two] {
        let local = Client::local(i.engine.clone(), tenant("acme"), agent("lead"));
        verifier
            .verify(&local.token(root, None, None).await.unwrap().token)
            .unwrap();
    }
    one.stop().await;
    two.stop().await;
}
