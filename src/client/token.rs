//! Verifying mandate tokens: offline against the engine's JWK set, and with
//! liveness against the engine itself.
//!
//! A token is a compact JWS over Ed25519 (see [`crate::protocol::token`]).
//! It is encoded and checked here by hand, over `ed25519-dalek` and
//! `base64`: the format is three base64url parts and one signature, and
//! doing it here keeps the SDK free of a JWT crate's key-type and
//! crypto-backend machinery while refusing everything but `EdDSA` by
//! construction (no `none`, no HMAC with a public key taken as a secret).
//!
//! **The window.** A token checked offline ([`TokenVerifier::verify`]) cannot
//! learn of a revoke: it stays valid until its `exp`, at most the engine's
//! maximum lifetime (5 minutes by default). [`TokenVerifier::verify_live`]
//! and [`TokenVerifier::verify_with_guard`] also ask whether the mandate is
//! still live, which closes that window.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::domain::effective::effective_grants;
use crate::domain::{Grant, Status, TenantId};
use crate::protocol::token::{Jwk, Jwks, TokenClaims, TOKEN_ALG};

use super::guard::{Guard, GuardState};
use super::{Client, ClientError};

/// Default tolerance for clocks that disagree, on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS of this format (parts, base64url, JSON, claims).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names another algorithm than `EdDSA` (`none` included).
    #[error("token algorithm {0:?} refused: only EdDSA is accepted")]
    Algorithm(String),
    /// The header names no key of the JWK set.
    #[error("token signed by unknown key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify with the named key.
    #[error("token signature does not verify")]
    Signature,
    /// `exp` is past (beyond the leeway).
    #[error("token expired at {0}")]
    Expired(DateTime<Utc>),
    /// `nbf` is still ahead (beyond the leeway).
    #[error("token not valid before {0}")]
    NotYetValid(DateTime<Utc>),
    /// `iss` is not the configured issuer.
    #[error("token issuer {found:?} is not {expected:?}")]
    Issuer { expected: String, found: String },
    /// `aud` is absent, or not the configured audience, or present while no
    /// audience is configured.
    #[error("token audience {found:?} is not {expected:?}")]
    Audience {
        expected: Option<String>,
        found: Option<String>,
    },
    /// The JWK set holds a key that is not an Ed25519 public key.
    #[error("bad key in the JWK set: {0}")]
    Key(String),
    /// The token names another tenant than the client or guard asked.
    #[error("token of tenant {found} checked against tenant {expected}")]
    Tenant { expected: TenantId, found: TenantId },
    /// The mandate is no longer live: the token's authority has ended or is
    /// paused, whatever its `exp` says.
    #[error("mandate {mandate} is {status}: the token no longer carries authority")]
    NotLive {
        mandate: crate::domain::MandateId,
        status: String,
    },
    /// The token is for another mandate or tree than the one it is checked
    /// against.
    #[error("token mismatch: {0}")]
    Mismatch(String),
    /// The mandate's scope, or an ancestor's, was narrowed since the token
    /// was issued: the token claims a grant the chain no longer grants.
    #[error("mandate {mandate} no longer holds grant {grant:?} the token claims")]
    Narrowed {
        mandate: crate::domain::MandateId,
        grant: String,
    },
    /// The liveness read failed: refused, since liveness is unknown.
    #[error("liveness of the token's mandate unknown: {0}")]
    Unreachable(#[from] ClientError),
}

/// base64url without padding, as JWS uses.
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(part: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| TokenError::Malformed(format!("{what} is not base64url: {e}")))
}

/// The public JWK of an Ed25519 key, its `kid` the RFC 7638 thumbprint.
pub fn jwk_of(key: &VerifyingKey) -> Jwk {
    let x = b64(key.as_bytes());
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        kid: thumbprint(&x),
        x,
        alg: Some(TOKEN_ALG.into()),
        use_: Some("sig".into()),
    }
}

