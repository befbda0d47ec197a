//! Writing large logs fast: commits decided here by the domain's own
//! `decide`, exactly as the engine would, and appended straight to the
//! JetStream log; the engine builds its projection from them by following the
//! log. Growing a tree this way costs the log, not the engine's command path
//! the scenarios then measure.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use mandate::domain::command::{Delegate, Issue};
use mandate::domain::{
    apply, decide, delegated_id, root_tree_id, Actor, AgentId, Command, CommandEnvelope, CommandId,
    Event, Facts, MandateId, Mission, MissionRef, PrincipalId, Scope, TenantId, Tree,
    SCHEMA_VERSION,
};
use mandate::log::{EventLog, JetStreamLog};

use crate::harness::{progress, BenchResult};

pub fn tenant() -> TenantId {
    TenantId::new("bench").expect("a valid tenant id")
}

pub fn principal() -> Actor {
    Actor::Principal(PrincipalId::new("cfo").expect("a valid principal id"))
}

pub fn agent_id(name: &str) -> BenchResult<AgentId> {
    Ok(AgentId::new(name)?)
}

/// The grants of a root: what checks ask for is `finance:read` on a report.
pub fn root_scope() -> Scope {
    Scope::parse(["finance:read on reports/**", "deals:* on deals/**"]).expect("valid grants")
}

/// A command envelope with a fresh id.
pub fn envelope(actor: Actor, command: Command) -> CommandEnvelope {
    CommandEnvelope {
        command_id: CommandId::generate(),
        tenant: tenant(),
        actor,
        correlation_id: None,
        schema_version: SCHEMA_VERSION,
        command,
    }
}

/// A root for `grantee`, for eight hours, with `depth` levels below it.
pub fn issue(grantee: &str, depth: u32, scope: Scope, mission: &str) -> BenchResult<Command> {
    Ok(Command::Issue(Issue {
        principal: PrincipalId::new("cfo")?,
        grantee: agent_id(grantee)?,
        mission: Mission {
            purpose: "benchmark".into(),
            mission_ref: Some(MissionRef::new(mission)?),
        },
        scope,
        not_after: Utc::now() + chrono::Duration::hours(8),
        depth,
        step_up: vec![],
        supervisors: vec![],
    }))
}

/// A delegation of `scope` under `parent` to `grantee`.
pub fn delegation(
    parent: MandateId,
    grantee: &str,
    scope: Scope,
    depth: Option<u32>,
) -> BenchResult<Delegate> {
    Ok(Delegate {
        parent,
        grantee: agent_id(grantee)?,
        scope,
        not_after: None,
        depth,
        step_up: vec![],
        supervisors: vec![],
    })
}

/// The grants a delegated worker gets.
pub fn worker_scope() -> Scope {
    Scope::parse(["finance:read on reports/q3/*"]).expect("valid grants")
}

/// One tree grown here and appended to the log in commits of up to `batch`
/// commands each (the events are those the engine would write; packing
/// several commands in one commit only makes the history shorter).
pub struct TreeWriter {
    log: JetStreamLog,
    tree: Tree,
    head: u64,
    pending: Vec<Event>,
    batch: usize,
    commands: usize,
    root: MandateId,
}

impl TreeWriter {
    /// Issues a root to `grantee` (its own commit) and returns the writer.
    pub async fn issue(
        log: &JetStreamLog,
        grantee: &str,
        depth: u32,
        batch: usize,
    ) -> BenchResult<Self> {
        let cmd = envelope(
            principal(),
            issue(
                grantee,
                depth,
                root_scope(),
                &format!("bench:{}", uuid::Uuid::new_v4().simple()),
            )?,
        );
        let (tree, events) = issued(&cmd)?;
        let root = tree.root().ok_or("an issued tree has a root")?;
        let appended = log
            .append(
                &tenant(),
                tree.id(),
                0,
                cmd.command_id,
                Event::encode_commit(&events).into(),
            )
            .await?;
        Ok(Self {
            log: log.clone(),
            tree,
            head: appended.position,
            pending: Vec::new(),
            batch: batch.max(1),
            commands: 0,
            root,
        })
    }

    pub fn root(&self) -> MandateId {
        self.root
    }

