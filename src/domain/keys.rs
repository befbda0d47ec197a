//! Signing keys of a tenant's actors. They are registry events (see
//! [`crate::domain::TreeId::registry`]): they belong to no mandate tree, and
//! the registry's stream is the tenant's history of them. A key is
//! registered once under an id that is never reused in the tenant, and
//! revoked for good; a rotation registers the new key and revokes the old
//! one in one commit.
//!
//! A command signed with such a key records its signature in every event it
//! writes ([`CommandSignature`]), so an auditor can re-verify who asked from
//! the event and the key ring alone. The wire format of the signature is in
//! [`crate::protocol::signature`].

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::command::Command;
use super::error::DomainError;
use super::event::EventBody;
use super::ids::PrincipalId;
use super::model::{check_text, Actor, Registry, Tree};

/// A key id: `[A-Za-z0-9._-]{1,64}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct KeyId(
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9._-]{1,64}$"))] String,
);

impl KeyId {
    /// Validates and wraps `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, DomainError> {
        let value = value.into();
        let ok = (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(DomainError::InvalidId {
                field: "key_id",
                value: super::ids::truncate_for_error(&value),
                reason: "must be 1 to 64 of A-Z a-z 0-9 . _ -".into(),
            });
        }
        Ok(Self(value))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Who holds a key: `<kind>:<id>` of an actor that may sign commands
/// (`principal:cfo`, `agent:research-lead`, `admin:security`); never one of
/// the engine's own actors.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct KeyOwner(
    #[schemars(regex(pattern = r"^(principal|agent|admin):[A-Za-z0-9_-]{1,64}$"))] String,
);

impl KeyOwner {
    /// Validates and wraps `value` (`<kind>:<id>`).
    pub fn new(value: impl Into<String>) -> Result<Self, DomainError> {
        let value = value.into();
        let bad = || DomainError::InvalidId {
            field: "owner",
            value: super::ids::truncate_for_error(&value),
            reason: "must be principal:<id>, agent:<id> or admin:<id>".into(),
        };
        let (kind, id) = value.split_once(':').ok_or_else(bad)?;
        if !matches!(kind, "principal" | "agent" | "admin") || PrincipalId::new(id).is_err() {
            return Err(bad());
        }
        Ok(Self(value))
    }

    /// The owner naming `actor`; `None` for the engine's own actors.
    pub fn of(actor: &Actor) -> Option<Self> {
        crate::protocol::auth::actor_key(actor).map(Self)
    }

    /// Whether `actor` is this owner.
    pub fn is(&self, actor: &Actor) -> bool {
        Self::of(actor).as_ref() == Some(self)
    }

    /// The owner as a string slice (`<kind>:<id>`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyOwner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The JSON Schema pattern of a public key: base64url without padding of 32
/// bytes (43 characters).
pub const PUBLIC_KEY_PATTERN: &str = r"^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$";

/// Decodes an Ed25519 public key given as base64url without padding,
/// refusing anything that is not 32 bytes, not a point of the curve, or a
/// point of small order (which any signature could match).
pub fn decode_public_key(text: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| format!("is not base64url without padding: {e}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("is {} bytes, an Ed25519 public key is 32", b.len()))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "is not a valid Ed25519 point".to_string())?;
    if key.is_weak() {
        return Err("is an Ed25519 point of small order, which proves nothing".into());
    }
    Ok(key)
}

/// Tenant registry: register an actor's signing key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterKey {
    /// Never reused in the tenant, even after the key is revoked.
    pub key_id: KeyId,
    pub owner: KeyOwner,
    /// The Ed25519 public key, base64url without padding (32 bytes).
    #[schemars(regex(pattern = PUBLIC_KEY_PATTERN))]
    pub public_key: String,
    /// After this instant the key signs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
}

/// Tenant registry: revoke a signing key for good.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKey {
    pub key_id: KeyId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// Tenant registry: register a new key for the owner of `key_id` and revoke
/// `key_id`, in one commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    pub key_id: KeyId,
    pub new_key_id: KeyId,
    /// The new Ed25519 public key, base64url without padding (32 bytes).
    #[schemars(regex(pattern = PUBLIC_KEY_PATTERN))]
    pub public_key: String,
    /// After this instant the new key signs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
}

