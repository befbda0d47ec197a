//! The wire contract: the committed files in `schemas/` must equal the
//! schemas generated from the Rust types, and documents must validate (or
//! fail) as the engine would accept (or refuse) them.
//!
//! After changing a wire type, regenerate with
//! `UPDATE_SCHEMAS=1 cargo test --test schemas` and commit the result.

use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use mandate::domain::{
    authorize, decide, root_tree_id, CommandEnvelope, CommandId, ExternalCommand, Facts, TenantId,
    Tree,
};
use mandate::protocol::{schemas, Reply};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn schema(name: &str) -> Value {
    let path = dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn validator(name: &str) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema(name))
        .unwrap_or_else(|e| panic!("schema {name} is not a valid JSON Schema: {e}"))
}

#[test]
fn committed_schemas_match_the_types() {
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    std::fs::create_dir_all(dir()).unwrap();
    let mut stale = Vec::new();
    for (name, schema) in schemas() {
        let path = dir().join(format!("{name}.json"));
        let generated = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if update {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == generated => {}
            _ => stale.push(name),
        }
    }
    assert!(
        stale.is_empty(),
        "schemas out of date with the types: {stale:?}; run UPDATE_SCHEMAS=1 cargo test --test schemas and commit"
    );
}

/// Every `schemas/examples/<schema>.<label>.valid.json` validates and decodes;
/// every `….invalid.json` fails validation and, for commands, decoding too.
#[test]
fn example_documents_validate_as_the_engine_decodes() {
    let mut seen = (0, 0);
    for entry in std::fs::read_dir(dir().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let schema_name = file.split('.').next().unwrap().to_string();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let valid = validator(&schema_name).is_valid(&doc);
        let decodes = match schema_name.as_str() {
            // As the engine takes a command from outside.
            "command" => ExternalCommand::from_json(doc.to_string().as_bytes()).is_ok(),
            _ => valid,
        };
        if file.ends_with(".valid.json") {
            seen.0 += 1;
            assert!(valid, "{file} should validate against {schema_name}.json");
            assert!(decodes, "{file} should decode");
        } else if file.ends_with(".invalid.json") {
            seen.1 += 1;
            assert!(
                !valid,
                "{file} should NOT validate against {schema_name}.json"
            );
            assert!(!decodes, "{file} should be refused by the decoder");
        } else {
            panic!("{file}: examples end in .valid.json or .invalid.json");
        }
    }
    assert!(seen.0 >= 3 && seen.1 >= 5, "too few examples: {seen:?}");
}

