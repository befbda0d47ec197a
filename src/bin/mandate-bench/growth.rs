//! `growth`: what one command costs as its tree grows. Each size gets a tree
//! of its own under one root, grown through the log; then `ops` delegations
//! under the root and `ops` checks on a child are timed through a served
//! engine, and the revokes of the roots of `revokes` more trees of the same
//! size (one each). Beside each larger size, the same trees are grown at
//! the smallest size, and each operation is timed one for one in turn on
//! both (the order swapped every other round): the baseline of a row is its
//! pairs. A run at the full sizes lasts minutes, over which the machine and
//! the whole store drift; paired, that drift is in both figures and not in
//! their ratio, which is then the cost of the tree's size alone. Then the
//! swarm: many agents delegating under one root at once.
//!
//! A revoke is an append naming the last sequence of its tree's subject,
//! which the server reads from the block holding that subject's last
//! message. Had the trees been grown one after the other, the first tree's
//! last commit would sit further back in the stream the larger the trees,
//! in a block the server no longer holds in memory: a cost of how much was
//! written since, not of the tree's size. So each tree's last delegation is
//! held back and appended after every tree is grown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mandate::client::Client;
use mandate::domain::{Actor, ErrorCode, MandateId};
use mandate::log::JetStreamLog;

use crate::gen::{self, TreeWriter};
use crate::harness::{progress, BenchResult, Env, Served};
use crate::report::{per_second, Printer, Row, Samples, Target};

const S: &str = "growth";

pub struct Sizes {
    pub sizes: Vec<usize>,
    pub ops: usize,
    pub revokes: usize,
    pub swarm_agents: usize,
    pub swarm_each: usize,
}

/// What was timed at one size.
struct AtSize {
    size: usize,
    delegate: Samples,
    check: Samples,
    revoke: Samples,
    /// The same operations on trees of the smallest size, one for one in
    /// turn with these (none at the smallest size itself).
    paired: Option<Box<AtSize>>,
}

impl AtSize {
    fn new(size: usize) -> Self {
        Self {
            size,
            delegate: Samples::default(),
            check: Samples::default(),
            revoke: Samples::default(),
            paired: None,
        }
    }

    /// Where a sample of the large tree (`false`) or of the paired small
    /// one (`true`) goes.
    fn side(&mut self, small: bool) -> &mut AtSize {
        if small && self.paired.is_some() {
            return self.paired.as_deref_mut().expect("paired is some");
        }
        self
    }
}

/// One tree a size's operations run on.
struct Trees {
    root: MandateId,
    child: MandateId,
    /// Trees of the same size whose roots are revoked, one each.
    revoked: Vec<MandateId>,
}

/// Grows the tree the operations run on and the trees to be revoked, each
/// of `size` mandates, the last delegation of each of the latter held
/// back; the held-back ones are appended by the caller ([`TreeWriter::flush`]).
async fn targets(
    log: &JetStreamLog,
    size: usize,
    revokes: usize,
    held: &mut Vec<TreeWriter>,
) -> BenchResult<Trees> {
    let (root, child) = grow(log, size).await?;
    let mut revoked = Vec::new();
    for _ in 0..revokes.max(1) {
        let (w, _) = grow_but_last(log, size).await?;
        revoked.push(w.root());
        held.push(w);
    }
    Ok(Trees {
        root,
        child,
        revoked,
    })
}

/// The order of a round's two operations (`true`: the paired small
/// tree's), swapped every other round so that neither always goes first.
fn order(round: usize, paired: bool) -> &'static [bool] {
    match (paired, round % 2) {
        (false, _) => &[false],
        (true, 0) => &[false, true],
        (true, _) => &[true, false],
    }
}

