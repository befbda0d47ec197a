//! A ticketing webhook adapter: a small HTTP endpoint that turns an issue
//! tracker's "issue resolved" webhook into a Mandate mission-complete event.
//!
//! `POST /webhook` with a Jira-style body:
//! `{"issue": {"key": "FIN-42", "fields": {"status": {"name": "Done"}}}}`,
//! or a GitHub-style one:
//! `{"action": "closed", "issue": {"number": 12}, "repository": {"full_name": "org/repo"}}`.
//! A resolved Jira status (`Done`, `Resolved`, `Closed`) completes mission
//! `jira:<key>`, a closed GitHub issue mission `gh:<owner>/<repo>#<number>`,
//! and answers 202; anything else answers 200 and changes nothing; a body
//! that is not such a document answers 400 naming what is wrong. The
//! mission is published on its subject token (`gh:org/repo#12` on
//! `mission.<tenant>.gh:org%2Frepo%2312.completed`, see
//! `MissionRef::subject_token`). HTTP parsing uses `httparse`; bodies are
//! capped at 64 KiB.

use std::time::Duration;

use mandate::client::MissionPublisher;
use mandate::domain::{MissionRef, TenantId};
use mandate::protocol::MissionCompletedNotice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
const RESOLVED: &[&str] = &["done", "resolved", "closed"];

/// What a webhook body means.
#[derive(Debug, PartialEq, Eq)]
pub enum Webhook {
    /// The issue reached a resolved status: its mission is complete.
    Resolved(MissionRef),
    /// Some other change; nothing to do.
    Ignored { key: String, status: String },
}

/// Reads a Jira-style or GitHub-style webhook body.
pub fn parse_webhook(body: &[u8]) -> Result<Webhook, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    if v.get("repository").is_some() {
        return parse_github(&v);
    }
    let key = string_at(&v, "/issue/key")?;
    let status = string_at(&v, "/issue/fields/status/name")?;
    let resolved = RESOLVED.contains(&status.to_ascii_lowercase().as_str());
    outcome(resolved, key.into(), status, || {
        MissionRef::new(format!("jira:{key}")).map_err(|e| format!("issue.key {key:?}: {e}"))
    })
}

/// Reads a GitHub-style issue webhook body: a closed issue completes
/// mission `gh:<owner>/<repo>#<number>`.
fn parse_github(v: &serde_json::Value) -> Result<Webhook, String> {
    let repo = string_at(v, "/repository/full_name")?;
    let number = v
        .pointer("/issue/number")
        .and_then(|n| n.as_u64())
        .ok_or("missing integer field issue.number")?;
    let action = string_at(v, "/action")?;
    let key = format!("{repo}#{number}");
    outcome(action == "closed", key.clone(), action, || {
        MissionRef::new(format!("gh:{key}"))
            .map_err(|e| format!("repository.full_name {repo:?}: {e}"))
    })
}

/// The string at `pointer` in `v`, or an error naming the field (the
/// pointer in dotted form).
fn string_at<'a>(v: &'a serde_json::Value, pointer: &str) -> Result<&'a str, String> {
    v.pointer(pointer).and_then(|s| s.as_str()).ok_or_else(|| {
        let field = pointer.trim_start_matches('/').replace('/', ".");
        format!("missing string field {field}")
    })
}

/// `Resolved` with the mission `mission` builds if `resolved`, else
/// `Ignored` with the issue's `key` and `status`.
fn outcome(
    resolved: bool,
    key: String,
    status: &str,
    mission: impl FnOnce() -> Result<MissionRef, String>,
) -> Result<Webhook, String> {
    if resolved {
        Ok(Webhook::Resolved(mission()?))
    } else {
        Ok(Webhook::Ignored {
            key,
            status: status.into(),
        })
    }
}

/// Serves webhooks until the listener fails.
pub async fn serve(listener: TcpListener, publisher: MissionPublisher, tenant: TenantId) {
    while let Ok((stream, _)) = listener.accept().await {
        let (p, t) = (publisher.clone(), tenant.clone());
        tokio::spawn(async move {
            if let Err(e) =
                tokio::time::timeout(Duration::from_secs(10), handle(stream, p, t)).await
            {
                eprintln!("webhook connection timed out: {e}");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, publisher: MissionPublisher, tenant: TenantId) {
    let (status, body) = match read_request(&mut stream).await {
        Err((status, msg)) => (status, msg),
        Ok((method, path, body)) => route(&method, &path, &body, &publisher, &tenant).await,
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn route(
    method: &str,
    path: &str,
    body: &[u8],
    publisher: &MissionPublisher,
    tenant: &TenantId,
) -> (&'static str, String) {
    if path != "/webhook" {
        return (
            "404 Not Found",
            format!("no endpoint {path}; POST /webhook"),
        );
    }
    if method != "POST" {
        return ("405 Method Not Allowed", "POST only".into());
    }
    match parse_webhook(body) {
        Err(e) => ("400 Bad Request", e),
        Ok(Webhook::Ignored { key, status }) => ("200 OK", format!("ignored: {key} is {status}")),
        Ok(Webhook::Resolved(mission)) => {
            let notice = MissionCompletedNotice {
                source: Some("webhook".into()),
                reason: Some("issue resolved".into()),
            };
            match publisher.completed(tenant, &mission, &notice).await {
                Ok(()) => ("202 Accepted", format!("mission {mission} completed")),
                Err(e) => (
                    "503 Service Unavailable",
                    format!("could not complete mission {mission}: {e}"),
                ),
            }
        }
    }
}

type Request = (String, String, Vec<u8>);

async fn read_request(stream: &mut TcpStream) -> Result<Request, (&'static str, String)> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ("400 Bad Request", e.to_string()))?;
        if n == 0 {
            return Err((
                "400 Bad Request",
                "connection closed before a full request".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return Err((
                "413 Payload Too Large",
                format!("requests are limited to {MAX_REQUEST} bytes"),
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(("400 Bad Request", format!("malformed HTTP: {e}"))),
            Ok(httparse::Status::Complete(head)) => {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| {
                        std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok())
                    })
                    .unwrap_or(Some(0))
                    .ok_or(("400 Bad Request", "invalid content-length".to_string()))?;
                if head + len > MAX_REQUEST {
                    return Err((
                        "413 Payload Too Large",
                        format!("requests are limited to {MAX_REQUEST} bytes"),
                    ));
                }
                let method = req.method.unwrap_or_default().to_string();
                let path = req.path.unwrap_or_default().to_string();
                while buf.len() < head + len {
                    let n = stream
                        .read(&mut chunk)
                        .await
                        .map_err(|e| ("400 Bad Request", e.to_string()))?;
                    if n == 0 {
                        return Err(("400 Bad Request", "body shorter than content-length".into()));
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Ok((method, path, buf[head..head + len].to_vec()));
            }
        }
    }
}

/// Posts `body` to `http://addr/path` and returns the status code and body
/// (a minimal client, for the example and its test).
pub async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok((code, body))
}
