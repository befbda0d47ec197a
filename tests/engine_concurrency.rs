//! Two engine instances on one nats-server under concurrent conflicting
//! commands: every acknowledged command is in the log exactly once, and both
//! projections equal a rebuild; a command sees what an earlier acknowledged
//! one did, whichever instance serves each.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use common::prelude::*;
use mandate::domain::command::Narrow;

// ---------------------------------------------------------------------------
// 5. Two instances, concurrent conflicting commands
// ---------------------------------------------------------------------------

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Default)]
struct Ledger {
    /// Per tree: (mandate, its grantee); index 0 is the root.
    trees: Vec<Vec<(MandateId, String)>>,
    acknowledged: BTreeSet<CommandId>,
    refused: BTreeMap<CommandId, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_apply_every_acknowledged_command_exactly_once() {
    let (server, _dirs, a, b, nc) = serve_two("acme").await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let wide = ["ops:* on systems/**"];
    for i in 0..3 {
        let lead = format!("lead-{i}");
        let c = client(&nc, "acme", principal("boss"));
        let r = c
            .issue(root_issue("boss", &lead, None, &wide))
            .await
            .unwrap();
        let root = r.mandate.unwrap();
        let helper = format!("helper-{i}");
        let d = client(&nc, "acme", agent(&lead))
            .delegate(delegation(root, &helper, &wide))
            .await
            .unwrap();
        let mut l = ledger.lock().unwrap();
        l.acknowledged.insert(r.command_id);
        l.acknowledged.insert(d.command_id);
        l.trees
            .push(vec![(root, lead), (d.mandate.unwrap(), helper)]);
    }

    let narrower = [
        "ops:* on systems/**",
        "ops:read on systems/**",
        "ops:read on systems/db/**",
    ];
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let ledger = ledger.clone();
        // Each task on its own connection, as separate orchestrators would be.
        let nc = connect(&server).await;
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (task + 1).wrapping_mul(0x2545_F491));
            for step in 0..25 {
                let (target, holder, tree) = {
                    let l = ledger.lock().unwrap();
                    let tree = rng.below(l.trees.len());
                    let (m, g) = l.trees[tree][rng.below(l.trees[tree].len())].clone();
                    (m, g, tree)
                };
                let boss = principal("boss");
                let (actor, command, delegated_to) = match rng.below(6) {
                    0 => (boss, Command::Pause(change(target)), None),
                    1 => (boss, Command::Resume(change(target)), None),
                    2 => (
                        boss,
                        Command::Narrow(Narrow {
                            mandate: target,
                            scope: scope(&[narrower[rng.below(narrower.len())]]),
                        }),
                        None,
                    ),
                    3 | 4 => {
                        let grantee = format!("w-{task}-{step}");
                        (
                            agent(&holder),
                            Command::Delegate(delegation(
                                target,
                                &grantee,
                                &["ops:read on systems/db/**"],
                            )),
                            Some(grantee),
                        )
                    }
                    _ => {
                        // Revoke below the root, so the trees stay contested.
                        let l = ledger.lock().unwrap();
                        let below = &l.trees[tree][1..];
                        let (m, _) = below[rng.below(below.len())].clone();
                        (boss, Command::Revoke(change(m)), None)
                    }
                };
                let env = envelope("acme", actor.clone(), command);
                let c = Client::nats(nc.clone(), tenant("acme"), actor);
                match c.send(&env).await {
                    Ok(r) => {
                        assert_eq!(r.command_id, env.command_id);
                        let mut l = ledger.lock().unwrap();
                        l.acknowledged.insert(env.command_id);
                        if let (Some(g), Some(m)) = (delegated_to, r.mandate) {
                            l.trees[tree].push((m, g));
                        }
                    }
                    Err(ClientError::Engine(e)) => {
                        assert!(
                            matches!(
                                e.code,
                                ErrorCode::InvalidState
                                    | ErrorCode::Terminal
                                    | ErrorCode::InvalidInput
                                    | ErrorCode::Widens
                                    | ErrorCode::Conflict
                            ),
                            "unexpected refusal of {}: {e:?}",
                            env.command.verb()
                        );
                        ledger
                            .lock()
                            .unwrap()
                            .refused
                            .insert(env.command_id, e.message);
                    }
                    Err(other) => panic!("{} failed: {other:?}", env.command.verb()),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a client task panicked");
    }

    let (acknowledged, refused) = {
        let l = ledger.lock().unwrap();
        (l.acknowledged.clone(), l.refused.clone())
    };
    assert!(
        acknowledged.len() > 40,
        "too few commands went through: {}",
        acknowledged.len()
    );
    assert!(!refused.is_empty(), "the commands did not conflict at all");

    let counts = commits_per_command(&a.engine).await;
    for id in &acknowledged {
        assert_eq!(counts.get(id), Some(&1), "acknowledged command {id}");
    }
    for (id, why) in &refused {
        assert_eq!(
            counts.get(id),
            None,
            "refused command {id} ({why}) is in the log"
        );
    }
    let unknown: Vec<_> = counts
        .keys()
        .filter(|id| !acknowledged.contains(id))
        .collect();
    assert!(
        unknown.is_empty(),
        "records of commands nobody acknowledged: {unknown:?}"
    );

    a.caught_up().await;
    b.caught_up().await;
    for inst in [&a, &b] {
        let report = inst.engine.rebuild_check().await.unwrap();
        assert_eq!(report.records as usize, counts.values().sum::<usize>());
        assert!(
            report.equal,
            "{} differs from a rebuild",
            inst.engine.instance()
        );
    }
    assert_eq!(
        a.engine.store().dump().unwrap(),
        b.engine.store().dump().unwrap(),
        "the two instances' projections differ"
    );
    a.stop().await;
    b.stop().await;
}

/// With several instances in the queue group, a client's next request may
/// be served by an instance other than the one that acknowledged its last
/// command: it must still see that command (no "not found" for a mandate it
/// was just given, no "not paused" right after its pause was acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sees_what_an_earlier_acknowledged_command_did_on_any_instance() {
    let (_server, _dirs, a, b, nc) = serve_two("acme").await;
    let boss = client(&nc, "acme", principal("boss"));
    let grants = ["ops:read on systems/**"];
    for i in 0..20 {
        let lead = format!("lead-{i}");
        let root = issue(&nc, root_issue("boss", &lead, None, &grants)).await;
        let child = delegate(&nc, &lead, root, &format!("helper-{i}"), &grants).await;
        boss.pause(child, None)
            .await
            .unwrap_or_else(|e| panic!("pause right after the delegation: {e:?}"));
        boss.resume(child, None)
            .await
            .unwrap_or_else(|e| panic!("resume right after the pause: {e:?}"));
        boss.revoke(child, None)
            .await
            .unwrap_or_else(|e| panic!("revoke right after the resume: {e:?}"));
    }
    a.stop().await;
    b.stop().await;
}
