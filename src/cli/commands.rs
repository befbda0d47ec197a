//! The commands that change authority: each builds its command from the
//! arguments, sends it as `--actor`, and prints what it wrote.

use std::path::Path;

use super::args::{ApprovalRequestArgs, Cmd, DelegateArgs, IssueArgs, KeysCmd, PublicKeyArgs};
use super::exit::{invalid, Exit, Failure};
use super::parse::{agent, deadline, mandate_id, mission, parse_ttl, principal, scope, valid};
use super::render::show;
use crate::client::{Client, ClientError};
use crate::domain::command::{Delegate, Issue, Resolution};
use crate::domain::{KeyId, KeyOwner, Mission};
use crate::protocol::CommandResult;

/// Sends `cmd`, one of the commands [`Cmd::changes_authority`] names but
/// `issue` and `delegate`, and prints the result.
pub(super) async fn change(client: &Client, cmd: &Cmd, json: bool) -> Result<Exit, Failure> {
    let sent = match cmd {
        Cmd::Pause { mandate, reason } => client.pause(mandate_id(mandate)?, reason.clone()).await,
        Cmd::Resume { mandate, reason } => {
            client.resume(mandate_id(mandate)?, reason.clone()).await
        }
        Cmd::Revoke { mandate, reason } => {
            client.revoke(mandate_id(mandate)?, reason.clone()).await
        }
        Cmd::Complete {
            mandate: Some(m),
            mission: None,
        } => client.complete(mandate_id(m)?, None).await,
        Cmd::Complete {
            mandate: None,
            mission: Some(r),
        } => client.complete_mission(mission(r)?).await,
        Cmd::Complete { .. } => {
            return Err(invalid("give a mandate id or --mission REF (not both)"))
        }
        Cmd::RevokeAgent { agent: a, reason } => {
            client.revoke_agent(agent(a)?, reason.clone()).await
        }
        Cmd::RevokePrincipal {
            principal: p,
            reason,
        } => client.revoke_principal(principal(p)?, reason.clone()).await,
        Cmd::UnblockAgent { agent: a, reason } => {
            client.unblock_agent(agent(a)?, reason.clone()).await
        }
        Cmd::UnblockPrincipal {
            principal: p,
            reason,
        } => {
            client
                .unblock_principal(principal(p)?, reason.clone())
                .await
        }
        Cmd::Restore {
            mandate,
            position,
            reason,
        }
        | Cmd::Seal {
            mandate,
            position,
            reason,
        } => {
            // `restore` lets the tree grant again; `seal` ends it for good.
            let action = match cmd {
                Cmd::Restore { .. } => Resolution::Restore,
                _ => Resolution::End,
            };
            let m = mandate_id(mandate)?;
            client
                .resolve_quarantine(m, *position, action, reason.clone())
                .await
        }
        Cmd::Keys(KeysCmd::Register {
            id: key_id,
            owner,
            public_key,
            not_after,
        }) => {
            client
                .register_key(
                    key_id_of(key_id)?,
                    valid(KeyOwner::new(owner.as_str()))?,
                    public_key_of(public_key)?,
                    *not_after,
                )
                .await
        }
        Cmd::Keys(KeysCmd::Revoke { id: key_id, reason }) => {
            client.revoke_key(key_id_of(key_id)?, reason.clone()).await
        }
        Cmd::Keys(KeysCmd::Rotate {
            id: key_id,
            new_key_id,
            public_key,
            not_after,
        }) => {
            client
                .rotate_key(
                    key_id_of(key_id)?,
                    key_id_of(new_key_id)?,
                    public_key_of(public_key)?,
                    *not_after,
                )
                .await
        }
        Cmd::RequestApproval {
            mandate,
            request,
            ttl,
            reason,
        } => {
            let ttl_seconds = ttl
                .as_deref()
                .map(|t| {
                    let secs = parse_ttl(t)?.num_seconds();
                    u32::try_from(secs).map_err(|_| invalid(format!("duration {t:?} is too long")))
                })
                .transpose()?;
            let (approval, result) = client
                .request_approval_hashed(
                    mandate_id(mandate)?,
                    &request.action,
                    &request.resource,
                    params_hash_of(request)?,
                    ttl_seconds,
                    reason.clone(),
                )
                .await?;
            if !json {
                println!("approval {approval}");
            }
            Ok(result)
        }
        Cmd::Approve {
            approval,
            mandate,
            reason,
        } => {
            client
                .approve(mandate_id(mandate)?, approval_id(approval)?, reason.clone())
                .await
        }
        Cmd::DenyApproval {
            approval,
            mandate,
            reason,
        } => {
            client
                .deny_approval(mandate_id(mandate)?, approval_id(approval)?, reason.clone())
                .await
        }
        Cmd::UseApproval {
            approval,
            mandate,
            request,
        } => {
            client
                .use_approval_hashed(
                    mandate_id(mandate)?,
                    approval_id(approval)?,
                    &request.action,
                    &request.resource,
                    params_hash_of(request)?,
                )
                .await
        }
        // `runner` sends only the commands `changes_authority` names here.
        other => unreachable!("{other:?} changes no authority"),
    };
    shown(sent, json)
}

