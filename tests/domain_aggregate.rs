//! Given/when/then tests of the mandate tree aggregate: `decide`, `apply`,
//! effective status, `authorize`, decoding and the hash chain.
//!
//! Every test builds its history from commands (`given`), decides one more
//! command (`when`) and checks either the events it yields (`then_events`) or
//! the refusal (`then_error`). One behaviour per test.

mod common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

use common::fixtures::{agent, agent_id, assert_denied_as, change, delegation, envelope, scope};
use mandate::domain::command::{
    AgentBlock, Change, CompleteMission, Delegate, Issue, Narrow, PrincipalBlock, Renew,
    Resolution, ResolveQuarantine, Target,
};
use mandate::domain::{
    apply, authorize, decide, delegated_id, replay, verify_chain, ActionPattern, Actor, Command,
    CommandEnvelope, CommandId, DenyReason, DomainError, Event, EventBody, Facts, Grantor,
    MandateId, Mission, MissionRef, Outcome, PrincipalId, Status, TenantId, Tree, TreeId,
    SCHEMA_VERSION,
};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A tree built by accepting commands in order, and the clock for the next one.
struct Given {
    tree: Tree,
    history: Vec<Event>,
    now: DateTime<Utc>,
}

/// Accepts every command at `t0()`; panics if one is refused (a broken fixture).
fn given(commands: impl IntoIterator<Item = CommandEnvelope>) -> Given {
    let mut g = Given {
        tree: Tree::empty(tenant(), tree_id()),
        history: Vec::new(),
        now: t0(),
    };
    for cmd in commands {
        g = g.and(cmd);
    }
    g
}

impl Given {
    /// Accepts one more command at the current clock.
    fn and(mut self, cmd: CommandEnvelope) -> Self {
        let events = decide(&self.tree, &cmd, &Facts::default(), self.now)
            .unwrap_or_else(|e| panic!("given command {} was refused: {e}", cmd.command.verb()));
        for e in &events {
            apply(&mut self.tree, e);
        }
        self.history.extend(events);
        self
    }

    /// Moves the clock for the commands and queries that follow.
    fn at(mut self, now: DateTime<Utc>) -> Self {
        self.now = now;
        self
    }

    fn when(self, cmd: CommandEnvelope) -> Then {
        self.when_knowing(&Facts::default(), cmd)
    }

    /// Decides `cmd` with what the engine knows beyond the tree.
    fn when_knowing(self, facts: &Facts, cmd: CommandEnvelope) -> Then {
        let result = decide(&self.tree, &cmd, facts, self.now);
        Then {
            before: self.tree,
            result,
        }
    }
}

struct Then {
    before: Tree,
    result: Result<Vec<Event>, DomainError>,
}

impl Then {
    /// The command was accepted; `check` sees its events and the state after them.
    fn then_events(self, check: impl FnOnce(&[Event], &Tree)) {
        let events = match self.result {
            Ok(events) => events,
            Err(e) => panic!("expected events, the command was refused: {e}"),
        };
        let mut after = self.before;
        for e in &events {
            apply(&mut after, e);
        }
        check(&events, &after);
    }

    /// The command was refused with exactly `expected`.
    fn then_error(self, expected: DomainError) {
        assert_eq!(self.result, Err(expected));
    }

    /// The command was accepted and yields nothing (already applied).
    fn then_no_events(self) {
        assert_eq!(self.result, Ok(Vec::new()));
    }
}

/// The one event of a single-event command.
fn only(events: &[Event]) -> &Event {
    assert_eq!(events.len(), 1, "expected exactly one event: {events:?}");
    &events[0]
}

// ---------------------------------------------------------------------------
// Fixtures: alice issues a root to the orchestrator, which delegates to the
// researcher, which delegates to the summarizer. The watchdog supervises the
// whole tree; mallory has nothing to do with it.
// ---------------------------------------------------------------------------

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 9, 0, 0).unwrap()
}
fn hours(h: i64) -> Duration {
    Duration::hours(h)
}
fn root_not_after() -> DateTime<Utc> {
    t0() + hours(8)
}

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}
fn tree_id() -> TreeId {
    TreeId(Uuid::from_u128(0x7ee))
}
/// A root's mandate id is its tree's id.
fn root() -> MandateId {
    MandateId(tree_id().0)
}
fn child_cmd() -> CommandId {
    CommandId(Uuid::from_u128(0xc1))
}
fn child() -> MandateId {
    delegated_id(&tenant(), tree_id(), child_cmd())
}
fn grandchild_cmd() -> CommandId {
    CommandId(Uuid::from_u128(0xc2))
}
fn grandchild() -> MandateId {
    delegated_id(&tenant(), tree_id(), grandchild_cmd())
}

fn alice_id() -> PrincipalId {
    PrincipalId::new("alice").unwrap()
}
fn alice() -> Actor {
    Actor::Principal(alice_id())
}
fn admin() -> Actor {
    Actor::Admin(PrincipalId::new("ops-admin").unwrap())
}
fn orchestrator() -> Actor {
    agent("orchestrator")
}
fn researcher() -> Actor {
    agent("researcher")
}
fn summarizer() -> Actor {
    agent("summarizer")
}
fn watchdog() -> Actor {
    agent("watchdog")
}
fn mallory() -> Actor {
    agent("mallory")
}

fn action(s: &str) -> ActionPattern {
    ActionPattern::parse(s).unwrap()
}
fn mission_ref(s: &str) -> MissionRef {
    MissionRef::new(s).unwrap()
}

/// A command by `actor` with a fresh id.
fn by(actor: Actor, command: Command) -> CommandEnvelope {
    envelope("acme", actor, command)
}
/// A command with a chosen id (so its delegated mandate id is known).
fn with_id(id: CommandId, mut cmd: CommandEnvelope) -> CommandEnvelope {
    cmd.command_id = id;
    cmd
}

fn root_issue() -> Issue {
    Issue {
        principal: alice_id(),
        grantee: agent_id("orchestrator"),
        mission: Mission {
            purpose: "close the Q3 books".into(),
            mission_ref: Some(mission_ref("jira:FIN-42")),
        },
        scope: scope(&["finance:* on reports/**", "tickets:* on tickets/**"]),
        not_after: root_not_after(),
        depth: 2,
        step_up: vec![action("finance:pay")],
        supervisors: vec![agent_id("watchdog")],
    }
}
fn issue_root() -> CommandEnvelope {
    by(alice(), Command::Issue(root_issue()))
}

fn delegate(actor: Actor, d: Delegate) -> CommandEnvelope {
    by(actor, Command::Delegate(d))
}
/// orchestrator → researcher: read Q3 reports (depth 1, root's not_after).
fn delegate_child() -> CommandEnvelope {
    with_id(
        child_cmd(),
        delegate(
            orchestrator(),
            delegation(root(), "researcher", &["finance:read on reports/q3/*"]),
        ),
    )
}
/// researcher → summarizer: read the Q3 summary (depth 0).
fn delegate_grandchild() -> CommandEnvelope {
    with_id(
        grandchild_cmd(),
        delegate(
            researcher(),
            delegation(
                child(),
                "summarizer",
                &["finance:read on reports/q3/summary"],
            ),
        ),
    )
}

fn pause(actor: Actor, m: MandateId) -> CommandEnvelope {
    by(actor, Command::Pause(change(m)))
}
fn resume(actor: Actor, m: MandateId) -> CommandEnvelope {
    by(actor, Command::Resume(change(m)))
}
fn revoke(actor: Actor, m: MandateId) -> CommandEnvelope {
    by(actor, Command::Revoke(change(m)))
}
fn complete(actor: Actor, m: MandateId) -> CommandEnvelope {
    by(actor, Command::Complete(change(m)))
}
fn expire(m: MandateId) -> CommandEnvelope {
    by(Actor::expiry(), Command::Expire(Target { mandate: m }))
}
fn complete_mission(actor: Actor, r: &str) -> CommandEnvelope {
    by(
        actor,
        Command::CompleteMission(CompleteMission {
            mission_ref: mission_ref(r),
        }),
    )
}
fn narrow(actor: Actor, m: MandateId, grants: &[&str]) -> CommandEnvelope {
    by(
        actor,
        Command::Narrow(Narrow {
            mandate: m,
            scope: scope(grants),
        }),
    )
}
fn renew(actor: Actor, m: MandateId, not_after: DateTime<Utc>) -> CommandEnvelope {
    by(
        actor,
        Command::Renew(Renew {
            mandate: m,
            not_after,
        }),
    )
}

/// A tree with root, child and grandchild.
fn three_levels() -> Given {
    given([issue_root(), delegate_child(), delegate_grandchild()])
}

fn status_of(tree: &Tree, m: MandateId) -> Status {
    tree.get(m).unwrap().status()
}

// ---------------------------------------------------------------------------
// issue
// ---------------------------------------------------------------------------

#[test]
fn issue_by_the_named_principal_grants_the_root_mandate() {
    let cmd = issue_root();
    let command_id = cmd.command_id;
    given([]).when(cmd).then_events(|events, after| {
        let e = only(events);
        assert_eq!((e.seq, e.prev_hash.clone()), (1, None));
        assert_eq!(e.on_behalf_of, alice_id());
        assert_eq!(e.actor, alice());
        assert_eq!(e.command_id, command_id);
        let EventBody::MandateIssued(issued) = &e.body else {
            panic!("expected mandate_issued, got {:?}", e.body);
        };
        assert_eq!(issued.mandate, root());
        assert_eq!(issued.parent, None);
        assert_eq!(issued.grantor, Grantor::Principal(alice_id()));
        assert_eq!(issued.grantee, agent_id("orchestrator"));
        assert_eq!(after.root(), Some(root()));
        assert_eq!(status_of(after, root()), Status::Active);
    });
}