/// Registry event: a signing key was registered (who registered it is the
/// event's actor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyRegistered {
    pub key_id: KeyId,
    pub owner: KeyOwner,
    /// Base64url without padding.
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
}

/// Registry event: a signing key was revoked for good.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyRevoked {
    pub key_id: KeyId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A key of the ring, as the registry's events left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RegisteredKey {
    pub owner: KeyOwner,
    /// Base64url without padding.
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
    /// Registry sequence of the `key_registered` event.
    pub registered_seq: u64,
    pub registered_at: DateTime<Utc>,
    pub registered_by: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<KeyRevocation>,
}

/// When, by whom and why a key was revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KeyRevocation {
    /// Registry sequence of the `key_revoked` event.
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub by: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RegisteredKey {
    /// Whether the key was valid at `at`: registered at or before it, not
    /// revoked before it, and not past its `not_after`. A key revoked at
    /// `at` itself was still valid then: the rotation or revocation that a
    /// key signs itself is written in the same instant as its revocation.
    pub fn valid_at(&self, at: DateTime<Utc>) -> bool {
        self.registered_at <= at
            && self.revoked.as_ref().is_none_or(|r| r.at >= at)
            && self.not_after.is_none_or(|n| at <= n)
    }
}

/// The signature algorithm of a recorded signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SignatureAlg {
    /// Ed25519 (RFC 8032), as JOSE names it.
    EdDSA,
}

/// The signature of the command that wrote an event, recorded in the event:
/// enough to re-verify it with the key ring alone (the signed message is
/// rebuilt from `subject` and the canonical encoding of `command`, see
/// [`crate::protocol::signature`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommandSignature {
    pub key_id: KeyId,
    /// The key's owner: the command's actor.
    pub owner: KeyOwner,
    pub alg: SignatureAlg,
    /// The signature, base64url without padding (64 bytes).
    pub value: String,
    /// The subject the command was sent on.
    pub subject: String,
    /// The signed command body, as JSON.
    pub command: serde_json::Value,
}

/// Decides a key command on the registry; `None` for any other command.
/// Returns the bodies and the principal the events are on behalf of: the
/// actor who wrote them (an agent's id for an agent's own key).
pub(crate) fn decide(
    tree: &Tree,
    actor: &Actor,
    command: &Command,
    key_id_configured: bool,
    now: DateTime<Utc>,
) -> Option<Result<(Vec<EventBody>, PrincipalId), DomainError>> {
    let ring = &tree.registry;
    let bodies = match command {
        Command::RegisterKey(c) => register(ring, actor, c, key_id_configured, now),
        Command::RevokeKey(c) => revoke(ring, actor, c, key_id_configured),
        Command::RotateKey(c) => rotate(ring, actor, c, key_id_configured, now),
        _ => return None,
    };
    Some(bodies.and_then(|b| Ok((b, on_behalf_of(actor, command)?))))
}

fn on_behalf_of(actor: &Actor, command: &Command) -> Result<PrincipalId, DomainError> {
    match actor {
        Actor::Admin(p) | Actor::Principal(p) => Ok(p.clone()),
        // Agent and principal ids share one syntax.
        Actor::Agent(a) => PrincipalId::new(a.as_str()),
        Actor::System(_) => Err(DomainError::RegistryForbidden {
            actor: actor.to_string(),
            verb: command.verb(),
        }),
    }
}

/// An administrator may act on any key; any other actor only on its own.
fn may_hold(
    actor: &Actor,
    owner: &KeyOwner,
    key_id: &KeyId,
    verb: &'static str,
) -> Result<(), DomainError> {
    if matches!(actor, Actor::Admin(_)) || owner.is(actor) {
        return Ok(());
    }
    Err(DomainError::KeyForbidden {
        actor: actor.to_string(),
        verb,
        key_id: key_id.clone(),
        owner: owner.clone(),
    })
}

fn fresh_id(ring: &Registry, key_id: &KeyId, configured: bool) -> Result<(), DomainError> {
    if configured || ring.keys.contains_key(key_id) {
        return Err(DomainError::KeyIdTaken {
            key_id: key_id.clone(),
        });
    }
    Ok(())
}

