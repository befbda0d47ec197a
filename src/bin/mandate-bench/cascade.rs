//! `cascade`: revoking a root whose tree holds many live guards, from
//! sending the command until the last guard's cancellation fires. Guards
//! hold leaves three levels below the root; they live in one process on one
//! connection, or spread over many connections. The baseline is one core
//! publish reaching as many plain subscribers over the same connections.
//! With `--cluster`, connection c goes to node c of the three (the engine
//! and the revoking principal on the first), every stream on three
//! replicas; the baseline's subscribers sit on the same connections.

use std::time::{Duration, Instant};

use futures::StreamExt;
use mandate::client::guard::GuardHub;
use mandate::client::{Client, Guard, GuardConfig};
use mandate::domain::Actor;

use crate::gen;
use crate::harness::{progress, BenchResult, Env, Served};
use crate::report::{Printer, Row, Samples, Target};

const S: &str = "cascade";
/// The rows of a `--cluster` run.
const S_CLUSTER: &str = "cascade-cluster";

pub struct Sizes {
    /// The runs, one after the other.
    pub layouts: Vec<Layout>,
    /// Every baseline round before the first revoke, instead of one
    /// baseline round before each revoke.
    pub baseline_first: bool,
}

/// One run of rounds: so many guards over so many connections.
pub struct Layout {
    pub guards: usize,
    pub connections: usize,
    pub rounds: usize,
}

pub async fn run(env: &Env, sizes: &Sizes, out: &Printer) -> BenchResult<()> {
    let served = Served::start(env, &env.dir("engine")).await?;
    let log = env.log().await?;
    for layout in &sizes.layouts {
        one_layout(env, &served, &log, sizes.baseline_first, layout, out).await?;
    }
    served.stop().await
}

/// The rounds of one guard count on one connection layout, and their rows.
///
/// The baseline's subscribers are made once and kept. By default each
/// round times one baseline publish once its guards have started, then the
/// revoke, so both figures of a round see the same moment of a machine
/// others share; with `baseline_first`, every baseline round comes before
/// the first tree (the order of earlier runs).
async fn one_layout(
    env: &Env,
    served: &Served,
    log: &mandate::log::JetStreamLog,
    baseline_first: bool,
    layout: &Layout,
    out: &Printer,
) -> BenchResult<()> {
    let (guards, conns, rounds) = (layout.guards, layout.connections, layout.rounds);
    let mut base = Baseline::start(env, guards, conns).await?;
    let mut raw = Samples::default();
    if baseline_first {
        for _ in 0..rounds {
            raw.push(base.round().await?);
        }
    }
    let mut revoke = Samples::default();
    for round in 0..rounds {
        progress(&format!(
            "cascade: round {} of {} with {} guards on {conns} connection(s)",
            round + 1,
            rounds,
            guards
        ));
        let paired = (!baseline_first).then_some(&mut base);
        let (took, base_took) = one_round(env, served, log, guards, conns, paired).await?;
        progress(&format!(
            "cascade: round {}: revoke to last guard {} us, baseline {}",
            round + 1,
            took.as_micros(),
            base_took.map_or("before".into(), |b| format!("{} us", b.as_micros()))
        ));
        revoke.push(took);
        if let Some(b) = base_took {
            raw.push(b);
        }
    }
    base.stop();
    let (scenario, size) = if env.nodes() > 1 {
        (
            S_CLUSTER,
            format!(
                "{guards} guards, depth 3, {conns} conn over {} nodes, R{}",
                env.nodes(),
                env.replicas()
            ),
        )
    } else {
        (S, format!("{guards} guards, depth 3, {conns} conn"))
    };
    let (shape, target) = if conns == 1 {
        ("one process", 0.5)
    } else {
        ("spread", 1.2)
    };
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        out.print(
            &Row::new(
                scenario,
                format!("revoke to last guard, {shape}, {name}"),
                revoke.quantile_us(q),
                Some(raw.quantile_us(q)),
                "us",
                revoke.len(),
                &size,
            )
            .target(Target::RatioAtMost(target)),
        );
    }
    Ok(())
}