#[test]
fn issue_by_a_tenant_admin_is_accepted() {
    given([])
        .when(by(admin(), Command::Issue(root_issue())))
        .then_events(|events, after| {
            assert!(matches!(only(events).body, EventBody::MandateIssued(_)));
            assert_eq!(after.principal(), Some(&alice_id()));
        });
}

#[test]
fn issue_on_an_existing_tree_is_refused() {
    given([issue_root()])
        .when(issue_root())
        .then_error(DomainError::TreeExists { tree: tree_id() });
}

#[test]
fn issue_with_not_after_in_the_past_is_refused() {
    let past = t0() - hours(1);
    given([])
        .when(by(
            alice(),
            Command::Issue(Issue {
                not_after: past,
                ..root_issue()
            }),
        ))
        .then_error(DomainError::NotAfterInPast {
            requested: past,
            now: t0(),
        });
}

#[test]
fn command_of_another_tenant_is_refused() {
    let mut cmd = pause(admin(), root());
    cmd.tenant = TenantId::new("globex").unwrap();
    given([issue_root()])
        .when(cmd)
        .then_error(DomainError::CrossTenant {
            command_tenant: TenantId::new("globex").unwrap(),
        });
}

// ---------------------------------------------------------------------------
// delegate
// ---------------------------------------------------------------------------

#[test]
fn delegate_by_the_parent_grantee_grants_a_narrower_mandate() {
    given([issue_root()])
        .when(delegate_child())
        .then_events(|events, after| {
            let e = only(events);
            assert_eq!(e.seq, 2);
            assert_eq!(e.on_behalf_of, alice_id());
            let EventBody::MandateIssued(issued) = &e.body else {
                panic!("expected mandate_issued, got {:?}", e.body);
            };
            assert_eq!(issued.mandate, child());
            assert_eq!(issued.parent, Some(root()));
            assert_eq!(issued.grantor, Grantor::Agent(agent_id("orchestrator")));
            assert_eq!(issued.principal, alice_id());
            // Defaults: the parent's not_after, one level less depth.
            assert_eq!(issued.not_after, root_not_after());
            assert_eq!(issued.depth, 1);
            assert_eq!(after.get(root()).unwrap().children(), [child()]);
        });
}

#[test]
fn delegate_by_someone_other_than_the_parent_grantee_is_refused() {
    given([issue_root()])
        .when(delegate(
            mallory(),
            delegation(root(), "mallory", &["finance:read on reports/q3/*"]),
        ))
        .then_error(DomainError::NotGrantee {
            mandate: root(),
            actor: "agent mallory".into(),
            grantee: agent_id("orchestrator"),
        });
}

#[test]
fn delegate_from_a_paused_parent_is_refused() {
    given([issue_root(), pause(alice(), root())])
        .when(delegate_child())
        .then_error(DomainError::ParentNotActive {
            parent: root(),
            status: Status::Paused,
        });
}

#[test]
fn delegate_from_a_parent_under_a_paused_ancestor_is_refused() {
    given([issue_root(), delegate_child(), pause(alice(), root())])
        .when(delegate_grandchild())
        .then_error(DomainError::ParentNotActive {
            parent: child(),
            status: Status::Paused,
        });
}

#[test]
fn delegate_from_a_revoked_parent_is_refused_as_terminal() {
    given([issue_root(), revoke(alice(), root())])
        .when(delegate_child())
        .then_error(DomainError::Terminal {
            mandate: root(),
            status: Status::Revoked,
            cause: None,
        });
}

#[test]
fn delegate_of_a_wider_scope_is_refused_naming_the_grant() {
    given([issue_root()])
        .when(delegate(
            orchestrator(),
            delegation(
                root(),
                "researcher",
                &["finance:read on reports/q3/*", "finance:* on **"],
            ),
        ))
        .then_error(DomainError::ScopeWidens {
            parent: root(),
            grant: "finance:* on **".into(),
        });
}

#[test]
fn delegate_with_a_later_not_after_than_the_parent_is_refused() {
    let later = root_not_after() + hours(1);
    given([issue_root()])
        .when(delegate(
            orchestrator(),
            Delegate {
                not_after: Some(later),
                ..delegation(root(), "researcher", &["finance:read on reports/q3/*"])
            },
        ))
        .then_error(DomainError::NotAfterWidens {
            parent: root(),
            requested: later,
            parent_not_after: root_not_after(),
        });
}

#[test]
fn delegate_with_not_after_in_the_past_is_refused() {
    let now = t0() + hours(2);
    let past = t0() + hours(1);
    given([issue_root()])
        .at(now)
        .when(delegate(
            orchestrator(),
            Delegate {
                not_after: Some(past),
                ..delegation(root(), "researcher", &["finance:read on reports/q3/*"])
            },
        ))
        .then_error(DomainError::NotAfterInPast {
            requested: past,
            now,
        });
}

#[test]
fn delegate_from_a_parent_with_no_depth_left_is_refused() {
    // The grandchild was delegated with depth 0.
    three_levels()
        .when(delegate(
            summarizer(),
            delegation(
                grandchild(),
                "helper",
                &["finance:read on reports/q3/summary"],
            ),
        ))
        .then_error(DomainError::DepthExhausted {
            parent: grandchild(),
        });
}

#[test]
fn delegate_asking_for_as_much_depth_as_the_parent_is_refused() {
    given([issue_root()])
        .when(delegate(
            orchestrator(),
            Delegate {
                depth: Some(2),
                ..delegation(root(), "researcher", &["finance:read on reports/q3/*"])
            },
        ))
        .then_error(DomainError::DepthWidens {
            parent: root(),
            requested: 2,
            parent_depth: 2,
        });
}

// ---------------------------------------------------------------------------
// pause, and who may change a mandate
// ---------------------------------------------------------------------------

#[test]
fn pause_by_the_principal_pauses_the_mandate() {
    given([issue_root(), delegate_child()])
        .when(pause(alice(), child()))
        .then_events(|events, after| {
            assert!(matches!(only(events).body, EventBody::MandatePaused(_)));
            assert_eq!(status_of(after, child()), Status::Paused);
        });
}

#[test]
fn pause_of_a_paused_mandate_is_refused() {
    given([issue_root(), pause(alice(), root())])
        .when(pause(alice(), root()))
        .then_error(DomainError::AlreadyPaused { mandate: root() });
}

/// Otherwise a principal that wants a pause set below it to hold would have
/// to lift it and pause again, leaving the mandate live in between.
#[test]
fn a_pause_set_below_is_taken_over_from_above() {
    given([
        issue_root(),
        delegate_child(),
        pause(orchestrator(), child()),
    ])
    .when(pause(alice(), child()))
    .then_events(|events, after| {
        assert!(matches!(only(events).body, EventBody::MandatePaused(_)));
        let m = after.get(child()).unwrap();
        assert_eq!(m.status(), Status::Paused);
        assert_eq!(m.transition().map(|t| &t.by), Some(&alice()));
    });
}

#[test]
fn a_pause_taken_over_from_above_is_not_lifted_from_below() {
    given([
        issue_root(),
        delegate_child(),
        pause(orchestrator(), child()),
    ])
    .and(pause(alice(), child()))
    .when(resume(orchestrator(), child()))
    .then_error(DomainError::PausedFromAbove {
        mandate: child(),
        actor: "agent orchestrator".into(),
        paused_by: "principal alice".into(),
    });
}

#[test]
fn a_pause_is_not_taken_over_from_below() {
    given([issue_root(), delegate_child(), pause(alice(), child())])
        .when(pause(orchestrator(), child()))
        .then_error(DomainError::AlreadyPaused { mandate: child() });
}

#[test]
fn pause_of_an_unknown_mandate_is_refused() {
    let unknown = MandateId(Uuid::from_u128(0xdead));
    given([issue_root()])
        .when(pause(admin(), unknown))
        .then_error(DomainError::MandateNotFound { mandate: unknown });
}

#[test]
fn command_on_a_tree_without_root_is_refused_as_not_found() {
    given([])
        .when(pause(admin(), root()))
        .then_error(DomainError::MandateNotFound { mandate: root() });
}

// ---------------------------------------------------------------------------
// resume
// ---------------------------------------------------------------------------

#[test]
fn resume_of_a_paused_mandate_makes_it_active() {
    given([issue_root(), pause(alice(), root())])
        .when(resume(alice(), root()))
        .then_events(|events, after| {
            assert!(matches!(only(events).body, EventBody::MandateResumed(_)));
            assert_eq!(status_of(after, root()), Status::Active);
            assert_eq!(after.get(root()).unwrap().transition(), None);
        });
}

#[test]
fn resume_of_an_active_mandate_is_refused() {
    given([issue_root()])
        .when(resume(alice(), root()))
        .then_error(DomainError::NotPaused {
            mandate: root(),
            status: Status::Active,
        });
}

#[test]
fn resume_of_a_child_paused_only_through_its_ancestor_is_refused() {
    given([issue_root(), delegate_child(), pause(alice(), root())])
        .when(resume(alice(), child()))
        .then_error(DomainError::NotPaused {
            mandate: child(),
            status: Status::Active,
        });
}

// ---------------------------------------------------------------------------
// authority comes strictly from above (invariant 9)
// ---------------------------------------------------------------------------

#[test]
fn issue_naming_the_grantee_its_own_supervisor_is_refused() {
    let mut i = root_issue();
    i.supervisors.push(agent_id("orchestrator"));
    given([])
        .when(by(alice(), Command::Issue(i)))
        .then_error(DomainError::SupervisorBelow {
            agent: agent_id("orchestrator"),
            supervised: root(),
            held: root(),
        });
}

