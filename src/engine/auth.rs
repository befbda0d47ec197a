//! Actor authentication (invariant 9): where a tenant requires it, the actor
//! of a command is proven, never taken on the body's word.
//!
//! Each actor of such a tenant holds a secret shared with the engine. A
//! request carries the header
//!
//! ```text
//! Mandate-Auth: v1 <kind>:<id> <hex HMAC-SHA256(secret, subject "\n" body)>
//! ```
//!
//! where `<kind>:<id>` is the actor (`principal:cfo`, `agent:research-lead`,
//! `admin:security`) and must equal the body's `actor`. The MAC covers the
//! subject (so a command cannot be moved to another tenant or verb) and the
//! exact body bytes. A replayed request changes nothing: commands are
//! idempotent by command id. Over NATS, the commands of a tenant not listed in
//! the configuration are refused unless the operator opened such tenants
//! explicitly (`mandate serve --allow-open-tenants`,
//! `EngineConfig::allow_open_tenants`); an open tenant must then be protected
//! with NATS permissions, as the mission subjects always are. A header that
//! is sent must be well formed on every tenant (`parse_header`): on an
//! open tenant a malformed one is refused, a well-formed one is not checked.
//!
//! Mission completions (`mission.<tenant>.<ref>.completed`, published on the
//! mission stream) carry the same header over their subject and body. On a
//! tenant that requires authentication, a completion is accepted only from
//! a ticketing system's key (`ticketing:<system>`) or an administrator's
//! (`admin:<id>`); every reader of the mission stream applies the same check
//! ([`AuthConfig::verify_completion`]), and a completion that fails it is
//! never applied but moved to the dead-letter stream and counted in
//! `health`. An administrator's completion made through the engine is
//! published on the mission stream signed with that administrator's key.
//!
//! The header's format and signing are part of the wire contract
//! ([`crate::protocol::auth`]); this module holds the policy: which tenants
//! require a proof, whose keys they accept, and for what.
//!
//! Configuration (`mandate serve --auth FILE`):
//! `{"tenants": {"acme": {"keys": {"principal:cfo": "<secret>",
//! "admin:security": "<secret>", "ticketing:jira": "<secret>", …}}}}`.
//!
//! Signed commands (`Mandate-Signature`, format in
//! [`crate::protocol::signature`]): a tenant may also list
//! `"signing_keys": {"<key_id>": {"owner": "admin:security", "public_key":
//! "<base64url>"}}` (always valid for the tenant: removing one from the file
//! retires it) and `"require_signatures": true` (default false). Other keys
//! are registered in the tenant's registry (`register_key`). A command that
//! carries a signature must verify (`Engine::verify_signature`), never
//! falling back to the HMAC; on a tenant that requires signatures, a command
//! without one is refused. Mission completions and queries keep the HMAC.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::domain::keys::{decode_public_key, SignatureAlg};
use crate::domain::{Actor, CommandSignature, DomainError, KeyId, KeyOwner, TenantId};
use crate::protocol::auth::ProofError;
use crate::protocol::signature::{self, SIGNATURE_HEADER};
// The signing format is part of the wire contract; re-exported here, where
// the engine's callers have always found it.
pub use crate::protocol::auth::{actor_key, sign, sign_as, AUTH_HEADER, TICKETING_PREFIX};

use super::EngineError;

/// Which tenants require authentication, and their actors' secrets.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub tenants: BTreeMap<String, TenantKeys>,
}

/// The secrets of one tenant's actors, by `<kind>:<id>`, and its
/// operator-configured signing keys.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantKeys {
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// Ed25519 keys the operator configured, by key id: always valid for
    /// this tenant, and their ids may not be registered.
    #[serde(default)]
    pub signing_keys: BTreeMap<KeyId, ConfiguredKey>,
    /// Every command must carry a valid `Mandate-Signature`: the HMAC alone
    /// no longer suffices (mission completions keep it).
    #[serde(default)]
    pub require_signatures: bool,
}

/// A signing key from the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfiguredKey {
    pub owner: KeyOwner,
    /// Ed25519 public key, base64url without padding.
    pub public_key: String,
}

fn forbidden(reason: String) -> EngineError {
    EngineError::from(DomainError::NotAuthenticated { reason })
}

