//! `rebuild`: the projection rebuilt from a log of many commits, per second,
//! against reading the same stream without applying it; and how long an
//! engine takes to start again on a data directory that is up to date.
//!
//! The appends that write that log are timed too, against raw JetStream
//! publishes with the same headers, and the embedded (sled) log beside them.
//!
//! `memory`: resident memory of an engine holding many live mandates while
//! remote checks run on them. The engine runs in a process of its own (this
//! program again), whose VmRSS is read idle, once its projection is built,
//! and while it serves the checks.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mandate::engine::replay_log;
use mandate::log::{AnyLog, EmbeddedLog, EventLog};
use mandate::store::Store;
use serde_json::json;

use crate::gen;
use crate::harness::{engine_caught_up, progress, BenchResult, EngineProcess, Env, Served};
use crate::report::{per_second, Printer, Row, Target};

pub async fn rebuild(env: &Env, events: usize, out: &Printer) -> BenchResult<()> {
    const S: &str = "rebuild";
    let log = env.log().await?;
    let size = format!("{events} commits of one event");
    progress(&format!(
        "rebuild: appending {events} commits, raw and through the log"
    ));
    let raw = raw_appends(env, events, APPENDS_IN_FLIGHT).await?;
    let t = Instant::now();
    gen::append_roots(&log, events, APPENDS_IN_FLIGHT).await?;
    let appended = per_second(events, t.elapsed());
    out.print(
        &Row::new(
            S,
            "JetStream log append, pipelined",
            appended,
            Some(raw),
            "/s",
            events,
            &size,
        )
        .note(format!(
        "{APPENDS_IN_FLIGHT} in flight; baseline: raw publishes with expected sequence and msg-id"
    )),
    );
    let any = AnyLog::Nats(log.clone());

    progress("rebuild: reading the stream without applying");
    let t = Instant::now();
    let (mut after, mut read) = (0, 0usize);
    loop {
        let records = any.read_all(None, after, 4096).await?;
        let Some(last) = records.last() else { break };
        after = last.position;
        read += records.len();
    }
    let read_rate = per_second(read, t.elapsed());

    progress("rebuild: replaying into a fresh projection");
    let store = Store::open(env.dir("rebuilt"))?;
    let t = Instant::now();
    let n = replay_log(&any, &store).await? as usize;
    let rate = per_second(n, t.elapsed());
    drop(store);
    out.print(
        &Row::new(
            S,
            "rebuild rate vs read rate",
            rate,
            Some(read_rate),
            "/s",
            n,
            &size,
        )
        .target(Target::RatioAtLeast(0.5)),
    );
    out.print(
        &Row::new(S, "rebuild rate", rate, None, "/s", n, &size).target(Target::AtLeast(200_000.0)),
    );

    embedded(env, events, &size, out).await?;

    // First start: the engine builds its projection by following the log.
    progress("rebuild: first start of an engine on the log");
    let dir = env.dir("engine");
    let t = Instant::now();
    let served = Served::start(env, &dir).await?;
    served.caught_up("rebuild (first start)").await?;
    let first = t.elapsed();
    served.stop().await?;
    out.print(&Row::new(
        S,
        "first start to caught up",
        first.as_secs_f64(),
        None,
        "s",
        1,
        &size,
    ));

    progress("rebuild: restart on the same data directory");
    let t = Instant::now();
    let served = Served::start(env, &dir).await?;
    served.caught_up("rebuild (restart)").await?;
    let health = served.engine.health().await?;
    let restart = t.elapsed();
    served.stop().await?;
    out.print(
        &Row::new(
            S,
            "restart on an up-to-date directory",
            restart.as_secs_f64(),
            None,
            "s",
            1,
            &size,
        )
        .target(Target::Below(2.0))
        .note(format!(
            "until the projection answers health at position {}",
            health.position
        )),
    );
    Ok(())
}

/// Commits in flight while a log is written.
const APPENDS_IN_FLIGHT: usize = 256;

/// The embedded (sled) log: pipelined appends and a rebuild from it. No
/// NATS baseline: it is the backend without NATS.
async fn embedded(env: &Env, events: usize, size: &str, out: &Printer) -> BenchResult<()> {
    const S: &str = "rebuild";
    progress(&format!(
        "rebuild: {events} commits through the embedded log"
    ));
    let log = EmbeddedLog::open(env.dir("embedded-log"))?;
    let t = Instant::now();
    gen::append_roots(&log, events, APPENDS_IN_FLIGHT).await?;
    let appended = per_second(events, t.elapsed());
    out.print(&Row::new(
        S,
        "embedded log append, pipelined",
        appended,
        None,
        "/s",
        events,
        size,
    ));
    let store = Store::open(env.dir("rebuilt-embedded"))?;
    let t = Instant::now();
    let n = replay_log(&AnyLog::Embedded(log), &store).await? as usize;
    out.print(&Row::new(
        S,
        "rebuild rate, embedded log",
        per_second(n, t.elapsed()),
        None,
        "/s",
        n,
        size,
    ));
    Ok(())
}

