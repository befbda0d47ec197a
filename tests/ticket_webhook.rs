//! The ticketing webhook adapter of `examples/ticket_webhook`, posted to over
//! real HTTP on loopback, against the embedded engine.

#[path = "../examples/ticket_webhook/adapter.rs"]
mod adapter;
mod common;

use common::fixtures::{principal, root_issue, with_depth};
use mandate::client::{Client, MissionPublisher};
use mandate::domain::{MandateId, Status, TenantId};
use mandate::engine::{Engine, EngineConfig};

struct Fixture {
    _dir: tempfile::TempDir,
    client: Client,
    mandate: MandateId,
    addr: std::net::SocketAddr,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::embedded(dir.path(), EngineConfig::default())
        .await
        .unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let client = Client::local(engine.clone(), tenant.clone(), principal("cfo"));
    let grants = ["finance:read on reports/**"];
    let mandate = client
        .issue(with_depth(
            1,
            root_issue("cfo", "lead", Some("jira:FIN-42"), &grants),
        ))
        .await
        .unwrap()
        .mandate
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(adapter::serve(
        listener,
        MissionPublisher::Local(engine),
        tenant,
    ));
    Fixture {
        _dir: dir,
        client,
        mandate,
        addr,
    }
}

/// Posts `body` to the adapter's `/webhook`: the status code and the body.
async fn webhook(f: &Fixture, body: &str) -> (u16, String) {
    adapter::post(f.addr, "/webhook", body).await.unwrap()
}

async fn status(f: &Fixture) -> Status {
    f.client
        .status(f.mandate, None)
        .await
        .unwrap()
        .effective
        .status
}

#[tokio::test]
async fn a_resolved_issue_completes_its_mission() {
    let f = fixture().await;
    let (code, body) = webhook(
        &f,
        r#"{"issue":{"key":"FIN-42","fields":{"status":{"name":"Resolved"}}}}"#,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(status(&f).await, Status::Completed);
}

#[tokio::test]
async fn other_statuses_change_nothing() {
    let f = fixture().await;
    let (code, body) = webhook(
        &f,
        r#"{"issue":{"key":"FIN-42","fields":{"status":{"name":"In Review"}}}}"#,
    )
    .await;
    assert_eq!(code, 200);
    assert!(body.contains("ignored"), "{body}");
    assert_eq!(status(&f).await, Status::Active);
}

#[tokio::test]
async fn bad_requests_are_refused_by_name_and_change_nothing() {
    let f = fixture().await;
    for (path, body, code, needle) in [
        ("/webhook", "not json", 400, "not JSON"),
        (
            "/webhook",
            r#"{"issue":{"fields":{"status":{"name":"Done"}}}}"#,
            400,
            "issue.key",
        ),
        (
            "/webhook",
            r#"{"issue":{"key":"FIN 42","fields":{"status":{"name":"Done"}}}}"#,
            400,
            "mission_ref",
        ),
        ("/elsewhere", "{}", 404, "/webhook"),
    ] {
        let (got, text) = adapter::post(f.addr, path, body).await.unwrap();
        assert_eq!(got, code, "{path} {body}: {text}");
        assert!(text.contains(needle), "{text:?} should name {needle:?}");
    }
    let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(adapter::MAX_REQUEST));
    let (got, _) = adapter::post(f.addr, "/webhook", &huge).await.unwrap();
    assert_eq!(got, 413);
    assert_eq!(status(&f).await, Status::Active);
}
