//! `check-remote`: the engine's `check` over NATS at each consistency level,
//! one caller (p50, p99) and many (throughput), against raw request-reply
//! to a trivial responder in the same run. The level is a field of the raw
//! query body, so an engine that does not know it yet refuses it: that level
//! is then reported as not supported.
//!
//! `check-local`: the guard's local check, nanoseconds per call, on a chain
//! of depth 3 whose mandates hold 20 grants each: `Guard::check` (the full
//! decision) and `Guard::allows` (the yes or no an agent's hot path asks).
//! An absolute target; no baseline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mandate::client::guard::GuardHub;
use mandate::client::{Client, Guard, GuardConfig};
use mandate::domain::{Actor, MandateId, Scope};
use mandate::engine::{Engine, EngineConfig};
use serde_json::{json, Value};

use crate::gen;
use crate::harness::{progress, BenchResult, Echo, Env, Served};
use crate::report::{per_second, Printer, Row, Samples, Target};

pub struct Sizes {
    pub requests: usize,
    pub callers: usize,
}

/// A consistency level and the query field that asks for it.
struct Level {
    name: &'static str,
    field: Option<Value>,
    p50_target: f64,
}

/// A served engine with one live chain, and where to ask.
pub struct Target3 {
    pub served: Served,
    pub leaf: MandateId,
    /// Log position of the last command's commit (for `at_least`).
    pub position: u64,
}

/// Serves an engine and writes a chain of three mandates through it.
pub async fn chain_of_three(env: &Env) -> BenchResult<Target3> {
    let served = Served::start(env, &env.dir("engine")).await?;
    let principal = Client::nats(env.connect().await?, gen::tenant(), gen::principal());
    let (root_and_mid, leaf_scope) = (gen::root_scope(), gen::worker_scope());
    let (leaf, position) = three_links(
        &principal,
        [&root_and_mid, &root_and_mid, &leaf_scope],
        "bench:check",
    )
    .await?;
    Ok(Target3 {
        served,
        leaf,
        position,
    })
}

/// lead's root for `mission`, delegated to mid, then to leaf, through
/// `principal`'s client, each link with its scope: the leaf, and the log
/// position of its commit (for `at_least`).
async fn three_links(
    principal: &Client,
    scopes: [&Scope; 3],
    mission: &str,
) -> BenchResult<(MandateId, u64)> {
    let issue = match gen::issue("lead", 3, scopes[0].clone(), mission)? {
        mandate::domain::Command::Issue(i) => i,
        _ => unreachable!("gen::issue builds an issue"),
    };
    let mut parent = principal
        .issue(issue)
        .await?
        .mandate
        .ok_or("an issue names its mandate")?;
    let mut position = 0;
    for (holder, (next, scope)) in ["lead", "mid"]
        .into_iter()
        .zip([("mid", scopes[1]), ("leaf", scopes[2])])
    {
        let r = principal
            .as_actor(Actor::Agent(gen::agent_id(holder)?))
            .delegate(gen::delegation(parent, next, scope.clone(), None)?)
            .await?;
        parent = r.mandate.ok_or("a delegation names its mandate")?;
        position = r.commits.iter().map(|c| c.position).max().unwrap_or(0);
    }
    Ok((parent, position))
}