/// Raw JetStream publishes of commits of the same size, each to a new
/// subject with expected sequence 0 and a msg-id, `tasks` at a time.
async fn raw_appends(env: &Env, n: usize, tasks: usize) -> BenchResult<f64> {
    let js = async_nats::jetstream::new(env.connect().await?);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW_APPENDS".into(),
        subjects: vec!["benchappend.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let (_, _, commit) = gen::root_commit(0)?;
    let t = Instant::now();
    let results: Vec<BenchResult<()>> = futures::stream::iter(0..n)
        .map(|_| {
            let (js, commit) = (js.clone(), commit.clone());
            async move {
                let id = uuid::Uuid::new_v4().simple().to_string();
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.as_str());
                headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
                js.publish_with_headers(format!("benchappend.{id}"), headers, commit)
                    .await?
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(tasks)
        .collect()
        .await;
    let rate = per_second(n, t.elapsed());
    results.into_iter().collect::<BenchResult<Vec<()>>>()?;
    Ok(rate)
}

/// The engine of the `memory` scenario, alone in a process of its own (this
/// program again, with `--engine-process`), so that its resident memory is
/// the engine's and nothing else's: says `serving` on stdout, and stops when
/// stdin closes.
pub async fn engine_process(url: &str, dir: &std::path::Path) -> BenchResult<()> {
    let env = Env::new(Some(url), None)?;
    let served = Served::start(&env, dir).await?;
    println!("serving");
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await?;
    served.stop().await
}

pub async fn memory(
    env: &Env,
    mandates: usize,
    callers: usize,
    seconds: u64,
    out: &Printer,
) -> BenchResult<()> {
    const S: &str = "memory";
    let engine = EngineProcess::start(env, "memory")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = engine.rss()?;
    let log = env.log().await?;
    progress(&format!("memory: appending {mandates} live roots"));
    let roots = Arc::new(gen::append_roots(&log, mandates, APPENDS_IN_FLIGHT).await?);
    let position = log.last_position().await?;
    drop(log);
    let nc = env.connect().await?;
    engine_caught_up(&nc, position, "memory").await?;
    let loaded = engine.rss()?;
    progress(&format!(
        "memory: {callers} callers checking for {seconds} s"
    ));
    let subject = format!("mandate.q.{}.check", gen::tenant());
    let stop = Arc::new(AtomicBool::new(false));
    let (next, checks) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (nc, subject, roots, stop, next, checks) = (
            nc.clone(),
            subject.clone(),
            roots.clone(),
            stop.clone(),
            next.clone(),
            checks.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(7919, Ordering::Relaxed) % roots.len();
                let body = json!({"mandate": roots[i], "action": "finance:read", "resource": "reports/q3"});
                let reply = nc.request(subject.clone(), serde_json::to_vec(&body)?.into()).await?;
                let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
                if v["ok"] != json!(true) {
                    return Err(format!("check failed: {}", v["error"]).into());
                }
                checks.fetch_add(1, Ordering::Relaxed);
            }
            BenchResult::Ok(())
        }));
    }
    let mut peak = loaded;
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(engine.rss()?);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.map_err(|e| format!("checker task: {e}"))??;
    }
    drop(engine);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let size = format!("{mandates} live mandates");
    let n = checks.load(Ordering::Relaxed) as usize;
    out.print(&Row::new(
        S,
        "engine RSS, idle on an empty log",
        mib(idle),
        None,
        "MiB",
        1,
        &size,
    ));
    out.print(&Row::new(
        S,
        "engine RSS, projection built",
        mib(loaded),
        None,
        "MiB",
        1,
        &size,
    ));
    let mut peak_row = Row::new(
        S,
        "engine RSS peak while checks run",
        mib(peak),
        None,
        "MiB",
        n,
        &size,
    )
    .target(Target::Below(1024.0));
    if mandates < 1_000_000 {
        peak_row = peak_row.note("the 1 GiB target is for 1,000,000 mandates (--mandates 1000000)");
    }
    out.print(&peak_row);
    out.print(
        &Row::new(
            S,
            "engine growth per mandate",
            peak.saturating_sub(idle) as f64 / mandates.max(1) as f64,
            None,
            "bytes",
            n,
            &size,
        )
        .note("(peak - idle) / mandates, of the engine's own process"),
    );
    Ok(())
}
