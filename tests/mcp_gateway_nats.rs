//! `mandate mcp-gateway` against a real nats-server, a served engine and a
//! real MCP server written with the Python `mcp` SDK (`tests/mcp/server.py`,
//! which records every message it reads). The test plays the agent with
//! rmcp's client over the gateway's stdio, and once over streamable HTTP.
//!
//! - an allowed call passes and returns the tool's result;
//! - out of scope, needs approval, a missing resource argument and a bad
//!   tool name are refused with structured errors, and the server never
//!   sees them;
//! - a call under step-up gets a request for approval made to the engine;
//!   with the approval granted it passes once, bound to its parameters,
//!   and a replay, a pending, denied or unknown approval, or a malformed
//!   approval id is refused before the server sees it; a gateway whose
//!   actor is not the grantee cannot request one, and says so;
//! - `resources/read` and `prompts/get` are checked; the agent's own
//!   cancellation of a call is passed on;
//! - a revoke of the root while a call is in flight: the agent gets an
//!   error and the server gets `notifications/cancelled` for that call's
//!   request id; after the end nothing passes, list calls included;
//! - a pause refuses new calls, a resume lets them through again; an
//!   expiry cancels the call in flight like a revoke;
//! - an unknown mandate or bad options stop the gateway before any server
//!   starts.
//!
//! Python: `MANDATE_TEST_PYTHON`, else `<repo>/.ci-cache/venv/bin/python`;
//! without the `mcp` package there the tests fail and say `pip install mcp`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use common::fixtures::{agent, delegation, principal, root_issue, PATIENCE};
use common::served::Instance;
use common::wire::{client_at, serving};
use common::NatsServer;
use mandate::client::Client;
use mandate::domain::command::Issue;
use mandate::domain::{ActionPattern, MandateId};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientRequest, GetPromptRequestParams,
    ReadResourceRequestParams,
};
use rmcp::service::{PeerRequestOptions, RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ErrorData, ServiceError, ServiceExt};
use serde_json::{json, Value};

