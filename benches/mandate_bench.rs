//! Mandate's benchmark program: `cargo bench --bench mandate_bench`.
//!
//! Every figure is measured in one run beside a raw baseline of the same shape
//! (the machine is shared and noisy: compare ratios, not absolutes):
//! - append throughput of each log backend, pipelined (64 tasks) and one at a
//!   time, against raw JetStream publishes with the same headers;
//! - commands through the engine (embedded and NATS request-reply);
//! - projection rebuild rate from each log;
//! - check latency: engine request-reply vs raw request-reply, and the guard's
//!   local check;
//! - cascade: one completion to N in-process guards stopping.
//!
//! Set `BENCH_SCALE` (default 1.0) to scale the counts. It starts its own
//! nats-server (NATS_SERVER_BIN, PATH, /usr/sbin/nats-server).

#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use mandate::client::guard::GuardHub;
use mandate::client::{Client, Guard, GuardConfig, MissionPublisher};
use mandate::domain::command::{Delegate, Issue};
use mandate::domain::{
    decide, root_tree_id, Actor, AgentId, Command, CommandEnvelope, CommandId, Event, Facts,
    Mission, MissionRef, PrincipalId, Scope, TenantId, Tree, SCHEMA_VERSION,
};
use mandate::engine::{replay_log, Engine, EngineConfig};
use mandate::log::{AnyLog, EmbeddedLog, EventLog, JetStreamConfig, JetStreamLog};
use mandate::protocol::MissionCompletedNotice;
use mandate::store::Store;

fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64) * s).max(1.0) as usize
}

fn tenant() -> TenantId {
    TenantId::new("bench").unwrap()
}

fn issue_cmd(i: usize) -> CommandEnvelope {
    CommandEnvelope {
        command_id: CommandId::generate(),
        tenant: tenant(),
        actor: Actor::Principal(PrincipalId::new("cfo").unwrap()),
        correlation_id: None,
        schema_version: SCHEMA_VERSION,
        command: Command::Issue(Issue {
            principal: PrincipalId::new("cfo").unwrap(),
            grantee: AgentId::new(format!("agent-{}", i % 100)).unwrap(),
            mission: Mission {
                purpose: "benchmark".into(),
                mission_ref: Some(MissionRef::new(format!("bench:{i}")).unwrap()),
            },
            scope: Scope::parse(["finance:read on reports/**", "deals:* on deals/**"]).unwrap(),
            not_after: Utc::now() + chrono::Duration::hours(8),
            depth: 3,
            step_up: vec![],
            supervisors: vec![],
        }),
    }
}