pub async fn remote(env: &Env, sizes: &Sizes, out: &Printer) -> BenchResult<()> {
    const S: &str = "check-remote";
    let target = chain_of_three(env).await?;
    let echo = Echo::start(&env.connect().await?).await?;
    let echo_subject = echo.subject().to_string();
    let nc = env.connect().await?;
    // The echo answers once its subscription is registered.
    wait_answered(&nc, &echo_subject, b"{}").await?;
    let check_subject = format!("mandate.q.{}.check", gen::tenant());
    let levels = [
        Level {
            name: "fresh",
            field: None,
            p50_target: 2.2,
        },
        Level {
            name: "local",
            field: Some(json!("local")),
            p50_target: 1.3,
        },
        Level {
            name: "at_least",
            field: Some(json!({"at_least": target.position})),
            p50_target: 1.3,
        },
    ];
    let size = format!("chain depth 3, {} callers", sizes.callers);
    for level in &levels {
        let mut body =
            json!({"mandate": target.leaf, "action": "finance:read", "resource": "reports/q3/x"});
        if let Some(f) = &level.field {
            body["consistency"] = f.clone();
        }
        let body = serde_json::to_vec(&body)?;
        let name = if level.field.is_none() {
            "fresh (default)"
        } else {
            level.name
        };
        if let Err(refusal) = ask(&nc, &check_subject, &body).await {
            for (row, unit) in [("p50", "us"), ("p99", "us"), ("throughput", "/s")] {
                out.print(&Row::unsupported(
                    S,
                    format!("check {name} {row}"),
                    unit,
                    &size,
                    format!("not supported by this engine: {refusal}"),
                ));
            }
            continue;
        }
        progress(&format!(
            "check-remote: {} requests at {name}, one caller then {}",
            sizes.requests, sizes.callers
        ));
        let (mut raw, mut eng) = (Samples::default(), Samples::default());
        for _ in 0..sizes.requests {
            let t = Instant::now();
            nc.request(echo_subject.clone(), body.clone().into())
                .await?;
            raw.push(t.elapsed());
            let t = Instant::now();
            ask(&nc, &check_subject, &body)
                .await
                .map_err(|e| format!("check at {name}: {e}"))?;
            eng.push(t.elapsed());
        }
        out.print(
            &Row::new(
                S,
                format!("check {name} p50"),
                eng.p50_us(),
                Some(raw.p50_us()),
                "us",
                eng.len(),
                &size,
            )
            .target(Target::RatioAtMost(level.p50_target)),
        );
        out.print(&Row::new(
            S,
            format!("check {name} p99"),
            eng.p99_us(),
            Some(raw.p99_us()),
            "us",
            eng.len(),
            &size,
        ));
        let raw_rate = throughput(&nc, &echo_subject, &body, sizes, false).await?;
        let rate = throughput(&nc, &check_subject, &body, sizes, true).await?;
        out.print(
            &Row::new(
                S,
                format!("check {name} throughput"),
                rate,
                Some(raw_rate),
                "/s",
                sizes.requests * 4,
                &size,
            )
            .target(Target::RatioAtLeast(0.7)),
        );
    }
    drop(echo);
    target.served.stop().await
}

/// Sends `body` until it is answered (at most 10 s).
async fn wait_answered(nc: &async_nats::Client, subject: &str, body: &[u8]) -> BenchResult<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(
            Duration::from_millis(500),
            nc.request(subject.to_string(), body.to_vec().into()),
        )
        .await
        {
            Ok(Ok(_)) => return Ok(()),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => return Err(format!("nothing answers {subject}").into()),
        }
    }
}

/// One engine query; an error reply (or a denial) is returned as its text.
/// The caller reads what it acts on (the outcome), as an agent's hot path
/// does; the rest of the decision is skipped over, not built.
async fn ask(nc: &async_nats::Client, subject: &str, body: &[u8]) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        ok: bool,
        #[serde(default)]
        result: Option<Outcome>,
        #[serde(default)]
        error: Option<Value>,
    }
    #[derive(serde::Deserialize)]
    struct Outcome {
        outcome: String,
    }
    let reply = nc
        .request(subject.to_string(), body.to_vec().into())
        .await
        .map_err(|e| e.to_string())?;
    let a: Answer = serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
    if !a.ok {
        return Err(a.error.unwrap_or(Value::Null).to_string());
    }
    match a.result {
        Some(Outcome { outcome }) if outcome == "allow" => Ok(()),
        _ => Err(format!(
            "denied: {}",
            String::from_utf8_lossy(&reply.payload)
        )),
    }
}