impl AuthConfig {
    /// Reads a configuration file; every tenant name must be a valid tenant id.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            EngineError::invalid(format!("cannot read auth file {}: {e}", path.display()))
        })?;
        let config: AuthConfig = serde_json::from_str(&text)
            .map_err(|e| EngineError::invalid(format!("auth file {}: {e}", path.display())))?;
        for (tenant, keys) in &config.tenants {
            TenantId::new(tenant.as_str())
                .map_err(|e| EngineError::invalid(format!("auth file: {e}")))?;
            if keys.keys.is_empty() && keys.signing_keys.is_empty() {
                return Err(EngineError::invalid(format!(
                    "auth file: tenant {tenant} lists no keys and no signing keys"
                )));
            }
            // An empty secret is known to everyone: anyone could prove
            // that actor with a MAC under the empty key.
            if let Some(key) = keys
                .keys
                .iter()
                .find_map(|(k, s)| s.is_empty().then_some(k))
            {
                return Err(EngineError::invalid(format!(
                    "auth file: tenant {tenant}: key {key} has an empty secret, which anyone could sign with"
                )));
            }
            for (id, key) in &keys.signing_keys {
                decode_public_key(&key.public_key).map_err(|e| {
                    EngineError::invalid(format!(
                        "auth file: tenant {tenant}: signing key {id}: public_key {e}"
                    ))
                })?;
            }
        }
        Ok(config)
    }

    /// Whether `tenant` requires authenticated actors.
    pub fn requires(&self, tenant: &TenantId) -> bool {
        self.tenants.contains_key(tenant.as_str())
    }

    /// Whether `tenant` requires a signature on every command.
    pub fn requires_signatures(&self, tenant: &TenantId) -> bool {
        self.tenants
            .get(tenant.as_str())
            .is_some_and(|t| t.require_signatures)
    }

    /// The signing key `id` the configuration gives `tenant`, if any.
    pub fn configured_key(&self, tenant: &TenantId, id: &KeyId) -> Option<&ConfiguredKey> {
        self.tenants.get(tenant.as_str())?.signing_keys.get(id)
    }

    /// Checks that `header` proves `actor` sent `body` on `subject`. A tenant
    /// the configuration does not list needs no proof here: whether it is
    /// served at all is the open-tenant policy ([`refuse_closed_tenant`]).
    pub fn verify(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        subject: &str,
        body: &[u8],
        header: Option<&str>,
    ) -> Result<(), EngineError> {
        self.check_proof(tenant, subject, body, header, "command", |who| {
            let claimed = actor_key(actor)
                .ok_or_else(|| forbidden(format!("{actor} cannot be authenticated")))?;
            if who != claimed {
                return Err(forbidden(format!(
                    "{AUTH_HEADER} is for {who}, but the body's actor is {claimed}"
                )));
            }
            Ok(())
        })
    }

    /// Checks a mission completion read from the mission stream: on a tenant
    /// that requires authentication, `header` must prove that a ticketing
    /// system (`ticketing:<system>`) or an administrator (`admin:<id>`) of
    /// the tenant published `body` on `subject`. Open tenants accept any.
    pub fn verify_completion(
        &self,
        tenant: &TenantId,
        subject: &str,
        body: &[u8],
        header: Option<&str>,
    ) -> Result<(), EngineError> {
        self.check_proof(tenant, subject, body, header, "mission completion", |who| {
            if !(who.starts_with(TICKETING_PREFIX) || who.starts_with("admin:")) {
                return Err(forbidden(format!(
                    "{who} may not complete missions: only {TICKETING_PREFIX}<system> and admin:<id> keys may"
                )));
            }
            Ok(())
        })
    }

    /// On a tenant that requires authentication: `header` must be present
    /// on every `what`, name a key that `may` accepts, and prove with that
    /// key that `body` was sent on `subject`. Open tenants need no proof.
    fn check_proof(
        &self,
        tenant: &TenantId,
        subject: &str,
        body: &[u8],
        header: Option<&str>,
        what: &str,
        may: impl FnOnce(&str) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let Some(keys) = self.tenants.get(tenant.as_str()) else {
            return Ok(());
        };
        let header = header.ok_or_else(|| {
            forbidden(format!(
                "tenant {tenant} requires a {AUTH_HEADER} header on every {what}"
            ))
        })?;
        let (who, tag) = parse_header(header)?;
        may(who)?;
        check_mac(keys, tenant, who, tag, subject, body)
    }
}

/// The hex digits of an HMAC-SHA256.
const MAC_HEX_DIGITS: usize = 64;

