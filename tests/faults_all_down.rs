//! A mission completion and an expiry that fall due while every engine is
//! down (two real `mandate serve --nats` processes, both killed with -9) are
//! applied when one of them comes back: the completion waits in the mission
//! stream, the expiry in the projection's queue, and neither needs the
//! engine that was up when it was recorded.

mod common;

use chrono::Utc;
use common::faults::ServedEngine;
use common::prelude::*;
use mandate::domain::{DenyReason, EventBody, Outcome};

const GRANT: &str = "fin:read on ledger/*";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_and_an_expiry_due_while_all_engines_are_down_apply_on_return() {
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut a = ServedEngine::start(&server.url(), &tmp.path().join("a"));
    let mut b = ServedEngine::start(&server.url(), &tmp.path().join("b"));
    let nc = connect(&server).await;
    serving(&nc, "acme").await;

    let cfo = client(&nc, "acme", principal("cfo"));
    let for_mission = issue(&nc, root_issue("cfo", "lead", Some("jira:FIN-7"), &[GRANT])).await;
    let under_mission = delegate(&nc, "lead", for_mission, "worker", &[GRANT]).await;
    let not_after = Utc::now() + chrono::Duration::seconds(3);
    let short = cfo
        .issue(Issue {
            not_after,
            ..root_issue("cfo", "runner", None, &[GRANT])
        })
        .await
        .expect("issue")
        .mandate
        .unwrap();
    assert_eq!(own(&cfo, short).await, Status::Active);

    a.kill9();
    b.kill9();
    // Nobody serves: the completion goes to the mission stream alone, and
    // the expiry falls due with no scheduler running.
    publish_mission(&nc, "acme", "jira:FIN-7", "{}").await;
    let until = (not_after - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until + Duration::from_millis(200)).await;
    assert!(Utc::now() > not_after);

    // One engine comes back.
    b.restart();
    serving(&nc, "acme").await;
    eventually("the completion and the expiry are written", || {
        let cfo = cfo.clone();
        async move {
            own(&cfo, for_mission).await == Status::Completed
                && own(&cfo, short).await == Status::Expired
        }
    })
    .await;
    // Written as events, not only effective by the clock.
    let history = cfo.history(of_mandate(short)).await.expect("history");
    assert!(history
        .events
        .iter()
        .any(|e| matches!(e.body, EventBody::MandateExpired(_))));
    let d = cfo
        .check(under_mission, "fin:read", "ledger/q3", None)
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(
        matches!(
            d.reason,
            Some(DenyReason::NotActive {
                status: Status::Completed,
                ..
            })
        ),
        "{d:?}"
    );
    drop(a);
}