    /// Delegates under `parent` as `actor` (its grantee); appended with the
    /// next full batch or [`TreeWriter::flush`].
    pub async fn delegate(&mut self, actor: &str, delegate: Delegate) -> BenchResult<MandateId> {
        let cmd = envelope(Actor::Agent(agent_id(actor)?), Command::Delegate(delegate));
        let events = decide(&self.tree, &cmd, &Facts::default(), Utc::now())?;
        for e in &events {
            apply(&mut self.tree, e);
        }
        self.pending.extend(events);
        self.commands += 1;
        if self.commands >= self.batch {
            self.flush().await?;
        }
        Ok(delegated_id(&tenant(), self.tree.id(), cmd.command_id))
    }

    /// Appends what is pending as one commit.
    pub async fn flush(&mut self) -> BenchResult<()> {
        let Some(first) = self.pending.first() else {
            return Ok(());
        };
        let id = first.command_id;
        let payload = Event::encode_commit(&self.pending);
        let appended = self
            .log
            .append(&tenant(), self.tree.id(), self.head, id, payload.into())
            .await?;
        self.head = appended.position;
        self.pending.clear();
        self.commands = 0;
        Ok(())
    }
}

/// A fresh tree of depth 3 for `leaves` guards: a root for `lead`, `mid`
/// under it, `sub` under that, and one leaf per worker (`w0`, `w1`, ...)
/// under `sub`, each with [`worker_scope`]. Returns the root and the leaves.
pub async fn tree_of_leaves(
    log: &JetStreamLog,
    leaves: usize,
) -> BenchResult<(MandateId, Vec<MandateId>)> {
    let mut writer = TreeWriter::issue(log, "lead", 4, 500).await?;
    let root = writer.root();
    let mid = writer
        .delegate("lead", delegation(root, "mid", root_scope(), Some(2))?)
        .await?;
    let sub = writer
        .delegate("mid", delegation(mid, "sub", root_scope(), Some(1))?)
        .await?;
    let mut made = Vec::with_capacity(leaves);
    for i in 0..leaves {
        made.push(
            writer
                .delegate(
                    "sub",
                    delegation(sub, &format!("w{i}"), worker_scope(), Some(0))?,
                )
                .await?,
        );
    }
    writer.flush().await?;
    Ok((root, made))
}

/// The commit of a new root, as the engine would write it, with its id.
pub fn root_commit(i: usize) -> BenchResult<(CommandId, MandateId, Bytes)> {
    let cmd = envelope(
        principal(),
        issue(
            &format!("agent-{}", i % 100),
            3,
            root_scope(),
            &format!("bench:{i}"),
        )?,
    );
    let (tree, events) = issued(&cmd)?;
    let root = tree.root().ok_or("an issued tree has a root")?;
    Ok((cmd.command_id, root, Event::encode_commit(&events).into()))
}

/// The tree an issue creates, as the engine would decide and fold it, with
/// its events.
fn issued(cmd: &CommandEnvelope) -> BenchResult<(Tree, Vec<Event>)> {
    let mut tree = Tree::empty(tenant(), root_tree_id(&cmd.tenant, cmd.command_id));
    let events = decide(&tree, cmd, &Facts::default(), Utc::now())?;
    for e in &events {
        apply(&mut tree, e);
    }
    Ok((tree, events))
}

/// Appends `n` new roots, one commit each, `tasks` appends in flight;
/// returns the roots' mandate ids. Says how far it is every tenth.
pub async fn append_roots<L: EventLog + Clone + Send + Sync + 'static>(
    log: &L,
    n: usize,
    tasks: usize,
) -> BenchResult<Vec<MandateId>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..tasks.max(1) {
        let (log, next) = (log.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            let mut roots = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return BenchResult::Ok(roots);
                }
                if n >= 10_000 && i % (n / 10) == 0 && i > 0 {
                    progress(&format!("appended {i} of {n} commits"));
                }
                let (id, root, payload) = root_commit(i)?;
                log.append(&tenant(), root_tree_id(&tenant(), id), 0, id, payload)
                    .await?;
                roots.push(root);
            }
        }));
    }
    let mut roots = Vec::with_capacity(n);
    for h in handles {
        roots.extend(h.await.map_err(|e| format!("append task: {e}"))??);
    }
    Ok(roots)
}
