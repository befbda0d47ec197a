//! `commands`: issue, delegate and revoke across many trees, pipelined
//! (many callers at once), per second; one instance, then two sharing the
//! work. The baseline is a raw responder doing the least a command must do:
//! receive the request, publish to JetStream with an expected subject
//! sequence and a msg-id (a payload of the commit's size), and reply after
//! the ack; the same number of callers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use mandate::client::Client;
use mandate::domain::{Actor, Command, MandateId};

use crate::gen;
use crate::harness::{progress, BenchResult, Env, Served};
use crate::report::{per_second, Printer, Row, Target};

const S: &str = "commands";

pub struct Sizes {
    pub trees: usize,
    pub callers: usize,
}

pub async fn run(env: &Env, sizes: &Sizes, out: &Printer) -> BenchResult<()> {
    let raw = baseline(env, sizes).await?;
    let size = format!("{} trees, {} callers", sizes.trees, sizes.callers);
    let first = Served::start(env, &env.dir("engine-1")).await?;
    let client = Client::nats(env.connect().await?, gen::tenant(), gen::principal());
    for instances in [1, 2] {
        let second = if instances == 2 {
            let s = Served::start(env, &env.dir("engine-2")).await?;
            s.settled("commands (second instance)").await?;
            Some(s)
        } else {
            None
        };
        progress(&format!(
            "commands: {} trees on {instances} instance(s)",
            sizes.trees
        ));
        let (roots, issue_rate) = pipelined(sizes, {
            let client = client.clone();
            move |i| {
                let client = client.clone();
                async move {
                    let Command::Issue(issue) = gen::issue(
                        "lead",
                        2,
                        gen::root_scope(),
                        &format!("bench:cmd:{instances}:{i}"),
                    )?
                    else {
                        unreachable!("gen::issue builds an issue")
                    };
                    Ok(client
                        .issue(issue)
                        .await?
                        .mandate
                        .ok_or("an issue names its mandate")?)
                }
            }
        })
        .await?;
        let roots = Arc::new(roots);
        let lead = client.as_actor(Actor::Agent(gen::agent_id("lead")?));
        let (_, delegate_rate) = pipelined(sizes, {
            let roots = roots.clone();
            move |i| {
                let (lead, root) = (lead.clone(), roots[i]);
                async move {
                    let d = gen::delegation(root, "worker", gen::worker_scope(), None)?;
                    Ok(lead
                        .delegate(d)
                        .await?
                        .mandate
                        .ok_or("a delegation names its mandate")?)
                }
            }
        })
        .await?;
        let (_, revoke_rate) = pipelined(sizes, {
            let (client, roots) = (client.clone(), roots.clone());
            move |i| {
                let (client, root) = (client.clone(), roots[i]);
                async move {
                    client.revoke(root, None).await?;
                    Ok(root)
                }
            }
        })
        .await?;
        for (verb, rate) in [
            ("issue", issue_rate),
            ("delegate", delegate_rate),
            ("revoke", revoke_rate),
        ] {
            out.print(
                &Row::new(
                    S,
                    format!("{verb}, {instances} instance(s)"),
                    rate,
                    Some(raw),
                    "/s",
                    sizes.trees,
                    &size,
                )
                .target(Target::RatioAtLeast(0.5)),
            );
        }
        if let Some(s) = second {
            s.stop().await?;
        }
    }
    first.stop().await
}

/// Runs `op(i)` for every tree index, `callers` at a time; the results in
/// index order and the rate.
async fn pipelined<F, Fut>(sizes: &Sizes, op: F) -> BenchResult<(Vec<MandateId>, f64)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = BenchResult<MandateId>>,
{
    let t = Instant::now();
    let mut results: Vec<(usize, MandateId)> = futures::stream::iter(0..sizes.trees)
        .map(|i| {
            let fut = op(i);
            async move { fut.await.map(|m| (i, m)) }
        })
        .buffer_unordered(sizes.callers)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<BenchResult<_>>()?;
    let rate = per_second(sizes.trees, t.elapsed());
    results.sort_by_key(|(i, _)| *i);
    Ok((results.into_iter().map(|(_, m)| m).collect(), rate))
}

/// The raw responder's rate: requests of a command's size, each published
/// to a new subject of a stream with expected sequence 0 and a msg-id, and
/// answered after the ack.
async fn baseline(env: &Env, sizes: &Sizes) -> BenchResult<f64> {
    progress(&format!(
        "commands: raw responder baseline, {} requests",
        sizes.trees
    ));
    let nc = env.connect().await?;
    let js = async_nats::jetstream::new(nc.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["benchraw.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let subject = format!("bench.rawcmd.{}", uuid::Uuid::new_v4().simple());
    let mut sub = nc.subscribe(subject.clone()).await?;
    let responder = tokio::spawn({
        let nc = nc.clone();
        async move {
            while let Some(m) = sub.next().await {
                let (nc, js) = (nc.clone(), js.clone());
                tokio::spawn(async move {
                    let id = uuid::Uuid::new_v4().simple().to_string();
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", id.as_str());
                    headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
                    let stored = match js
                        .publish_with_headers(format!("benchraw.{id}"), headers, m.payload)
                        .await
                    {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    if let Some(reply) = m.reply {
                        let _ = nc
                            .publish(reply, if stored { "ok" } else { "failed" }.into())
                            .await;
                    }
                });
            }
        }
    });
    let (_, _, commit) = gen::root_commit(0)?;
    let caller = env.connect().await?;
    // Registered once it answers.
    let started = Instant::now();
    while caller
        .request(subject.clone(), commit.clone())
        .await
        .is_err()
    {
        if started.elapsed().as_secs() > 10 {
            return Err("the raw responder never answered".into());
        }
    }
    let done = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let results: Vec<BenchResult<()>> = futures::stream::iter(0..sizes.trees)
        .map(|_| {
            let (caller, subject, commit, done) = (
                caller.clone(),
                subject.clone(),
                commit.clone(),
                done.clone(),
            );
            async move {
                let reply = caller.request(subject, commit).await?;
                if &reply.payload[..] != b"ok" {
                    return Err("the raw responder's publish failed".into());
                }
                done.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .buffer_unordered(sizes.callers)
        .collect()
        .await;
    let elapsed = t.elapsed();
    responder.abort();
    results.into_iter().collect::<BenchResult<Vec<()>>>()?;
    Ok(per_second(done.load(Ordering::Relaxed), elapsed))
}
