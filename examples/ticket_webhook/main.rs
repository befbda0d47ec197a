//! The ticketing webhook adapter, run against the embedded engine: a mandate
//! for `jira:FIN-42` is issued, the tracker posts "FIN-42 is Done", and the
//! mandate is completed.
//!
//! Run: `cargo run --example ticket_webhook`.

mod adapter;
#[path = "../shared/mod.rs"]
mod shared;

use mandate::client::MissionPublisher;
use mandate::domain::command::Issue;
use mandate::domain::{Actor, PrincipalId, Status};
use shared::{issued, root, Embedded, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let acme = Embedded::start().await?;
    let cfo = acme.client(Actor::Principal(PrincipalId::new("cfo")?));
    let grant = "finance:read on reports/**";
    let issue = root(
        "cfo",
        "research-lead",
        "Evaluate Acme",
        Some("jira:FIN-42"),
        grant,
        chrono::Duration::hours(8),
    )?;
    let m = issued(&cfo, Issue { depth: 2, ..issue }).await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(adapter::serve(
        listener,
        MissionPublisher::Local(acme.engine.clone()),
        acme.tenant(),
    ));
    println!("webhook adapter listening on http://{addr}/webhook");

    let (code, body) = adapter::post(
        addr,
        "/webhook",
        r#"{"issue":{"key":"FIN-42","fields":{"status":{"name":"In Progress"}}}}"#,
    )
    .await?;
    println!("tracker: FIN-42 In Progress → {code} {body}");
    let (code, body) = adapter::post(
        addr,
        "/webhook",
        r#"{"issue":{"key":"FIN-42","fields":{"status":{"name":"Done"}}}}"#,
    )
    .await?;
    println!("tracker: FIN-42 Done → {code} {body}");
    let status = cfo.status(m, None).await?;
    println!("mandate {m} is now {}", status.effective.status);
    if code != 202 || status.effective.status != Status::Completed {
        return Err("the resolved ticket did not complete the mission".into());
    }
    acme.stop().await?;
    Ok(())
}