#[test]
fn delegate_naming_the_grantee_its_own_supervisor_is_refused() {
    let mut d = delegation(root(), "researcher", &["finance:read on reports/q3/*"]);
    d.supervisors = vec![agent_id("researcher")];
    given([issue_root()])
        .when(with_id(child_cmd(), delegate(orchestrator(), d)))
        .then_error(DomainError::SupervisorBelow {
            agent: agent_id("researcher"),
            supervised: child(),
            held: child(),
        });
}

#[test]
fn delegate_to_an_agent_that_supervises_the_chain_is_refused() {
    // The watchdog supervises the root; it may not also hold a mandate below it.
    given([issue_root()])
        .when(with_id(
            child_cmd(),
            delegate(
                orchestrator(),
                delegation(root(), "watchdog", &["finance:read on reports/q3/*"]),
            ),
        ))
        .then_error(DomainError::SupervisorBelow {
            agent: agent_id("watchdog"),
            supervised: root(),
            held: child(),
        });
}

/// A tree written before supervisors were checked at issue: `commands`
/// accepted, with `supervisor` named on the issue of `mandate` in the log.
fn written_before_the_supervisor_rule(
    commands: impl IntoIterator<Item = CommandEnvelope>,
    mandate: MandateId,
    supervisor: &str,
) -> Given {
    let mut g = given(commands);
    for e in &mut g.history {
        match &mut e.body {
            EventBody::MandateIssued(issued) if issued.mandate == mandate => {
                issued.supervisors.push(agent_id(supervisor));
            }
            _ => {}
        }
    }
    g.tree = replay(tenant(), tree_id(), &g.history);
    g
}

/// What a row of [`who_may_change_a_mandate`] expects.
enum Expect {
    /// Accepted, and the mandate's own status is then this.
    Becomes(MandateId, Status),
    /// Accepted, and the mandate then ends at this time.
    EndsAt(MandateId, DateTime<Utc>),
    /// Refused with exactly this.
    Refused(DomainError),
}

fn not_authorized(mandate: MandateId, actor: &str, verb: &'static str) -> Expect {
    Expect::Refused(DomainError::NotAuthorized {
        mandate,
        actor: actor.into(),
        verb,
    })
}

fn paused_from_above(mandate: MandateId, actor: &str, paused_by: &str) -> Expect {
    Expect::Refused(DomainError::PausedFromAbove {
        mandate,
        actor: actor.into(),
        paused_by: paused_by.into(),
    })
}

/// Who may change a mandate (invariant 9), one row per behaviour: the row
/// names it, then the history, the command, and what must follow.
fn authority_rows() -> Vec<(&'static str, Given, CommandEnvelope, Expect)> {
    use Expect::{Becomes, EndsAt};
    let sooner = t0() + hours(2);
    let a_day_later = root_not_after() + hours(24);
    vec![
        (
            "an agent may not issue a root",
            given([]),
            by(orchestrator(), Command::Issue(root_issue())),
            not_authorized(root(), "agent orchestrator", "issue"),
        ),
        (
            "a principal may not issue on behalf of another",
            given([]),
            by(
                Actor::Principal(PrincipalId::new("bob").unwrap()),
                Command::Issue(root_issue()),
            ),
            not_authorized(root(), "principal bob", "issue"),
        ),
        (
            "a tenant administrator may pause",
            given([issue_root(), delegate_child()]),
            pause(admin(), child()),
            Becomes(child(), Status::Paused),
        ),
        (
            "a supervisor named on the chain may pause (the watchdog, on the root)",
            given([issue_root(), delegate_child()]),
            pause(watchdog(), child()),
            Becomes(child(), Status::Paused),
        ),
        (
            "the grantor may pause",
            given([issue_root(), delegate_child()]),
            pause(orchestrator(), child()),
            Becomes(child(), Status::Paused),
        ),
        (
            "a holder further up the chain may pause",
            three_levels(),
            pause(orchestrator(), grandchild()),
            Becomes(grandchild(), Status::Paused),
        ),
        (
            "a grantee may not pause its own mandate",
            given([issue_root(), delegate_child()]),
            pause(researcher(), child()),
            not_authorized(child(), "agent researcher", "pause"),
        ),
        (
            "an unrelated agent may not pause",
            given([issue_root()]),
            pause(mallory(), root()),
            not_authorized(root(), "agent mallory", "pause"),
        ),
        (
            "a holder below may not pause its ancestor",
            three_levels(),
            pause(summarizer(), child()),
            not_authorized(child(), "agent summarizer", "pause"),
        ),
        (
            "a grantee may not resume its own mandate",
            given([issue_root(), delegate_child(), pause(alice(), child())]),
            resume(researcher(), child()),
            not_authorized(child(), "agent researcher", "resume"),
        ),
        (
            "a grantee named its own supervisor may not resume what its principal paused",
            written_before_the_supervisor_rule(
                [issue_root(), delegate_child()],
                child(),
                "researcher",
            )
            .and(pause(alice(), child())),
            resume(researcher(), child()),
            not_authorized(child(), "agent researcher", "resume"),
        ),
        (
            "a grantee named its own supervisor may not renew its mandate",
            written_before_the_supervisor_rule(
                [issue_root(), delegate_child()],
                child(),
                "researcher",
            ),
            renew(researcher(), child(), root_not_after()),
            not_authorized(child(), "agent researcher", "renew"),
        ),
        (
            "a holder below named supervisor of an ancestor may not resume it",
            written_before_the_supervisor_rule(
                [issue_root(), delegate_child(), delegate_grandchild()],
                child(),
                "summarizer",
            )
            .and(pause(alice(), child())),
            resume(summarizer(), child()),
            not_authorized(child(), "agent summarizer", "resume"),
        ),
        (
            "a grantor may not lift its principal's pause",
            given([issue_root(), delegate_child(), pause(alice(), child())]),
            resume(orchestrator(), child()),
            paused_from_above(child(), "agent orchestrator", "principal alice"),
        ),
        (
            "a supervisor may not lift its principal's pause",
            given([issue_root(), pause(alice(), root())]),
            resume(watchdog(), root()),
            paused_from_above(root(), "agent watchdog", "principal alice"),
        ),
        (
            "the principal may lift a pause its grantor set",
            given([
                issue_root(),
                delegate_child(),
                pause(orchestrator(), child()),
            ]),
            resume(alice(), child()),
            Becomes(child(), Status::Active),
        ),
        (
            "the actor that paused may lift its own pause",
            given([issue_root(), delegate_child(), pause(watchdog(), child())]),
            resume(watchdog(), child()),
            Becomes(child(), Status::Active),
        ),
        (
            // The principal named the watchdog on the root to watch the
            // root's holder: the orchestrator ranks below it.
            "the root's holder may not lift a pause set by a supervisor of the root",
            given([issue_root(), delegate_child(), pause(watchdog(), child())]),
            resume(orchestrator(), child()),
            paused_from_above(child(), "agent orchestrator", "agent watchdog"),
        ),
        (
            "an administrator may lift any pause",
            given([issue_root(), delegate_child(), pause(alice(), child())]),
            resume(admin(), child()),
            Becomes(child(), Status::Active),
        ),
        (
            "a grantee may relinquish its mandate by revoking it",
            given([issue_root(), delegate_child()]),
            revoke(researcher(), child()),
            Becomes(child(), Status::Revoked),
        ),
        (
            "an unrelated agent may not revoke",
            given([issue_root(), delegate_child()]),
            revoke(mallory(), child()),
            not_authorized(child(), "agent mallory", "revoke"),
        ),
        (
            "an agent may not complete the mission",
            given([issue_root()]),
            complete_mission(orchestrator(), "jira:FIN-42"),
            not_authorized(root(), "agent orchestrator", "complete the mission of"),
        ),
        (
            // A supervisor watches; it does not grant. Moving `not_after`
            // later grants time the grantor never gave.
            "a supervisor may not extend the mandate it supervises",
            given([issue_root()]),
            renew(watchdog(), root(), root_not_after() + hours(24 * 365)),
            not_authorized(root(), "agent watchdog", "extend"),
        ),
        (
            "a supervisor may bring the end of a mandate forward",
            given([issue_root()]),
            renew(watchdog(), root(), sooner),
            EndsAt(root(), sooner),
        ),
        (
            "the principal may extend its root",
            given([issue_root()]),
            renew(alice(), root(), a_day_later),
            EndsAt(root(), a_day_later),
        ),
    ]
}

