//! Replies an outside client reads, over a real nats-server and raw NATS: a
//! body of another tenant than its subject is refused naming both tenants
//! (also for an issue, whose tree does not exist yet), and a check of an
//! unknown mandate names no tree. A tree query naming a tree and a mandate
//! outside it is refused, naming both. A request on a subject with a token
//! too few or too many is answered, once, naming its expected shape.

mod common;

use common::fixtures::{envelope, principal, root_issue, with_depth};
use common::wire::{assert_refused, raw, serve_one};
use futures::StreamExt;
use mandate::domain::{Command, TenantId};
use mandate::protocol::{command_subject, query_subject};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_mismatch_names_both_tenants_and_an_unknown_check_names_no_tree() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;

    // An issue whose body says globex, sent on acme's subject.
    let grants = ["finance:read on reports/**"];
    let mismatch = with_depth(1, root_issue("cfo", "lead", None, &grants));
    let issue = envelope("globex", principal("cfo"), Command::Issue(mismatch));
    let acme = TenantId::new("acme").unwrap();
    let reply = raw(
        &nc,
        command_subject(&acme, "issue"),
        serde_json::to_vec(&issue).unwrap(),
    )
    .await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    assert_eq!(reply["error"]["reason"], "tenant_mismatch", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "the command names tenant globex but was sent on a subject of tenant acme"
    );

    // A check of a mandate that does not exist: a deny naming no tree.
    let unknown = "0190f5e2-7c1a-7b3e-9d2a-4f6b8c0d1e2f";
    let reply = raw(
        &nc,
        query_subject(&acme, "check"),
        serde_json::to_vec(&serde_json::json!({
            "mandate": unknown,
            "action": "finance:read",
            "resource": "reports/q3",
        }))
        .unwrap(),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let decision = &reply["result"];
    assert_eq!(decision["outcome"], "deny", "{reply}");
    assert_eq!(decision["reason"]["kind"], "unknown_mandate", "{reply}");
    assert_eq!(decision["mandate"], unknown, "{reply}");
    assert!(decision.get("tree").is_none(), "{reply}");
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_query_naming_a_mandate_outside_its_tree_is_refused() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let acme = TenantId::new("acme").unwrap();
    let mut roots = Vec::new();
    for agent in ["lead", "other"] {
        let grants = ["finance:read on reports/**"];
        let issue = envelope(
            "acme",
            principal("cfo"),
            Command::Issue(root_issue("cfo", agent, None, &grants)),
        );
        let reply = raw(
            &nc,
            command_subject(&acme, "issue"),
            serde_json::to_vec(&issue).unwrap(),
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
        roots.push(reply["result"]["mandate"].as_str().unwrap().to_string());
    }
    let (a, b) = (&roots[0], &roots[1]);
    for verb in ["tree", "history", "verify"] {
        // The tree of a and the mandate b: refused, naming both.
        let reply = raw(
            &nc,
            query_subject(&acme, verb),
            serde_json::to_vec(&serde_json::json!({"tree": a, "mandate": b})).unwrap(),
        )
        .await;
        assert_eq!(reply["ok"], false, "{verb}: {reply}");
        assert_eq!(reply["error"]["code"], "invalid_input", "{verb}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(a.as_str()) && message.contains(b.as_str()),
            "{verb}: {message}"
        );
        // The tree of a and its own root: answered.
        let reply = raw(
            &nc,
            query_subject(&acme, verb),
            serde_json::to_vec(&serde_json::json!({"tree": a, "mandate": a})).unwrap(),
        )
        .await;
        assert_eq!(reply["ok"], true, "{verb}: {reply}");
    }
    let history = raw(
        &nc,
        query_subject(&acme, "history"),
        serde_json::to_vec(&serde_json::json!({"tree": a, "mandate": a})).unwrap(),
    )
    .await;
    assert_eq!(
        history["result"]["events"].as_array().unwrap().len(),
        1,
        "{history}"
    );
    instance.stop().await;
}

/// Every reply to `body` sent on `subject` within half a second; fails
/// the test if the server says no one subscribes to it.
async fn replies(nc: &async_nats::Client, subject: &str, body: Vec<u8>) -> Vec<serde_json::Value> {
    let inbox = nc.new_inbox();
    let mut sub = nc.subscribe(inbox.clone()).await.unwrap();
    nc.publish_with_reply(subject.to_string(), inbox, body.into())
        .await
        .unwrap();
    let mut all = Vec::new();
    let quiet = tokio::time::sleep(std::time::Duration::from_millis(500));
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            m = sub.next() => {
                let m = m.unwrap();
                assert_ne!(
                    m.status,
                    Some(async_nats::StatusCode::NO_RESPONDERS),
                    "no responders on {subject}"
                );
                all.push(serde_json::from_slice(&m.payload).unwrap());
            }
            _ = &mut quiet => return all,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_of_the_wrong_shape_is_answered_once_naming_its_shape() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let acme = TenantId::new("acme").unwrap();
    let before = instance.log_position().await;
    let grants = ["finance:read on reports/**"];
    let issue = || {
        let cmd = envelope(
            "acme",
            principal("cfo"),
            Command::Issue(root_issue("cfo", "lead", None, &grants)),
        );
        serde_json::to_vec(&cmd).unwrap()
    };
    // An unknown query verb, for the shape of the reply.
    let unknown = raw(&nc, query_subject(&acme, "frobnicate"), b"{}".to_vec()).await;
    assert_refused("unknown verb", &unknown, "invalid_input", &["frobnicate"]);

    let command = "mandate.cmd.<tenant>.<command>";
    let query = "mandate.q.<tenant>.<query>";
    for (subject, body, shape) in [
        ("mandate.cmd.acme.issue.extra", issue(), command),
        ("mandate.cmd.acme.issue.a.b", issue(), command),
        ("mandate.cmd.acme", issue(), command),
        ("mandate.q.acme", b"{}".to_vec(), query),
        ("mandate.q.acme.health.now", b"{}".to_vec(), query),
    ] {
        let got = replies(&nc, subject, body).await;
        assert_eq!(got.len(), 1, "{subject}: {got:?}");
        let reply = &got[0];
        let quoted = format!("{subject:?}");
        assert_refused(subject, reply, "invalid_input", &[&quoted, shape]);
        assert_eq!(
            reply["error"].get("reason"),
            unknown["error"].get("reason"),
            "{subject}: {reply}"
        );
    }
    instance.caught_up().await;
    assert_eq!(instance.log_position().await, before, "a refusal wrote");

    // Well-formed requests are still answered once each.
    let got = replies(&nc, "mandate.q.acme.health", b"{}".to_vec()).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["ok"], true, "{got:?}");
    let got = replies(&nc, "mandate.cmd.acme.issue", issue()).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["ok"], true, "{got:?}");
    instance.stop().await;
}
