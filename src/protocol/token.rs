//! Mandate tokens on the wire: the `token` and `jwks` queries, their replies,
//! and the claims a token carries.
//!
//! A token is a compact JWS (a JWT, RFC 7519) signed by the engine with
//! Ed25519 (`alg` `EdDSA`, RFC 8037), its header naming the key (`kid`). Its
//! claims say who holds which authority for whom: `sub` is the principal on
//! whose behalf the chain acts, `act` (RFC 8693 §4.1) the agents of the
//! chain, the holder of the mandate outermost and the root's grantee
//! innermost, `scope` what the mandate allows: its own grants, each kept only
//! as far as every mandate above it still grants it (an ancestor narrowed
//! since the delegation narrows the claim too). `exp` is never later than the
//! earliest `not_after` of the chain, nor than the engine's maximum lifetime.
//!
//! The engine's public keys are a JWK set (RFC 7517): on the `jwks` query and
//! over HTTP at `/.well-known/jwks.json` (`mandate serve --jwks-http`).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::{Actor, MandateId, TenantId, TreeId};

use super::Consistency;

/// The JWS `alg` of every mandate token: Ed25519 (RFC 8037).
pub const TOKEN_ALG: &str = "EdDSA";

/// `token`: a short-lived signed token for a live mandate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    pub mandate: MandateId,
    /// Who asks: the mandate's grantee, its principal or an administrator.
    /// Where the tenant requires authentication, proven by the request's
    /// `Mandate-Auth` header, as for a command.
    pub actor: Actor,
    /// Wanted lifetime in seconds (at least 1). The engine's maximum
    /// (`mandate serve --token-max-ttl`, 5 minutes by default) applies when
    /// absent or larger; the chain's earliest `not_after` always does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ttl: Option<u64>,
    /// The token's audience (`aud`): the service it is meant for. No control
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub aud: Option<String>,
    /// `"fresh"` (the default) and nothing else: a token is a credential
    /// shown to others, so it is issued only after reading its chain's head
    /// from the log; a weaker level (which a lagging instance could answer
    /// from before a revoke) is refused.
    #[serde(default, skip_serializing_if = "Consistency::is_fresh")]
    pub consistency: Consistency,
}

/// Reply to `token`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenReply {
    /// The compact JWS: `header.payload.signature`, base64url.
    pub token: String,
    /// The signing key's id (the header's `kid`).
    pub kid: String,
    /// The claims the token carries (as signed).
    pub claims: TokenClaims,
}

/// The claims of a mandate token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenClaims {
    /// Issuer: `<issuer>/<tenant>` (`mandate serve --token-issuer`,
    /// `mandate` by default).
    pub iss: String,
    /// The principal on whose behalf the chain acts.
    pub sub: String,
    /// Audience, when the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Not before (seconds since the epoch).
    pub nbf: i64,
    /// Expires at (seconds since the epoch): never after the earliest
    /// `not_after` of the chain.
    pub exp: i64,
    /// Token id (a UUID v7).
    pub jti: String,
    pub tenant: TenantId,
    pub mandate: MandateId,
    pub tree: TreeId,
    /// The mandate's effective grants, each `ACTION on RESOURCE`: its own
    /// grants, each kept only as far as every mandate above it grants it,
    /// never wider than what the engine's check allows.
    pub scope: Vec<String>,
    /// The acting agent (the mandate's grantee), and nested in it the agent
    /// that delegated to it, up to the root's grantee (RFC 8693 §4.1).
    pub act: ActClaim,
}

/// One actor of the delegation chain (RFC 8693 `act`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActClaim {
    /// The agent's id.
    pub sub: String,
    /// The mandate it holds.
    pub mandate: MandateId,
    /// The actor before it: the grantee of the parent mandate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<ActClaim>>,
}

impl ActClaim {
    /// The actors from the outermost (the holder) to the innermost (the
    /// root's grantee).
    pub fn actors(&self) -> Vec<&ActClaim> {
        let mut out = vec![self];
        let mut at = self;
        while let Some(next) = &at.act {
            out.push(next);
            at = next;
        }
        out
    }
}

/// `jwks`: no fields (an empty object, or an empty body).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwksQuery {}

/// A JWK set (RFC 7517 §5): the engine's token verification keys, the
/// signing key first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One Ed25519 public key (RFC 8037): `kty` `OKP`, `crv` `Ed25519`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    /// The public key, base64url without padding.
    pub x: String,
    /// The key id: its RFC 7638 thumbprint.
    pub kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// The instant of a claim in seconds since the epoch.
pub fn claim_time(seconds: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(seconds, 0)
}