#[test]
fn who_may_change_a_mandate() {
    let mut wrong = Vec::new();
    for (row, g, cmd, expect) in authority_rows() {
        let mut after = g.tree.clone();
        let result = decide(&g.tree, &cmd, &Facts::default(), g.now);
        if let Ok(events) = &result {
            for e in events {
                apply(&mut after, e);
            }
        }
        let mandate = |m: MandateId| after.get(m).ok().cloned();
        let fits = match (&expect, &result) {
            (Expect::Becomes(m, status), Ok(events)) => {
                !events.is_empty() && mandate(*m).map(|m| m.status()) == Some(*status)
            }
            (Expect::EndsAt(m, at), Ok(events)) => {
                !events.is_empty() && mandate(*m).map(|m| m.not_after()) == Some(*at)
            }
            (Expect::Refused(expected), Err(e)) => e == expected,
            _ => false,
        };
        if !fits {
            wrong.push(format!("{row}: got {result:?}"));
        }
    }
    assert!(wrong.is_empty(), "rows that failed:\n{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// revoke, complete, terminal
// ---------------------------------------------------------------------------

#[test]
fn revoke_by_the_principal_revokes_the_mandate() {
    given([issue_root(), delegate_child()])
        .when(revoke(alice(), child()))
        .then_events(|events, after| {
            assert!(matches!(only(events).body, EventBody::MandateRevoked(_)));
            let m = after.get(child()).unwrap();
            assert_eq!(m.status(), Status::Revoked);
            assert_eq!(m.transition().map(|t| &t.by), Some(&alice()));
        });
}

#[test]
fn revoke_of_a_revoked_mandate_is_refused_as_terminal() {
    given([issue_root(), delegate_child(), revoke(alice(), child())])
        .when(revoke(alice(), child()))
        .then_error(DomainError::Terminal {
            mandate: child(),
            status: Status::Revoked,
            cause: None,
        });
}

#[test]
fn command_on_a_descendant_of_a_revoked_mandate_names_the_ancestor_as_cause() {
    three_levels()
        .and(revoke(orchestrator(), child()))
        .when(pause(admin(), grandchild()))
        .then_error(DomainError::Terminal {
            mandate: grandchild(),
            status: Status::Revoked,
            cause: Some(child()),
        });
}

#[test]
fn complete_by_the_grantee_completes_the_mandate() {
    given([issue_root(), delegate_child()])
        .when(complete(researcher(), child()))
        .then_events(|events, after| {
            assert!(matches!(only(events).body, EventBody::MandateCompleted(_)));
            assert_eq!(status_of(after, child()), Status::Completed);
        });
}

#[test]
fn complete_of_a_completed_mandate_is_refused_as_terminal() {
    given([
        issue_root(),
        delegate_child(),
        complete(researcher(), child()),
    ])
    .when(complete(alice(), child()))
    .then_error(DomainError::Terminal {
        mandate: child(),
        status: Status::Completed,
        cause: None,
    });
}

// ---------------------------------------------------------------------------
// expire
// ---------------------------------------------------------------------------

#[test]
fn expire_after_not_after_expires_the_mandate() {
    given([issue_root()])
        .at(root_not_after())
        .when(expire(root()))
        .then_events(|events, after| {
            assert!(matches!(only(events).body, EventBody::MandateExpired(_)));
            assert_eq!(status_of(after, root()), Status::Expired);
        });
}

#[test]
fn expire_before_not_after_is_refused() {
    given([issue_root()])
        .at(root_not_after() - Duration::seconds(1))
        .when(expire(root()))
        .then_error(DomainError::NotYetExpired {
            mandate: root(),
            not_after: root_not_after(),
        });
}

#[test]
fn expire_of_an_expired_mandate_is_refused_as_terminal() {
    given([issue_root()])
        .at(root_not_after())
        .and(expire(root()))
        .when(expire(root()))
        .then_error(DomainError::Terminal {
            mandate: root(),
            status: Status::Expired,
            cause: None,
        });
}

#[test]
fn expire_under_a_revoked_ancestor_is_refused_naming_the_ancestor() {
    given([issue_root(), delegate_child(), revoke(alice(), root())])
        .at(t0() + hours(1))
        .when(expire(child()))
        .then_error(DomainError::Terminal {
            mandate: child(),
            status: Status::Revoked,
            cause: Some(root()),
        });
}

// ---------------------------------------------------------------------------
// complete_mission
// ---------------------------------------------------------------------------

#[test]
fn mission_complete_from_the_intake_completes_the_root() {
    given([issue_root(), delegate_child()])
        .when(complete_mission(Actor::mission_intake(), "jira:FIN-42"))
        .then_events(|events, after| {
            let EventBody::MissionCompleted(done) = &only(events).body else {
                panic!("expected mission_completed");
            };
            assert_eq!(done.mandate, root());
            assert_eq!(status_of(after, root()), Status::Completed);
        });
}

#[test]
fn mission_complete_for_another_mission_is_refused() {
    given([issue_root()])
        .when(complete_mission(Actor::mission_intake(), "jira:FIN-43"))
        .then_error(DomainError::MissionMismatch {
            tree: tree_id(),
            mission_ref: "jira:FIN-43".into(),
        });
}

/// The engine knows the issue's mission is completed (and nothing else).
// `Facts` gains a field for each fact the engine reads; the update keeps this
// fixture valid as it does.
#[allow(clippy::needless_update)]
fn mission_already_completed() -> Facts {
    Facts {
        mission_completed: true,
        ..Facts::default()
    }
}

#[test]
fn issue_for_a_completed_mission_is_refused() {
    given([])
        .when_knowing(&mission_already_completed(), issue_root())
        .then_error(DomainError::MissionCompleted {
            mission_ref: "jira:FIN-42".into(),
        });
}

#[test]
fn issue_for_a_completed_mission_by_an_actor_without_authority_is_not_authorized() {
    given([])
        .when_knowing(
            &mission_already_completed(),
            by(mallory(), Command::Issue(root_issue())),
        )
        .then_error(DomainError::NotAuthorized {
            mandate: root(),
            actor: "agent mallory".into(),
            verb: "issue",
        });
}

#[test]
fn a_completed_mission_does_not_touch_an_issue_without_a_mission_ref() {
    let mut issue = root_issue();
    issue.mission.mission_ref = None;
    given([])
        .when_knowing(
            &mission_already_completed(),
            by(alice(), Command::Issue(issue)),
        )
        .then_events(|events, after| {
            assert!(matches!(only(events).body, EventBody::MandateIssued(_)));
            assert_eq!(status_of(after, root()), Status::Active);
        });
}

#[test]
fn mission_complete_with_no_tree_by_an_administrator_is_accepted_and_writes_nothing() {
    given([])
        .when(complete_mission(admin(), "jira:FIN-42"))
        .then_no_events();
}

#[test]
fn mission_complete_with_no_tree_from_the_intake_is_accepted_and_writes_nothing() {
    given([])
        .when(complete_mission(Actor::mission_intake(), "jira:FIN-42"))
        .then_no_events();
}

#[test]
fn mission_complete_with_no_tree_by_a_principal_is_forbidden() {
    given([])
        .when(complete_mission(alice(), "jira:FIN-42"))
        .then_error(DomainError::MissionForbidden {
            mission_ref: "jira:FIN-42".into(),
            actor: "principal alice".into(),
        });
}

#[test]
fn mission_complete_with_no_tree_by_an_agent_is_forbidden() {
    given([])
        .when(complete_mission(mallory(), "jira:FIN-42"))
        .then_error(DomainError::MissionForbidden {
            mission_ref: "jira:FIN-42".into(),
            actor: "agent mallory".into(),
        });
}

// ---------------------------------------------------------------------------
// narrow, renew
// ---------------------------------------------------------------------------

#[test]
fn narrow_by_the_grantor_replaces_the_scope() {
    given([issue_root(), delegate_child()])
        .when(narrow(
            orchestrator(),
            child(),
            &["finance:read on reports/q3/summary"],
        ))
        .then_events(|events, after| {
            assert!(matches!(only(events).body, EventBody::ScopeNarrowed(_)));
            assert_eq!(
                after.get(child()).unwrap().scope(),
                &scope(&["finance:read on reports/q3/summary"])
            );
        });
}

#[test]
fn narrow_to_a_wider_scope_is_refused_naming_the_grant() {
    given([issue_root(), delegate_child()])
        .when(narrow(
            orchestrator(),
            child(),
            &["finance:* on reports/q3/*"],
        ))
        .then_error(DomainError::NarrowWidens {
            mandate: child(),
            grant: "finance:* on reports/q3/*".into(),
        });
}

#[test]
fn renew_by_the_grantor_sets_a_new_not_after() {
    let new = t0() + hours(4);
    given([issue_root(), delegate_child()])
        .when(renew(orchestrator(), child(), new))
        .then_events(|events, after| {
            assert!(matches!(only(events).body, EventBody::MandateRenewed(_)));
            assert_eq!(after.get(child()).unwrap().not_after(), new);
        });
}

#[test]
fn renew_past_the_parent_not_after_is_refused() {
    let later = root_not_after() + hours(1);
    given([issue_root(), delegate_child()])
        .when(renew(orchestrator(), child(), later))
        .then_error(DomainError::NotAfterWidens {
            parent: root(),
            requested: later,
            parent_not_after: root_not_after(),
        });
}

#[test]
fn renew_to_a_time_already_past_is_refused() {
    let now = t0() + hours(2);
    let past = t0() + hours(1);
    given([issue_root(), delegate_child()])
        .at(now)
        .when(renew(orchestrator(), child(), past))
        .then_error(DomainError::NotAfterInPast {
            requested: past,
            now,
        });
}

// ---------------------------------------------------------------------------
// an ancestor's narrowing or shortening limits what a descendant passes on
// ---------------------------------------------------------------------------

/// The root narrowed to the Q3 summary after the child got `reports/q3/*`.
fn child_under_a_narrowed_root() -> Given {
    given([issue_root(), delegate_child()]).and(narrow(
        alice(),
        root(),
        &["finance:read on reports/q3/summary"],
    ))
}

#[test]
fn delegate_of_a_grant_a_narrowed_ancestor_withdrew_is_refused_naming_it() {
    child_under_a_narrowed_root()
        .when(delegate(
            researcher(),
            delegation(child(), "summarizer", &["finance:read on reports/q3/*"]),
        ))
        .then_error(DomainError::ScopeWidens {
            parent: root(),
            grant: "finance:read on reports/q3/*".into(),
        });
}

#[test]
fn delegate_of_what_a_narrowed_ancestor_still_grants_is_accepted() {
    child_under_a_narrowed_root()
        .when(delegate(
            researcher(),
            delegation(
                child(),
                "summarizer",
                &["finance:read on reports/q3/summary"],
            ),
        ))
        .then_events(|events, _| {
            assert!(matches!(only(events).body, EventBody::MandateIssued(_)));
        });
}

#[test]
fn delegate_under_a_shortened_ancestor_ends_with_it_by_default() {
    let root_end = t0() + hours(2);
    given([issue_root(), delegate_child()])
        .and(renew(alice(), root(), root_end))
        .when(delegate_grandchild())
        .then_events(|_, after| {
            assert_eq!(after.get(grandchild()).unwrap().not_after(), root_end);
        });
}

#[test]
fn delegate_past_a_shortened_ancestor_is_refused_naming_it() {
    let root_end = t0() + hours(2);
    let asked = t0() + hours(4);
    given([issue_root(), delegate_child()])
        .and(renew(alice(), root(), root_end))
        .when(delegate(
            researcher(),
            Delegate {
                not_after: Some(asked),
                ..delegation(
                    child(),
                    "summarizer",
                    &["finance:read on reports/q3/summary"],
                )
            },
        ))
        .then_error(DomainError::NotAfterWidens {
            parent: root(),
            requested: asked,
            parent_not_after: root_end,
        });
}

#[test]
fn renew_past_a_shortened_ancestor_is_refused_naming_it() {
    let root_end = t0() + hours(2);
    let asked = t0() + hours(4);
    three_levels()
        .and(renew(alice(), root(), root_end))
        .when(renew(researcher(), grandchild(), asked))
        .then_error(DomainError::NotAfterWidens {
            parent: root(),
            requested: asked,
            parent_not_after: root_end,
        });
}

#[test]
fn the_effective_scope_keeps_of_each_grant_what_every_ancestor_grants() {
    let g = three_levels().and(narrow(
        alice(),
        root(),
        &[
            "finance:read on reports/q3/summary",
            "finance:read on reports/q4/*",
        ],
    ));
    let grants = |m| {
        g.tree
            .effective_scope(m)
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
    };
    // Covered by an ancestor's grant: kept as it is.
    assert_eq!(grants(grandchild()), ["finance:read on reports/q3/summary"]);
    // Wider than the ancestor's grant: the ancestor's, narrower, is kept;
    // the ancestor's grant the child's does not cover is not.
    assert_eq!(grants(child()), ["finance:read on reports/q3/summary"]);
    assert_eq!(
        grants(root()),
        [
            "finance:read on reports/q3/summary",
            "finance:read on reports/q4/*"
        ]
    );
    // Nothing in common: nothing held.
    let g = g.and(narrow(alice(), root(), &["finance:read on reports/q4/*"]));
    assert!(g.tree.effective_scope(child()).is_empty());
    assert!(g.tree.effective_scope(grandchild()).is_empty());
    // Whatever is kept, a check on the chain allows.
    let g = three_levels().and(narrow(alice(), root(), &["finance:* on reports/q3/*"]));
    for grant in g.tree.effective_scope(grandchild()) {
        let (action, resource) = (grant.action.to_string(), grant.resource.to_string());
        assert_eq!(
            authorize(&g.tree, grandchild(), &action, &resource, t0()).outcome,
            Outcome::Allow,
            "{grant}"
        );
    }
}

// ---------------------------------------------------------------------------
// idempotency
// ---------------------------------------------------------------------------

#[test]
fn a_repeated_command_id_yields_no_events() {
    let pause_root = pause(alice(), root());
    given([issue_root(), pause_root.clone()])
        .when(pause_root)
        .then_no_events();
}

#[test]
fn a_command_id_reused_for_another_command_is_refused() {
    let pause_root = pause(alice(), root());
    let mut resume_root = pause_root.clone();
    resume_root.command = Command::Resume(change(root()));
    given([issue_root(), pause_root.clone()])
        .when(resume_root)
        .then_error(DomainError::CommandIdReused {
            command_id: pause_root.command_id,
        });
}

// ---------------------------------------------------------------------------
// effective status
// ---------------------------------------------------------------------------

#[test]
fn pausing_the_root_pauses_the_child_effectively() {
    let g = given([issue_root(), delegate_child(), pause(alice(), root())]);

    let eff = g.tree.effective(child(), g.now).unwrap();

    assert_eq!(eff.status, Status::Paused);
    assert_eq!(eff.cause.map(|c| c.mandate), Some(root()));
    assert_eq!(status_of(&g.tree, child()), Status::Active, "own status");
}

#[test]
fn resuming_the_root_keeps_a_child_paused_on_its_own() {
    let g = given([
        issue_root(),
        delegate_child(),
        pause(orchestrator(), child()),
        pause(alice(), root()),
        resume(alice(), root()),
    ]);

    let eff = g.tree.effective(child(), g.now).unwrap();

    assert_eq!(eff.status, Status::Paused);
    assert_eq!(eff.cause.map(|c| c.mandate), Some(child()));
}

#[test]
fn revoking_a_mandate_ends_every_descendant_effectively() {
    let g = three_levels().and(revoke(alice(), root()));

    let eff = g.tree.effective(grandchild(), g.now).unwrap();

    assert_eq!(eff.status, Status::Revoked);
    assert_eq!(eff.cause.map(|c| c.mandate), Some(root()));
}

#[test]
fn the_clock_expires_a_mandate_without_any_event() {
    let g = given([issue_root(), delegate_child()]).at(root_not_after());

    let eff = g.tree.effective(child(), g.now).unwrap();

    assert_eq!(eff.status, Status::Expired);
    let cause = eff.cause.expect("an expired mandate names its cause");
    assert_eq!(cause.by, None, "only the clock ended it");
    assert_eq!(
        status_of(&g.tree, child()),
        Status::Active,
        "no event written"
    );
}

#[test]
fn a_mandate_is_active_until_its_not_after() {
    let g = given([issue_root()]).at(root_not_after() - Duration::seconds(1));

    let eff = g.tree.effective(root(), g.now).unwrap();

    assert_eq!(eff.status, Status::Active);
}

// ---------------------------------------------------------------------------
// authorize
// ---------------------------------------------------------------------------

#[test]
fn authorize_allows_a_request_within_every_link() {
    let g = given([issue_root(), delegate_child()]);

    let d = authorize(
        &g.tree,
        child(),
        "finance:read",
        "reports/q3/summary",
        g.now,
    );

    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.reason, None);
}

#[test]
fn authorize_denies_out_of_scope_naming_the_link() {
    // The root allows finance:* on reports/**; the child only reads.
    let g = given([issue_root(), delegate_child()]);

    let d = authorize(
        &g.tree,
        child(),
        "finance:write",
        "reports/q3/summary",
        g.now,
    );

    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.reason, Some(DenyReason::OutOfScope { mandate: child() }));
}

