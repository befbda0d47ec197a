//! Two real `mandate serve --nats` processes answering one tenant through
//! the queue group, racing a revoke of a parent against a delegation under
//! it, many rounds: never a live delegation under an ended parent
//! (invariants 1 and 3). Either the delegation lands first (and the revoke
//! then ends it through the cascade) or it is refused; no order of the two
//! leaves it live.

mod common;

use common::faults::ServedEngine;
use common::prelude::*;
use mandate::domain::{EventBody, Outcome};

const GRANT: &str = "fin:read on ledger/*";
const ROUNDS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_racing_a_delegation_never_leaves_a_live_child_under_an_ended_parent() {
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let _a = ServedEngine::start(&server.url(), &tmp.path().join("a"));
    let _b = ServedEngine::start(&server.url(), &tmp.path().join("b"));
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    let auditor = client(&nc, "acme", principal("auditor"));

    let (mut landed, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        let lead = format!("lead{round}");
        let root = issue(&nc, root_issue("cfo", &lead, None, &[GRANT])).await;
        let parent = delegate(&nc, &lead, root, "mid", &[GRANT]).await;
        let revoker = client(&nc, "acme", agent(&lead));
        let delegator = client(&nc, "acme", agent("mid"));
        let revoke = revoker.revoke(parent, None);
        let delegate = delegator.delegate(delegation(parent, "worker", &["fin:read on ledger/q3"]));
        // Which request leaves first alternates, so both orders are raced.
        let (revoked, delegated) = if round % 2 == 0 {
            tokio::join!(revoke, delegate)
        } else {
            let (d, r) = tokio::join!(delegate, revoke);
            (r, d)
        };
        revoked.expect("the revoke is accepted whatever the order");
        match delegated {
            Ok(r) => {
                landed += 1;
                let (child, tree) = (r.mandate.unwrap(), r.commits[0].tree);
                // Ended through its parent, and denied.
                let status = auditor.status(child, None).await.expect("status");
                assert!(
                    status.effective.status.is_terminal(),
                    "round {round}: {status:?}"
                );
                let d = auditor
                    .check(child, "fin:read", "ledger/q3", None)
                    .await
                    .unwrap();
                assert_eq!(d.outcome, Outcome::Deny, "round {round}: {d:?}");
                // In the tree's log the delegation precedes the revoke.
                let events = auditor.history(of_tree(tree)).await.unwrap().events;
                let issued = events
                    .iter()
                    .position(
                        |e| matches!(&e.body, EventBody::MandateIssued(m) if m.mandate == child),
                    )
                    .expect("the delegation is in the history");
                let ended = events
                    .iter()
                    .position(
                        |e| matches!(&e.body, EventBody::MandateRevoked(c) if c.mandate == parent),
                    )
                    .expect("the revoke is in the history");
                assert!(issued < ended, "round {round}: delegated after the revoke");
                // Never wider than its parent.
                let chain = auditor.tree(of_mandate(child)).await.unwrap().tree;
                let (c, p) = (chain.get(child).unwrap(), chain.get(parent).unwrap());
                assert!(p.scope().covers(c.scope()), "round {round}: widened");
            }
            Err(e) => {
                refused += 1;
                assert!(
                    matches!(code_of(&e), ErrorCode::InvalidState | ErrorCode::Terminal),
                    "round {round}: refused for another reason: {e}"
                );
            }
        }
    }
    eprintln!("{ROUNDS} rounds: {landed} delegations landed before the revoke, {refused} refused");
}
