//! The errors the gateway answers with instead of passing a request on: a
//! JSON-RPC error whose message says why in words and whose `data` is
//! structured, so an agent (or the approval flow) can act on it.
//!
//! `data` always holds `reason` (a code, below), `mandate`, and `chain` (the
//! mandate ids from the root's grant down to the gateway's mandate, when
//! known); with them, what was asked: `action`, `resource`, and, for a
//! decision of the guard, `decision` (the guard's whole decision: outcome,
//! reason and chain links). Reason codes:
//!
//! | code | JSON-RPC code | when |
//! |---|---|---|
//! | `out_of_scope`, `not_active`, `unverified`, `quarantined`, ... | -32010 | the guard denied (its deny reason's `kind`) |
//! | `needs_approval` | -32011 | in scope, but a step-up approval is needed: the gateway asked the engine for one (below); `step_up` the patterns that matched |
//! | `unknown_approval`, `approval_pending`, `approval_denied`, `approval_used`, `approval_expired`, `approval_mismatch`, `not_active`, ... | -32010 | the request carried an approval (`_meta["mandate/approval"]`) and the engine refused to use it (its refusal's `reason`); `approval` names it |
//! | `mandate_ended` | -32012 | the mandate ended while the call was in flight (the server got `notifications/cancelled`), or before the request arrived |
//! | `invalid_request` | -32602 | the request has no valid action or resource (a bad tool name, a missing resource argument) |
//! | `upstream_unavailable` | -32603 | the MCP server behind the gateway has gone away |
//!
//! A `needs_approval` error is a request for approval already made: the
//! gateway sent `request_approval` to the engine as the mandate's grantee,
//! bound to the action, the resource and the hash of the request's
//! parameters. `approval_request` is that approval's id (a UUID v7, for
//! `mandate approve <id> --mandate <mandate>`), with `params_hash` and
//! `expires_at`. While an equal request (same action, resource and
//! parameters hash) is still pending, the engine writes no new one and
//! answers with it: `approval_request` is then that earlier approval's id,
//! and `approval_existing` is true (false for a new one). When the engine refused the request (the gateway's actor is
//! not the grantee, the engine cannot be reached), `approval_request` is
//! null and `approval_error` says why (`reason`, `message`): the call stays
//! refused either way.

use rmcp::model::ErrorCode;
use rmcp::ErrorData;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::client::ClientError;

use crate::cli::render::deny_text;
use crate::domain::{Decision, DenyReason, MandateId};

/// A guard's deny.
pub(super) const DENIED: ErrorCode = ErrorCode(-32010);
/// A step-up approval is needed first.
pub(super) const NEEDS_APPROVAL: ErrorCode = ErrorCode(-32011);
/// The mandate has ended.
pub(super) const MANDATE_ENDED: ErrorCode = ErrorCode(-32012);

/// The reason code of a guard's deny: its reason's `kind`.
fn deny_code(reason: Option<&DenyReason>) -> String {
    reason
        .and_then(|r| serde_json::to_value(r).ok())
        .and_then(|v| v.get("kind").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "denied".into())
}

/// The mandate ids of a decision's chain, root first.
fn chain_ids(d: &Decision) -> Vec<String> {
    d.chain.iter().map(|l| l.mandate.to_string()).collect()
}

/// The error for a decision that is not an allow.
pub(super) fn refused(d: &Decision, method: &str) -> ErrorData {
    let chain = chain_ids(d);
    let code = deny_code(d.reason.as_ref());
    ErrorData::new(
        DENIED,
        format!(
            "{method}: denied by mandate {}: {} (chain {})",
            d.mandate,
            deny_text(d),
            chain.join(" > ")
        ),
        Some(json!({
            "reason": code,
            "mandate": d.mandate,
            "chain": chain,
            "action": d.action,
            "resource": d.resource,
            "decision": d,
        })),
    )
}

/// What came of the gateway's request for approval of a call.
pub(super) enum Requested {
    /// The engine recorded the request: the approval's id, the parameters
    /// hash it is bound to, when it expires (as the engine wrote it), and
    /// whether it is an equal request made earlier and still pending (the
    /// engine answered with that one and wrote nothing).
    Made {
        approval: Uuid,
        params_hash: String,
        expires_at: Option<Value>,
        existing: bool,
    },
    /// The engine refused it, or could not be asked.
    Failed(ClientError),
}