#[test]
fn authorize_asks_for_approval_for_a_step_up_action() {
    let g = given([issue_root()]);

    let d = authorize(&g.tree, root(), "finance:pay", "reports/q3/invoice", g.now);

    assert_eq!(d.outcome, Outcome::NeedsApproval);
    assert_eq!(d.approval, vec![action("finance:pay")]);
    assert!(!d.is_allowed());
}

#[test]
fn authorize_denies_a_wildcard_request() {
    let g = given([issue_root()]);

    let d = authorize(&g.tree, root(), "finance:*", "reports/q3/summary", g.now);

    assert_eq!(d.outcome, Outcome::Deny);
    assert!(
        matches!(d.reason, Some(DenyReason::InvalidRequest { .. })),
        "{:?}",
        d.reason
    );
}

#[test]
fn authorize_denies_a_resource_with_dot_segments_as_an_invalid_request() {
    // The root allows `finance:*` on `reports/**`; `..` would climb out of it.
    let g = given([issue_root()]);

    for resource in ["reports/../hr/salaries", "reports/./q3", "reports/.."] {
        let d = authorize(&g.tree, root(), "finance:read", resource, g.now);

        assert_eq!(d.outcome, Outcome::Deny, "{resource}: {d:?}");
        assert!(
            matches!(d.reason, Some(DenyReason::InvalidRequest { .. })),
            "{resource}: {:?}",
            d.reason
        );
    }
}

#[test]
fn a_scope_pattern_with_a_dot_segment_is_refused() {
    for pattern in [
        "finance:read on reports/../hr",
        "finance:read on ./reports/**",
    ] {
        let err = pattern.parse::<mandate::domain::Grant>().unwrap_err();

        assert!(
            matches!(err, DomainError::InvalidScope { .. }),
            "{pattern}: {err}"
        );
    }
}

#[test]
fn authorize_denies_after_not_after_without_any_event() {
    let g = given([issue_root(), delegate_child()]).at(root_not_after());

    let d = authorize(
        &g.tree,
        child(),
        "finance:read",
        "reports/q3/summary",
        g.now,
    );

    assert_denied_as(&d, Status::Expired);
}

#[test]
fn authorize_denies_under_a_paused_ancestor() {
    let g = given([issue_root(), delegate_child(), pause(alice(), root())]);

    let d = authorize(
        &g.tree,
        child(),
        "finance:read",
        "reports/q3/summary",
        g.now,
    );

    assert_denied_as(&d, Status::Paused);
}

#[test]
fn authorize_denies_an_unknown_mandate() {
    let g = given([issue_root()]);

    let d = authorize(
        &g.tree,
        MandateId(Uuid::from_u128(0xdead)),
        "finance:read",
        "reports/q3/summary",
        g.now,
    );

    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.reason, Some(DenyReason::UnknownMandate));
}

#[test]
fn decision_carries_the_chain_from_root_to_mandate() {
    let g = three_levels();

    let d = authorize(
        &g.tree,
        grandchild(),
        "finance:read",
        "reports/q3/summary",
        g.now,
    );

    let links: Vec<_> = d
        .chain
        .iter()
        .map(|l| (l.mandate, l.grantor.clone(), l.grantee.clone()))
        .collect();
    assert_eq!(
        links,
        vec![
            (
                root(),
                Grantor::Principal(alice_id()),
                agent_id("orchestrator")
            ),
            (
                child(),
                Grantor::Agent(agent_id("orchestrator")),
                agent_id("researcher")
            ),
            (
                grandchild(),
                Grantor::Agent(agent_id("researcher")),
                agent_id("summarizer")
            ),
        ]
    );
    assert!(d.chain.iter().all(|l| l.on_behalf_of == alice_id()));
}