/// One fresh tree (root, two levels, `guards` leaves), its guards, and the
/// revoke of its root: the time from sending it to the last cancellation.
/// With `base`, one baseline round is timed first, once the guards have
/// started (so both see the same process and server, just apart).
async fn one_round(
    env: &Env,
    served: &Served,
    log: &mandate::log::JetStreamLog,
    guards: usize,
    conns: usize,
    base: Option<&mut Baseline>,
) -> BenchResult<(Duration, Option<Duration>)> {
    let (root, leaves) = gen::tree_of_leaves(log, guards).await?;
    served.settled("cascade").await?;
    let config = GuardConfig {
        lease: Duration::from_secs(3600),
        ..GuardConfig::default()
    };
    let mut clients = Vec::new();
    for c in 0..conns {
        let nc = env.connect_to(c).await?;
        clients.push((
            Client::nats(nc, gen::tenant(), Actor::Agent(gen::agent_id("sub")?)),
            GuardHub::new(),
        ));
    }
    let per = guards.div_ceil(conns);
    let mut started = Vec::with_capacity(guards);
    for (c, chunk) in leaves.chunks(per).enumerate() {
        let (client, hub) = &clients[c];
        let futs = chunk
            .iter()
            .map(|&leaf| Guard::start(client.clone(), hub, leaf, config.clone()));
        // Started 64 at a time: each start reads the chain and the state.
        let mut stream = futures::stream::iter(futs).buffer_unordered(64);
        while let Some(g) = stream.next().await {
            started.push(g?);
        }
    }
    let tokens: Vec<_> = started.iter().map(Guard::cancellation).collect();
    let principal = Client::nats(env.connect().await?, gen::tenant(), gen::principal());
    let base_took = match base {
        Some(b) => Some(b.round().await?),
        None => None,
    };
    // Timed from sending the revoke until every guard's cancellation has
    // been seen, one token after another; the reply is awaited beside it
    // (a failed revoke fails the round) but is not what is timed.
    let t = Instant::now();
    let all = async {
        for token in &tokens {
            if !token.is_cancelled() {
                token.cancelled().await;
            }
        }
        t.elapsed()
    };
    let (revoked, elapsed) = tokio::join!(
        principal.revoke(root, None),
        tokio::time::timeout(Duration::from_secs(120), all)
    );
    revoked?;
    let took = elapsed.map_err(|_| "not every guard was cancelled within 120 s of the revoke")?;
    Ok((took, base_took))
}

/// Plain subscribers of one subject, spread over connections as the guards
/// are, and a publisher: each round is one core publish, timed until every
/// subscriber has it.
struct Baseline {
    subject: String,
    subscribers: usize,
    publisher: async_nats::Client,
    rx: tokio::sync::mpsc::UnboundedReceiver<(usize, u64)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _connections: Vec<async_nats::Client>,
    rounds: u64,
}

impl Baseline {
    /// Subscribes `subscribers` plain subscribers over `conns` connections,
    /// and returns once the server delivers to every one of them.
    async fn start(env: &Env, subscribers: usize, conns: usize) -> BenchResult<Self> {
        progress(&format!(
            "cascade: baseline, one publish to {subscribers} subscribers on {conns} connection(s)"
        ));
        let subject = format!("bench.fanout.{}", uuid::Uuid::new_v4().simple());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64)>();
        let mut tasks = Vec::new();
        let mut keep = Vec::new();
        let per = subscribers.div_ceil(conns);
        let mut left = subscribers;
        for c in 0..conns {
            let nc = env.connect_to(c).await?;
            for _ in 0..per.min(left) {
                let mut sub = nc.subscribe(subject.clone()).await?;
                let (tx, id) = (tx.clone(), tasks.len());
                tasks.push(tokio::spawn(async move {
                    while let Some(m) = sub.next().await {
                        let round = std::str::from_utf8(&m.payload)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        if tx.send((id, round)).is_err() {
                            return;
                        }
                    }
                }));
            }
            left = left.saturating_sub(per);
            keep.push(nc);
        }
        let publisher = env.connect().await?;
        // Round 0, published until every subscriber has seen it, only proves
        // that every subscription is registered at the server.
        let mut seen = vec![false; subscribers];
        let mut missing = subscribers;
        let deadline = Instant::now() + Duration::from_secs(60);
        while missing > 0 {
            if Instant::now() > deadline {
                return Err("baseline subscriptions not all registered within 60 s".into());
            }
            publisher.publish(subject.clone(), "0".into()).await?;
            let wait = tokio::time::sleep(Duration::from_millis(100));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    m = rx.recv() => {
                        let (id, _) = m.ok_or("baseline subscribers ended")?;
                        if !std::mem::replace(&mut seen[id], true) {
                            missing -= 1;
                        }
                    }
                }
            }
        }
        // What is still on its way from round 0 is drained before round 1.
        while rx.try_recv().is_ok() {}
        Ok(Self {
            subject,
            subscribers,
            publisher,
            rx,
            tasks,
            _connections: keep,
            rounds: 0,
        })
    }

    /// One publish, from sending it until every subscriber has it.
    async fn round(&mut self) -> BenchResult<Duration> {
        self.rounds += 1;
        let round = self.rounds;
        let t = Instant::now();
        self.publisher
            .publish(self.subject.clone(), round.to_string().into())
            .await?;
        let mut got = 0;
        while got < self.subscribers {
            let r = tokio::time::timeout(Duration::from_secs(60), self.rx.recv())
                .await
                .map_err(|_| "a baseline publish did not reach every subscriber within 60 s")?
                .ok_or("baseline subscribers ended")?;
            if r.1 == round {
                got += 1;
            }
        }
        Ok(t.elapsed())
    }

    fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}
