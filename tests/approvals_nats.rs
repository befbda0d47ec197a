//! Step-up approvals against a real nats-server, with two engine instances
//! on one log: an approval requested on one instance and granted on the
//! other is used once, and a replay is refused on either; two uses racing
//! on both instances yield exactly one allow. Every refusal is typed and
//! writes nothing to the log.

mod common;

use chrono::Utc;
use common::prelude::*;
use mandate::domain::approval::params_hash;
use mandate::domain::{ActionPattern, EventBody, Outcome};
use mandate::engine::{Clock, EngineConfig};
use serde_json::{json, Value};
use uuid::Uuid;

const REFUND: &str = "payments:refund";
const TICKET: &str = "tickets/T-1042";

fn amount(cents: u64) -> Value {
    json!({"amount_cents": cents, "currency": "EUR"})
}

/// Carol's support tree: the bot reads tickets and refunds, refunds need
/// approval; `ops-lead` supervises.
fn support_root() -> Issue {
    Issue {
        step_up: vec![ActionPattern::parse(REFUND).unwrap()],
        supervisors: vec![agent_id("ops-lead")],
        ..root_issue(
            "carol",
            "support-bot",
            None,
            &[
                "tickets:read on tickets/**",
                "payments:refund on tickets/**",
            ],
        )
    }
}

/// Two instances on one server with a shared manual clock, a local client
/// of each for the bot and for Carol, and the support mandate.
struct Two {
    _server: NatsServer,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    a: Instance,
    b: Instance,
    clock: Clock,
    nc: async_nats::Client,
    m: MandateId,
}

impl Two {
    async fn start() -> Self {
        let server = NatsServer::start();
        let clock = Clock::manual(Utc::now());
        let config = EngineConfig {
            allow_open_tenants: true,
            clock: clock.clone(),
            ..EngineConfig::default()
        };
        let (dirs, a, b) = start_two(&server.url(), Some(config)).await;
        let nc = connect(&server).await;
        all_serving(&nc, "acme", &[&a, &b]).await;
        let m = issued(
            &Client::local(a.engine.clone(), acme(), principal("carol")),
            support_root(),
        )
        .await;
        Self {
            _server: server,
            _dirs: dirs,
            a,
            b,
            clock,
            nc,
            m,
        }
    }

    fn on_a(&self, actor: Actor) -> Client {
        Client::local(self.a.engine.clone(), acme(), actor)
    }

    fn on_b(&self, actor: Actor) -> Client {
        Client::local(self.b.engine.clone(), acme(), actor)
    }

    /// A refund of 49.99 requested on A and granted by Carol on B.
    async fn granted(&self) -> Uuid {
        let (id, _) = self
            .on_a(agent("support-bot"))
            .request_approval(self.m, REFUND, TICKET, &amount(4999), None, None)
            .await
            .expect("the grantee requests an approval");
        self.on_b(principal("carol"))
            .approve(self.m, id, None)
            .await
            .expect("the principal approves");
        id
    }

    async fn log_position(&self) -> u64 {
        self.a.log_position().await
    }

    async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
    }
}