/// The error for a call that needs step-up approval first.
pub(super) fn needs_approval(d: &Decision, method: &str, requested: &Requested) -> ErrorData {
    let chain = chain_ids(d);
    let step_up: Vec<String> = d.approval.iter().map(|p| p.to_string()).collect();
    let mut data = json!({
        "reason": "needs_approval",
        "mandate": d.mandate,
        "chain": chain,
        "action": d.action,
        "resource": d.resource,
        "step_up": step_up,
        "decision": d,
    });
    let next = match requested {
        Requested::Made {
            approval,
            params_hash,
            expires_at,
            existing,
        } => {
            data["approval_request"] = json!(approval);
            data["approval_existing"] = json!(existing);
            data["params_hash"] = json!(params_hash);
            data["expires_at"] = expires_at.clone().unwrap_or(Value::Null);
            let asked = if *existing {
                "was requested earlier and is still pending"
            } else {
                "was requested"
            };
            format!(
                "approval {approval} {asked}; once the principal approves it, call again with _meta {{\"{APPROVAL_META}\": \"{approval}\"}}"
            )
        }
        Requested::Failed(e) => {
            data["approval_request"] = Value::Null;
            data["approval_error"] = json!({"reason": e.reason(), "message": e.to_string()});
            format!("the engine did not take the request for approval: {e}")
        }
    };
    ErrorData::new(
        NEEDS_APPROVAL,
        format!(
            "{method}: {} on {} needs step-up approval first: {next} (mandate {}, chain {})",
            d.action,
            d.resource,
            d.mandate,
            chain.join(" > ")
        ),
        Some(data),
    )
}

/// The error for a call whose approval the engine would not use.
pub(super) fn approval_refused(
    d: &Decision,
    method: &str,
    approval: Uuid,
    e: &ClientError,
) -> ErrorData {
    let chain = chain_ids(d);
    // A refusal of the engine carries its reason; anything else (no engine,
    // no answer in time) leaves the call refused, failing closed.
    let reason = e.reason().unwrap_or("approval_unconfirmed");
    ErrorData::new(
        DENIED,
        format!(
            "{method}: approval {approval} cannot be used for {} on {}: {e} (mandate {}, chain {})",
            d.action,
            d.resource,
            d.mandate,
            chain.join(" > ")
        ),
        Some(json!({
            "reason": reason,
            "mandate": d.mandate,
            "chain": chain,
            "action": d.action,
            "resource": d.resource,
            "approval": approval,
            "detail": e.to_string(),
        })),
    )
}

/// The `_meta` key under which a request carries the approval to use.
pub(super) const APPROVAL_META: &str = "mandate/approval";

/// The error for a request without a valid action or resource.
pub(super) fn invalid(method: &str, mandate: MandateId, chain: &[String], why: &str) -> ErrorData {
    ErrorData::new(
        ErrorCode::INVALID_PARAMS,
        format!("{method}: {why}"),
        Some(json!({
            "reason": "invalid_request",
            "mandate": mandate,
            "chain": chain,
            "detail": why,
        })),
    )
}

/// The error for a request the mandate's end stopped, `in_flight` when it
/// had reached the server (which was told to cancel it).
pub(super) fn ended(
    method: &str,
    mandate: MandateId,
    chain: &[String],
    why: &str,
    in_flight: bool,
    checked: Option<(&str, &str)>,
) -> ErrorData {
    let what = if in_flight {
        "cancelled in flight: the server was told to stop"
    } else {
        "refused"
    };
    let (action, resource) = checked.unzip();
    ErrorData::new(
        MANDATE_ENDED,
        format!(
            "{method}: {what}, mandate {mandate} has ended: {why} (chain {})",
            chain.join(" > ")
        ),
        Some(json!({
            "reason": "mandate_ended",
            "mandate": mandate,
            "chain": chain,
            "detail": why,
            "in_flight": in_flight,
            "action": action,
            "resource": resource,
        })),
    )
}

/// The error for a server that can no longer be reached.
pub(super) fn upstream(method: &str, mandate: MandateId, why: &str) -> ErrorData {
    ErrorData::new(
        ErrorCode::INTERNAL_ERROR,
        format!("{method}: the MCP server behind the gateway failed: {why}"),
        Some(json!({
            "reason": "upstream_unavailable",
            "mandate": mandate,
            "detail": why,
        })),
    )
}