/// `v1 <kind>:<id> <hex mac>` → (`<kind>:<id>`, mac), or the refusal naming
/// what is wrong. A header that is sent must be well formed on every tenant,
/// an open one included, as a `Mandate-Signature` must verify.
pub(crate) fn parse_header(header: &str) -> Result<(&str, &str), EngineError> {
    let (who, tag) = crate::protocol::auth::parse_header(header)
        .filter(|(who, _)| {
            who.split_once(':')
                .is_some_and(|(kind, id)| !kind.is_empty() && !id.is_empty())
        })
        .ok_or_else(|| forbidden(format!("{AUTH_HEADER} must be 'v1 <kind>:<id> <hex mac>'")))?;
    if !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(forbidden(format!("{AUTH_HEADER} mac is not hex")));
    }
    if tag.len() != MAC_HEX_DIGITS {
        return Err(forbidden(format!(
            "{AUTH_HEADER} mac is {} hex digits, not the {MAC_HEX_DIGITS} of an HMAC-SHA256",
            tag.len()
        )));
    }
    Ok((who, tag))
}

/// Checks that `tag` is the MAC of `subject` and `body` under `who`'s key.
fn check_mac(
    keys: &TenantKeys,
    tenant: &TenantId,
    who: &str,
    tag: &str,
    subject: &str,
    body: &[u8],
) -> Result<(), EngineError> {
    let secret = keys
        .keys
        .get(who)
        .ok_or_else(|| forbidden(format!("{who} has no key in tenant {tenant}")))?;
    crate::protocol::auth::check_mac(secret.as_bytes(), subject, body, tag).map_err(|e| match e {
        ProofError::NotHex => forbidden(format!("{AUTH_HEADER} mac is not hex")),
        ProofError::Mismatch => forbidden(format!(
            "{AUTH_HEADER} does not prove {who} sent this request"
        )),
    })
}

/// A key as the verification of a signature needs it.
struct KeyFound {
    owner: KeyOwner,
    public_key: String,
}

impl super::Engine {
    /// Verifies a command's `Mandate-Signature` `header`: the key is
    /// configured for the tenant or registered in its ring (read fresh), not
    /// revoked, not past its `not_after`, owned by the body's `actor`, and
    /// the signature is that of `body` on `subject`. Returns the signature
    /// to record in the command's events; any failure is `not_authenticated`
    /// naming what failed.
    pub(crate) async fn verify_signature(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        subject: &str,
        body: &[u8],
        header: &str,
    ) -> Result<CommandSignature, EngineError> {
        let (key_id, sig) =
            signature::parse_header(header).map_err(|e| forbidden(e.to_string()))?;
        let configured = self
            .inner
            .config
            .auth
            .as_ref()
            .and_then(|c| c.configured_key(tenant, &key_id));
        let key = match configured {
            Some(k) => KeyFound {
                owner: k.owner.clone(),
                public_key: k.public_key.clone(),
            },
            None => {
                let registry = self.fresh_registry(tenant).await?;
                let Some(k) = registry
                    .as_ref()
                    .and_then(|r| r.tree.registry().keys.get(&key_id))
                else {
                    return Err(forbidden(format!(
                        "{SIGNATURE_HEADER} names key {key_id}, which tenant {tenant} neither configures nor registers"
                    )));
                };
                if let Some(r) = &k.revoked {
                    return Err(forbidden(format!(
                        "{SIGNATURE_HEADER} names key {key_id}, revoked at {} by {}",
                        r.at, r.by
                    )));
                }
                if let Some(n) = k.not_after.filter(|n| *n < self.now()) {
                    return Err(forbidden(format!(
                        "{SIGNATURE_HEADER} names key {key_id}, which expired at {n}"
                    )));
                }
                KeyFound {
                    owner: k.owner.clone(),
                    public_key: k.public_key.clone(),
                }
            }
        };
        if !key.owner.is(actor) {
            return Err(forbidden(format!(
                "{SIGNATURE_HEADER} key {key_id} belongs to {}, but the body's actor is {actor}",
                key.owner
            )));
        }
        signature::verify(&key.public_key, &key_id, subject, body, &sig)
            .map_err(|e| forbidden(format!("{SIGNATURE_HEADER}: {e}")))?;
        let command = serde_json::from_slice(body)
            .map_err(|e| forbidden(format!("{SIGNATURE_HEADER}: the body is not JSON: {e}")))?;
        Ok(CommandSignature {
            key_id,
            owner: key.owner,
            alg: SignatureAlg::EdDSA,
            value: header.rsplit(' ').next().unwrap_or_default().to_string(),
            subject: subject.to_string(),
            command,
        })
    }
}

