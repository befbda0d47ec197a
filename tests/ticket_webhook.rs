//! The ticketing webhook adapter of `examples/ticket_webhook`, posted to over
//! real HTTP on loopback, against the embedded engine, and publishing over a
//! real nats-server.

#[path = "../examples/ticket_webhook/adapter.rs"]
mod adapter;
mod common;

use common::fixtures::{acme, eventually, principal, ticket_issue};
use common::wire::{client, effective, issued, serve_one, tickets};
use mandate::client::{Client, MissionPublisher};
use mandate::domain::{MandateId, Status};
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
    let client = Client::local(engine.clone(), acme(), principal("cfo"));
    let mandate = issued(&client, ticket_issue("jira:FIN-42")).await;
    let addr = serve_adapter(MissionPublisher::Local(engine)).await;
    Fixture {
        _dir: dir,
        client,
        mandate,
        addr,
    }
}

/// Serves the adapter for acme on a free loopback port, publishing with
/// `publisher`; returns its address.
async fn serve_adapter(publisher: MissionPublisher) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(adapter::serve(listener, publisher, acme()));
    addr
}

/// Posts `body` to the adapter's `/webhook`: the status code and the body.
async fn webhook(f: &Fixture, body: &str) -> (u16, String) {
    adapter::post(f.addr, "/webhook", body).await.unwrap()
}

async fn status(f: &Fixture) -> Status {
    effective(&f.client, f.mandate).await
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
        (
            "/webhook",
            r#"{"action":"closed","issue":{"number":1},"repository":{"full_name":"org/my repo"}}"#,
            400,
            "repository.full_name \"org/my repo\": invalid mission_ref",
        ),
        (
            "/webhook",
            r#"{"action":"closed","issue":{"number":"1"},"repository":{"full_name":"org/repo"}}"#,
            400,
            "issue.number",
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

// ---------------------------------------------------------------------------
// Over a real nats-server: the adapter publishes on the encoded subject
// ---------------------------------------------------------------------------

/// A GitHub "issue closed" webhook for `gh:org/repo#12`, posted to the
/// adapter publishing over NATS, lands on the mission stream under the
/// encoded subject and completes that mission's mandate, and only it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_github_issue_completes_its_mission_over_nats() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let cfo = client(&nc, "acme", principal("cfo"));
    let [ticket, neighbour] = tickets(&cfo, ["gh:org/repo#12", "gh:org/repo#1"]).await;
    let js = async_nats::jetstream::new(nc.clone());
    let addr = serve_adapter(MissionPublisher::Nats(Box::new(js.clone()))).await;

    let reopened =
        r#"{"action":"reopened","issue":{"number":12},"repository":{"full_name":"org/repo"}}"#;
    let (code, body) = adapter::post(addr, "/webhook", reopened).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "ignored: org/repo#12 is reopened");

    let closed =
        r#"{"action":"closed","issue":{"number":12},"repository":{"full_name":"org/repo"}}"#;
    let (code, body) = adapter::post(addr, "/webhook", closed).await.unwrap();
    assert_eq!(code, 202, "{body}");
    assert_eq!(body, "mission gh:org/repo#12 completed");

    // Stored under the documented token, spelled out here.
    js.get_stream("MANDATE_MISSIONS")
        .await
        .unwrap()
        .get_last_raw_message_by_subject("mission.acme.gh:org%2Frepo%2312.completed")
        .await
        .expect("the completion is on the encoded subject");

    eventually("gh:org/repo#12 is completed after the webhook", || async {
        effective(&cfo, ticket).await == Status::Completed
    })
    .await;
    assert_eq!(
        effective(&cfo, neighbour).await,
        Status::Active,
        "gh:org/repo#1 must not be completed"
    );
    instance.stop().await;
}
