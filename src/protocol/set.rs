//! Security Event Tokens (RFC 8417) on the wire: the claims of the SETs the
//! engine publishes when a mandate's authority changes, in the event types
//! of OpenID Shared Signals (SSF 1.0) and CAEP 1.0.
//!
//! A SET is a compact JWS signed like a mandate token (`alg` `EdDSA`, the
//! signing key's `kid`, verified with the same JWK set) but typed
//! `secevent+jwt`, so it can never be taken for an access token. It is
//! published on [`set_subject`] into the stream `MANDATE_SETS`, its message
//! id its `jti` (the event id), and pushed (RFC 8935) to the receivers
//! `mandate serve --set-push` names.
//!
//! One event type per SET:
//! - a mandate ended (revoked, expired, completed, its mission completed,
//!   its quarantined tree ended): [`SESSION_REVOKED`];
//! - paused, resumed, narrowed or renewed, its tree quarantined or restored:
//!   [`TOKEN_CLAIMS_CHANGE`], `claims` holding what changed.
//!
//! The [`MandateClaim`] says which mandate, and that the change holds for
//! every mandate delegated below it: a mandate token names its whole chain
//! (`act`, see [`super::token::TokenClaims`]), so a receiver matches a token
//! whose chain holds `mandate.id`, not only a token of that mandate.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::{MandateId, Status, TenantId, TreeId};

use super::SignalKind;

/// The CAEP event type of a mandate that ended.
pub const SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// The CAEP event type of a mandate whose status, scope or end changed.
pub const TOKEN_CLAIMS_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/token-claims-change";
/// The JWS `typ` of a SET (RFC 8417 §2.3).
pub const SET_TYP: &str = "secevent+jwt";
/// The HTTP content type of a pushed SET (RFC 8935 §2).
pub const SET_CONTENT_TYPE: &str = "application/secevent+jwt";

/// Subject of a tenant's SETs (stream `MANDATE_SETS`).
pub fn set_subject(tenant: &TenantId) -> String {
    format!("mandate.set.{tenant}")
}

/// The claims of a Security Event Token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SetClaims {
    /// Issuer: `<issuer>/<tenant>`, as in the tenant's mandate tokens.
    pub iss: String,
    /// Issued at (seconds since the epoch): when the SET was signed.
    pub iat: i64,
    /// The event id: a receiver deduplicates by it. The same event always
    /// gives the same `jti`, whichever instance signs it and however often.
    pub jti: String,
    /// The receiver's audience: present on a pushed SET (the receiver's
    /// configured audience), absent on the SETs of `mandate.set.<tenant>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Transaction: the id of the command that wrote the event, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    /// The subject (SSF `sub_id`): the mandate, as a session of the tenant.
    pub sub_id: SubjectId,
    /// One event, keyed by its type URI ([`SESSION_REVOKED`] or
    /// [`TOKEN_CLAIMS_CHANGE`]).
    #[schemars(extend(
        "minProperties" = 1,
        "maxProperties" = 1,
        "propertyNames" = {"enum": [SESSION_REVOKED, TOKEN_CLAIMS_CHANGE]}
    ))]
    pub events: BTreeMap<String, CaepEvent>,
    /// Mandate's own claim: which mandate, and what changed.
    pub mandate: MandateClaim,
}

/// An SSF complex subject: the mandate (as a session) in its tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubjectId {
    /// Always `complex`.
    #[schemars(extend("const" = "complex"))]
    pub format: String,
    /// `{"format": "opaque", "id": "<mandate id>"}`.
    pub session: OpaqueId,
    /// `{"format": "opaque", "id": "<tenant>"}`.
    pub tenant: OpaqueId,
}

/// An SSF opaque identifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpaqueId {
    /// Always `opaque`.
    #[schemars(extend("const" = "opaque"))]
    pub format: String,
    pub id: String,
}

impl OpaqueId {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            format: "opaque".into(),
            id: id.into(),
        }
    }
}

/// The body of a CAEP event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CaepEvent {
    /// When the event happened (seconds since the epoch).
    pub event_timestamp: i64,
    /// `admin`, `user` (a principal or an agent), `policy` (expiry) or
    /// `system` (the engine: a mission's completion, a quarantine).
    pub initiating_entity: String,
    /// The reason given, in English, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_admin: Option<BTreeMap<String, String>>,
    /// For [`TOKEN_CLAIMS_CHANGE`]: the claims as they are now (`status`,
    /// and for a narrowing `scope`, for a renewal `not_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<BTreeMap<String, serde_json::Value>>,
}

/// Which mandate a SET is about, and how far it reaches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MandateClaim {
    /// The mandate whose authority changed.
    pub id: MandateId,
    pub tree: TreeId,
    pub tenant: TenantId,
    /// The mandate's own status after the event.
    pub status: Status,
    /// The signal the event sent to guards.
    pub signal: SignalKind,
    /// The event's type (`mandate_revoked`, `scope_narrowed`, ...).
    pub event_type: String,
    /// The event's sequence number in its tree.
    pub seq: u64,
    /// True when the change holds for every mandate delegated below this
    /// one (an end, a pause, a quarantine: a delegation never outlives nor
    /// outranks its parent): a receiver applies it to every token whose
    /// chain (`act`) holds this mandate.
    pub includes_descendants: bool,
}