fn future(not_after: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<(), DomainError> {
    match not_after {
        Some(n) if n <= now => Err(DomainError::NotAfterInPast { requested: n, now }),
        _ => Ok(()),
    }
}

fn live<'a>(
    ring: &'a Registry,
    key_id: &KeyId,
    configured: bool,
) -> Result<&'a RegisteredKey, DomainError> {
    let key = ring.keys.get(key_id).ok_or_else(|| {
        if configured {
            DomainError::KeyConfigured {
                key_id: key_id.clone(),
            }
        } else {
            DomainError::KeyNotFound {
                key_id: key_id.clone(),
            }
        }
    })?;
    if key.revoked.is_some() {
        return Err(DomainError::KeyAlreadyRevoked {
            key_id: key_id.clone(),
        });
    }
    Ok(key)
}

fn register(
    ring: &Registry,
    actor: &Actor,
    c: &RegisterKey,
    configured: bool,
    now: DateTime<Utc>,
) -> Result<Vec<EventBody>, DomainError> {
    may_hold(actor, &c.owner, &c.key_id, "register_key")?;
    fresh_id(ring, &c.key_id, configured)?;
    future(c.not_after, now)?;
    Ok(vec![EventBody::KeyRegistered(KeyRegistered {
        key_id: c.key_id.clone(),
        owner: c.owner.clone(),
        public_key: c.public_key.clone(),
        not_after: c.not_after,
    })])
}

fn revoke(
    ring: &Registry,
    actor: &Actor,
    c: &RevokeKey,
    configured: bool,
) -> Result<Vec<EventBody>, DomainError> {
    let key = live(ring, &c.key_id, configured)?;
    may_hold(actor, &key.owner, &c.key_id, "revoke_key")?;
    Ok(vec![EventBody::KeyRevoked(KeyRevoked {
        key_id: c.key_id.clone(),
        reason: c.reason.clone(),
    })])
}

/// `configured` is about the new key id (the old one must be registered).
fn rotate(
    ring: &Registry,
    actor: &Actor,
    c: &RotateKey,
    configured: bool,
    now: DateTime<Utc>,
) -> Result<Vec<EventBody>, DomainError> {
    let old = live(ring, &c.key_id, false)?;
    may_hold(actor, &old.owner, &c.key_id, "rotate_key")?;
    fresh_id(ring, &c.new_key_id, configured || c.new_key_id == c.key_id)?;
    future(c.not_after, now)?;
    Ok(vec![
        EventBody::KeyRegistered(KeyRegistered {
            key_id: c.new_key_id.clone(),
            owner: old.owner.clone(),
            public_key: c.public_key.clone(),
            not_after: c.not_after,
        }),
        EventBody::KeyRevoked(KeyRevoked {
            key_id: c.key_id.clone(),
            reason: Some(format!("rotated to {}", c.new_key_id)),
        }),
    ])
}

