//! The commands that change authority: each builds its command from the
//! arguments, sends it as `--actor`, and prints what it wrote.

use super::args::{Cmd, DelegateArgs, IssueArgs};
use super::exit::{invalid, Exit, Failure};
use super::parse::{agent, deadline, mandate_id, mission, principal, scope, valid};
use super::render::show;
use crate::client::{Client, ClientError};
use crate::domain::command::{Delegate, Issue, Resolution};
use crate::domain::Mission;
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

/// Prints what a command wrote.
fn shown(sent: Result<CommandResult, ClientError>, json: bool) -> Result<Exit, Failure> {
    show(&sent?, json)?;
    Ok(Exit::Ok)
}
