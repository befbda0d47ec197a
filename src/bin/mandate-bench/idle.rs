//! `idle-guards`: what guards that do nothing cost. N guards hold the leaves
//! of one tree (root → mid → sub → leaves, as in `cascade`); they live in
//! this process, on one connection, sharing one `GuardHub`, with the default
//! `GuardConfig`. The engine serves in a process of its own. Nothing changes
//! in the tree: once the guards have settled, the CPU time each process
//! uses over an idle window is read from `/proc/<pid>/stat` (utime + stime)
//! and given as a percentage of one core. Also counted over the window: the
//! queries and commands the engine was sent (a plain subscriber on their
//! subjects gets a copy of each), which show whether guards read anything
//! while idle.
//!
//! No baseline: the targets are absolute (for 10,000 guards, the engine
//! under 1% of a core, the guards' process under 2%).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mandate::client::guard::GuardHub;
use mandate::client::{Client, Guard, GuardConfig};
use mandate::domain::Actor;
use mandate::log::EventLog;

use crate::gen;
use crate::harness::{cpu_time, engine_caught_up, progress, BenchResult, EngineProcess, Env};
use crate::report::{Printer, Row, Target};

const S: &str = "idle-guards";

/// The guard count the targets are set for.
const TARGET_GUARDS: usize = 10_000;

pub struct Sizes {
    /// Guard counts, one idle window each.
    pub guards: Vec<usize>,
    /// The idle window measured.
    pub window: Duration,
    /// How long the guards run before the window opens.
    pub settle: Duration,
}

pub async fn run(env: &Env, sizes: &Sizes, out: &Printer) -> BenchResult<()> {
    let engine = EngineProcess::start(env, "engine")?;
    let log = env.log().await?;
    let nc = env.connect().await?;
    for &n in &sizes.guards {
        one_size(env, &engine, &log, &nc, sizes, n, out).await?;
    }
    Ok(())
}

/// CPU time used so far by the engine, this process and the nats-server
/// (when this program started it).
struct CpuTimes {
    engine: Duration,
    guards: Duration,
    server: Option<Duration>,
}

impl CpuTimes {
    fn read(env: &Env, engine: &EngineProcess) -> BenchResult<Self> {
        Ok(Self {
            engine: cpu_time(Some(engine.pid()))?,
            guards: cpu_time(None)?,
            server: env.server_pid().map(|p| cpu_time(Some(p))).transpose()?,
        })
    }
}

async fn one_size(
    env: &Env,
    engine: &EngineProcess,
    log: &mandate::log::JetStreamLog,
    nc: &async_nats::Client,
    sizes: &Sizes,
    n: usize,
    out: &Printer,
) -> BenchResult<()> {
    progress(&format!("idle-guards: a tree of {n} leaves"));
    let (_root, leaves) = gen::tree_of_leaves(log, n).await?;
    engine_caught_up(nc, log.last_position().await?, S).await?;

    // The guards: one connection, one hub, the default settings; started
    // 64 at a time (each start reads its chain).
    let client = Client::nats(
        env.connect().await?,
        gen::tenant(),
        Actor::Agent(gen::agent_id("sub")?),
    );
    let hub = GuardHub::new();
    let mut guards = Vec::with_capacity(n);
    let mut stream = futures::stream::iter(
        leaves
            .iter()
            .map(|&leaf| Guard::start(client.clone(), &hub, leaf, GuardConfig::default())),
    )
    .buffer_unordered(64);
    let mut said = Instant::now();
    while let Some(g) = stream.next().await {
        guards.push(g?);
        if said.elapsed() > Duration::from_secs(5) {
            progress(&format!(
                "idle-guards: {} of {n} guards started",
                guards.len()
            ));
            said = Instant::now();
        }
    }
    drop(stream);
    progress(&format!(
        "idle-guards: {n} guards settling for {} s",
        sizes.settle.as_secs_f64()
    ));
    tokio::time::sleep(sizes.settle).await;

    // Every query and command sent to the engine over the window.
    let requests = Arc::new(AtomicU64::new(0));
    let counter = env.connect().await?;
    let mut tasks = Vec::new();
    for verbs in ["mandate.q", "mandate.cmd"] {
        let mut sub = counter
            .subscribe(format!("{verbs}.{}.*", gen::tenant()))
            .await?;
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            while sub.next().await.is_some() {
                requests.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // A round trip: the subscriptions are registered before the window.
    counter.flush().await?;
    counter
        .request(format!("mandate.q.{}.health", gen::tenant()), "{}".into())
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;

    progress(&format!(
        "idle-guards: {n} guards idle, measuring for {} s",
        sizes.window.as_secs_f64()
    ));
    let asked_before = requests.load(Ordering::Relaxed);
    let before = CpuTimes::read(env, engine)?;
    let t = Instant::now();
    let end = t + sizes.window;
    while Instant::now() < end {
        let step = end
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(10));
        tokio::time::sleep(step).await;
        if Instant::now() < end {
            progress(&format!(
                "idle-guards: {:.0} of {} s",
                t.elapsed().as_secs_f64(),
                sizes.window.as_secs_f64()
            ));
        }
    }
    let after = CpuTimes::read(env, engine)?;
    let wall = t.elapsed();
    let asked = requests.load(Ordering::Relaxed) - asked_before;
    for task in tasks {
        task.abort();
    }

    // The guards idled holding their mandates, not denying.
    let allowing = guards
        .iter()
        .filter(|g| g.allows("finance:read", "reports/q3/summary"))
        .count();
    drop(guards);

    let size = format!("{n} guards, 1 conn, {:.0} s idle", wall.as_secs_f64());
    let pct = |a: Duration, b: Duration| {
        100.0 * b.saturating_sub(a).as_secs_f64() / wall.as_secs_f64().max(1e-9)
    };
    let scale = |row: Row, note: Option<String>| {
        let scaled =
            (n < TARGET_GUARDS).then(|| format!("the target is for {TARGET_GUARDS} guards"));
        match (scaled, note) {
            (Some(a), Some(b)) => row.note(format!("{a}; {b}")),
            (Some(a), None) | (None, Some(a)) => row.note(a),
            (None, None) => row,
        }
    };
    out.print(&scale(
        Row::new(
            S,
            "engine CPU, guards idle",
            pct(before.engine, after.engine),
            None,
            "%core",
            1,
            &size,
        )
        .target(Target::Below(1.0)),
        None,
    ));
    out.print(&scale(
        Row::new(
            S,
            "guard process CPU, guards idle",
            pct(before.guards, after.guards),
            None,
            "%core",
            1,
            &size,
        )
        .target(Target::Below(2.0)),
        Some(format!(
            "{allowing} of {n} guards allowing at the end; includes counting the requests"
        )),
    ));
    if let (Some(a), Some(b)) = (before.server, after.server) {
        out.print(&Row::new(
            S,
            "nats-server CPU, guards idle",
            pct(a, b),
            None,
            "%core",
            1,
            &size,
        ));
    }
    out.print(
        &Row::new(
            S,
            "requests to the engine, guards idle",
            asked as f64 / wall.as_secs_f64().max(1e-9),
            None,
            "/s",
            asked as usize,
            &size,
        )
        .note("queries and commands sent over the window"),
    );
    Ok(())
}