/// The grants of the tests' root mandate.
const GRANTS: &[&str] = &[
    "mcp:files:* on reports/**",
    "mcp:files:resource:read on docs/**",
    "mcp:files:prompt:summarize on prompts/**",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python that runs the test server; it must have the `mcp` package.
fn python() -> PathBuf {
    let python = std::env::var_os("MANDATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".ci-cache/venv/bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import mcp.server.mcpserver"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import the Python MCP SDK: pip install mcp (into that interpreter, e.g. \
         python3 -m venv .ci-cache/venv && .ci-cache/venv/bin/pip install mcp), or point \
         MANDATE_TEST_PYTHON at a Python that has it",
        python.display()
    );
    python
}

/// A nats-server, an engine serving tenant `acme` on it, and the cfo's client.
struct World {
    server: NatsServer,
    _dir: tempfile::TempDir,
    _instance: Instance,
    cfo: Client,
}

impl World {
    async fn start() -> Self {
        let server = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let instance = Instance::start(&server.url(), dir.path()).await;
        let nc = async_nats::connect(server.url()).await.unwrap();
        serving(&nc, "acme").await;
        let cfo = client_at(&server.url(), principal("cfo")).await;
        Self {
            server,
            _dir: dir,
            _instance: instance,
            cfo,
        }
    }

    /// The cfo grants [`GRANTS`] to `a0`, with `delete_file` needing
    /// step-up approval, until `not_after`.
    async fn root(&self, not_after: chrono::DateTime<Utc>) -> MandateId {
        self.cfo
            .issue(Issue {
                not_after,
                step_up: vec![ActionPattern::parse("mcp:files:delete_file").unwrap()],
                ..root_issue("cfo", "a0", None, GRANTS)
            })
            .await
            .unwrap()
            .mandate
            .unwrap()
    }

    /// `a0` delegates all of its grants under `root` to `a1`.
    async fn child(&self, root: MandateId) -> MandateId {
        client_at(&self.server.url(), agent("a0"))
            .await
            .delegate(delegation(root, "a1", GRANTS))
            .await
            .unwrap()
            .mandate
            .unwrap()
    }
}

/// The gateway's command line for `mandate`, with `extra` options before
/// `--`, the test server behind it recording into `record`.
fn gateway_command(
    url: &str,
    mandate: MandateId,
    record: &Path,
    extra: &[&str],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_mandate"));
    c.args([
        "--nats",
        url,
        "--tenant",
        "acme",
        "mcp-gateway",
        "--server-name",
        "files",
        "--mandate",
    ])
    .arg(mandate.to_string())
    .args(extra)
    .arg("--")
    .arg(python())
    .arg(repo().join("tests/mcp/server.py"))
    .env("MCP_TEST_RECORD", record)
    .env_remove("MANDATE_NATS")
    .env_remove("MANDATE_TENANT")
    .env_remove("MANDATE_ACTOR")
    .kill_on_drop(true);
    c
}

type Agent = RunningService<RoleClient, ()>;

/// The agent: rmcp's client over the stdio of a gateway for `mandate`.
async fn agent_over_stdio(url: &str, mandate: MandateId, record: &Path) -> Agent {
    let transport = TokioChildProcess::new(gateway_command(url, mandate, record, &[]))
        .expect("spawn the gateway");
    tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
        .await
        .expect("the gateway answers the handshake within 30 s")
        .expect("the MCP handshake through the gateway")
}

/// What the test server recorded so far.
fn records(record: &Path) -> Vec<Value> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `tools/call` requests the server received, as (request id, path).
fn tool_calls(record: &Path) -> Vec<(Value, Value)> {
    records(record)
        .into_iter()
        .filter(|r| r["event"] == "tools/call")
        .map(|r| (r["request_id"].clone(), r["arguments"]["path"].clone()))
        .collect()
}

/// Waits until the server has recorded an entry `matching`.
async fn recorded(record: &Path, what: &str, matching: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(r) = records(record).into_iter().find(&matching) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never recorded {what}; it recorded {:?}",
            records(record)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn call(tool: &str, arguments: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool.to_string())
        .with_arguments(arguments.as_object().expect("arguments object").clone())
}

/// The MCP error of a request the gateway refused.
fn mcp_error<T: std::fmt::Debug>(what: &str, r: Result<T, ServiceError>) -> ErrorData {
    match r {
        Err(ServiceError::McpError(e)) => e,
        other => panic!("{what}: expected an MCP error, got {other:?}"),
    }
}

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    serde_json::to_value(&result.content).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_scope_pass_and_every_other_request_is_refused_with_its_reason() {
    let world = World::start().await;
    let root = world.root(Utc::now() + chrono::Duration::hours(1)).await;
    let record_dir = tempfile::tempdir().unwrap();
    let record = record_dir.path().join("record.jsonl");
    let agent = agent_over_stdio(&world.server.url(), root, &record).await;
    let peer = agent.peer();

    // Listing passes while the mandate is live.
    let tools = peer.list_tools(None).await.expect("tools/list passes");
    let names: Vec<String> = tools.tools.iter().map(|t| t.name.to_string()).collect();
    assert!(names.contains(&"read_file".to_string()), "{names:?}");

    // In scope: the tool's own result comes back.
    let ok = peer
        .call_tool(call("read_file", json!({"path": "reports/q3.txt"})))
        .await
        .expect("an allowed call passes");
    assert!(text_of(&ok).contains("content of reports/q3.txt"), "{ok:?}");

    // Out of scope: denied with the reason and the chain.
    let e = mcp_error(
        "out of scope",
        peer.call_tool(call("read_file", json!({"path": "hr/salaries.txt"})))
            .await,
    );
    let data = e.data.clone().expect("structured data");
    assert_eq!(e.code.0, -32010, "{e:?}");
    assert_eq!(data["reason"], "out_of_scope", "{data}");
    assert_eq!(data["mandate"], json!(root), "{data}");
    assert_eq!(data["chain"], json!([root]), "{data}");
    assert_eq!(data["action"], "mcp:files:read_file", "{data}");
    assert_eq!(data["resource"], "hr/salaries.txt", "{data}");
    assert!(e.message.contains("outside the scope"), "{}", e.message);

    // Needs approval: the action to approve and the id (UUID v7) of the
    // approval the gateway requested.
    let e = mcp_error(
        "needs approval",
        peer.call_tool(call("delete_file", json!({"path": "reports/old.txt"})))
            .await,
    );
    let data = e.data.clone().expect("structured data");
    assert_eq!(e.code.0, -32011, "{e:?}");
    assert_eq!(data["reason"], "needs_approval", "{data}");
    assert_eq!(data["action"], "mcp:files:delete_file", "{data}");
    assert_eq!(data["resource"], "reports/old.txt", "{data}");
    assert_eq!(data["step_up"], json!(["mcp:files:delete_file"]), "{data}");
    let id: uuid::Uuid = data["approval_request"]
        .as_str()
        .expect("approval_request")
        .parse()
        .expect("a UUID");
    assert_eq!(id.get_version_num(), 7, "{data}");

    // No resource argument, a resource that is no canonical path, a tool
    // name that is no action segment: invalid, with what was wrong.
    for (tool, args, says) in [
        (
            "read_file",
            json!({}),
            "without its resource argument \"path\"",
        ),
        (
            "read_file",
            json!({"path": "reports/../hr/x"}),
            "not a valid request",
        ),
        ("read_file", json!({"path": 7}), "must be a string"),
        (
            "read:file",
            json!({"path": "reports/a"}),
            "not a valid action segment",
        ),
    ] {
        let e = mcp_error(tool, peer.call_tool(call(tool, args.clone())).await);
        assert_eq!(e.code.0, -32602, "{tool} {args}: {e:?}");
        assert_eq!(e.data.as_ref().unwrap()["reason"], "invalid_request");
        assert!(e.message.contains(says), "{tool} {args}: {}", e.message);
    }

    // resources/read and prompts/get are checked too.
    let read = peer
        .read_resource(ReadResourceRequestParams::new("docs://guide/intro"))
        .await
        .expect("a resource in scope is read");
    assert!(format!("{read:?}").contains("the guide's introduction"));
    let e = mcp_error(
        "resource out of scope",
        peer.read_resource(ReadResourceRequestParams::new("secrets://vault/key"))
            .await,
    );
    assert_eq!(e.data.as_ref().unwrap()["reason"], "out_of_scope", "{e:?}");
    assert_eq!(e.data.as_ref().unwrap()["resource"], "secrets/vault/key");
    let e = mcp_error(
        "bad URI",
        peer.read_resource(ReadResourceRequestParams::new("docs://a/../b"))
            .await,
    );
    assert_eq!(e.code.0, -32602, "{e:?}");
    let mut args = serde_json::Map::new();
    args.insert("topic".into(), json!("q3"));
    let prompt = peer
        .get_prompt(GetPromptRequestParams::new("summarize").with_arguments(args))
        .await
        .expect("a granted prompt is given");
    assert!(format!("{prompt:?}").contains("Summarize q3."));
    let e = mcp_error(
        "prompt not granted",
        peer.get_prompt(GetPromptRequestParams::new("leak")).await,
    );
    assert_eq!(e.data.as_ref().unwrap()["action"], "mcp:files:prompt:leak");

    // The server saw exactly the one allowed tool call, one resource read
    // and one prompt.
    let calls = tool_calls(&record);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].1, "reports/q3.txt");
    let methods: Vec<Value> = records(&record)
        .into_iter()
        .filter(|r| r["event"] == "message")
        .map(|r| r["method"].clone())
        .collect();
    let count = |m: &str| methods.iter().filter(|x| *x == m).count();
    assert_eq!(count("resources/read"), 1, "{methods:?}");
    assert_eq!(count("prompts/get"), 1, "{methods:?}");

    // The agent's own cancellation of a call in flight is passed on.
    let handle = peer
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(call(
                "slow",
                json!({"path": "reports/agent", "seconds": 60}),
            ))),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let upstream = recorded(&record, "the agent's slow call", |r| {
        r["event"] == "tools/call" && r["arguments"]["path"] == "reports/agent"
    })
    .await["request_id"]
        .clone();
    handle
        .cancel(Some("the agent changed its mind".into()))
        .await
        .unwrap();
    recorded(&record, "the agent's cancel, passed on", |r| {
        r["event"] == "cancelled" && r["request_id"] == upstream
    })
    .await;
    agent.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_cancels_the_call_in_flight_upstream_and_toward_the_agent() {
    let world = World::start().await;
    let root = world.root(Utc::now() + chrono::Duration::hours(1)).await;
    let child = world.child(root).await;
    let record_dir = tempfile::tempdir().unwrap();
    let record = record_dir.path().join("record.jsonl");
    let agent = agent_over_stdio(&world.server.url(), child, &record).await;
    let peer = agent.peer().clone();

    let in_flight = tokio::spawn(async move {
        peer.call_tool(call("slow", json!({"path": "reports/big", "seconds": 60})))
            .await
    });
    let started = recorded(&record, "the slow call", |r| r["event"] == "call").await;
    let upstream_id = recorded(&record, "the slow call's request", |r| {
        r["event"] == "tools/call" && r["tool"] == "slow"
    })
    .await["request_id"]
        .clone();
    assert_eq!(started["arguments"]["path"], "reports/big");

    // The root is revoked: the gateway holds the child, two levels down.
    world.cfo.revoke(root, Some("stop".into())).await.unwrap();

    let answer = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the agent gets its answer without waiting for the tool")
        .unwrap();
    let e = mcp_error("the call in flight", answer);
    let data = e.data.clone().expect("structured data");
    assert_eq!(e.code.0, -32012, "{e:?}");
    assert_eq!(data["reason"], "mandate_ended", "{data}");
    assert_eq!(data["in_flight"], true, "{data}");
    assert_eq!(data["chain"], json!([root, child]), "{data}");
    assert!(e.message.contains("revoked"), "{}", e.message);

    // The server was told to cancel that very request.
    let cancelled = recorded(&record, "notifications/cancelled", |r| {
        r["event"] == "cancelled"
    })
    .await;
    assert_eq!(cancelled["request_id"], upstream_id, "{cancelled}");

    // After the end nothing passes, listing included.
    let e = mcp_error(
        "a call after the end",
        agent
            .peer()
            .call_tool(call("read_file", json!({"path": "reports/q3.txt"})))
            .await,
    );
    assert_eq!(e.data.as_ref().unwrap()["reason"], "mandate_ended", "{e:?}");
    let e = mcp_error("a list after the end", agent.peer().list_tools(None).await);
    assert_eq!(e.code.0, -32012, "{e:?}");
    let e = mcp_error(
        "a read after the end",
        agent
            .peer()
            .read_resource(ReadResourceRequestParams::new("docs://guide/intro"))
            .await,
    );
    assert_eq!(e.code.0, -32012, "{e:?}");
    assert_eq!(tool_calls(&record).len(), 1, "{:?}", records(&record));
    agent.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_refuses_new_calls_and_an_expiry_cancels_like_a_revoke() {
    let world = World::start().await;
    // An hour: however slowly the gateway starts on a loaded machine, the
    // pause comes first. The expiry is brought forward later, mid-call.
    let root = world.root(Utc::now() + chrono::Duration::hours(1)).await;
    let record_dir = tempfile::tempdir().unwrap();
    let record = record_dir.path().join("record.jsonl");
    let agent = agent_over_stdio(&world.server.url(), root, &record).await;
    let peer = agent.peer().clone();
    let read = || call("read_file", json!({"path": "reports/q3.txt"}));

    world.cfo.pause(root, None).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let e = loop {
        match peer.call_tool(read()).await {
            Err(e) => break mcp_error("while paused", Err::<(), _>(e)),
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the pause never took"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(e.data.as_ref().unwrap()["reason"], "not_active", "{e:?}");
    let before = tool_calls(&record).len();
    world.cfo.resume(root, None).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while peer.call_tool(read()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the resume never took"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tool_calls(&record).len(), before + 1);

    // A call longer than the mandate's life: its end is brought forward to
    // two seconds from now while the call runs, and the expiry cancels it.
    let in_flight = tokio::spawn(async move {
        peer.call_tool(call("slow", json!({"path": "reports/big", "seconds": 60})))
            .await
    });
    recorded(&record, "the slow call", |r| {
        r["event"] == "tools/call" && r["tool"] == "slow"
    })
    .await;
    world
        .cfo
        .renew(root, Utc::now() + chrono::Duration::seconds(2))
        .await
        .unwrap();
    let slow = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the expiry ends the call without waiting for the tool")
        .unwrap();
    let e = mcp_error("a call past the expiry", slow);
    assert_eq!(e.data.as_ref().unwrap()["reason"], "mandate_ended", "{e:?}");
    assert!(e.message.contains("expired"), "{}", e.message);
    recorded(&record, "notifications/cancelled", |r| {
        r["event"] == "cancelled"
    })
    .await;
    agent.cancel().await.unwrap();
}

/// `call` carrying `approval` under `_meta["mandate/approval"]`.
fn with_approval(mut params: CallToolRequestParams, approval: Value) -> CallToolRequestParams {
    let mut meta = serde_json::Map::new();
    meta.insert("mandate/approval".into(), approval);
    params.meta = Some(meta.into());
    params
}

/// The `delete_file` calls the server received, as their paths.
fn deletes(record: &Path) -> Vec<Value> {
    records(record)
        .into_iter()
        .filter(|r| r["event"] == "tools/call" && r["tool"] == "delete_file")
        .map(|r| r["arguments"]["path"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_up_call_passes_once_with_its_approval_and_never_again() {
    let world = World::start().await;
    let root = world.root(Utc::now() + chrono::Duration::hours(1)).await;
    let record_dir = tempfile::tempdir().unwrap();
    let record = record_dir.path().join("record.jsonl");
    let agent = agent_over_stdio(&world.server.url(), root, &record).await;
    let peer = agent.peer();
    let delete = |path: &str| call("delete_file", json!({ "path": path }));
    let params = json!({"path": "reports/old.txt"});

    // Without an approval: refused, and the gateway asked the engine for
    // one, bound to the call's action, resource and parameters.
    let e = mcp_error(
        "needs approval",
        peer.call_tool(delete("reports/old.txt")).await,
    );
    let data = e.data.clone().expect("structured data");
    assert_eq!(e.code.0, -32011, "{e:?}");
    assert_eq!(data["reason"], "needs_approval", "{data}");
    assert_eq!(
        data["params_hash"],
        mandate::domain::approval::params_hash(&params),
        "{data}"
    );
    assert!(data["expires_at"].is_string(), "{data}");
    let approval: uuid::Uuid = data["approval_request"]
        .as_str()
        .expect("approval_request")
        .parse()
        .expect("a UUID");
    assert!(e.message.contains("mandate/approval"), "{}", e.message);
    // The engine holds that request: the principal can decide it, once.
    let refuse = |what: &str, r| {
        let e = mcp_error(what, r);
        assert_eq!(e.code.0, -32010, "{what}: {e:?}");
        e.data.expect("structured data")
    };

    assert_eq!(data["approval_existing"], json!(false), "{data}");
    // The same call again while that request is pending: the engine answers
    // with it and writes no other.
    let e = mcp_error(
        "needs approval again",
        peer.call_tool(delete("reports/old.txt")).await,
    );
    let again = e.data.expect("structured data");
    assert_eq!(again["approval_request"], json!(approval), "{again}");
    assert_eq!(again["approval_existing"], json!(true), "{again}");
    assert_eq!(again["expires_at"], data["expires_at"], "{again}");
    assert!(e.message.contains("still pending"), "{}", e.message);
    let history = world
        .cfo
        .history(mandate::protocol::TreeQuery {
            tree: None,
            mandate: Some(root),
            at: None,
            consistency: Default::default(),
        })
        .await
        .expect("the tree's history");
    assert_eq!(
        history
            .events
            .iter()
            .filter(|e| matches!(e.body, mandate::domain::EventBody::ApprovalRequested(_)))
            .count(),
        1,
        "one request written for two calls"
    );

    // Not yet granted.
    let data = refuse(
        "pending",
        peer.call_tool(with_approval(delete("reports/old.txt"), json!(approval)))
            .await,
    );
    assert_eq!(data["reason"], "approval_pending", "{data}");
    assert_eq!(data["approval"], json!(approval), "{data}");

    world.cfo.approve(root, approval, None).await.unwrap();
    let twice = world.cfo.approve(root, approval, None).await;
    assert!(twice.is_err(), "an approval is decided once: {twice:?}");

    // Bound to the resource and to the parameters: other ones are refused,
    // and the approval stays usable.
    let data = refuse(
        "other resource",
        peer.call_tool(with_approval(delete("reports/new.txt"), json!(approval)))
            .await,
    );
    assert_eq!(data["reason"], "approval_mismatch", "{data}");
    let data = refuse(
        "other parameters",
        peer.call_tool(with_approval(
            call(
                "delete_file",
                json!({"path": "reports/old.txt", "force": true}),
            ),
            json!(approval),
        ))
        .await,
    );
    assert_eq!(data["reason"], "approval_mismatch", "{data}");
    assert!(deletes(&record).is_empty(), "{:?}", records(&record));

    // The approved call passes, once.
    let ok = peer
        .call_tool(with_approval(delete("reports/old.txt"), json!(approval)))
        .await
        .expect("the approved call passes");
    assert!(!ok.is_error.unwrap_or(false), "{ok:?}");
    assert_eq!(deletes(&record), vec![json!("reports/old.txt")]);
    let data = refuse(
        "replay",
        peer.call_tool(with_approval(delete("reports/old.txt"), json!(approval)))
            .await,
    );
    assert_eq!(data["reason"], "approval_used", "{data}");
    // Without the approval it is back to needing one (a new request).
    let e = mcp_error(
        "again without approval",
        peer.call_tool(delete("reports/old.txt")).await,
    );
    assert_eq!(e.code.0, -32011, "{e:?}");
    let second: uuid::Uuid = e.data.unwrap()["approval_request"]
        .as_str()
        .expect("a second request")
        .parse()
        .unwrap();
    assert_ne!(second, approval);

    // Denied by the principal: refused for good.
    world.cfo.deny_approval(root, second, None).await.unwrap();
    let data = refuse(
        "denied",
        peer.call_tool(with_approval(delete("reports/old.txt"), json!(second)))
            .await,
    );
    assert_eq!(data["reason"], "approval_denied", "{data}");

    // An approval the engine never heard of.
    let data = refuse(
        "unknown",
        peer.call_tool(with_approval(
            delete("reports/old.txt"),
            json!(uuid::Uuid::now_v7()),
        ))
        .await,
    );
    assert_eq!(data["reason"], "unknown_approval", "{data}");

    // A value that is no approval id: invalid, whatever the call.
    for bad in [json!("not-an-id"), json!(7), json!(null)] {
        for tool in ["delete_file", "read_file"] {
            let e = mcp_error(
                "bad approval id",
                peer.call_tool(with_approval(
                    call(tool, json!({"path": "reports/old.txt"})),
                    bad.clone(),
                ))
                .await,
            );
            assert_eq!(e.code.0, -32602, "{bad} {tool}: {e:?}");
            assert_eq!(e.data.as_ref().unwrap()["reason"], "invalid_request");
            assert!(e.message.contains("mandate/approval"), "{}", e.message);
        }
    }

    // The server saw the one approved delete and nothing else.
    assert_eq!(deletes(&record), vec![json!("reports/old.txt")]);
    assert!(tool_calls(&record).len() == 1, "{:?}", records(&record));
    agent.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_acting_as_another_than_the_grantee_cannot_request_approval() {
    let world = World::start().await;
    let root = world.root(Utc::now() + chrono::Duration::hours(1)).await;
    let record_dir = tempfile::tempdir().unwrap();
    let record = record_dir.path().join("record.jsonl");
    let transport = TokioChildProcess::new(gateway_command(
        &world.server.url(),
        root,
        &record,
        &["--actor", "agent:mallory"],
    ))
    .expect("spawn the gateway");
    let agent = tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
        .await
        .expect("the gateway answers the handshake within 30 s")
        .expect("the MCP handshake through the gateway");
    let e = mcp_error(
        "needs approval, not requested",
        agent
            .peer()
            .call_tool(call("delete_file", json!({"path": "reports/old.txt"})))
            .await,
    );
    let data = e.data.clone().expect("structured data");
    assert_eq!(e.code.0, -32011, "{e:?}");
    assert_eq!(data["reason"], "needs_approval", "{data}");
    assert!(data["approval_request"].is_null(), "{data}");
    assert_eq!(data["approval_error"]["reason"], "not_authorized", "{data}");
    assert!(
        e.message.contains("did not take the request"),
        "{}",
        e.message
    );
    assert!(deletes(&record).is_empty(), "{:?}", records(&record));
    agent.cancel().await.unwrap();
}

/// One HTTP/1.1 request to the gateway; the reply's headers and the
/// JSON-RPC messages of its body (plain JSON or server-sent events).
async fn post(addr: &str, session: Option<&str>, body: Value) -> (String, Vec<Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(s) = session {
        request.push_str(&format!("Mcp-Session-Id: {s}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("the gateway answers over HTTP in time")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = raw.split_once("\r\n\r\n").expect("an HTTP reply");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let messages = body
        .lines()
        .map(|l| l.strip_prefix("data:").unwrap_or(l).trim())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("jsonrpc").is_some())
        .collect();
    (head.to_string(), messages)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_streamable_http_calls_are_checked_the_same() {
    let world = World::start().await;
    let root = world.root(Utc::now() + chrono::Duration::hours(1)).await;
    let record_dir = tempfile::tempdir().unwrap();
    let record = record_dir.path().join("record.jsonl");
    let mut command = gateway_command(
        &world.server.url(),
        root,
        &record,
        &["--http", "127.0.0.1:0"],
    );
    command.stderr(Stdio::piped()).stdin(Stdio::null());
    let mut gateway = command.spawn().expect("spawn the gateway");
    let stderr = gateway.stderr.take().unwrap();
    let addr = {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    return rest.trim_end_matches("/mcp").to_string();
                }
            }
            panic!("the gateway exited without listening")
        })
        .await
        .expect("the gateway listens within 30 s");
        // Keep draining its stderr.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        found
    };

    let (head, init) = post(
        &addr,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test-agent", "version": "1"}}}),
    )
    .await;
    assert!(
        init.iter()
            .any(|m| m["id"] == 1 && m.get("result").is_some()),
        "{head}\n{init:?}"
    );
    let session = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("mcp-session-id")
                .then(|| v.trim().to_string())
        })
        .expect("a session id");
    post(
        &addr,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    let (_, ok) = post(
        &addr,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "read_file", "arguments": {"path": "reports/q3.txt"}}}),
    )
    .await;
    let ok = ok.iter().find(|m| m["id"] == 2).expect("the call's reply");
    assert!(
        ok["result"]
            .to_string()
            .contains("content of reports/q3.txt"),
        "{ok}"
    );
    let (_, denied) = post(
        &addr,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "read_file", "arguments": {"path": "hr/salaries.txt"}}}),
    )
    .await;
    let denied = denied.iter().find(|m| m["id"] == 3).expect("the deny");
    assert_eq!(denied["error"]["code"], -32010, "{denied}");
    assert_eq!(
        denied["error"]["data"]["reason"], "out_of_scope",
        "{denied}"
    );
    assert_eq!(denied["error"]["data"]["chain"], json!([root]), "{denied}");
    let calls = tool_calls(&record);
    assert_eq!(calls.len(), 1, "{calls:?}");
    gateway.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_invocation_is_refused_before_any_server_starts() {
    let world = World::start().await;
    let root = world.root(Utc::now() + chrono::Duration::hours(1)).await;
    let record_dir = tempfile::tempdir().unwrap();
    let record = record_dir.path().join("record.jsonl");
    let unknown = MandateId::generate();
    for (mandate, extra, code, says) in [
        (unknown, vec![], 3, "not found"),
        (
            root,
            vec!["--resource-arg", "a", "--resource-arg", "b"],
            2,
            "given twice",
        ),
        (
            root,
            vec!["--resource-arg", "read:file=path"],
            2,
            "TOOL=ARG",
        ),
        (root, vec!["--lease", "0s"], 2, "duration \"0s\""),
    ] {
        let out = gateway_command(&world.server.url(), mandate, &record, &extra)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
    // The server never ran.
    assert!(records(&record).is_empty(), "{:?}", records(&record));
}

/// The `approval_used` events of the tree of `root`.
async fn uses_written(cfo: &Client, root: MandateId) -> usize {
    cfo.history(mandate::protocol::TreeQuery {
        tree: None,
        mandate: Some(root),
        at: None,
        consistency: Default::default(),
    })
    .await
    .expect("the tree's history")
    .events
    .iter()
    .filter(|e| matches!(e.body, mandate::domain::EventBody::ApprovalUsed(_)))
    .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_use_the_engine_wrote_but_never_answered_passes_on_the_next_call() {
    // The gateway reaches NATS through a relay that drops its connection
    // right after its `use_approval` has gone out, and lets no connection
    // through until the test restores it: the engine writes the use, and
    // its answer is lost. The engine then stops before the relay opens
    // again, so the gateway's resend finds no engine and the call is
    // refused, unconfirmed.
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), dir.path()).await;
    let nc = async_nats::connect(server.url()).await.unwrap();
    serving(&nc, "acme").await;
    let cfo = client_at(&server.url(), principal("cfo")).await;
    let root = cfo
        .issue(Issue {
            not_after: Utc::now() + chrono::Duration::hours(1),
            step_up: vec![ActionPattern::parse("mcp:files:delete_file").unwrap()],
            ..root_issue("cfo", "a0", None, GRANTS)
        })
        .await
        .unwrap()
        .mandate
        .unwrap();
    let relay = common::relay::Relay::start(server.port()).await;
    let record_dir = tempfile::tempdir().unwrap();
    let record = record_dir.path().join("record.jsonl");
    let agent = agent_over_stdio(&relay.url(), root, &record).await;
    let peer = agent.peer().clone();
    let delete = || call("delete_file", json!({"path": "reports/old.txt"}));
    let e = mcp_error("needs approval", peer.call_tool(delete()).await);
    let approval: uuid::Uuid = e.data.unwrap()["approval_request"]
        .as_str()
        .expect("approval_request")
        .parse()
        .unwrap();
    cfo.approve(root, approval, None).await.unwrap();

    relay.sever_after(b"mandate.cmd.acme.use_approval");
    let first = tokio::spawn({
        let peer = peer.clone();
        async move {
            peer.call_tool(with_approval(delete(), json!(approval)))
                .await
        }
    });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while uses_written(&cfo, root).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the engine never wrote the use"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    instance.stop().await;
    relay.restore();
    let e = mcp_error("unanswered use", first.await.unwrap());
    let data = e.data.expect("structured data");
    assert_eq!(data["reason"], "approval_unconfirmed", "{data}");
    assert!(deletes(&record).is_empty(), "nothing reached the server");

    // The engine is back: the same call again gets the use it wrote, once.
    let instance = Instance::start(&server.url(), dir.path()).await;
    serving(&nc, "acme").await;
    let ok = tokio::time::timeout(
        PATIENCE,
        peer.call_tool(with_approval(delete(), json!(approval))),
    )
    .await
    .expect("an answer")
    .expect("the use written before passes the call");
    assert!(!ok.is_error.unwrap_or(false), "{ok:?}");
    assert_eq!(deletes(&record), vec![json!("reports/old.txt")]);
    assert_eq!(uses_written(&cfo, root).await, 1, "one use for one call");
    // And never again.
    let e = mcp_error(
        "replay",
        peer.call_tool(with_approval(delete(), json!(approval)))
            .await,
    );
    assert_eq!(e.data.unwrap()["reason"], "approval_used");
    assert_eq!(deletes(&record), vec![json!("reports/old.txt")]);
    agent.cancel().await.unwrap();
    instance.stop().await;
}