/// Issues the root `args` asks for, and prints the result.
pub(super) async fn issue(client: &Client, args: &IssueArgs, json: bool) -> Result<Exit, Failure> {
    let issue = Issue {
        principal: principal(&args.principal)?,
        grantee: agent(&args.agent)?,
        mission: Mission {
            purpose: args.purpose.clone(),
            mission_ref: args.mission_ref.as_deref().map(mission).transpose()?,
        },
        scope: scope(&args.grants)?,
        not_after: deadline(&args.ttl)?,
        depth: args.depth,
        step_up: args
            .step_up
            .iter()
            .map(|s| valid(s.parse()))
            .collect::<Result<_, _>>()?,
        supervisors: vec![],
    };
    shown(client.issue(issue).await, json)
}

/// Delegates the mandate `args` asks for, and prints the result.
pub(super) async fn delegate(
    client: &Client,
    args: &DelegateArgs,
    json: bool,
) -> Result<Exit, Failure> {
    let delegation = Delegate {
        parent: mandate_id(&args.parent)?,
        grantee: agent(&args.agent)?,
        scope: scope(&args.grants)?,
        not_after: match (&args.ttl, args.not_after) {
            (Some(ttl), _) => Some(deadline(ttl)?),
            (None, at) => at,
        },
        depth: args.depth,
        step_up: vec![],
        supervisors: vec![],
    };
    shown(client.delegate(delegation).await, json)
}

/// The hash an approval is bound to: of `--params`, or `--params-hash` as
/// given (the engine checks its form); one of them is required.
fn params_hash_of(args: &ApprovalRequestArgs) -> Result<String, Failure> {
    match (&args.params, &args.params_hash) {
        (Some(p), None) => {
            let value: serde_json::Value = serde_json::from_str(p)
                .map_err(|e| invalid(format!("--params is not JSON: {e}")))?;
            Ok(crate::domain::approval::params_hash(&value))
        }
        (None, Some(h)) => Ok(h.clone()),
        _ => Err(invalid(
            "give the action's parameters: --params JSON or --params-hash HEX",
        )),
    }
}

/// Parses an approval id (a UUID).
fn approval_id(s: &str) -> Result<uuid::Uuid, Failure> {
    uuid::Uuid::parse_str(s).map_err(|e| invalid(format!("approval id {s:?}: {e}")))
}

/// Prints what a command wrote.
fn shown(sent: Result<CommandResult, ClientError>, json: bool) -> Result<Exit, Failure> {
    show(&sent?, json)?;
    Ok(Exit::Ok)
}

fn key_id_of(id: &str) -> Result<KeyId, Failure> {
    valid(KeyId::new(id))
}

/// The public key given as base64url, or that of a private key file.
fn public_key_of(args: &PublicKeyArgs) -> Result<String, Failure> {
    match (&args.public_key, &args.public_key_of) {
        (Some(b64), _) => Ok(b64.clone()),
        (None, Some(file)) => Ok(crate::protocol::signature::public_key_text(
            &read_signing_key(file)?,
        )),
        (None, None) => Err(invalid("give --public-key B64 or --public-key-of FILE")),
    }
}

/// Reads an Ed25519 private key in PKCS#8 PEM (as `keys keygen` and
/// `token-keygen` write it).
pub(super) fn read_signing_key(file: &Path) -> Result<ed25519_dalek::SigningKey, Failure> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let text = std::fs::read_to_string(file).map_err(|e| {
        invalid(format!(
            "signing key {}: cannot read it: {e}",
            file.display()
        ))
    })?;
    ed25519_dalek::SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        invalid(format!(
            "signing key {}: not an Ed25519 private key in PKCS#8 PEM (BEGIN PRIVATE KEY), as `mandate keys keygen` writes: {e}",
            file.display()
        ))
    })
}

/// Writes a new signing key to `out` (never overwriting a file) in the
/// format of `token-keygen`; returns its public key, base64url.
pub(super) fn keygen(out: &Path) -> Result<String, Failure> {
    crate::engine::tokens::write_new_key(out).map_err(|e| invalid(e.to_string()))?;
    Ok(crate::protocol::signature::public_key_text(
        &read_signing_key(out)?,
    ))
}