pub async fn run(env: &Env, sizes: &Sizes, out: &Printer) -> BenchResult<()> {
    let served = Served::start(env, &env.dir("engine")).await?;
    let log = env.log().await?;
    let nc = env.connect().await?;
    let lead = Client::nats(nc, gen::tenant(), Actor::Agent(gen::agent_id("lead")?));
    let principal = lead.as_actor(gen::principal());
    let base = *sizes.sizes.first().ok_or("growth needs a size")?;
    let mut measured: Vec<AtSize> = Vec::new();
    for &size in &sizes.sizes {
        let pair = size != base;
        progress(&format!(
            "growth: growing {} trees to {size} mandates{}",
            1 + sizes.revokes.max(1),
            if pair {
                format!(" and as many to {base}, timed in turn with them")
            } else {
                String::new()
            }
        ));
        // Trees only to be revoked, each with its last delegation held
        // back, then appended one tree after another, the paired small
        // ones in turn with the large: at every size, each tree's last
        // commit is among the stream's newest.
        let mut held = Vec::new();
        let large = targets(&log, size, sizes.revokes, &mut held).await?;
        let mut small_held = Vec::new();
        let small_t = if pair {
            Some(targets(&log, base, sizes.revokes, &mut small_held).await?)
        } else {
            None
        };
        for (i, w) in held.iter_mut().enumerate() {
            w.flush().await?;
            if let Some(s) = small_held.get_mut(i) {
                s.flush().await?;
            }
        }
        served.settled("growth").await?;
        progress(&format!(
            "growth: timing {} delegations, checks and a revoke at {size}",
            sizes.ops
        ));
        let mut at = AtSize::new(size);
        at.paired = pair.then(|| Box::new(AtSize::new(base)));
        let on = |small: bool| match (small, &small_t) {
            (true, Some(t)) => t,
            _ => &large,
        };
        for i in 0..sizes.ops {
            for &small in order(i, pair) {
                let d = gen::delegation(
                    on(small).root,
                    &format!("t{i}"),
                    gen::worker_scope(),
                    Some(0),
                )?;
                let t = Instant::now();
                lead.delegate(d).await?;
                at.side(small).delegate.push(t.elapsed());
            }
        }
        for i in 0..sizes.ops {
            for &small in order(i, pair) {
                let t = Instant::now();
                let d = lead
                    .check(on(small).child, "finance:read", "reports/q3/x", None)
                    .await?;
                at.side(small).check.push(t.elapsed());
                if !d.is_allowed() {
                    return Err(format!("check on a live child denied: {:?}", d.reason).into());
                }
            }
        }
        for i in 0..large.revoked.len() {
            let mut took = [None, None];
            for &small in order(i, pair) {
                let root = on(small).revoked[i];
                let t = Instant::now();
                principal.revoke(root, None).await?;
                let elapsed = t.elapsed();
                at.side(small).revoke.push(elapsed);
                took[usize::from(small)] = Some(elapsed);
            }
            // Each revoke (and its pair) on stderr: five samples make the
            // row's median, and a reader can see how they spread.
            let ms = |d: Option<std::time::Duration>| {
                d.map_or(String::new(), |d| {
                    format!("{:.2} ms", d.as_secs_f64() * 1e3)
                })
            };
            progress(&format!(
                "growth: revoke {} at {size}: {}{}",
                i + 1,
                ms(took[0]),
                if pair {
                    format!(", paired at {base}: {}", ms(took[1]))
                } else {
                    String::new()
                }
            ));
        }
        measured.push(at);
    }
    report(&measured, out);
    swarm(&served, env, sizes, out).await?;
    served.stop().await
}
/// A tree of `size` mandates: a root and its children, written to the log
/// but for the last child, which the writer holds until its `flush`; and
/// the first child.
async fn grow_but_last(log: &JetStreamLog, size: usize) -> BenchResult<(TreeWriter, MandateId)> {
    let mut writer = TreeWriter::issue(log, "lead", 4, 500).await?;
    let root = writer.root();
    let mut first = None;
    for i in 1..size.max(2) {
        if i == size.max(2) - 1 {
            writer.flush().await?;
        }
        let d = gen::delegation(root, &format!("w{i}"), gen::worker_scope(), Some(0))?;
        let child = writer.delegate("lead", d).await?;
        first.get_or_insert(child);
    }
    Ok((writer, first.ok_or("a grown tree has a child")?))
}

/// A tree of `size` mandates: a root and its children, written to the log;
/// the root and its first child.
async fn grow(log: &JetStreamLog, size: usize) -> BenchResult<(MandateId, MandateId)> {
    let (mut writer, first) = grow_but_last(log, size).await?;
    writer.flush().await?;
    Ok((writer.root(), first))
}

/// How each row's baseline was measured.
const PAIRED: &str = "baseline: the same on trees of the smallest size, one for one in turn";

