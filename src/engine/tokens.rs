//! Mandate tokens: the engine's signing keys and the `token` and `jwks`
//! queries (wire types in [`crate::protocol::token`], verification in
//! [`crate::client::token`]).
//!
//! Every instance of a deployment loads the same key files (`mandate serve
//! --token-key FILE`, repeatable), so any of them issues tokens every
//! verifier accepts. The first key signs; every key listed is published in
//! the JWK set. Rotation: list the new key first and keep the old one after
//! it until the tokens it signed have expired (at most the maximum lifetime),
//! then drop it. A key's id (`kid`) is its RFC 7638 thumbprint, so instances
//! agree on it without any other configuration.
//!
//! Who may get a token for a mandate: its grantee, its principal, or an
//! administrator of the tenant; where the tenant requires authentication,
//! proven as for a command. Only for a mandate that is effectively active,
//! always read `fresh`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;

use crate::client::token::{b64, jwk_of};
use crate::domain::command::refuse_reserved_actor;
use crate::domain::{Actor, DomainError, Status, TenantId};
use crate::protocol::token::{ActClaim, Jwks, TokenClaims, TokenQuery, TokenReply, TOKEN_ALG};
use crate::protocol::Consistency;

use super::{Engine, EngineError};

/// Longest token lifetime unless configured: 5 minutes.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(300);
/// The issuer before `/<tenant>` unless configured.
pub const DEFAULT_ISSUER: &str = "mandate";
/// Longest audience accepted in a token query.
const MAX_AUDIENCE: usize = 256;

/// The engine's token keys: the first signs, all verify.
pub struct TokenKeys {
    keys: Vec<(String, SigningKey)>,
}

impl std::fmt::Debug for TokenKeys {
    /// The key ids only, never the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kids", &self.kids())
            .finish()
    }
}

impl TokenKeys {
    /// Loads Ed25519 private keys from PKCS#8 PEM files (`BEGIN PRIVATE
    /// KEY`, as `mandate token-keygen` and `openssl genpkey -algorithm
    /// ed25519` write them). The first signs. Refuses no file, an unreadable
    /// or foreign file, and the same key twice, naming the file.
    pub fn load(paths: &[PathBuf]) -> Result<Self, EngineError> {
        if paths.is_empty() {
            return Err(EngineError::invalid("no token key file given"));
        }
        let mut keys: Vec<(String, SigningKey)> = Vec::new();
        for path in paths {
            let key = read_key(path)?;
            let kid = jwk_of(&key.verifying_key()).kid;
            if keys.iter().any(|(k, _)| *k == kid) {
                return Err(EngineError::invalid(format!(
                    "token key {}: the same key (kid {kid}) is listed twice",
                    path.display()
                )));
            }
            keys.push((kid, key));
        }
        Ok(Self { keys })
    }

    /// One fresh key, kept in memory only (the embedded demo's: its tokens
    /// die with the process).
    pub fn ephemeral() -> Result<Self, EngineError> {
        let key = generate()?;
        let kid = jwk_of(&key.verifying_key()).kid;
        Ok(Self {
            keys: vec![(kid, key)],
        })
    }

    /// The key ids, the signing key's first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// The public keys as a JWK set, the signing key first.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: self
                .keys
                .iter()
                .map(|(_, k)| jwk_of(&k.verifying_key()))
                .collect(),
        }
    }

    /// Signs `claims` with the first key: the compact JWS and its `kid`.
    fn sign(&self, claims: &TokenClaims) -> Result<(String, String), EngineError> {
        self.sign_typed("JWT", claims)
    }

    /// Signs `claims` with the first key, the header's `typ` being `typ`
    /// (`JWT` for a mandate token, `secevent+jwt` for a security event):
    /// the compact JWS and its `kid`.
    pub(crate) fn sign_typed(
        &self,
        typ: &str,
        claims: &impl serde::Serialize,
    ) -> Result<(String, String), EngineError> {
        use ed25519_dalek::Signer;
        let (kid, key) = &self.keys[0];
        let header = serde_json::json!({"alg": TOKEN_ALG, "typ": typ, "kid": kid});
        let internal = |e: serde_json::Error| {
            EngineError::message(super::EngineErrorKind::Internal, e.to_string())
        };
        let header = b64(&serde_json::to_vec(&header).map_err(internal)?);
        let payload = b64(&serde_json::to_vec(claims).map_err(internal)?);
        let signing_input = format!("{header}.{payload}");
        let signature = key.sign(signing_input.as_bytes());
        Ok((
            format!("{signing_input}.{}", b64(&signature.to_bytes())),
            kid.clone(),
        ))
    }
}

fn read_key(path: &Path) -> Result<SigningKey, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        EngineError::invalid(format!("token key {}: cannot read it: {e}", path.display()))
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        EngineError::invalid(format!(
            "token key {}: not an Ed25519 private key in PKCS#8 PEM (BEGIN PRIVATE KEY), as `mandate token-keygen` writes: {e}",
            path.display()
        ))
    })
}

fn generate() -> Result<SigningKey, EngineError> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret)
        .map_err(|e| EngineError::unavailable(format!("no randomness for a key: {e}")))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Writes a new Ed25519 private key to `path` in PKCS#8 PEM, readable by its
