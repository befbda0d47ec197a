//! `commands`: issue, delegate and revoke across many trees, pipelined
//! (many callers at once), per second; one instance, then two sharing the
//! work (`--instances`). With `--cluster`: 1, 2 and 4 instances, instance k
//! connected to node k of the three, each count against as many raw
//! responders placed the same way, and rows of how both scale.
//! The baseline is a raw responder doing the least a command must do:
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
use crate::harness::{cpu_time, progress, BenchResult, Env, Served};
use crate::report::{per_second, Printer, Row, Target};

const S: &str = "commands";
/// The rows of a `--cluster` run.
const S_CLUSTER: &str = "commands-cluster";

pub struct Sizes {
    pub trees: usize,
    pub callers: usize,
    /// Engine instances serving at once, one run each.
    pub instances: Vec<usize>,
}

pub async fn run(env: &Env, sizes: &Sizes, out: &Printer) -> BenchResult<()> {
    let clustered = env.nodes() > 1;
    let scenario = if clustered { S_CLUSTER } else { S };
    let size = if clustered {
        format!(
            "{} trees, {} callers, {} nodes, R{}",
            sizes.trees,
            sizes.callers,
            env.nodes(),
            env.replicas()
        )
    } else {
        format!("{} trees, {} callers", sizes.trees, sizes.callers)
    };
    // On one server, one baseline (one responder) for every instance
    // count, as before; on a cluster, each instance count against as many
    // responders placed as the instances are.
    let single = if clustered {
        None
    } else {
        Some(baseline(env, sizes, 1).await?)
    };
    // The callers' connections: one per node, the operations dealt round
    // them (a cluster delivers a queue request to a member on the caller's
    // own node when there is one, so callers on one node would reach only
    // the instances there).
    let mut clients = Vec::with_capacity(env.nodes());
    for node in 0..env.nodes() {
        clients.push(Client::nats(
            env.connect_to(node).await?,
            gen::tenant(),
            gen::principal(),
        ));
    }
    let clients = Arc::new(clients);
    let leads = Arc::new(
        clients
            .iter()
            .map(|c| Ok(c.as_actor(Actor::Agent(gen::agent_id("lead")?))))
            .collect::<BenchResult<Vec<_>>>()?,
    );
    let mut served: Vec<Served> = Vec::new();
    // The first instance count's rates and baseline, for the scaling rows.
    let mut first: Option<(usize, [f64; 3], f64)> = None;
    for &instances in &sizes.instances {
        let raw = match single {
            Some(raw) => raw,
            None => baseline(env, sizes, instances).await?,
        };
        while served.len() > instances {
            if let Some(s) = served.pop() {
                s.stop().await?;
            }
        }
        while served.len() < instances {
            // Instance k on node k (modulo the nodes).
            let k = served.len();
            let s = Served::start_on(env, &env.dir(&format!("engine-{}", k + 1)), k).await?;
            s.settled(&format!("commands (instance {})", k + 1)).await?;
            served.push(s);
        }
        progress(&format!(
            "commands: {} trees on {instances} instance(s)",
            sizes.trees
        ));
        let cpu_before = cpu_times(env)?;
        let wall = Instant::now();
        let (roots, issue_rate) = pipelined(sizes, {
            let clients = clients.clone();
            move |i| {
                let client = clients[i % clients.len()].clone();
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
        let (_, delegate_rate) = pipelined(sizes, {
            let (leads, roots) = (leads.clone(), roots.clone());
            move |i| {
                let (lead, root) = (leads[i % leads.len()].clone(), roots[i]);
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
            let (clients, roots) = (clients.clone(), roots.clone());
            move |i| {
                let (client, root) = (clients[i % clients.len()].clone(), roots[i]);
                async move {
                    client.revoke(root, None).await?;
                    Ok(root)
                }
            }
        })
        .await?;
        let rates = [issue_rate, delegate_rate, revoke_rate];
        if clustered {
            // Where the two cores went over the three phases: this process
            // (engines and callers) and each node.
            let wall = wall.elapsed().as_secs_f64();
            let names = std::iter::once("this process (engines, callers)".to_string())
                .chain((0..env.nodes()).map(|n| format!("nats-server n{n}")));
            for ((name, after), before) in names.zip(cpu_times(env)?).zip(cpu_before) {
                out.print(&Row::new(
                    scenario,
                    format!("cpu, {instances} instance(s), {name}"),
                    100.0 * (after - before).as_secs_f64() / wall,
                    None,
                    "% core",
                    1,
                    &size,
                ));
            }
        }
        for (verb, rate) in ["issue", "delegate", "revoke"].into_iter().zip(rates) {
            out.print(
                &Row::new(
                    scenario,
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
        match first {
            None => first = Some((instances, rates, raw)),
            // How the rate grew from the first instance count, beside how
            // the baseline's grew with as many responders.
            Some((n0, rates0, raw0)) if clustered => {
                for ((verb, rate), rate0) in ["issue", "delegate", "revoke"]
                    .into_iter()
                    .zip(rates)
                    .zip(rates0)
                {
                    out.print(
                        &Row::new(
                            scenario,
                            format!("{verb}, scaling {instances} vs {n0} instance(s)"),
                            rate / rate0,
                            Some(raw / raw0),
                            "x",
                            sizes.trees,
                            &size,
                        )
                        .note("value: this rate over the first count's; baseline: the same for the raw responders"),
                    );
                }
            }
            Some(_) => {}
        }
    }
    for s in served {
        s.stop().await?;
    }
    Ok(())
}

/// CPU time used so far by this process, then by each nats-server the run
/// started.
fn cpu_times(env: &Env) -> BenchResult<Vec<std::time::Duration>> {
    std::iter::once(None)
        .chain(env.server_pids().into_iter().map(Some))
        .map(cpu_time)
        .collect()
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
/// to a new subject of a stream (on the run's replicas) with expected
/// sequence 0 and a msg-id, and answered after the ack. `responders` of
/// them in one queue group, responder k on node k as the engine instances
/// are; the callers dealt over one connection per node.
async fn baseline(env: &Env, sizes: &Sizes, responders: usize) -> BenchResult<f64> {
    progress(&format!(
        "commands: raw responder baseline, {} requests, {responders} responder(s)",
        sizes.trees
    ));
    let js = async_nats::jetstream::new(env.connect().await?);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["benchraw.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: env.replicas(),
        ..Default::default()
    })
    .await?;
    let subject = format!("bench.rawcmd.{}", uuid::Uuid::new_v4().simple());
    let mut tasks = Vec::with_capacity(responders);
    for k in 0..responders {
        let nc = env.connect_to(k).await?;
        let js = async_nats::jetstream::new(nc.clone());
        let mut sub = nc
            .queue_subscribe(subject.clone(), "bench-raw".into())
            .await?;
        nc.flush().await?;
        tasks.push(tokio::spawn(async move {
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
        }));
    }
    let (_, _, commit) = gen::root_commit(0)?;
    let mut callers = Vec::with_capacity(env.nodes());
    for node in 0..env.nodes() {
        let caller = env.connect_to(node).await?;
        // Answered once the subscription has reached this caller's node.
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
        callers.push(caller);
    }
    let done = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let results: Vec<BenchResult<()>> = futures::stream::iter(0..sizes.trees)
        .map(|i| {
            let (caller, subject, commit, done) = (
                callers[i % callers.len()].clone(),
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
    for task in tasks {
        task.abort();
    }
    results.into_iter().collect::<BenchResult<Vec<()>>>()?;
    Ok(per_second(done.load(Ordering::Relaxed), elapsed))
}
