//! `mandate watch`: the live signals that reach a mandate, through its chain.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;

use super::exit::{invalid, Exit, Failure};
use super::render::{self, cause_text, stdout_gone};
use super::serve::shutdown_signal;
use crate::client::Client;
use crate::domain::{MandateId, TenantId};
use crate::protocol::{Signal, TreeQuery};

/// The longest `watch --until-ended` waits without looking at the
/// mandate's status.
const UNTIL_ENDED_RECHECK: Duration = Duration::from_secs(30);

/// Prints every signal that reaches `mandate` until Ctrl-C (or, with
/// `until_ended`, until the mandate has effectively ended, saying why).
pub(super) async fn watch(
    client: &Client,
    tenant: &TenantId,
    mandate: MandateId,
    json: bool,
    until_ended: bool,
) -> Result<Exit, Failure> {
    let streams = subscribe(client, tenant, mandate).await?;
    let n = streams.len();
    let plural = if n == 1 { "" } else { "s" };
    eprintln!("watching {n} mandate{plural}; Ctrl-C to stop");
    let mut all = futures::stream::select_all(streams);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    // Subscribed first, then read: an end between the two is still heard.
    let mut recheck = true;
    let mut not_after = None;
    loop {
        if until_ended && recheck {
            match standing(client, mandate).await? {
                Standing::Ended(why) => {
                    say!("{why}");
                    return Ok(Exit::Ok);
                }
                Standing::Live(end) => not_after = Some(end),
            }
        }
        recheck = tokio::select! {
            s = all.next() => match s {
                Some(s) => {
                    render::signal(&s, json)?;
                    if stdout_gone() { return Ok(Exit::Ok); }
                    true
                }
                None => return Ok(Exit::Ok),
            },
            _ = &mut stop => return Ok(Exit::Ok),
            _ = tokio::time::sleep(wake_after(not_after)) => true,
        };
    }
}

/// The signals of `mandate`, of its descendants, and of the chain above it
/// (an ancestor's end reaches this subtree).
async fn subscribe(
    client: &Client,
    tenant: &TenantId,
    mandate: MandateId,
) -> Result<Vec<BoxStream<'static, Signal>>, Failure> {
    let tree = client
        .tree(TreeQuery {
            tree: None,
            mandate: Some(mandate),
            at: None,
            consistency: Default::default(),
        })
        .await?
        .tree;
    let mut ids = vec![mandate];
    ids.extend(tree.descendants(mandate));
    ids.extend(
        tree.chain(mandate)
            .iter()
            .map(|m| m.id)
            .filter(|id| *id != mandate),
    );
    let mut streams = Vec::new();
    for id in ids {
        let s = match client.engine() {
            Some(e) => e.bus().subscribe(tenant, id).await?,
            None => {
                let nc = client
                    .nats_client()
                    .ok_or_else(|| invalid("no transport"))?;
                nc.subscribe(crate::protocol::signal_subject(tenant, id))
                    .await
                    .map_err(|e| Failure::new(Exit::Unavailable, e.to_string()))?
                    .filter_map(|m| async move { serde_json::from_slice(&m.payload).ok() })
                    .boxed()
            }
        };
        streams.push(s);
    }
    Ok(streams)
}

/// How long to wait for a signal before looking at the mandate again: with
/// `--until-ended`, until the clock alone would end it (no signal may come
/// before the expiry event is written), and at least every half minute, so
/// a lost signal delays the exit but never prevents it.
fn wake_after(not_after: Option<DateTime<Utc>>) -> Duration {
    match not_after {
        Some(end) => {
            (end - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(UNTIL_ENDED_RECHECK)
                + Duration::from_millis(10)
        }
        None => Duration::from_secs(3600),
    }
}

/// Where a watched mandate stands.
enum Standing {
    /// It may still act (or is paused); the clock alone ends it at this
    /// moment.
    Live(DateTime<Utc>),
    /// It has effectively ended: why, in words.
    Ended(String),
}

async fn standing(client: &Client, mandate: MandateId) -> Result<Standing, Failure> {
    let s = client.status(mandate, None).await?;
    if !s.effective.status.is_terminal() {
        return Ok(Standing::Live(s.mandate.not_after));
    }
    Ok(Standing::Ended(format!(
        "mandate {mandate} has ended: it is {}{}",
        s.effective.status,
        cause_text(s.effective.cause.as_ref(), Some(mandate))
    )))
}