/// RFC 7638: SHA-256 over the required members in lexicographic order.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    b64(&Sha256::digest(canonical.as_bytes()))
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Checks mandate tokens against a JWK set: signature (`EdDSA` only, by a
/// listed `kid`), `exp` and `nbf` with a small leeway, and `iss` and `aud`
/// when configured. Keys are kept by `kid`; after a rotation, a set listing
/// the old key still verifies the tokens it signed.
#[derive(Clone, Debug)]
pub struct TokenVerifier {
    keys: BTreeMap<String, VerifyingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
}

impl TokenVerifier {
    /// A verifier of the Ed25519 keys of `jwks` (keys of other types are
    /// refused, not skipped: a set this verifier cannot read entirely is a
    /// misconfiguration).
    pub fn new(jwks: &Jwks) -> Result<Self, TokenError> {
        let mut keys = BTreeMap::new();
        for jwk in &jwks.keys {
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
                return Err(TokenError::Key(format!(
                    "key {:?} is {} {}, not OKP Ed25519",
                    jwk.kid, jwk.kty, jwk.crv
                )));
            }
            if jwk.alg.as_deref().is_some_and(|a| a != TOKEN_ALG) {
                return Err(TokenError::Key(format!(
                    "key {:?} is for {:?}, not EdDSA",
                    jwk.kid, jwk.alg
                )));
            }
            let x = URL_SAFE_NO_PAD
                .decode(&jwk.x)
                .map_err(|e| TokenError::Key(format!("key {:?}: x: {e}", jwk.kid)))?;
            let x: [u8; 32] = x
                .try_into()
                .map_err(|_| TokenError::Key(format!("key {:?}: x is not 32 bytes", jwk.kid)))?;
            let key = VerifyingKey::from_bytes(&x)
                .map_err(|e| TokenError::Key(format!("key {:?}: {e}", jwk.kid)))?;
            keys.insert(jwk.kid.clone(), key);
        }
        Ok(Self {
            keys,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
        })
    }

    /// A verifier of the keys the engine publishes (the `jwks` query).
    pub async fn from_engine(client: &Client) -> Result<Self, TokenError> {
        Self::new(&client.jwks().await?)
    }

    /// Requires `iss` to be exactly this (`<issuer>/<tenant>`).
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Requires `aud` to be exactly this. Without it, a token that names an
    /// audience is refused: it was meant for someone else.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Tolerance on `exp` and `nbf` ([`DEFAULT_LEEWAY`] unless set).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The key ids this verifier accepts.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Checks `token` offline, now. It cannot know of a revoke since the
    /// token was issued: see [`TokenVerifier::verify_live`].
    pub fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        self.verify_at(token, Utc::now())
    }

    /// Checks `token` offline as of `now`.
    pub fn verify_at(&self, token: &str, now: DateTime<Utc>) -> Result<TokenClaims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "a token is three base64url parts joined by '.'".into(),
            ));
        };
        let header: Header = serde_json::from_slice(&unb64(h, "the header")?)
            .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
        if header.alg != TOKEN_ALG {
            return Err(TokenError::Algorithm(header.alg));
        }
        if header.crit.is_some() {
            return Err(TokenError::Malformed(
                "header has critical extensions (crit), none understood".into(),
            ));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Malformed("header names no key (kid)".into()))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        let signature = unb64(s, "the signature")?;
        let signature = Signature::from_slice(&signature)
            .map_err(|_| TokenError::Malformed("signature is not 64 bytes".into()))?;
        let signed = &token[..h.len() + 1 + p.len()];
        key.verify_strict(signed.as_bytes(), &signature)
            .map_err(|_| TokenError::Signature)?;
        let claims: TokenClaims = serde_json::from_slice(&unb64(p, "the payload")?)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX);
        let t = now.timestamp();
        let at = |secs: i64| {
            crate::protocol::token::claim_time(secs).unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        if t >= claims.exp.saturating_add(leeway) {
            return Err(TokenError::Expired(at(claims.exp)));
        }
        if t < claims.nbf.saturating_sub(leeway) {
            return Err(TokenError::NotYetValid(at(claims.nbf)));
        }
        if let Some(expected) = &self.issuer {
            if &claims.iss != expected {
                return Err(TokenError::Issuer {
                    expected: expected.clone(),
                    found: claims.iss,
                });
            }
        }
        if claims.aud != self.audience {
            return Err(TokenError::Audience {
                expected: self.audience.clone(),
                found: claims.aud,
            });
        }
        Ok(claims)
    }

    /// Checks `token` offline, then asks the engine (a `fresh` chain read
    /// through `client`) whether its mandate is still active: a token whose
    /// mandate, or any mandate above it, was revoked, expired, completed or
    /// paused since it was issued is refused, and so is one claiming a grant
    /// a narrowing (of the mandate or above it) has since taken away. Any failure of that read refuses
    /// too.
    pub async fn verify_live(
        &self,
        token: &str,
        client: &Client,
    ) -> Result<TokenClaims, TokenError> {
        let claims = self.verify(token)?;
        if &claims.tenant != client.tenant() {
            return Err(TokenError::Tenant {
                expected: client.tenant().clone(),
                found: claims.tenant,
            });
        }
        let chain = client.chain(claims.mandate, None).await?;
        if chain.tree != claims.tree {
            return Err(TokenError::Mismatch(format!(
                "mandate {} is in tree {}, the token says {}",
                claims.mandate, chain.tree, claims.tree
            )));
        }
        if !chain.effective.is_active() {
            return Err(TokenError::NotLive {
                mandate: claims.mandate,
                status: chain.effective.status.to_string(),
            });
        }
        if chain.mandates.last().map(|m| m.id()) != Some(claims.mandate) {
            return Err(TokenError::Mismatch(format!(
                "the chain read does not end at {}",
                claims.mandate
            )));
        }
        // What the chain grants now, as the engine put it in the claim: a
        // claimed grant none of it covers was taken away since, here or above.
        let grants = effective_grants(&chain.mandates);
        let still_granted = |claimed: &String| {
            claimed
                .parse::<Grant>()
                .is_ok_and(|c| grants.iter().any(|g| g.covers(&c)))
        };
        if let Some(lost) = claims.scope.iter().find(|g| !still_granted(g)) {
            return Err(TokenError::Narrowed {
                mandate: claims.mandate,
                grant: lost.clone(),
            });
        }
        Ok(claims)
    }

    /// Checks `token` offline, then against a [`Guard`] held for its
    /// mandate: refused unless the guard holds that very mandate and
    /// believes it active (a stale or quarantined guard refuses too). The
    /// token's `scope` is as issued: check the request itself with
    /// [`Guard::check`], which reads the current scope.
    pub fn verify_with_guard(&self, token: &str, guard: &Guard) -> Result<TokenClaims, TokenError> {
        let claims = self.verify(token)?;
        if guard.mandate() != claims.mandate {
            return Err(TokenError::Mismatch(format!(
                "token is for mandate {}, the guard holds {}",
                claims.mandate,
                guard.mandate()
            )));
        }
        let status = match guard.state() {
            GuardState::Active => return Ok(claims),
            GuardState::Paused => Status::Paused.to_string(),
            GuardState::Terminated(s) => s.to_string(),
            GuardState::Stale => "unknown (the guard is stale)".to_string(),
            GuardState::Quarantined => "unknown (its tree is quarantined)".to_string(),
        };
        Err(TokenError::NotLive {
            mandate: claims.mandate,
            status,
        })
    }
}