/// Documents produced by the real code validate against their schemas.
#[test]
fn real_documents_validate() {
    let tenant = TenantId::new("acme").unwrap();
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    let cmd_id = CommandId::generate();
    let cmd: CommandEnvelope = serde_json::from_value(serde_json::json!({
        "command_id": cmd_id, "tenant": "acme", "actor": {"kind": "principal", "id": "cfo"},
        "type": "issue", "principal": "cfo", "grantee": "research-lead",
        "mission": {"purpose": "evaluate", "mission_ref": "jira:FIN-42"},
        "scope": [{"action": "finance:read", "resource": "reports/**"}],
        "not_after": "2026-01-01T20:00:00Z", "step_up": ["deals:sign"]
    }))
    .unwrap();
    assert!(validator("command").is_valid(&serde_json::to_value(&cmd).unwrap()));
    let tree = Tree::empty(tenant.clone(), root_tree_id(&tenant, cmd_id));
    let events = decide(&tree, &cmd, &Facts::default(), now).unwrap();
    let commit = serde_json::to_value(&events).unwrap();
    assert!(
        validator("commit").is_valid(&commit),
        "{:?}",
        validator("commit")
            .iter_errors(&commit)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    for e in &events {
        assert!(validator("event").is_valid(&serde_json::to_value(e).unwrap()));
    }
    let state = mandate::domain::replay(tenant.clone(), tree.id(), &events);
    let root = state.root().unwrap();
    let d = authorize(&state, root, "finance:read", "reports/q3", now);
    assert!(d.is_allowed());
    let reply = serde_json::to_value(Reply::ok(d.clone())).unwrap();
    assert!(validator("reply-check").is_valid(&reply));
    assert!(validator("decision").is_valid(&serde_json::to_value(&d).unwrap()));
    // A decision missing its outcome is not a decision.
    let mut broken = serde_json::to_value(&d).unwrap();
    broken.as_object_mut().unwrap().remove("outcome");
    assert!(!validator("decision").is_valid(&broken));
}

/// Every approval event the domain writes validates against the event and
/// commit schemas, and the approval commands against the command schema.
#[test]
fn approval_documents_validate() {
    let tenant = TenantId::new("acme").unwrap();
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    let command = |actor: Value, body: Value| {
        let mut v = serde_json::json!({"command_id": CommandId::generate(), "tenant": "acme", "actor": actor});
        v.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        assert!(validator("command").is_valid(&v), "{v}");
        ExternalCommand::from_json(v.to_string().as_bytes())
            .unwrap()
            .into_envelope()
    };
    let carol = serde_json::json!({"kind": "principal", "id": "carol"});
    let bot = serde_json::json!({"kind": "agent", "id": "bot"});
    let issue = command(
        carol.clone(),
        serde_json::json!({"type": "issue", "principal": "carol", "grantee": "bot",
            "mission": {"purpose": "support"},
            "scope": [{"action": "payments:refund", "resource": "tickets/**"}],
            "not_after": "2026-01-01T20:00:00Z", "step_up": ["payments:refund"]}),
    );
    let mut tree = Tree::empty(tenant.clone(), root_tree_id(&tenant, issue.command_id));
    let root = tree.id().0;
    let approval = uuid::Uuid::now_v7();
    let hash = mandate::domain::approval::params_hash(&serde_json::json!({"cents": 10}));
    let cmds = [
        issue,
        command(
            bot.clone(),
            serde_json::json!({"type": "request_approval", "mandate": root,
            "approval": approval, "action": "payments:refund", "resource": "tickets/T-1",
            "params_hash": hash, "reason": "double charge"}),
        ),
        command(
            carol.clone(),
            serde_json::json!({"type": "approve", "mandate": root,
            "approval": approval, "reason": "ok"}),
        ),
        command(
            bot.clone(),
            serde_json::json!({"type": "use_approval", "mandate": root,
            "approval": approval, "action": "payments:refund", "resource": "tickets/T-1",
            "params_hash": hash}),
        ),
    ];
    let mut types = Vec::new();
    for c in &cmds {
        let events = decide(&tree, c, &Facts::default(), now).unwrap();
        let commit = serde_json::to_value(&events).unwrap();
        assert!(validator("commit").is_valid(&commit), "{commit}");
        for e in &events {
            assert!(validator("event").is_valid(&serde_json::to_value(e).unwrap()));
            types.push(e.body.type_name());
            mandate::domain::apply(&mut tree, e);
        }
    }
    assert_eq!(
        types,
        [
            "mandate_issued",
            "approval_requested",
            "approval_granted",
            "approval_used"
        ]
    );
    let deny = command(
        carol,
        serde_json::json!({"type": "deny_approval", "mandate": root,
        "approval": approval}),
    );
    assert!(decide(&tree, &deny, &Facts::default(), now).is_err());
}

/// A rotation signed with the key it rotates: its events (each carrying the
/// recorded signature), the key ring in a `keys` reply and a `verify` reply
/// naming a signature failure validate against their schemas.
#[test]
fn key_events_signed_commands_and_the_key_ring_validate() {
    use mandate::domain::keys::{CommandSignature, SignatureAlg};
    use mandate::domain::{KeyId, KeyOwner, TreeId};
    use mandate::protocol::signature::{public_key_text, sign};
    use mandate::protocol::{KeyInfo, KeySource, KeyStatus, KeysReply, VerifyReply};

    let tenant = TenantId::new("acme").unwrap();
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[10; 32]);
    let mut tree = Tree::empty(tenant.clone(), TreeId::registry(&tenant));
    let command = |body: Value| -> CommandEnvelope {
        let mut v = serde_json::json!({
            "command_id": CommandId::generate(), "tenant": "acme",
            "actor": {"kind": "principal", "id": "cfo"}});
        v.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    };
    let register = command(
        serde_json::json!({"type": "register_key", "key_id": "cfo-1",
        "owner": "principal:cfo", "public_key": public_key_text(&key)}),
    );
    let rotate = command(serde_json::json!({"type": "rotate_key", "key_id": "cfo-1",
        "new_key_id": "cfo-2", "public_key": public_key_text(&ed25519_dalek::SigningKey::from_bytes(&[11; 32]))}));
    let subject = "mandate.cmd.acme.rotate_key";
    let body = serde_json::to_vec(&rotate).unwrap();
    let header = sign(&key, &KeyId::new("cfo-1").unwrap(), subject, &body).unwrap();
    let signed = Facts {
        signature: Some(Box::new(CommandSignature {
            key_id: KeyId::new("cfo-1").unwrap(),
            owner: KeyOwner::new("principal:cfo").unwrap(),
            alg: SignatureAlg::EdDSA,
            value: header.rsplit(' ').next().unwrap().into(),
            subject: subject.into(),
            command: serde_json::from_slice(&body).unwrap(),
        })),
        ..Facts::default()
    };
    let mut types = Vec::new();
    for (c, facts) in [(&register, Facts::default()), (&rotate, signed)] {
        let events = decide(&tree, c, &facts, now).unwrap();
        let commit = serde_json::to_value(&events).unwrap();
        assert!(validator("commit").is_valid(&commit), "{commit}");
        for e in &events {
            assert!(validator("event").is_valid(&serde_json::to_value(e).unwrap()));
            assert_eq!(e.signature.is_some(), facts.signature.is_some());
            types.push(e.body.type_name());
            mandate::domain::apply(&mut tree, e);
        }
    }
    assert_eq!(types, ["key_registered", "key_registered", "key_revoked"]);
    let keys: Vec<KeyInfo> = tree
        .registry()
        .keys
        .iter()
        .map(|(id, k)| KeyInfo {
            key_id: id.clone(),
            owner: k.owner.clone(),
            public_key: k.public_key.clone(),
            source: KeySource::Registered,
            status: if k.revoked.is_some() {
                KeyStatus::Revoked
            } else {
                KeyStatus::Active
            },
            registered: Some(k.clone()),
        })
        .collect();
    let reply = serde_json::to_value(Reply::ok(KeysReply {
        tenant: tenant.clone(),
        require_signatures: true,
        keys,
    }))
    .unwrap();
    assert!(validator("reply-keys").is_valid(&reply), "{reply}");
    let verify: VerifyReply = serde_json::from_value(serde_json::json!({
        "tree": tree.id(), "events": 3, "head_hash": null, "intact": true,
        "signatures": 1, "signature_failures": [{"seq": 2, "key_id": "cfo-1",
        "reason": "key cfo-1 was not valid"}]}))
    .unwrap();
    let reply = serde_json::to_value(Reply::ok(verify)).unwrap();
    assert!(validator("reply-verify").is_valid(&reply), "{reply}");
}
