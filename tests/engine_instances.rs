//! Engine instances on one nats-server: missions without trees, reads from a
//! lagging instance, the tenants an instance serves, and command ids reused
//! for other content.

mod common;

use common::prelude::*;
use mandate::domain::MissionRef;
use mandate::engine::EngineConfig;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Missions without trees, and reads from a lagging instance
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_administrator_closes_a_mission_no_tree_serves() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let mission = MissionRef::new("jira:NOPE-1").unwrap();
    for actor in [agent("mallory"), principal("mallory")] {
        let err = client(&nc, "acme", actor.clone())
            .complete_mission(mission.clone())
            .await
            .unwrap_err();
        assert_eq!(code_of(&err), ErrorCode::Forbidden, "{actor}: {err}");
        assert_eq!(err.reason(), Some("mission_forbidden"), "{actor}: {err}");
    }
    // The mission is still open: a root may be issued for it.
    issue(
        &nc,
        root_issue("cfo", "lead", Some("jira:NOPE-1"), &["a:b on c"]),
    )
    .await;
    // An administrator may close a mission ahead of any tree.
    let admin = client(&nc, "acme", Actor::Admin(principal_id("ops")));
    admin
        .complete_mission(MissionRef::new("jira:LATER-2").unwrap())
        .await
        .expect("admin closes it");
    let later = root_issue("cfo", "lead", Some("jira:LATER-2"), &["a:b on c"]);
    let err = client(&nc, "acme", principal("cfo"))
        .issue(later)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::InvalidState, "{err}");
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_instance_never_answers_from_stale_authority() {
    let server = NatsServer::start();
    let nc = connect(&server).await;
    // Instance B follows the log until it has the tree, then its follower is
    // stopped: from then on it lags behind everything A writes.
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Instance::start(&server.url(), dir_a.path()).await;
    serving(&nc, "acme").await;
    let b_nc = async_nats::connect(server.url()).await.unwrap();
    let b = open_engine(b_nc, dir_b.path()).await;
    let (reports, q3) = (
        ["finance:read on reports/**"],
        ["finance:read on reports/q3/*"],
    );
    let root = issue(&nc, root_issue("cfo", "lead", None, &reports)).await;
    let kid = delegate(&nc, "lead", root, "analyst", &q3).await;
    let follower = b.start();
    let probe = b.clone();
    eventually("B's projection has the tree", || {
        let probe = probe.clone();
        async move { probe.health().await.map(|h| h.lag == 0).unwrap_or(false) }
    })
    .await;
    follower.stop().await.unwrap();
    let ask = |m: MandateId| {
        serde_json::to_vec(&serde_json::json!({"mandate": m, "action": "finance:read", "resource": "reports/q3/x"})).unwrap()
    };
    let answer = |bytes: Vec<u8>| -> Value { serde_json::from_slice(&bytes).unwrap() };
    let first = answer(b.handle("mandate.q.acme.check", &ask(kid)).await);
    assert_eq!(first["result"]["outcome"], "allow", "{first}");
    client(&nc, "acme", principal("cfo"))
        .revoke(root, None)
        .await
        .unwrap();
    // Right after the revoke acknowledged by A, B must not allow.
    let after = answer(b.handle("mandate.q.acme.check", &ask(kid)).await);
    assert_eq!(after["result"]["outcome"], "deny", "{after}");
    let status = answer(
        b.handle(
            "mandate.q.acme.status",
            &serde_json::to_vec(&serde_json::json!({"mandate": kid})).unwrap(),
        )
        .await,
    );
    assert_eq!(
        status["result"]["effective"]["status"], "revoked",
        "{status}"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serves_only_the_tenants_it_was_given() {
    let (_server, _dir, instance, nc) = serve_one_with(
        "acme",
        EngineConfig {
            tenants: vec![tenant("acme")],
            allow_open_tenants: true,
            ..EngineConfig::default()
        },
    )
    .await;
    issue(&nc, root_issue("cfo", "lead", None, &["a:b on c"])).await;
    let other = client(&nc, "globex", principal("cfo")).with_timeout(Duration::from_millis(500));
    let err = other
        .issue(root_issue("cfo", "lead", None, &["a:b on c"]))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NoEngine(_)), "{err:?}");
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_id_reused_for_other_content_is_refused_by_name() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let cfo = client(&nc, "acme", principal("cfo"));
    let first = issue(&nc, root_issue("cfo", "lead", None, &["a:b on c"])).await;
    let second = issue(&nc, root_issue("cfo", "lead", None, &["a:b on c"])).await;
    let pause = envelope("acme", principal("cfo"), Command::Pause(change(first)));
    cfo.send(&pause).await.expect("the first use is applied");
    let before = instance.log_position().await;
    // The same id for a different command on the same tree…
    let mut revoke = pause.clone();
    revoke.command = Command::Revoke(change(first));
    let err = cfo.send(&revoke).await.unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::Conflict, "{err}");
    assert!(
        err.to_string().contains(&pause.command_id.to_string()),
        "{err}"
    );
    // …or on another tree (the log deduplicates ids across trees).
    let mut elsewhere = pause.clone();
    elsewhere.command = Command::Pause(change(second));
    let err = cfo.send(&elsewhere).await.unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::Conflict, "{err}");
    assert_eq!(instance.log_position().await, before, "nothing was written");
    assert_eq!(effective(&cfo, second).await, Status::Active);
    // A faithful retry is still a duplicate, not an error.
    assert!(cfo.send(&pause).await.unwrap().duplicate);
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_refuses_a_mission_completed_before_any_tree_served_it() {
    let (_server, _dirs, a, b, nc) = serve_two("acme").await;
    let mission = MissionRef::new("jira:EARLY-1").unwrap();
    // The ticket closes before anyone issued a mandate for it; one instance
    // takes the message from the shared intake consumer.
    publish_mission(&nc, "acme", "jira:EARLY-1", "{}").await;
    for inst in [&a, &b] {
        let e = inst.engine.clone();
        let m = mission.clone();
        eventually("each instance knows the mission is completed", || {
            let (e, m) = (e.clone(), m.clone());
            async move { e.store().mission_completed(&tenant("acme"), &m).unwrap() }
        })
        .await;
    }
    // Whichever instance a request reaches, the issue is refused.
    for inst in [&a, &b] {
        let cmd = envelope(
            "acme",
            principal("cfo"),
            Command::Issue(root_issue(
                "cfo",
                "lead",
                Some("jira:EARLY-1"),
                &["a:b on c"],
            )),
        );
        let reply: Value = serde_json::from_slice(
            &inst
                .engine
                .handle("mandate.cmd.acme.issue", &serde_json::to_vec(&cmd).unwrap())
                .await,
        )
        .unwrap();
        assert_eq!(reply["error"]["code"], "invalid_state", "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("jira:EARLY-1"),
            "{reply}"
        );
    }
    a.stop().await;
    b.stop().await;
}