fn report(measured: &[AtSize], out: &Printer) {
    for m in measured {
        // The baseline of each row: its paired operations on trees of the
        // smallest size (itself at the smallest size).
        let base = m.paired.as_deref().unwrap_or(m);
        let size = format!("{} mandates (base {})", m.size, base.size);
        out.print(
            &Row::new(
                S,
                format!("delegate p50 at {}", m.size),
                m.delegate.p50_us(),
                Some(base.delegate.p50_us()),
                "us",
                m.delegate.len(),
                &size,
            )
            .target(Target::RatioAtMost(1.5))
            .note(PAIRED),
        );
        out.print(
            &Row::new(
                S,
                format!("check p50 at {}", m.size),
                m.check.p50_us(),
                Some(base.check.p50_us()),
                "us",
                m.check.len(),
                &size,
            )
            .target(Target::RatioAtMost(1.5))
            .note(format!(
                "engine check over NATS of a child of the root; {PAIRED}"
            )),
        );
        out.print(
            &Row::new(
                S,
                format!("revoke root p50 at {}", m.size),
                m.revoke.p50_us(),
                Some(base.revoke.p50_us()),
                "us",
                m.revoke.len(),
                &size,
            )
            .target(Target::RatioAtMost(1.5))
            .note(format!("the root of a tree of this size, its last commit among the stream's newest, one revoke per tree; {PAIRED}")),
        );
    }
}

/// `agents` agents, each holding a mandate under one root, delegate
/// `each` children at once: throughput, and how often they lost the tree.
async fn swarm(served: &Served, env: &Env, sizes: &Sizes, out: &Printer) -> BenchResult<()> {
    progress(&format!(
        "growth: swarm of {} agents under one root",
        sizes.swarm_agents
    ));
    let nc = env.connect().await?;
    let principal = Client::nats(nc, gen::tenant(), gen::principal());
    let root = principal
        .issue(
            match gen::issue("lead", 4, gen::root_scope(), "bench:swarm")? {
                mandate::domain::Command::Issue(i) => i,
                _ => unreachable!("gen::issue builds an issue"),
            },
        )
        .await?
        .mandate
        .ok_or("an issue names its mandate")?;
    let lead = principal.as_actor(Actor::Agent(gen::agent_id("lead")?));
    let mut agents = Vec::new();
    for a in 0..sizes.swarm_agents {
        let name = format!("swarm-{a}");
        let m = lead
            .delegate(gen::delegation(root, &name, gen::worker_scope(), Some(1))?)
            .await?
            .mandate
            .ok_or("a delegation names its mandate")?;
        agents.push((lead.as_actor(Actor::Agent(gen::agent_id(&name)?)), m));
    }
    served.settled("swarm").await?;
    let before = served.engine.append_conflicts();
    let retries = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (a, (client, parent)) in agents.into_iter().enumerate() {
        let (each, retries) = (sizes.swarm_each, retries.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                let d =
                    gen::delegation(parent, &format!("s{a}-{i}"), gen::worker_scope(), Some(0))?;
                loop {
                    match client.delegate(d.clone()).await {
                        Ok(_) => break,
                        Err(e) if e.code() == Some(ErrorCode::Conflict) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            BenchResult::Ok(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| format!("swarm task: {e}"))??;
    }
    let elapsed = t.elapsed();
    let n = sizes.swarm_agents * sizes.swarm_each;
    let size = format!("{} agents x {}", sizes.swarm_agents, sizes.swarm_each);
    out.print(&Row::new(
        S,
        "swarm delegations",
        per_second(n, elapsed),
        None,
        "/s",
        n,
        &size,
    ));
    out.print(
        &Row::new(
            S,
            "swarm engine conflict retries",
            (served.engine.append_conflicts() - before) as f64,
            None,
            "count",
            n,
            &size,
        )
        .note("appends the log refused because the tree had moved, decided again (Engine::append_conflicts)"),
    );
    out.print(
        &Row::new(
            S,
            "swarm client retries (contended)",
            retries.load(Ordering::Relaxed) as f64,
            None,
            "count",
            n,
            &size,
        )
        .note("commands the engine gave up on as contended, sent again"),
    );
    Ok(())
}