/// A realistic commit payload for a new tree.
fn commit_for(cmd: &CommandEnvelope) -> Bytes {
    let tree = Tree::empty(tenant(), root_tree_id(&cmd.tenant, cmd.command_id));
    let events = decide(&tree, cmd, &Facts::default(), Utc::now()).unwrap();
    Event::encode_commit(&events).into()
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:>9.0}/s", n as f64 / d.as_secs_f64())
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// Runs `op` on each of `n` fresh commits of a new tree (its command id and
/// payload), `tasks` at a time; returns how long they all took.
async fn concurrently<F, Fut>(n: usize, tasks: usize, op: F) -> Duration
where
    F: Fn(CommandId, Bytes) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let cmds: Arc<Vec<_>> = Arc::new(
        (0..n)
            .map(issue_cmd)
            .map(|c| (c.command_id, commit_for(&c)))
            .collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (op, cmds, next) = (op.clone(), cmds.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((id, payload)) = cmds.get(i) else {
                    return;
                };
                op(*id, payload.clone()).await;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    t.elapsed()
}

/// Appends `n` commits to distinct trees with `tasks` concurrent writers.
async fn appends<L: EventLog + Clone>(log: &L, n: usize, tasks: usize) -> Duration {
    let log = log.clone();
    concurrently(n, tasks, move |id, payload| {
        let log = log.clone();
        async move {
            let tree = root_tree_id(&tenant(), id);
            log.append(&tenant(), tree, 0, id, payload).await.unwrap();
        }
    })
    .await
}

/// Raw JetStream publishes of the same payloads with the same headers
/// (expected-last-subject-sequence 0 and msg-id), `tasks` concurrent.
async fn raw_js(js: &async_nats::jetstream::Context, n: usize, tasks: usize) -> Duration {
    let js = js.clone();
    concurrently(n, tasks, move |id, payload| {
        let js = js.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id.to_string().as_str());
            h.insert("Nats-Expected-Last-Subject-Sequence", "0");
            let subject = format!("rawbench.{}", root_tree_id(&tenant(), id));
            js.publish_with_headers(subject, h, payload)
                .await
                .unwrap()
                .await
                .unwrap();
        }
    })
    .await
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, only to prove it builds and starts.
    if !std::env::args().any(|a| a == "--bench") {
        println!("mandate_bench: run it with `cargo bench --bench mandate_bench`");
        return;
    }
    let server = common::NatsServer::start();
    let url = server.url();
    let nc = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(nc.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "RAWBENCH".into(),
        subjects: vec!["rawbench.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    let n_pipe = scale(20_000);
    let n_serial = scale(2_000);
    println!("Mandate benchmarks (server {url}; counts scaled by BENCH_SCALE)\n");

    // --- appends ---------------------------------------------------------
    println!(
        "append throughput (commit of one mandate_issued event, ~{} bytes)",
        commit_for(&issue_cmd(0)).len()
    );
    let raw_p = raw_js(&js, n_pipe, 64).await;
    let raw_s = raw_js(&js, n_serial, 1).await;
    let jlog = JetStreamLog::open(nc.clone(), JetStreamConfig::default())
        .await
        .unwrap();
    let jp = appends(&jlog, n_pipe, 64).await;
    let jsr = appends(&jlog, n_serial, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let elog = EmbeddedLog::open(dir.path().join("log")).unwrap();
    let ep = appends(&elog, n_pipe, 64).await;
    let es = appends(&elog, n_serial, 1).await;
    println!(
        "  raw JetStream publish (msg-id + expected seq), 64 tasks  {}  ({n_pipe})",
        rate(n_pipe, raw_p)
    );
    println!(
        "  JetStream log append, 64 tasks                          {}  ratio to raw {:.2}",
        rate(n_pipe, jp),
        raw_p.as_secs_f64() / jp.as_secs_f64()
    );
    println!(
        "  raw JetStream publish, one at a time                    {}  ({n_serial})",
        rate(n_serial, raw_s)
    );
    println!(
        "  JetStream log append, one at a time                     {}  ratio to raw {:.2}",
        rate(n_serial, jsr),
        raw_s.as_secs_f64() / jsr.as_secs_f64()
    );
    println!(
        "  embedded (sled) log append, 64 tasks                    {}",
        rate(n_pipe, ep)
    );
    println!(
        "  embedded (sled) log append, one at a time               {}",
        rate(n_serial, es)
    );

    // --- rebuild ---------------------------------------------------------
    println!("\nprojection rebuild from the log");
    for (name, log) in [
        ("JetStream", AnyLog::Nats(jlog.clone())),
        ("embedded", AnyLog::Embedded(elog.clone())),
    ] {
        let store = Store::temporary().unwrap();
        let t = Instant::now();
        let n = replay_log(&log, &store).await.unwrap();
        println!(
            "  {name:<10} {n} commits in {:.2}s  {}",
            t.elapsed().as_secs_f64(),
            rate(n as usize, t.elapsed())
        );
    }

    // --- engine commands and checks over NATS ------------------------------
    println!("\nengine over NATS (one instance, request-reply)");
    let edir = tempfile::tempdir().unwrap();
    let engine = Engine::nats(
        nc.clone(),
        edir.path(),
        JetStreamConfig::default(),
        EngineConfig {
            audit: false,
            // The bench acts without authentication.
            allow_open_tenants: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .serve(async move {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap()
        }
    });
    // Raw request-reply baseline: a responder that echoes.
    let mut echo = nc.subscribe("rawbench.echo").await.unwrap();
    let echo_nc = nc.clone();
    tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            if let Some(r) = m.reply {
                let _ = echo_nc.publish(r, m.payload).await;
            }
        }
    });
    // The log already holds the append benchmark's commits: let the
    // instance's projection catch up first, so the figures below measure
    // commands, not a rebuild running beside them.
    let t = Instant::now();
    loop {
        let h = engine.health().await.unwrap();
        if h.lag == 0 && h.log_position > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "  (projection caught up with {} commits in {:.2}s first)",
        engine.health().await.unwrap().position,
        t.elapsed().as_secs_f64()
    );
    // Callers have their own connection, as they would in production.
    let cnc = async_nats::connect(&url).await.unwrap();
    let client = Client::nats(
        cnc.clone(),
        tenant(),
        Actor::Principal(PrincipalId::new("cfo").unwrap()),
    );
    let n_cmd = scale(2_000);
    let cmds: Vec<_> = (0..n_cmd).map(issue_cmd).collect();
    let t = Instant::now();
    let mut roots = Vec::new();
    for chunk in cmds.chunks(32) {
        let futs = chunk.iter().map(|c| client.send(c));
        for r in futures::future::join_all(futs).await {
            roots.push(r.unwrap().mandate.unwrap());
        }
    }
    let issue_time = t.elapsed();
    println!(
        "  issue commands, 32 concurrent                 {}  ({n_cmd})",
        rate(n_cmd, issue_time)
    );
    let body = serde_json::to_vec(&serde_json::json!({"mandate": roots[0], "action": "finance:read", "resource": "reports/q3"})).unwrap();
    let (mut raw_lat, mut chk_lat) = (Vec::new(), Vec::new());
    for _ in 0..scale(2_000) {
        let t = Instant::now();
        cnc.request("rawbench.echo", body.clone().into())
            .await
            .unwrap();
        raw_lat.push(t.elapsed());
        let t = Instant::now();
        cnc.request("mandate.q.bench.check", body.clone().into())
            .await
            .unwrap();
        chk_lat.push(t.elapsed());
    }
    println!(
        "  raw request-reply       p50 {:>7.1?}  p99 {:>7.1?}",
        pct(raw_lat.clone(), 0.5),
        pct(raw_lat.clone(), 0.99)
    );
    println!(
        "  engine check            p50 {:>7.1?}  p99 {:>7.1?}  (p50 ratio {:.2}× raw)",
        pct(chk_lat.clone(), 0.5),
        pct(chk_lat.clone(), 0.99),
        pct(chk_lat, 0.5).as_secs_f64() / pct(raw_lat, 0.5).as_secs_f64()
    );
    let _ = stop_tx.send(());
    let _ = serving.await;

    // --- cascade to in-process guards (embedded) ---------------------------
    let n_guards = scale(2_000);
    println!(
        "\ncascade: one mission completion → {n_guards} guards in one process (embedded engine)"
    );
    let gdir = tempfile::tempdir().unwrap();
    let engine = Engine::embedded(
        gdir.path(),
        EngineConfig {
            audit: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let bg = engine.start();
    let cfo = Client::local(
        engine.clone(),
        tenant(),
        Actor::Principal(PrincipalId::new("cfo").unwrap()),
    );
    let mut cmd = issue_cmd(0);
    if let Command::Issue(i) = &mut cmd.command {
        i.mission.mission_ref = Some(MissionRef::new("bench:cascade").unwrap());
        i.depth = 1;
    }
    let root = cfo.send(&cmd).await.unwrap().mandate.unwrap();
    let lead = cfo.as_actor(Actor::Agent(AgentId::new("agent-0").unwrap()));
    let hub = GuardHub::new();
    let mut guards = Vec::new();
    for i in 0..n_guards {
        let child = lead
            .delegate(Delegate {
                depth: Some(0),
                ..common::fixtures::delegation(
                    root,
                    &format!("worker-{i}"),
                    &["finance:read on reports/q3/*"],
                )
            })
            .await
            .unwrap()
            .mandate
            .unwrap();
        let g = Guard::start(
            lead.clone(),
            &hub,
            child,
            GuardConfig {
                lease: Duration::from_secs(600),
                heartbeat: Duration::from_secs(300),
                ..GuardConfig::default()
            },
        )
        .await
        .unwrap();
        guards.push(g);
    }
    let t_check = Instant::now();
    let mut allowed = 0;
    for g in &guards {
        allowed += g.check("finance:read", "reports/q3/x").is_allowed() as usize;
    }
    let per_check = t_check.elapsed() / guards.len() as u32;
    assert_eq!(allowed, guards.len());
    println!("  guard local check: {per_check:.1?} each");
    let waits: Vec<_> = guards.iter().map(|g| g.cancellation()).collect();
    let t = Instant::now();
    MissionPublisher::Local(engine.clone())
        .completed(
            &tenant(),
            &MissionRef::new("bench:cascade").unwrap(),
            &MissionCompletedNotice::default(),
        )
        .await
        .unwrap();
    let acked = t.elapsed();
    for w in &waits {
        w.cancelled().await;
    }
    println!(
        "  completion acknowledged after {acked:.1?}; last of {n_guards} guards cancelled after {:.1?}",
        t.elapsed()
    );
    bg.stop().await.unwrap();
    drop(server);
}