// ---------------------------------------------------------------------------
// decoding events
// ---------------------------------------------------------------------------

/// A real event, as JSON.
fn event_json() -> serde_json::Value {
    let g = given([issue_root()]);
    serde_json::to_value(&g.history[0]).unwrap()
}

#[test]
fn an_event_round_trips_through_json() {
    let g = given([issue_root()]);
    let value = serde_json::to_value(&g.history[0]).unwrap();

    let decoded = Event::from_value(value).unwrap();

    assert_eq!(decoded, g.history[0]);
}

#[test]
fn an_event_of_an_unknown_schema_version_is_refused() {
    let mut value = event_json();
    value["schema_version"] = json!(2);

    let err = Event::from_value(value).unwrap_err();

    assert_eq!(
        err,
        DomainError::UnknownVersion {
            what: "event",
            actual: 2,
            supported: SCHEMA_VERSION,
        }
    );
}

#[test]
fn an_event_of_an_unknown_type_is_refused() {
    let mut value = event_json();
    value["type"] = json!("mandate_teleported");

    let err = Event::from_value(value).unwrap_err();

    assert_eq!(
        err,
        DomainError::UnknownType {
            what: "event",
            actual: "mandate_teleported".into(),
        }
    );
}

#[test]
fn a_garbage_commit_is_malformed() {
    let err = Event::decode_commit(b"{\"not\": json").unwrap_err();

    assert!(
        matches!(err, DomainError::Malformed { what: "commit", .. }),
        "{err}"
    );
}

