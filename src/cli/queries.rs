//! The reads: status, chain, tree, history, verify, list, check, health.
//! None changes anything; each works without `--actor`.

use super::args::Cmd;
use super::exit::{exit_of_decision, Exit, Failure};
use super::parse::{by_mandate, list_query, mandate_id};
use super::render::show;
use crate::client::Client;
use crate::protocol::{HistoryReply, TreeQuery};

/// Answers `cmd`, one of the reads, and prints the answer. `attributed`:
/// whether `--actor` named who asks (a check is then recorded as theirs).
pub(super) async fn query(
    client: &Client,
    cmd: &Cmd,
    attributed: bool,
    json: bool,
) -> Result<Exit, Failure> {
    match cmd {
        Cmd::Status { mandate, at } => {
            show(&client.status(mandate_id(mandate)?, *at).await?, json)?
        }
        Cmd::Chain { mandate, at } => show(&client.chain(mandate_id(mandate)?, *at).await?, json)?,
        Cmd::Tree { mandate, at } => {
            let q = TreeQuery {
                at: *at,
                ..by_mandate(mandate)?
            };
            show(&client.tree(q).await?, json)?
        }
        Cmd::History { mandate, only } => show(&history(client, mandate, *only).await?, json)?,
        Cmd::Verify { mandate } => {
            let v = client.verify(by_mandate(mandate)?).await?;
            show(&v, json)?;
            return Ok(if v.intact { Exit::Ok } else { Exit::Internal });
        }
        Cmd::List {
            agent,
            principal,
            mission,
        } => {
            let q = list_query(agent.as_deref(), principal.as_deref(), mission.as_deref())?;
            show(&client.list(q).await?, json)?
        }
        Cmd::Check {
            mandate,
            action,
            resource,
            at,
        } => {
            let mandate = mandate_id(mandate)?;
            let asker = attributed.then(|| client.actor());
            let d = client
                .check_as(asker, mandate, action, resource, *at)
                .await?;
            show(&d, json)?;
            return Ok(exit_of_decision(&d));
        }
        Cmd::Health => show(&client.health().await?, json)?,
        // `runner` sends only the reads here.
        other => unreachable!("{other:?} is not a read"),
    }
    Ok(Exit::Ok)
}

/// The whole tree's history, found through `mandate`; with `only`, the
/// mandate's own events.
async fn history(client: &Client, mandate: &str, only: bool) -> Result<HistoryReply, Failure> {
    let mut q = by_mandate(mandate)?;
    if !only {
        // Through `tree`, not `chain`: `chain` grants, so it refuses a
        // quarantined tree, and history is what an auditor reads then.
        // The query names the tree alone: with a mandate as well, it
        // keeps only that mandate's events.
        q.tree = Some(client.tree(by_mandate(mandate)?).await?.tree.id);
        q.mandate = None;
    }
    Ok(client.history(q).await?)
}
