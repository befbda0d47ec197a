//! `mcp-cancel`: how fast a revoke stops an MCP tool call in flight through
//! `mandate mcp-gateway`. Each round issues a fresh root mandate, runs the
//! gateway (the `mandate` binary beside this one) for it in front of the
//! Python test server (`tests/mcp/server.py`, the `mcp` SDK), starts a slow
//! tool call as the agent (rmcp's client over the gateway's stdio), waits
//! until the server has it, and revokes the root. Timed from the revoke's
//! acknowledgement:
//!
//! - to the agent's error reply (this process's monotonic clock);
//! - to the server's receipt of `notifications/cancelled` for that call (the
//!   server writes the wall-clock time it read the notification into its
//!   record; this process reads the same wall clock at the acknowledgement).
//!
//! The engine sends the end to the guards as it acknowledges the revoke, so
//! both can come before the acknowledgement reaches this process: such a
//! sample counts as 0. The same two figures are also timed from the moment
//! the revoke was sent, which bounds them from above.
//!
//! No baseline: the target is absolute (median under 50 ms over 20 calls).
//! Python: `MANDATE_TEST_PYTHON`, else `.ci-cache/venv/bin/python` under the
//! repository; it must have the `mcp` package.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use mandate::client::Client;
use mandate::domain::command::Issue;
use mandate::domain::{AgentId, Mission, PrincipalId, Scope};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use rmcp::{ServiceError, ServiceExt};
use serde_json::{json, Value};

use crate::gen;
use crate::harness::{fail, progress, BenchResult, Env, Served};
use crate::report::{Printer, Row, Samples, Target};

const S: &str = "mcp-cancel";

/// The median target, in milliseconds.
const TARGET_MS: f64 = 50.0;

/// How long any one step may take before the round fails.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct Sizes {
    /// Calls, one after another, each under a fresh mandate.
    pub calls: usize,
}

/// The repository (for the test server and the default Python).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python with the `mcp` package.
fn python() -> BenchResult<PathBuf> {
    let python = std::env::var_os("MANDATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".ci-cache/venv/bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import mcp.server.mcpserver"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return fail(format!(
            "{} cannot import the Python MCP SDK: pip install mcp into it, or set MANDATE_TEST_PYTHON",
            python.display()
        ));
    }
    Ok(python)
}

/// The `mandate` binary built beside this one.
fn gateway_binary() -> BenchResult<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("mandate");
    if !bin.exists() {
        return fail(format!(
            "{} not found: build it with the same profile (cargo build --bin mandate)",
            bin.display()
        ));
    }
    Ok(bin)
}