/// Requests per second with `callers` callers sharing one connection,
/// `4 × requests` in all.
async fn throughput(
    nc: &async_nats::Client,
    subject: &str,
    body: &[u8],
    sizes: &Sizes,
    engine: bool,
) -> BenchResult<f64> {
    let total = sizes.requests * 4;
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sizes.callers {
        let (nc, next, subject, body) =
            (nc.clone(), next.clone(), subject.to_string(), body.to_vec());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                if engine {
                    ask(&nc, &subject, &body).await?;
                } else {
                    nc.request(subject.clone(), body.clone().into())
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| format!("caller task: {e}"))??;
    }
    Ok(per_second(total, t.elapsed()))
}

/// Twenty grants, each on its own resource tree.
fn twenty_grants() -> Scope {
    let grants: Vec<String> = (0..20)
        .map(|i| format!("act{i}:read on res{i}/**"))
        .collect();
    Scope::parse(grants.iter().map(String::as_str)).expect("valid grants")
}

pub async fn local(env: &Env, calls: usize, out: &Printer) -> BenchResult<()> {
    const S: &str = "check-local";
    // In-process engine: the local check never touches the transport.
    let engine = Engine::embedded(
        &env.dir("embedded"),
        EngineConfig {
            audit: false,
            ..EngineConfig::default()
        },
    )
    .await?;
    let background = engine.start();
    let principal = Client::local(engine.clone(), gen::tenant(), gen::principal());
    let grants = twenty_grants();
    let (leaf, _) = three_links(&principal, [&grants, &grants, &grants], "bench:local").await?;
    let leaf_client = principal.as_actor(Actor::Agent(gen::agent_id("leaf")?));
    let guard = Guard::start(leaf_client, &GuardHub::new(), leaf, GuardConfig::default()).await?;
    // The last grant: every one before it is looked at and passed over.
    if !guard.check("act19:read", "res19/a/b").is_allowed() {
        return Err("the guard denies a granted request".into());
    }
    if !guard.allows("act19:read", "res19/a/b") {
        return Err("the guard's fast path denies a granted request".into());
    }
    let size = "chain depth 3, 20 grants each";
    // `check` builds the full decision (its chain shared, not copied);
    // `allows` is the agent's hot path, a plain yes or no.
    let methods: [(&str, &dyn Fn() -> bool); 2] = [
        ("guard check", &|| {
            std::hint::black_box(guard.check(std::hint::black_box("act19:read"), "res19/a/b"))
                .is_allowed()
        }),
        ("guard allows", &|| {
            std::hint::black_box(guard.allows(std::hint::black_box("act19:read"), "res19/a/b"))
        }),
    ];
    for (name, call) in methods {
        let per_call = per_call(calls, call)?;
        out.print(
            &Row::new(
                S,
                format!("{name} p50"),
                per_call.quantile_us(0.5) * 1e3,
                None,
                "ns",
                per_call.len() * BATCH,
                size,
            )
            .target(Target::Below(1000.0))
            .note("no baseline: absolute target; quantiles over batches of 1000 calls"),
        );
        out.print(&Row::new(
            S,
            format!("{name} p99"),
            per_call.quantile_us(0.99) * 1e3,
            None,
            "ns",
            per_call.len() * BATCH,
            size,
        ));
    }
    drop(guard);
    background.stop().await?;
    Ok(())
}

/// Calls per timed batch of the local check.
const BATCH: usize = 1000;

/// Times `calls` calls of `call` in batches, each sample the mean of one
/// batch; every call must allow.
fn per_call(calls: usize, call: &dyn Fn() -> bool) -> BenchResult<Samples> {
    let mut samples = Samples::default();
    let mut allowed = 0usize;
    for _ in 0..calls.div_ceil(BATCH) {
        let t = Instant::now();
        for _ in 0..BATCH {
            allowed += call() as usize;
        }
        samples.push(t.elapsed() / BATCH as u32);
    }
    if allowed != samples.len() * BATCH {
        return Err("the guard denied a granted request during the run".into());
    }
    Ok(samples)
}