/// The refusal of a command of a tenant that requires no proof, when open
/// tenants are not allowed: names the tenant and the two ways to serve it.
pub fn refuse_closed_tenant(tenant: &TenantId) -> EngineError {
    forbidden(format!(
        "tenant {tenant} has no authentication configured and open tenants are not allowed: \
         list it in the auth configuration (--auth) or serve with --allow-open-tenants"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PrincipalId;

    fn config() -> AuthConfig {
        serde_json::from_str(r#"{"tenants":{"acme":{"keys":{"principal:cfo":"s3cret"}}}}"#).unwrap()
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let cfo = Actor::Principal(PrincipalId::new("cfo").unwrap());
        let t = TenantId::new("acme").unwrap();
        let h = sign(b"s3cret", &cfo, "mandate.cmd.acme.revoke", b"{}").unwrap();
        let c = config();
        assert!(c
            .verify(&t, &cfo, "mandate.cmd.acme.revoke", b"{}", Some(&h))
            .is_ok());
        assert!(c
            .verify(&t, &cfo, "mandate.cmd.acme.pause", b"{}", Some(&h))
            .is_err());
        assert!(c
            .verify(&t, &cfo, "mandate.cmd.acme.revoke", b"{ }", Some(&h))
            .is_err());
        assert!(c
            .verify(&t, &cfo, "mandate.cmd.acme.revoke", b"{}", None)
            .is_err());
        let other = Actor::Admin(PrincipalId::new("cfo").unwrap());
        assert!(c
            .verify(&t, &other, "mandate.cmd.acme.revoke", b"{}", Some(&h))
            .is_err());
        let forged = sign(b"guess", &cfo, "mandate.cmd.acme.revoke", b"{}").unwrap();
        assert!(c
            .verify(&t, &cfo, "mandate.cmd.acme.revoke", b"{}", Some(&forged))
            .is_err());
        let open = TenantId::new("globex").unwrap();
        assert!(c
            .verify(&open, &cfo, "mandate.cmd.globex.revoke", b"{}", None)
            .is_ok());
    }

    #[test]
    fn a_completion_is_accepted_only_from_a_ticketing_or_administrator_key() {
        let c: AuthConfig = serde_json::from_str(
            r#"{"tenants":{"acme":{"keys":{"principal:cfo":"p","admin:ops":"a","ticketing:jira":"j"}}}}"#,
        )
        .unwrap();
        let t = TenantId::new("acme").unwrap();
        let subject = "mission.acme.jira:FIN-1.completed";
        let ok = |key: &str, secret: &[u8]| {
            let h = sign_as(secret, key, subject, b"{}");
            c.verify_completion(&t, subject, b"{}", Some(&h)).is_ok()
        };
        assert!(ok("ticketing:jira", b"j"));
        assert!(ok("admin:ops", b"a"));
        assert!(
            !ok("principal:cfo", b"p"),
            "a principal's key is not a ticketing key"
        );
        assert!(!ok("ticketing:jira", b"guess"));
        assert!(!ok("ticketing:servicenow", b"j"), "no such key");
        assert!(c.verify_completion(&t, subject, b"{}", None).is_err());
        let h = sign_as(b"j", "ticketing:jira", subject, b"{}");
        assert!(
            c.verify_completion(&t, "mission.acme.jira:FIN-2.completed", b"{}", Some(&h))
                .is_err(),
            "the mac covers the subject"
        );
        let open = TenantId::new("globex").unwrap();
        assert!(c
            .verify_completion(&open, "mission.globex.x.completed", b"{}", None)
            .is_ok());
    }

    #[test]
    fn signing_keys_are_checked_when_the_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| {
            let path = dir.path().join("auth.json");
            std::fs::write(&path, text).unwrap();
            AuthConfig::load(&path)
        };
        let pk = crate::protocol::signature::public_key_text(
            &ed25519_dalek::SigningKey::from_bytes(&[1; 32]),
        );
        // Signing keys alone are enough for a tenant.
        let ok = write(&format!(
            r#"{{"tenants":{{"acme":{{"signing_keys":{{"root":{{"owner":"admin:sec","public_key":"{pk}"}}}},"require_signatures":true}}}}}}"#
        ))
        .unwrap();
        let acme = TenantId::new("acme").unwrap();
        assert!(ok.requires(&acme) && ok.requires_signatures(&acme));
        assert!(ok
            .configured_key(&acme, &KeyId::new("root").unwrap())
            .is_some());
        let bad = write(
            r#"{"tenants":{"acme":{"signing_keys":{"root":{"owner":"admin:sec","public_key":"AAAA"}}}}}"#,
        )
        .unwrap_err();
        assert!(
            bad.to_string()
                .contains("signing key root: public_key is 3 bytes"),
            "{bad}"
        );
        let none = write(r#"{"tenants":{"acme":{}}}"#).unwrap_err();
        assert!(
            none.to_string()
                .contains("lists no keys and no signing keys"),
            "{none}"
        );
        assert!(write(&format!(
            r#"{{"tenants":{{"acme":{{"signing_keys":{{"root":{{"owner":"system:expiry","public_key":"{pk}"}}}}}}}}}}"#
        ))
        .is_err());
    }
}