/// owner only; refuses to overwrite a file. Returns its `kid`.
pub fn write_new_key(path: &Path) -> Result<String, EngineError> {
    let key = generate()?;
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| EngineError::message(super::EngineErrorKind::Internal, e.to_string()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| EngineError::invalid(format!("{}: cannot create it: {e}", path.display())))?;
    std::io::Write::write_all(&mut file, pem.as_bytes())
        .map_err(|e| EngineError::invalid(format!("{}: cannot write it: {e}", path.display())))?;
    Ok(jwk_of(&key.verifying_key()).kid)
}

impl Engine {
    fn token_keys(&self) -> Result<&TokenKeys, EngineError> {
        self.inner.config.tokens.as_deref().ok_or_else(|| {
            EngineError::unavailable(
                "this engine has no token signing key: start it with `mandate serve --token-key FILE` (make one with `mandate token-keygen --out FILE`)",
            )
        })
    }

    /// The engine's token verification keys.
    pub fn jwks(&self) -> Result<Jwks, EngineError> {
        Ok(self.token_keys()?.jwks())
    }

    /// A signed token for a live mandate, for `q.actor` (already
    /// authenticated by the caller where the tenant requires it).
    pub async fn token(
        &self,
        tenant: &TenantId,
        q: &TokenQuery,
    ) -> Result<TokenReply, EngineError> {
        refuse_reserved_actor(&q.actor)?;
        let keys = self.token_keys()?;
        if q.ttl == Some(0) {
            return Err(DomainError::InvalidField {
                field: "ttl",
                reason: "must be at least 1 second".into(),
            }
            .into());
        }
        if let Some(aud) = &q.aud {
            if aud.is_empty() || aud.len() > MAX_AUDIENCE {
                return Err(DomainError::InvalidField {
                    field: "aud",
                    reason: format!("must be 1 to {MAX_AUDIENCE} bytes, not {}", aud.len()),
                }
                .into());
            }
            crate::domain::model::refuse_control("aud", aud)?;
        }
        if !q.consistency.is_fresh() {
            return Err(DomainError::InvalidField {
                field: "consistency",
                reason:
                    "a token is issued only on a fresh read of its chain: omit it or send \"fresh\""
                        .into(),
            }
            .into());
        }
        let (snap, now) = self
            .mandate_tree(tenant, q.mandate, None, Consistency::Fresh)
            .await?;
        let tree = &snap.tree;
        let mandate = tree.get(q.mandate)?;
        let entitled = match &q.actor {
            Actor::Agent(a) => a == mandate.grantee(),
            Actor::Principal(p) => p == mandate.principal(),
            Actor::Admin(_) => true,
            Actor::System(_) => false,
        };
        if !entitled {
            return Err(DomainError::NotGrantee {
                mandate: q.mandate,
                actor: q.actor.to_string(),
                grantee: mandate.grantee().clone(),
            }
            .into());
        }
        let effective = tree.effective(q.mandate, now)?;
        if !effective.is_active() {
            let cause = effective.cause.as_ref().map(|c| c.mandate);
            return Err(match effective.status {
                s if s.is_terminal() => DomainError::Terminal {
                    mandate: q.mandate,
                    status: s,
                    cause,
                },
                s => DomainError::NotActive {
                    mandate: q.mandate,
                    status: s,
                    cause,
                },
            }
            .into());
        }
        // What the whole chain still grants, not the mandate's own grants:
        // an ancestor narrowed since the delegation withdrew the rest, and a
        // service reading the claim offline must not allow what the
        // engine's check denies.
        let scope = tree.effective_scope(q.mandate);
        if scope.is_empty() {
            return Err(DomainError::NoAuthority { mandate: q.mandate }.into());
        }
        let chain = tree.chain(q.mandate);
        let earliest_end = chain
            .iter()
            .map(|m| m.not_after())
            .min()
            .unwrap_or(mandate.not_after());
        let max = self.inner.config.token_max_ttl.as_secs();
        let ttl = q.ttl.unwrap_or(max).min(max);
        let iat = now.timestamp();
        let exp = iat
            .saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))
            .min(earliest_end.timestamp());
        // The chain ends within this second: no token could be valid for
        // any of it, and the mandate is expired by the time one is shown.
        if exp <= iat {
            return Err(DomainError::Terminal {
                mandate: q.mandate,
                status: Status::Expired,
                cause: None,
            }
            .into());
        }
        let mut act: Option<Box<ActClaim>> = None;
        for m in &chain {
            act = Some(Box::new(ActClaim {
                sub: m.grantee().to_string(),
                mandate: m.id(),
                act,
            }));
        }
        let act = *act.ok_or(DomainError::MandateNotFound { mandate: q.mandate })?;
        let claims = TokenClaims {
            iss: format!("{}/{tenant}", self.inner.config.token_issuer),
            sub: mandate.principal().to_string(),
            aud: q.aud.clone(),
            iat,
            nbf: iat,
            exp,
            jti: uuid::Uuid::now_v7().to_string(),
            tenant: tenant.clone(),
            mandate: q.mandate,
            tree: tree.id,
            scope: scope.iter().map(|g| g.to_string()).collect(),
            act,
        };
        let (token, kid) = keys.sign(&claims)?;
        tracing::debug!(mandate = %q.mandate, actor = %q.actor, %kid, exp, "token issued");
        Ok(TokenReply { token, kid, claims })
    }
}