/// The wall clock, in seconds since the epoch (what the server records).
fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn records(record: &Path) -> Vec<Value> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until the server has recorded an entry `matching`.
async fn recorded(
    record: &Path,
    what: &str,
    matching: impl Fn(&Value) -> bool,
) -> BenchResult<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(r) = records(record).into_iter().find(&matching) {
            return Ok(r);
        }
        if Instant::now() > deadline {
            return fail(format!("the MCP server never recorded {what}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn run(env: &Env, sizes: &Sizes, out: &Printer) -> BenchResult<()> {
    let python = python()?;
    let gateway = gateway_binary()?;
    let served = Served::start(env, &env.dir("engine")).await?;
    let cfo = Client::nats(env.connect().await?, gen::tenant(), gen::principal());
    let scope = Scope::parse(["mcp:files:* on reports/**"])?;
    let mut to_agent = Samples::default();
    let mut to_server = Samples::default();
    let mut sent_to_agent = Samples::default();
    let mut sent_to_server = Samples::default();
    let mut early = 0usize;
    let mut early_server = 0usize;
    for round in 0..sizes.calls {
        let root = cfo
            .issue(Issue {
                principal: PrincipalId::new("cfo")?,
                grantee: AgentId::new("mcp-agent")?,
                mission: Mission {
                    purpose: "benchmark".into(),
                    mission_ref: None,
                },
                scope: scope.clone(),
                not_after: Utc::now() + chrono::Duration::hours(1),
                depth: 1,
                step_up: vec![],
                supervisors: vec![],
            })
            .await?
            .mandate
            .ok_or("issue gave no mandate")?;
        let record = env.dir(&format!("record-{round}.jsonl"));
        let mut command = tokio::process::Command::new(&gateway);
        command
            .args(["--nats", env.url(), "--tenant", gen::tenant().as_str()])
            .args(["mcp-gateway", "--server-name", "files"])
            .args(["--mandate", &root.to_string(), "--"])
            .arg(&python)
            .arg(repo().join("tests/mcp/server.py"))
            .env("MCP_TEST_RECORD", &record)
            .env_remove("MANDATE_NATS")
            .env_remove("MANDATE_TENANT")
            .env_remove("MANDATE_ACTOR")
            .kill_on_drop(true);
        let agent = tokio::time::timeout(PATIENCE, ().serve(TokioChildProcess::new(command)?))
            .await
            .map_err(|_| "the gateway did not answer the MCP handshake in time")??;
        let peer = agent.peer().clone();
        let params = CallToolRequestParams::new("slow").with_arguments(
            json!({"path": "reports/big", "seconds": 120})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let call = tokio::spawn(async move {
            let r = peer.call_tool(params).await;
            (r, Instant::now())
        });
        let request = recorded(&record, "the slow call", |r| {
            r["event"] == "tools/call" && r["tool"] == "slow"
        })
        .await?["request_id"]
            .clone();
        recorded(&record, "the slow call starting", |r| r["event"] == "call").await?;

        let (sent, sent_wall) = (Instant::now(), wall());
        cfo.revoke(root, Some("benchmark".into())).await?;
        let (acked, acked_wall) = (Instant::now(), wall());

        let (answer, answered) = tokio::time::timeout(PATIENCE, call)
            .await
            .map_err(|_| "the agent got no answer after the revoke")??;
        match answer {
            Err(ServiceError::McpError(e)) if e.code.0 == -32012 => {}
            other => {
                return fail(format!(
                    "the call in flight ended with {other:?}, not the mandate's end"
                ))
            }
        }
        if answered < acked {
            early += 1;
        }
        to_agent.push(answered.saturating_duration_since(acked));
        sent_to_agent.push(answered.saturating_duration_since(sent));
        let cancelled = recorded(&record, "notifications/cancelled", |r| {
            r["event"] == "cancelled" && r["request_id"] == request
        })
        .await?;
        let at = cancelled["t"]
            .as_f64()
            .ok_or("a cancel record without its time")?;
        if at < acked_wall {
            early_server += 1;
        }
        to_server.push(Duration::from_secs_f64((at - acked_wall).max(0.0)));
        sent_to_server.push(Duration::from_secs_f64((at - sent_wall).max(0.0)));
        let _ = agent.cancel().await;
        if round % 5 == 4 {
            progress(&format!(
                "mcp-cancel: {} of {} calls",
                round + 1,
                sizes.calls
            ));
        }
    }
    served.stop().await?;

    let size = format!("{} calls, a fresh mandate each", sizes.calls);
    let early_note = |n: usize| {
        format!(
            "{n} of {} came before the revoke's acknowledgement (counted as 0)",
            sizes.calls
        )
    };
    for (what, samples, before_ack) in [
        (
            "agent's error reply after the revoke's ack",
            &to_agent,
            Some(early),
        ),
        (
            "server's notifications/cancelled after the revoke's ack",
            &to_server,
            Some(early_server),
        ),
        (
            "agent's error reply after the revoke was sent",
            &sent_to_agent,
            None,
        ),
        (
            "server's notifications/cancelled after the revoke was sent",
            &sent_to_server,
            None,
        ),
    ] {
        let ms = |p: f64| samples.quantile_us(p) / 1000.0;
        let row = |name: &str, p: f64| {
            Row::new(
                S,
                format!("{what}, {name}"),
                ms(p),
                None,
                "ms",
                samples.len(),
                &size,
            )
        };
        let median = row("median", 0.5).target(Target::Below(TARGET_MS));
        out.print(&match before_ack {
            Some(n) => median.note(early_note(n)),
            None => median,
        });
        out.print(&row("p90", 0.9));
        out.print(&row("max", 1.0));
    }
    Ok(())
}
