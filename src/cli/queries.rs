//! The reads: status, chain, tree, history, verify, list, check, health.
//! None changes anything; each works without `--actor`.

use super::args::Cmd;
use super::exit::{exit_of_decision, Exit, Failure};
use super::parse::{by_mandate, list_query, mandate_id};
use super::render::show;
use crate::client::Client;
use crate::protocol::{CheckQuery, Consistency, HistoryReply, ListQuery, MandateQuery, TreeQuery};

/// Answers `cmd`, one of the reads, and prints the answer. `attributed`:
/// whether `--actor` named who asks (a check is then recorded as theirs).
pub(super) async fn query(
    client: &Client,
    cmd: &Cmd,
    attributed: bool,
    json: bool,
) -> Result<Exit, Failure> {
    match cmd {
        Cmd::Status {
            mandate,
            at,
            consistency,
        } => {
            let q = mandate_query(mandate, *at, *consistency)?;
            show(&client.status_with(q).await?, json)?
        }
        Cmd::Chain {
            mandate,
            at,
            consistency,
        } => {
            let q = mandate_query(mandate, *at, *consistency)?;
            show(&client.chain_with(q).await?, json)?
        }
        Cmd::Tree {
            mandate,
            at,
            consistency,
        } => {
            let q = TreeQuery {
                at: *at,
                consistency: *consistency,
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
            consistency,
        } => {
            let q = ListQuery {
                consistency: *consistency,
                ..list_query(agent.as_deref(), principal.as_deref(), mission.as_deref())?
            };
            show(&client.list(q).await?, json)?
        }
        Cmd::Check {
            mandate,
            action,
            resource,
            at,
            consistency,
        } => {
            let q = CheckQuery {
                mandate: mandate_id(mandate)?,
                action: action.clone(),
                resource: resource.clone(),
                at: *at,
                // Recorded in the audit as the one who asks.
                actor: attributed.then(|| client.actor().clone()),
                consistency: *consistency,
            };
            let d = client.check_with(q).await?;
            show(&d, json)?;
            return Ok(exit_of_decision(&d));
        }
        Cmd::Health => show(&client.health().await?, json)?,
        Cmd::Token { mandate, ttl, aud } => {
            let ttl = ttl
                .as_deref()
                .map(|t| {
                    super::parse::parse_interval(t)
                        .map(|d| d.as_secs().max(1))
                        .map_err(|e| super::exit::invalid(format!("--ttl: {}", e.message)))
                })
                .transpose()?;
            let q = crate::protocol::token::TokenQuery {
                mandate: mandate_id(mandate)?,
                actor: client.actor().clone(),
                ttl,
                aud: aud.clone(),
                consistency: Consistency::Fresh,
            };
            let reply = client.token_with(q).await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&reply)?);
            } else {
                // The token alone, so `$(mandate token …)` is the token.
                say!("{}", reply.token);
            }
        }
        Cmd::Jwks => say!("{}", serde_json::to_string_pretty(&client.jwks().await?)?),
        Cmd::Keys(super::args::KeysCmd::List) => {
            let ring = client.keys().await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&ring)?);
            } else {
                say!(
                    "tenant {}: signatures {}",
                    ring.tenant,
                    if ring.require_signatures {
                        "required"
                    } else {
                        "optional"
                    }
                );
                for k in &ring.keys {
                    say!(
                        "{}  {}  {:?}  {:?}  {}",
                        k.key_id,
                        k.owner,
                        k.source,
                        k.status,
                        k.public_key
                    );
                }
            }
        }
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

/// A `status` or `chain` query.
fn mandate_query(
    mandate: &str,
    at: Option<chrono::DateTime<chrono::Utc>>,
    consistency: Consistency,
) -> Result<MandateQuery, Failure> {
    Ok(MandateQuery {
        mandate: mandate_id(mandate)?,
        at,
        consistency,
    })
}