#[test]
fn an_event_missing_a_field_is_malformed() {
    let mut value = event_json();
    value.as_object_mut().unwrap().remove("tree");

    let err = Event::from_value(value).unwrap_err();

    assert!(
        matches!(err, DomainError::Malformed { what: "event", .. }),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// decoding commands
// ---------------------------------------------------------------------------

fn command_json(cmd: &CommandEnvelope) -> serde_json::Value {
    serde_json::to_value(cmd).unwrap()
}

#[test]
fn a_command_round_trips_through_json() {
    let cmd = issue_root();
    let bytes = serde_json::to_vec(&cmd).unwrap();

    let decoded = CommandEnvelope::from_json(&bytes).unwrap();

    assert_eq!(decoded, cmd);
}

#[test]
fn a_command_of_an_unknown_schema_version_is_refused() {
    let mut value = command_json(&pause(alice(), root()));
    value["schema_version"] = json!(7);

    let err = CommandEnvelope::from_json(value.to_string().as_bytes()).unwrap_err();

    assert_eq!(
        err,
        DomainError::UnknownVersion {
            what: "command",
            actual: 7,
            supported: SCHEMA_VERSION,
        }
    );
}

#[test]
fn a_command_of_an_unknown_type_is_refused() {
    let mut value = command_json(&pause(alice(), root()));
    value["type"] = json!("obliterate");

    let err = CommandEnvelope::from_json(value.to_string().as_bytes()).unwrap_err();

    assert_eq!(
        err,
        DomainError::UnknownType {
            what: "command",
            actual: "obliterate".into(),
        }
    );
}

#[test]
fn a_garbage_command_is_malformed() {
    let err = CommandEnvelope::from_json(b"\x00\xffpause please").unwrap_err();

    assert!(
        matches!(
            err,
            DomainError::Malformed {
                what: "command",
                ..
            }
        ),
        "{err}"
    );
}

/// JSON with a key twice means different things to different parsers (first
/// wins, last wins): a proxy that reads one actor or mandate while the engine
/// acts on another must not be possible, so such a command is refused.
#[test]
fn a_command_naming_a_field_twice_is_malformed() {
    let revoke =
        String::from_utf8(serde_json::to_vec(&revoke(researcher(), child())).unwrap()).unwrap();
    let body = revoke.replacen(
        "\"actor\":",
        "\"actor\":{\"kind\":\"admin\",\"id\":\"root\"},\"actor\":",
        1,
    );
    let again = revoke.replacen(
        "\"mandate\":",
        &format!("\"mandate\":\"{}\",\"mandate\":", root()),
        1,
    );
    for twice in [body, again] {
        assert_ne!(twice, revoke, "the fixture names a field twice");

        let result = CommandEnvelope::from_json(twice.as_bytes());

        assert!(
            matches!(
                &result,
                Err(DomainError::Malformed {
                    what: "command",
                    reason,
                }) if reason.contains("duplicate")
            ),
            "{twice}: {result:?}"
        );
    }
}

#[test]
fn a_command_with_an_oversized_reason_is_refused() {
    let cmd = by(
        alice(),
        Command::Revoke(Change {
            mandate: root(),
            reason: Some("x".repeat(1025)),
        }),
    );

    let err = CommandEnvelope::from_json(&serde_json::to_vec(&cmd).unwrap()).unwrap_err();

    assert!(
        matches!(
            err,
            DomainError::InvalidField {
                field: "reason",
                ..
            }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// hash chain
// ---------------------------------------------------------------------------

fn real_history() -> Vec<Event> {
    three_levels()
        .and(pause(orchestrator(), child()))
        .and(resume(orchestrator(), child()))
        .history
}

#[test]
fn verify_chain_accepts_a_real_history() {
    let history = real_history();

    assert_eq!(history.len(), 5);
    assert_eq!(verify_chain(&history), Ok(()));
}

#[test]
fn verify_chain_catches_an_edited_event_at_its_position() {
    let mut history = real_history();
    // Rewrite who the child was granted to (event seq 2).
    let EventBody::MandateIssued(issued) = &mut history[1].body else {
        panic!("seq 2 is the child's mandate_issued");
    };
    issued.grantee = agent_id("mallory");

    let err = verify_chain(&history).unwrap_err();

    // Event 3 records the hash of the original event 2: event 2 is named.
    assert_eq!(err.seq, 2);
    assert_eq!(err.tree, tree_id());
}

#[test]
fn verify_chain_with_head_refuses_an_empty_history_with_a_recorded_head() {
    // Given a head hash the projection recorded for a tree,
    let head = real_history().last().unwrap().hash();

    // when the history to check against it is empty,
    let result = mandate::domain::verify_chain_with_head(tree_id(), &[], Some(&head));

    // then the chain is not intact: the events are missing.
    let err = result.expect_err("an empty history was taken for a recorded head");
    assert_eq!(err.seq, 1);
    assert!(err.reason.contains("empty"), "{}", err.reason);
}

/// A fixed event: every field set, nothing from a clock or a generator.
fn golden_event() -> Event {
    Event {
        event_id: mandate::domain::EventId(Uuid::from_u128(0xe1)),
        tenant: tenant(),
        tree: tree_id(),
        seq: 2,
        schema_version: SCHEMA_VERSION,
        time: t0(),
        actor: Actor::Agent(agent_id("research-lead")),
        on_behalf_of: alice_id(),
        command_id: CommandId(Uuid::from_u128(0xc0)),
        command_digest: "ab".repeat(32),
        correlation_id: Some("ticket-7".into()),
        prev_hash: Some("cd".repeat(32)),
        signature: None,
        body: EventBody::MandateIssued(Box::new(mandate::domain::event::MandateIssued {
            mandate: MandateId(Uuid::from_u128(0x3)),
            parent: Some(root()),
            grantor: Grantor::Agent(agent_id("research-lead")),
            grantee: agent_id("analyst"),
            principal: alice_id(),
            mission: None,
            scope: scope(&["finance:read on reports/q3/*", "deals:* on deals/**"]),
            not_after: t0() + hours(4),
            depth: 1,
            step_up: vec![action("deals:sign")],
            supervisors: vec![agent_id("auditor")],
        })),
    }
}

#[test]
fn the_canonical_encoding_of_a_fixed_event_does_not_drift() {
    // Given a fixed event, when it is encoded canonically and hashed, then
    // both are exactly what every stored chain was built with: a change here
    // breaks the hash chain of every tree already written.
    let event = golden_event();

    assert_eq!(
        String::from_utf8(event.canonical_bytes()).unwrap(),
        GOLDEN_CANONICAL
    );
    assert_eq!(event.hash(), GOLDEN_HASH);
}

const GOLDEN_CANONICAL: &str = r#"{"actor":{"id":"research-lead","kind":"agent"},"command_digest":"abababababababababababababababababababababababababababababababab","command_id":"00000000-0000-0000-0000-0000000000c0","correlation_id":"ticket-7","depth":1,"event_id":"00000000-0000-0000-0000-0000000000e1","grantee":"analyst","grantor":{"id":"research-lead","kind":"agent"},"mandate":"00000000-0000-0000-0000-000000000003","not_after":"2030-01-01T13:00:00Z","on_behalf_of":"alice","parent":"00000000-0000-0000-0000-0000000007ee","prev_hash":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","principal":"alice","schema_version":1,"scope":[{"action":"deals:*","resource":"deals/**"},{"action":"finance:read","resource":"reports/q3/*"}],"seq":2,"step_up":["deals:sign"],"supervisors":["auditor"],"tenant":"acme","time":"2030-01-01T09:00:00Z","tree":"00000000-0000-0000-0000-0000000007ee","type":"mandate_issued"}"#;
const GOLDEN_HASH: &str = "56804a37b359b97657cb801503595bfbee41efdff9e5c6a74a5d1a464fa9926c";

#[test]
fn verify_log_names_what_differs_between_the_log_and_the_projection() {
    use mandate::domain::{verify_log, ChainFault, LoggedCommit, RecordedHead};
    // Given a real history, one commit per event at positions 10, 20, …,
    let history = real_history();
    let commits = |events: &[Event]| -> Vec<LoggedCommit> {
        events
            .iter()
            .map(|e| LoggedCommit {
                position: e.seq * 10,
                events: Ok(vec![e.clone()]),
            })
            .collect()
    };
    let head = RecordedHead {
        position: 50,
        seq: 5,
        hash: Some(history[4].hash()),
    };
    let check = |log: &[LoggedCommit], projected: &[Event], head: Option<&RecordedHead>| {
        verify_log(&tenant(), tree_id(), log, projected, head).map(|v| v.events)
    };
    assert_eq!(check(&commits(&history), &history, Some(&head)), Ok(5));

    // when the log's last record was edited, it is named as tampered;
    let mut edited = history.clone();
    edited[4].correlation_id = Some("forged".into());
    let err = check(&commits(&edited), &history, Some(&head)).unwrap_err();
    assert_eq!(
        (err.fault, err.position, err.seq),
        (ChainFault::Tampered, 50, 5)
    );

    // when the projection's copy of an event differs from an intact log, the
    // projection is named;
    let mut projected = history.clone();
    projected[1].correlation_id = Some("rewritten".into());
    let err = check(&commits(&history), &projected, Some(&head)).unwrap_err();
    assert_eq!(
        (err.fault, err.position, err.seq),
        (ChainFault::ProjectionDiffers, 20, 2)
    );

    // when the projection knows nothing of a tree the log holds, or is
    // behind it, the first record past its head is named;
    let err = check(&commits(&history), &[], None).unwrap_err();
    assert_eq!(
        (err.fault, err.position),
        (ChainFault::ProjectionDiffers, 10)
    );
    let behind = RecordedHead {
        position: 30,
        seq: 3,
        hash: Some(history[2].hash()),
    };
    let err = check(&commits(&history), &history[..3], Some(&behind)).unwrap_err();
    assert_eq!(
        (err.fault, err.position, err.seq),
        (ChainFault::ProjectionDiffers, 40, 4)
    );

    // and a record that cannot be decoded is named where it stands.
    let mut log = commits(&history);
    log[2].events = Err("not json".into());
    let err = check(&log, &history, Some(&head)).unwrap_err();
    assert_eq!(
        (err.fault, err.position, err.seq),
        (ChainFault::Corrupt, 30, 3)
    );
}

#[test]
fn verify_chain_with_head_catches_an_edited_last_event() {
    let mut history = real_history();
    let head = history.last().unwrap().hash();
    assert_eq!(
        mandate::domain::verify_chain_with_head(tree_id(), &history, Some(&head)),
        Ok(())
    );
    history.last_mut().unwrap().correlation_id = Some("forged".into());
    // Without the head, the last event has no witness.
    assert_eq!(verify_chain(&history), Ok(()));
    let err =
        mandate::domain::verify_chain_with_head(tree_id(), &history, Some(&head)).unwrap_err();
    assert_eq!(err.seq, 5);
}

#[test]
fn verify_chain_catches_a_renumbered_event() {
    let mut history = real_history();
    history[3].seq = 9;

    let err = verify_chain(&history).unwrap_err();

    assert_eq!(err.seq, 9);
}

// ---------------------------------------------------------------------------
// Tenant registry: blocked agents and principals
// ---------------------------------------------------------------------------

impl Given {
    /// Decides the next command with what the engine knows beyond the tree.
    fn when_with(self, facts: Facts, cmd: CommandEnvelope) -> Then {
        let result = decide(&self.tree, &cmd, &facts, self.now);
        Then {
            before: self.tree,
            result,
        }
    }
}

fn blocked_grantee() -> Facts {
    Facts {
        grantee_blocked: true,
        ..Facts::default()
    }
}
fn blocked_principal() -> Facts {
    Facts {
        principal_blocked: true,
        ..Facts::default()
    }
}

/// The tenant's registry, with nothing recorded yet.
fn registry() -> Given {
    Given {
        tree: Tree::empty(tenant(), TreeId::registry(&tenant())),
        history: Vec::new(),
        now: t0(),
    }
}
fn block_agent(actor: Actor, name: &str) -> CommandEnvelope {
    by(
        actor,
        Command::BlockAgent(AgentBlock {
            agent: agent_id(name),
            reason: Some("deprovisioned".into()),
        }),
    )
}
fn unblock_agent(actor: Actor, name: &str) -> CommandEnvelope {
    by(
        actor,
        Command::UnblockAgent(AgentBlock {
            agent: agent_id(name),
            reason: None,
        }),
    )
}
fn block_principal(actor: Actor) -> CommandEnvelope {
    by(
        actor,
        Command::BlockPrincipal(PrincipalBlock {
            principal: alice_id(),
            reason: None,
        }),
    )
}
fn unblock_principal(actor: Actor) -> CommandEnvelope {
    by(
        actor,
        Command::UnblockPrincipal(PrincipalBlock {
            principal: alice_id(),
            reason: None,
        }),
    )
}

#[test]
fn delegate_to_a_blocked_agent_is_refused_naming_it() {
    given([issue_root()])
        .when_with(blocked_grantee(), delegate_child())
        .then_error(DomainError::AgentBlocked {
            agent: agent_id("researcher"),
        });
}

#[test]
fn issue_to_a_blocked_agent_is_refused_naming_it() {
    given([])
        .when_with(blocked_grantee(), issue_root())
        .then_error(DomainError::AgentBlocked {
            agent: agent_id("orchestrator"),
        });
}

#[test]
fn issue_by_a_blocked_principal_is_refused_even_for_an_admin() {
    given([])
        .when_with(
            blocked_principal(),
            by(admin(), Command::Issue(root_issue())),
        )
        .then_error(DomainError::PrincipalBlocked {
            principal: alice_id(),
        });
}

#[test]
fn a_blocked_grantee_does_not_hide_a_missing_authority() {
    given([issue_root()])
        .when_with(
            blocked_grantee(),
            delegate(
                mallory(),
                delegation(root(), "researcher", &["finance:read on reports/q3/*"]),
            ),
        )
        .then_error(DomainError::NotGrantee {
            mandate: root(),
            actor: mallory().to_string(),
            grantee: agent_id("orchestrator"),
        });
}

#[test]
fn a_block_refuses_nothing_but_grants() {
    given([issue_root(), delegate_child()])
        .when_with(blocked_grantee(), revoke(alice(), child()))
        .then_events(|_, after| assert_eq!(status_of(after, child()), Status::Revoked));
}

#[test]
fn an_admin_blocks_an_agent_in_the_registry() {
    registry()
        .when(block_agent(admin(), "contractor"))
        .then_events(|events, after| {
            let e = only(events);
            assert_eq!(e.tree, TreeId::registry(&tenant()));
            assert_eq!(e.seq, 1);
            assert_eq!(e.on_behalf_of, PrincipalId::new("ops-admin").unwrap());
            assert!(
                matches!(&e.body, EventBody::AgentBlocked(b) if b.agent == agent_id("contractor"))
            );
            let block = &after.registry().blocked_agents[&agent_id("contractor")];
            assert_eq!(block.by, admin());
            assert_eq!(block.reason.as_deref(), Some("deprovisioned"));
        });
}

#[test]
fn an_admin_lifts_an_agents_block() {
    registry()
        .and(block_agent(admin(), "contractor"))
        .when(unblock_agent(admin(), "contractor"))
        .then_events(|events, after| {
            assert!(matches!(&only(events).body, EventBody::AgentUnblocked(_)));
            assert!(after.registry().is_empty());
        });
}

#[test]
fn an_admin_blocks_and_lifts_a_principal() {
    registry()
        .and(block_principal(admin()))
        .when(unblock_principal(admin()))
        .then_events(|events, after| {
            assert!(matches!(
                &only(events).body,
                EventBody::PrincipalUnblocked(_)
            ));
            assert!(after.registry().blocked_principals.is_empty());
        });
}

#[test]
fn lifting_a_block_that_is_not_in_place_is_refused() {
    registry()
        .when(unblock_agent(admin(), "contractor"))
        .then_error(DomainError::NotBlocked {
            kind: "agent",
            id: "contractor".into(),
        });
}

#[test]
fn only_an_admin_may_block_or_lift() {
    for (cmd, verb) in [
        (block_agent(alice(), "contractor"), "block_agent"),
        (block_principal(alice()), "block_principal"),
        (unblock_principal(orchestrator()), "unblock_principal"),
    ] {
        registry()
            .when(cmd)
            .then_error(DomainError::RegistryForbidden {
                actor: if verb == "unblock_principal" {
                    orchestrator().to_string()
                } else {
                    alice().to_string()
                },
                verb,
            });
    }
    registry()
        .and(block_agent(admin(), "contractor"))
        .when(unblock_agent(agent("contractor"), "contractor"))
        .then_error(DomainError::RegistryForbidden {
            actor: agent("contractor").to_string(),
            verb: "unblock_agent",
        });
}

#[test]
fn registry_commands_act_only_on_the_registry() {
    given([issue_root()])
        .when(block_agent(admin(), "contractor"))
        .then_error(DomainError::TreeNotFound { tree: tree_id() });
}

#[test]
fn no_mandate_command_addresses_the_registry() {
    registry()
        .when(by(admin(), Command::Issue(root_issue())))
        .then_error(DomainError::TreeNotFound {
            tree: TreeId::registry(&tenant()),
        });
}

#[test]
fn the_registry_id_is_no_tree_id() {
    let registry = TreeId::registry(&tenant());
    assert!(registry.is_registry_of(&tenant()));
    assert!(!registry.is_registry_of(&TenantId::new("globex").unwrap()));
    assert_eq!(registry, TreeId::registry(&tenant()), "derived, stable");
    assert_ne!(
        registry,
        TreeId::registry(&TenantId::new("globex").unwrap())
    );
    assert!(
        !mandate::domain::root_tree_id(&tenant(), CommandId::generate()).is_registry_of(&tenant())
    );
    assert!(!TreeId::generate().is_registry_of(&tenant()));
}

#[test]
fn registry_events_decode_and_chain() {
    let g = registry()
        .and(block_agent(admin(), "contractor"))
        .and(unblock_agent(admin(), "contractor"));
    verify_chain(&g.history).unwrap();
    for e in &g.history {
        let decoded = Event::from_value(serde_json::to_value(e).unwrap()).unwrap();
        assert_eq!(&decoded, e);
    }
}

// ---------------------------------------------------------------------------
// Quarantine: a corrupt record freezes nothing live
// ---------------------------------------------------------------------------

/// The tree as the projection holds it after a bad record at `position`:
/// the projection marks its snapshot (no event does), so the mark is put on
/// the snapshot as stored.
fn quarantined(mut g: Given, position: u64) -> Given {
    let mut snapshot = serde_json::to_value(&g.tree).unwrap();
    snapshot["quarantine"] = json!({"position": position, "reason": "malformed commit"});
    g.tree = serde_json::from_value(snapshot).unwrap();
    g
}

fn resolve(actor: Actor, position: u64, action: Resolution) -> CommandEnvelope {
    by(
        actor,
        Command::ResolveQuarantine(ResolveQuarantine {
            mandate: child(),
            position,
            action,
            reason: None,
        }),
    )
}

#[test]
fn authorize_denies_under_a_quarantined_tree_naming_the_position() {
    let g = quarantined(given([issue_root(), delegate_child()]), 7);
    let d = authorize(
        &g.tree,
        child(),
        "finance:read",
        "reports/q3/summary",
        g.now,
    );
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(
        d.reason,
        Some(DenyReason::Quarantined {
            tree: tree_id(),
            position: 7
        })
    );
}

#[test]
fn a_quarantined_tree_refuses_every_command_but_its_resolution() {
    quarantined(given([issue_root(), delegate_child()]), 7)
        .when(revoke(alice(), child()))
        .then_error(DomainError::Quarantined {
            tree: tree_id(),
            position: 7,
        });
}

#[test]
fn only_an_administrator_resolves_a_quarantine() {
    quarantined(given([issue_root(), delegate_child()]), 7)
        .when(resolve(alice(), 7, Resolution::Restore))
        .then_error(DomainError::NotAuthorized {
            mandate: child(),
            actor: alice().to_string(),
            verb: "resolve the quarantine of",
        });
}

#[test]
fn a_resolution_is_refused_on_a_tree_not_quarantined_or_at_another_position() {
    given([issue_root(), delegate_child()])
        .when(resolve(admin(), 7, Resolution::Restore))
        .then_error(DomainError::NotQuarantined {
            tree: tree_id(),
            position: 7,
        });
    quarantined(given([issue_root(), delegate_child()]), 7)
        .when(resolve(admin(), 8, Resolution::End))
        .then_error(DomainError::NotQuarantined {
            tree: tree_id(),
            position: 8,
        });
}

#[test]
fn a_restore_names_the_skipped_position_chains_from_the_last_good_event_and_lifts_it() {
    let g = quarantined(given([issue_root(), delegate_child()]), 7);
    let last_good = g.history.last().unwrap().hash();
    g.when(resolve(admin(), 7, Resolution::Restore))
        .then_events(|events, after| {
            let e = only(events);
            assert_eq!(
                (e.seq, e.prev_hash.as_deref()),
                (3, Some(last_good.as_str()))
            );
            assert!(matches!(
                &e.body,
                EventBody::QuarantineResolved(r)
                    if r.position == 7 && r.mandate == root() && r.action == Resolution::Restore
            ));
            assert_eq!(after.quarantine(), None);
            let d = authorize(after, child(), "finance:read", "reports/q3/summary", t0());
            assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
        });
}

#[test]
fn ending_a_quarantined_tree_revokes_its_root_so_nothing_in_it_is_live() {
    quarantined(given([issue_root(), delegate_child()]), 7)
        .when(resolve(admin(), 7, Resolution::End))
        .then_events(|_, after| {
            assert_eq!(after.quarantine(), None);
            assert_eq!(after.mandates()[&root()].status(), Status::Revoked);
            assert_eq!(
                after.effective(child(), t0()).unwrap().status,
                Status::Revoked
            );
        });
}

// ---------------------------------------------------------------------------
// a reader's view of one chain (`Tree::from_chain`)
// ---------------------------------------------------------------------------

/// The chain root → grandchild of `three_levels`, as a `chain` reply carries
/// it (JSON, so a row can break it as a faulty or hostile engine would).
fn chain_on_the_wire() -> Vec<serde_json::Value> {
    let g = three_levels();
    g.tree
        .chain(grandchild())
        .into_iter()
        .map(|m| serde_json::to_value(m).unwrap())
        .collect()
}

fn from_wire(chain: Vec<serde_json::Value>) -> Result<Tree, DomainError> {
    let mandates = chain
        .into_iter()
        .map(|m| serde_json::from_value(m).unwrap())
        .collect();
    Tree::from_chain(tenant(), tree_id(), 3, mandates)
}

#[test]
fn a_whole_chain_is_held_and_answers_as_the_tree_does() {
    let full = three_levels().tree;
    let held = from_wire(chain_on_the_wire()).expect("the engine's own chain");
    assert_eq!(held.mandates().len(), 3);
    assert_eq!(
        (held.root(), held.principal()),
        (Some(root()), Some(&alice_id()))
    );
    assert_eq!(held.get(child()).unwrap().children(), [grandchild()]);
    for (action, resource) in [
        ("finance:read", "reports/q3/summary"),
        ("finance:read", "reports/q4/summary"),
        ("finance:pay", "reports/q3/summary"),
    ] {
        assert_eq!(
            authorize(&held, grandchild(), action, resource, t0()),
            authorize(&full, grandchild(), action, resource, t0()),
            "{action} on {resource}"
        );
    }
}

/// A chain whose ancestors were narrowed and shortened after its
/// delegations is one the engine writes (a `narrow` or a `renew` changes
/// that mandate alone): it is held, and it answers as the whole tree does,
/// so a reader of the chain denies what the ancestor no longer grants.
#[test]
fn a_chain_whose_ancestor_was_narrowed_or_shortened_is_held_and_every_link_counts() {
    let g = three_levels()
        .and(narrow(alice(), root(), &["finance:read on reports/q4/*"]))
        .and(renew(alice(), root(), root_not_after() - hours(4)));
    let full = g.tree.clone();
    let chain: Vec<serde_json::Value> = full
        .chain(grandchild())
        .into_iter()
        .map(|m| serde_json::to_value(m).unwrap())
        .collect();
    let mandates = chain
        .into_iter()
        .map(|m| serde_json::from_value(m).unwrap())
        .collect();
    let held = Tree::from_chain(tenant(), tree_id(), full.version(), mandates)
        .expect("a chain the engine wrote after narrowing an ancestor");
    for at in [t0(), root_not_after() - hours(1)] {
        let d = authorize(
            &held,
            grandchild(),
            "finance:read",
            "reports/q3/summary",
            at,
        );
        assert_eq!(
            d,
            authorize(
                &full,
                grandchild(),
                "finance:read",
                "reports/q3/summary",
                at
            )
        );
        assert_eq!(d.outcome, Outcome::Deny, "at {at}: {d:?}");
    }
    assert!(matches!(
        authorize(&held, grandchild(), "finance:read", "reports/q3/summary", t0()).reason,
        Some(DenyReason::OutOfScope { mandate }) if mandate == root()
    ));
}

/// Every invariant `Tree::from_chain` checks, each broken by one row: what
/// the row does to the chain, and what the refusal must say.
#[test]
fn a_chain_the_engine_could_not_have_written_is_refused() {
    type Break = fn(&mut Vec<serde_json::Value>);
    let rows: [(&str, Break, &str); 9] = [
        ("no mandate", |c| c.clear(), "holds no mandate"),
        ("no root", |c| drop(c.remove(0)), "is not a root"),
        (
            "a link of another tenant",
            |c| c[1]["tenant"] = json!("globex"),
            "not of tree",
        ),
        (
            "a link of another tree",
            |c| c[2]["tree"] = json!(Uuid::from_u128(0xbad)),
            "not of tree",
        ),
        (
            "a link on behalf of another principal",
            |c| c[2]["principal"] = json!("bob"),
            "not of the root's principal",
        ),
        (
            "a link left out",
            |c| drop(c.remove(1)),
            "does not follow from the mandate before it",
        ),
        (
            "links out of order",
            |c| c.swap(1, 2),
            "does not follow from the mandate before it",
        ),
        (
            "a delegation as deep as its parent",
            |c| c[2]["depth"] = c[1]["depth"].clone(),
            "not fewer than its parent",
        ),
        (
            "one mandate twice",
            |c| {
                let mut again = c[1].clone();
                again["parent"] = c[1]["id"].clone();
                again["depth"] = json!(0);
                c[2] = again;
            },
            "names one mandate twice",
        ),
    ];
    for (row, break_it, says) in rows {
        let mut chain = chain_on_the_wire();
        break_it(&mut chain);
        match from_wire(chain) {
            Err(DomainError::Malformed {
                what: "chain",
                reason,
            }) => {
                assert!(reason.contains(says), "{row}: the refusal says {reason:?}")
            }
            other => panic!("{row}: expected a refusal, got {other:?}"),
        }
    }
}