/// `result` is a refusal with `reason`, and the log did not move.
async fn refused<T: std::fmt::Debug>(
    two: &Two,
    before: u64,
    result: Result<T, ClientError>,
    reason: &str,
) {
    let err = result.expect_err(&format!("should be refused with {reason}"));
    assert_eq!(err.reason(), Some(reason), "{err}");
    assert_eq!(
        two.log_position().await,
        before,
        "a refusal ({reason}) wrote to the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_once_on_one_instance_and_refused_on_replay_on_both() {
    let two = Two::start().await;
    let bot_a = two.on_a(agent("support-bot"));
    let bot_b = two.on_b(agent("support-bot"));
    // Without an approval a refund needs one, on both instances.
    for c in [&bot_a, &bot_b] {
        let d = c.check(two.m, REFUND, TICKET, None).await.unwrap();
        assert_eq!(d.outcome, Outcome::NeedsApproval);
    }
    let before = two.log_position().await;
    refused(
        &two,
        before,
        bot_a
            .use_approval(two.m, Uuid::now_v7(), REFUND, TICKET, &amount(4999))
            .await,
        "unknown_approval",
    )
    .await;

    let id = two.granted().await;
    // A granted approval changes no check: the check stays read-only.
    let d = bot_b.check(two.m, REFUND, TICKET, None).await.unwrap();
    assert_eq!(d.outcome, Outcome::NeedsApproval);

    let used = bot_a
        .use_approval(two.m, id, REFUND, TICKET, &amount(4999))
        .await
        .expect("a granted approval is used once");
    let events = &used.commits[0].events;
    assert!(
        matches!(&events[..], [e] if matches!(&e.body, EventBody::ApprovalUsed(u) if u.approval == id)),
        "{events:?}"
    );
    let before = two.log_position().await;
    refused(
        &two,
        before,
        bot_b
            .use_approval(two.m, id, REFUND, TICKET, &amount(4999))
            .await,
        "approval_used",
    )
    .await;
    refused(
        &two,
        before,
        bot_a
            .use_approval(two.m, id, REFUND, TICKET, &amount(4999))
            .await,
        "approval_used",
    )
    .await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uses_racing_on_two_instances_yield_one_allow() {
    let two = Two::start().await;
    for round in 0..5 {
        let id = two.granted().await;
        let (bot_a, bot_b) = (
            two.on_a(agent("support-bot")),
            two.on_b(agent("support-bot")),
        );
        let (m, params) = (two.m, amount(4999));
        let (ra, rb) = tokio::join!(
            bot_a.use_approval(m, id, REFUND, TICKET, &params),
            bot_b.use_approval(m, id, REFUND, TICKET, &params),
        );
        let allowed = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(allowed, 1, "round {round}: {ra:?} / {rb:?}");
        let refusal = [ra, rb].into_iter().find_map(Result::err).unwrap();
        assert_eq!(refusal.reason(), Some("approval_used"), "{refusal}");
    }
    // One `approval_used` event per approval in the tree's history.
    two.a.caught_up().await;
    let history = two
        .a
        .engine
        .store()
        .history(&acme(), TreeId(two.m.0))
        .unwrap();
    let uses = history
        .iter()
        .filter(|e| matches!(e.body, EventBody::ApprovalUsed(_)))
        .count();
    assert_eq!(uses, 5);
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_grantee_requests_and_only_the_principal_decides() {
    let two = Two::start().await;
    let before = two.log_position().await;
    for actor in [
        agent("intruder"),
        agent("ops-lead"),
        principal("carol"),
        admin("security"),
    ] {
        refused(
            &two,
            before,
            two.on_b(actor)
                .request_approval(two.m, REFUND, TICKET, &amount(1), None, None)
                .await,
            "not_authorized",
        )
        .await;
    }
    // Only for a step-up action within scope.
    refused(
        &two,
        before,
        two.on_a(agent("support-bot"))
            .request_approval(two.m, "tickets:read", TICKET, &amount(1), None, None)
            .await,
        "approval_not_required",
    )
    .await;
    refused(
        &two,
        before,
        two.on_a(agent("support-bot"))
            .request_approval(two.m, REFUND, "orders/O-1", &amount(1), None, None)
            .await,
        "out_of_scope",
    )
    .await;
    let (id, _) = two
        .on_a(agent("support-bot"))
        .request_approval(two.m, REFUND, TICKET, &amount(1), None, None)
        .await
        .unwrap();
    let before = two.log_position().await;
    for actor in [
        agent("support-bot"),
        agent("ops-lead"),
        principal("mallory"),
        admin("security"),
    ] {
        refused(
            &two,
            before,
            two.on_b(actor.clone()).approve(two.m, id, None).await,
            "not_authorized",
        )
        .await;
        refused(
            &two,
            before,
            two.on_b(actor).deny_approval(two.m, id, None).await,
            "not_authorized",
        )
        .await;
    }
    refused(
        &two,
        before,
        two.on_a(agent("support-bot"))
            .use_approval(two.m, id, REFUND, TICKET, &amount(1))
            .await,
        "approval_pending",
    )
    .await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_to_params_action_and_resource_and_refused_when_denied() {
    let two = Two::start().await;
    let id = two.granted().await;
    let bot = two.on_b(agent("support-bot"));
    let before = two.log_position().await;
    for (action, resource, params) in [
        (REFUND, TICKET, amount(499_900)),
        (REFUND, "tickets/T-9", amount(4999)),
        ("tickets:read", TICKET, amount(4999)),
    ] {
        refused(
            &two,
            before,
            bot.use_approval(two.m, id, action, resource, &params).await,
            "approval_mismatch",
        )
        .await;
    }
    // The mismatches did not spend it.
    bot.use_approval(two.m, id, REFUND, TICKET, &amount(4999))
        .await
        .expect("the bound request is still allowed once");

    let (denied, _) = two
        .on_a(agent("support-bot"))
        .request_approval(two.m, REFUND, TICKET, &amount(4999), None, None)
        .await
        .unwrap();
    two.on_a(principal("carol"))
        .deny_approval(two.m, denied, Some("no".into()))
        .await
        .unwrap();
    let before = two.log_position().await;
    refused(
        &two,
        before,
        bot.use_approval(two.m, denied, REFUND, TICKET, &amount(4999))
            .await,
        "approval_denied",
    )
    .await;
    two.stop().await;
}

/// The approval a request's reply names, and when it expires.
fn requested(reply: &mandate::protocol::CommandResult) -> (Uuid, chrono::DateTime<Utc>) {
    match &reply.commits[..] {
        [c] => match &c.events[..] {
            [e] => match &e.body {
                EventBody::ApprovalRequested(r) => (r.approval, r.expires_at),
                other => panic!("not a request: {other:?}"),
            },
            other => panic!("not one event: {other:?}"),
        },
        other => panic!("not one commit: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_equal_to_one_still_pending_answers_with_it_on_either_instance() {
    let two = Two::start().await;
    let bot_a = two.on_a(agent("support-bot"));
    let bot_b = two.on_b(agent("support-bot"));
    let (first, made) = bot_a
        .request_approval(two.m, REFUND, TICKET, &amount(4999), None, None)
        .await
        .unwrap();
    assert!(!made.duplicate);
    assert_eq!(requested(&made).0, first);
    let before = two.log_position().await;
    for c in [&bot_a, &bot_b, &bot_a] {
        let (again, reply) = c
            .request_approval(
                two.m,
                REFUND,
                TICKET,
                &amount(4999),
                Some(60),
                Some("asked again".into()),
            )
            .await
            .expect("a repeated request is answered");
        assert_eq!(again, first, "the pending approval, not a new one");
        assert!(reply.duplicate, "the reply says nothing new was written");
        assert_eq!(
            reply.commits[0].events, made.commits[0].events,
            "the first request's event, as written"
        );
        assert_eq!(
            two.log_position().await,
            before,
            "a repeated request wrote to the log"
        );
    }
    // Other parameters are another request.
    let (other, reply) = bot_b
        .request_approval(two.m, REFUND, TICKET, &amount(1), None, None)
        .await
        .unwrap();
    assert_ne!(other, first);
    assert!(!reply.duplicate);
    // Once granted, an equal request is a new one.
    two.on_b(principal("carol"))
        .approve(two.m, first, None)
        .await
        .unwrap();
    let (after_grant, reply) = bot_a
        .request_approval(two.m, REFUND, TICKET, &amount(4999), None, None)
        .await
        .unwrap();
    assert_ne!(after_grant, first);
    assert!(!reply.duplicate);
    // And once the pending one has expired.
    two.clock.advance(chrono::Duration::minutes(15));
    let (after_expiry, reply) = bot_b
        .request_approval(two.m, REFUND, TICKET, &amount(4999), None, None)
        .await
        .unwrap();
    assert_ne!(after_expiry, after_grant);
    assert!(!reply.duplicate);
    assert_eq!(requested(&reply).0, after_expiry);
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_approval_is_refused() {
    let two = Two::start().await;
    let id = two.granted().await;
    two.clock.advance(chrono::Duration::minutes(15));
    let before = two.log_position().await;
    refused(
        &two,
        before,
        two.on_b(agent("support-bot"))
            .use_approval(two.m, id, REFUND, TICKET, &amount(4999))
            .await,
        "approval_expired",
    )
    .await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_root_makes_a_granted_approval_unusable() {
    let two = Two::start().await;
    let id = two.granted().await;
    two.on_a(principal("carol"))
        .revoke(two.m, Some("incident".into()))
        .await
        .unwrap();
    let before = two.log_position().await;
    refused(
        &two,
        before,
        two.on_b(agent("support-bot"))
            .use_approval(two.m, id, REFUND, TICKET, &amount(4999))
            .await,
        "not_active",
    )
    .await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_never_consumes_an_approval() {
    let two = Two::start().await;
    let guard = start_guard(
        client(&two.nc, "acme", agent("support-bot")),
        two.m,
        Duration::from_secs(5),
    )
    .await;
    let id = two.granted().await;
    let d = guard.check(REFUND, TICKET);
    assert_eq!(d.outcome, Outcome::NeedsApproval);
    assert!(!guard.allows(REFUND, TICKET));
    // The guard's checks left it granted: the engine's use still allows once.
    two.on_b(agent("support-bot"))
        .use_approval(two.m, id, REFUND, TICKET, &amount(4999))
        .await
        .expect("still unused");
    drop(guard);
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_approval_commands_are_refused_over_the_wire_and_change_nothing() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let m = issue(&nc, support_root()).await;
    let before = instance.log_position().await;
    let subject = |verb: &str| mandate::protocol::command_subject(&acme(), verb);
    let base = json!({
        "command_id": CommandId::generate(), "tenant": "acme",
        "actor": {"kind": "agent", "id": "support-bot"},
        "type": "use_approval", "mandate": m, "approval": Uuid::now_v7(),
        "action": REFUND, "resource": TICKET, "params_hash": params_hash(&amount(1)),
    });
    let with = |patch: Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        v.as_object_mut()
            .unwrap()
            .insert("command_id".into(), json!(CommandId::generate()));
        serde_json::to_vec(&v).unwrap()
    };
    for (patch, code, mentions) in [
        (
            json!({"params_hash": "xyz"}),
            "invalid_input",
            vec!["params_hash"],
        ),
        (
            json!({"params_hash": "A".repeat(64)}),
            "invalid_input",
            vec!["params_hash"],
        ),
        (json!({"approval": "nope"}), "invalid_input", vec!["UUID"]),
        (json!({"surprise": 1}), "invalid_input", vec!["surprise"]),
        (
            json!({"type": "request_approval", "ttl_seconds": 0}),
            "invalid_input",
            vec!["ttl_seconds"],
        ),
        (
            json!({"type": "request_approval", "approval": Uuid::new_v4()}),
            "invalid_input",
            vec!["version 7"],
        ),
        (json!({}), "not_found", vec!["approval"]),
        (
            json!({"mandate": Uuid::now_v7()}),
            "not_found",
            vec!["mandate"],
        ),
    ] {
        let verb = patch
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("use_approval")
            .to_string();
        let reply = raw(&nc, subject(&verb), with(patch.clone())).await;
        assert_refused(&format!("{patch}"), &reply, code, &mentions);
    }
    assert_eq!(
        instance.log_position().await,
        before,
        "bad input wrote to the log"
    );
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_projections_of_approvals_equal_a_rebuild_from_the_log() {
    let two = Two::start().await;
    let used = two.granted().await;
    two.on_a(agent("support-bot"))
        .use_approval(two.m, used, REFUND, TICKET, &amount(4999))
        .await
        .unwrap();
    let (denied, _) = two
        .on_b(agent("support-bot"))
        .request_approval(two.m, REFUND, TICKET, &amount(1), Some(60), None)
        .await
        .unwrap();
    two.on_a(principal("carol"))
        .deny_approval(two.m, denied, Some("not this one".into()))
        .await
        .unwrap();
    let _pending = two.granted().await;
    for instance in [&two.a, &two.b] {
        instance.caught_up().await;
        let tree = instance
            .engine
            .store()
            .tree(&acme(), TreeId(two.m.0))
            .unwrap()
            .expect("the tree is projected")
            .tree;
        assert_eq!(tree.approvals().len(), 3);
        let report = instance.engine.rebuild_check().await.unwrap();
        assert!(
            report.equal,
            "the live projection differs from a rebuild: {report:?}"
        );
    }
    two.stop().await;
}