/// Checks what serde does not: the public key is an Ed25519 point, the
/// reason's text.
pub(crate) fn validate(command: &Command) -> Result<(), DomainError> {
    let (public_key, not_after) = match command {
        Command::RegisterKey(c) => (&c.public_key, c.not_after),
        Command::RotateKey(c) => (&c.public_key, c.not_after),
        Command::RevokeKey(c) => {
            if let Some(r) = &c.reason {
                check_text("reason", r, false)?;
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    if let Some(t) = not_after {
        super::model::check_time("not_after", t)?;
    }
    decode_public_key(public_key)
        .map(|_| ())
        .map_err(|reason| DomainError::InvalidField {
            field: "public_key",
            reason,
        })
}

/// Folds a key event into the ring (`seq`, `at` and `by` are the event's).
pub(crate) fn fold(ring: &mut Registry, seq: u64, at: DateTime<Utc>, by: &Actor, body: &EventBody) {
    match body {
        EventBody::KeyRegistered(k) => {
            // A key id is registered once; a forged second registration
            // changes nothing.
            ring.keys
                .entry(k.key_id.clone())
                .or_insert_with(|| RegisteredKey {
                    owner: k.owner.clone(),
                    public_key: k.public_key.clone(),
                    not_after: k.not_after,
                    registered_seq: seq,
                    registered_at: at,
                    registered_by: by.clone(),
                    revoked: None,
                });
        }
        EventBody::KeyRevoked(k) => {
            if let Some(key) = ring.keys.get_mut(&k.key_id) {
                key.revoked.get_or_insert_with(|| KeyRevocation {
                    seq,
                    at,
                    by: by.clone(),
                    reason: k.reason.clone(),
                });
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{decide, CommandEnvelope, CommandId, Facts, TenantId, TreeId};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn pk(n: u8) -> String {
        URL_SAFE_NO_PAD.encode(
            ed25519_dalek::SigningKey::from_bytes(&[n; 32])
                .verifying_key()
                .to_bytes(),
        )
    }

    fn actor(s: &str) -> Actor {
        let (kind, id) = s.split_once(':').unwrap();
        serde_json::from_value(serde_json::json!({"kind": kind, "id": id})).unwrap()
    }

    fn cmd(by: &str, body: serde_json::Value) -> CommandEnvelope {
        let mut v = serde_json::json!({"command_id": CommandId::generate(), "tenant": "acme",
            "actor": actor(by)});
        v.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn register(by: &str, key_id: &str, owner: &str, n: u8) -> CommandEnvelope {
        cmd(
            by,
            serde_json::json!({"type": "register_key", "key_id": key_id, "owner": owner,
                "public_key": pk(n)}),
        )
    }

    fn registry() -> Tree {
        let t = TenantId::new("acme").unwrap();
        Tree::empty(t.clone(), TreeId::registry(&t))
    }

    /// Decides and applies `c`; the refusal's reason if refused.
    fn run(
        tree: &mut Tree,
        c: &CommandEnvelope,
        facts: &Facts,
    ) -> Result<Vec<&'static str>, &'static str> {
        let events = decide(tree, c, facts, now()).map_err(|e| e.reason())?;
        for e in &events {
            crate::domain::apply(tree, e);
        }
        Ok(events.iter().map(|e| e.body.type_name()).collect())
    }

    #[test]
    fn who_may_register_and_revoke_which_key() {
        let mut t = registry();
        let f = Facts::default();
        assert_eq!(
            run(
                &mut t,
                &register("admin:sec", "lead-1", "agent:lead", 1),
                &f
            ),
            Ok(vec!["key_registered"])
        );
        assert_eq!(
            run(
                &mut t,
                &register("principal:cfo", "cfo-1", "principal:cfo", 2),
                &f
            ),
            Ok(vec!["key_registered"])
        );
        assert_eq!(
            run(&mut t, &register("principal:cfo", "x", "agent:lead", 3), &f),
            Err("key_forbidden")
        );
        assert_eq!(
            run(&mut t, &register("agent:lead", "x", "admin:lead", 3), &f),
            Err("key_forbidden")
        );
        let revoke =
            |by: &str, id: &str| cmd(by, serde_json::json!({"type": "revoke_key", "key_id": id}));
        assert_eq!(
            run(&mut t, &revoke("principal:cfo", "lead-1"), &f),
            Err("key_forbidden")
        );
        assert_eq!(
            run(&mut t, &revoke("agent:lead", "lead-1"), &f),
            Ok(vec!["key_revoked"])
        );
        assert_eq!(
            run(&mut t, &revoke("admin:sec", "lead-1"), &f),
            Err("key_already_revoked")
        );
        assert_eq!(
            run(&mut t, &revoke("admin:sec", "nope"), &f),
            Err("key_not_found")
        );
        let configured = Facts {
            key_id_configured: true,
            ..Facts::default()
        };
        assert_eq!(
            run(&mut t, &revoke("admin:sec", "root"), &configured),
            Err("key_configured")
        );
        // Ids are never reused: revoked, registered, or configured.
        assert_eq!(
            run(
                &mut t,
                &register("admin:sec", "lead-1", "agent:lead", 4),
                &f
            ),
            Err("key_id_taken")
        );
        assert_eq!(
            run(
                &mut t,
                &register("admin:sec", "cfo-1", "principal:cfo", 4),
                &f
            ),
            Err("key_id_taken")
        );
        assert_eq!(
            run(
                &mut t,
                &register("admin:sec", "root", "admin:sec", 4),
                &configured
            ),
            Err("key_id_taken")
        );
        let ring = &t.registry().keys;
        assert_eq!(ring.len(), 2);
        let lead = &ring[&KeyId::new("lead-1").unwrap()];
        assert_eq!(lead.registered_seq, 1);
        assert_eq!(lead.revoked.as_ref().map(|r| r.seq), Some(3));
    }

    #[test]
    fn a_rotation_registers_and_revokes_in_one_commit() {
        let mut t = registry();
        let f = Facts::default();
        run(
            &mut t,
            &register("admin:sec", "cfo-1", "principal:cfo", 1),
            &f,
        )
        .unwrap();
        let rotate = |by: &str, new: &str| {
            cmd(
                by,
                serde_json::json!({"type": "rotate_key", "key_id": "cfo-1",
                "new_key_id": new, "public_key": pk(2)}),
            )
        };
        assert_eq!(
            run(&mut t, &rotate("agent:lead", "cfo-2"), &f),
            Err("key_forbidden")
        );
        assert_eq!(
            run(&mut t, &rotate("principal:cfo", "cfo-1"), &f),
            Err("key_id_taken")
        );
        assert_eq!(
            run(&mut t, &rotate("principal:cfo", "cfo-2"), &f),
            Ok(vec!["key_registered", "key_revoked"])
        );
        assert_eq!(
            run(&mut t, &rotate("principal:cfo", "cfo-3"), &f),
            Err("key_already_revoked")
        );
        let new = &t.registry().keys[&KeyId::new("cfo-2").unwrap()];
        assert_eq!(new.owner.as_str(), "principal:cfo");
        assert!(new.revoked.is_none());
    }

    #[test]
    fn bad_keys_owners_and_times_are_refused_at_the_door() {
        let mut t = registry();
        let f = Facts::default();
        // The identity point (small order) and a non-point.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        for bad in [identity, not_a_point] {
            let c = cmd(
                "admin:sec",
                serde_json::json!({"type": "register_key", "key_id": "k",
                "owner": "principal:cfo", "public_key": URL_SAFE_NO_PAD.encode(bad)}),
            );
            assert_eq!(run(&mut t, &c, &f), Err("invalid_field"));
        }
        let past = cmd(
            "admin:sec",
            serde_json::json!({"type": "register_key", "key_id": "k",
            "owner": "principal:cfo", "public_key": pk(1), "not_after": "2025-01-01T00:00:00Z"}),
        );
        assert_eq!(run(&mut t, &past, &f), Err("not_after_in_past"));
        assert!(KeyOwner::new("system:expiry").is_err());
        assert!(KeyOwner::new("ticketing:jira").is_err());
        assert!(KeyOwner::new("principal:").is_err());
        assert!(KeyId::new("a/b").is_err());
        assert!(KeyId::new("a".repeat(65)).is_err());
        assert!(KeyId::new("cfo-2026.1_a").is_ok());
        assert!(t.registry().keys.is_empty(), "nothing written");
    }

    #[test]
    fn a_key_is_valid_from_its_registration_until_its_revocation() {
        let key = RegisteredKey {
            owner: KeyOwner::new("principal:cfo").unwrap(),
            public_key: pk(1),
            not_after: Some(now() + chrono::Duration::hours(2)),
            registered_seq: 1,
            registered_at: now(),
            registered_by: actor("admin:sec"),
            revoked: Some(KeyRevocation {
                seq: 2,
                at: now() + chrono::Duration::hours(1),
                by: actor("admin:sec"),
                reason: None,
            }),
        };
        let at = |m: i64| now() + chrono::Duration::minutes(m);
        assert!(!key.valid_at(at(-1)), "before its registration");
        assert!(key.valid_at(at(0)));
        assert!(
            key.valid_at(at(60)),
            "the command that revoked it, signed by it"
        );
        assert!(!key.valid_at(at(61)), "after its revocation");
        let unrevoked = RegisteredKey {
            revoked: None,
            ..key
        };
        assert!(unrevoked.valid_at(at(120)));
        assert!(!unrevoked.valid_at(at(121)), "past its not_after");
    }
}
