//! Step-up approvals in the pure domain: who may request, decide and use an
//! approval; that it is bound to one request and single-use; that it
//! expires and dies with its mandate; that every refusal is typed and
//! changes nothing; and that every approval event fits the schemas.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

use mandate::domain::approval::{params_hash, ApprovalState};
use mandate::domain::{
    apply, authorize, decide, replay, root_tree_id, Actor, CommandEnvelope, CommandId, DomainError,
    Event, EventBody, Facts, MandateId, Outcome, TenantId, Tree,
};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
}

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

fn principal() -> serde_json::Value {
    json!({"kind": "principal", "id": "carol"})
}

fn bot() -> serde_json::Value {
    json!({"kind": "agent", "id": "support-bot"})
}

fn cmd(actor: serde_json::Value, body: serde_json::Value) -> CommandEnvelope {
    let mut v = json!({"command_id": CommandId::generate(), "tenant": "acme", "actor": actor});
    v.as_object_mut()
        .unwrap()
        .extend(body.as_object().unwrap().clone());
    CommandEnvelope::from_json(v.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("fixture command refused: {e}"))
}

fn refund() -> serde_json::Value {
    json!({"amount_cents": 4999, "currency": "EUR"})
}

/// A support tree: the bot may read tickets and refund, refunds need
/// approval; a helper agent holds a delegation below it.
struct World {
    tree: Tree,
    log: Vec<Event>,
    root: MandateId,
    now: DateTime<Utc>,
}

impl World {
    fn new() -> Self {
        let issue = cmd(
            principal(),
            json!({
                "type": "issue", "principal": "carol", "grantee": "support-bot",
                "mission": {"purpose": "answer tickets"},
                "scope": [
                    {"action": "tickets:read", "resource": "tickets/**"},
                    {"action": "payments:refund", "resource": "tickets/**"}
                ],
                "not_after": "2026-01-01T20:00:00Z",
                "step_up": ["payments:refund"],
                "supervisors": ["ops-lead"]
            }),
        );
        let tree = Tree::empty(tenant(), root_tree_id(&tenant(), issue.command_id));
        let mut w = World {
            root: MandateId(tree.id().0),
            tree,
            log: Vec::new(),
            now: t0(),
        };
        w.accept(issue);
        w
    }

    fn try_cmd(&mut self, c: CommandEnvelope) -> Result<Vec<Event>, DomainError> {
        let before = self.tree.clone();
        let r = decide(&self.tree, &c, &Facts::default(), self.now);
        match &r {
            Ok(events) => {
                for e in events {
                    apply(&mut self.tree, e);
                }
                self.log.extend(events.iter().cloned());
            }
            Err(_) => assert_eq!(self.tree, before, "a refusal changes nothing"),
        }
        r
    }

    fn accept(&mut self, c: CommandEnvelope) -> Vec<Event> {
        let verb = c.command.verb();
        self.try_cmd(c)
            .unwrap_or_else(|e| panic!("{verb} refused: {e}"))
    }

    fn refuse(&mut self, c: CommandEnvelope) -> DomainError {
        let verb = c.command.verb();
        match self.try_cmd(c) {
            Ok(events) => panic!("{verb} should be refused, wrote {events:?}"),
            Err(e) => e,
        }
    }

    fn request(
        &mut self,
        actor: serde_json::Value,
        params: &serde_json::Value,
    ) -> Result<Uuid, DomainError> {
        let id = Uuid::now_v7();
        self.try_cmd(cmd(
            actor,
            json!({"type": "request_approval", "mandate": self.root, "approval": id,
                   "action": "payments:refund", "resource": "tickets/T-1",
                   "params_hash": params_hash(params)}),
        ))
        .map(|_| id)
    }

    fn decide_cmd(&self, actor: serde_json::Value, verb: &str, id: Uuid) -> CommandEnvelope {
        cmd(
            actor,
            json!({"type": verb, "mandate": self.root, "approval": id}),
        )
    }

    fn use_cmd(
        &self,
        id: Uuid,
        action: &str,
        resource: &str,
        params: &serde_json::Value,
    ) -> CommandEnvelope {
        cmd(
            bot(),
            json!({"type": "use_approval", "mandate": self.root, "approval": id,
                   "action": action, "resource": resource, "params_hash": params_hash(params)}),
        )
    }

    /// A requested and granted approval of a refund with `refund()`.
    fn granted(&mut self) -> Uuid {
        let id = self.request(bot(), &refund()).unwrap();
        self.accept(self.decide_cmd(principal(), "approve", id));
        id
    }
}

#[test]
fn a_step_up_action_needs_approval_and_a_check_never_consumes_one() {
    let mut w = World::new();
    let d = authorize(&w.tree, w.root, "payments:refund", "tickets/T-1", w.now);
    assert_eq!(d.outcome, Outcome::NeedsApproval);
    let id = w.granted();
    // A granted approval changes no check: only `use_approval` allows.
    let d = authorize(&w.tree, w.root, "payments:refund", "tickets/T-1", w.now);
    assert_eq!(d.outcome, Outcome::NeedsApproval);
    assert!(matches!(
        w.tree.approvals()[&id].state,
        ApprovalState::Granted { .. }
    ));
}

#[test]
fn use_once_is_allowed_and_a_replay_is_refused() {
    let mut w = World::new();
    let id = w.granted();
    let events = w.accept(w.use_cmd(id, "payments:refund", "tickets/T-1", &refund()));
    assert!(
        matches!(&events[..], [e] if matches!(&e.body, EventBody::ApprovalUsed(u) if u.approval == id))
    );
    assert!(matches!(
        w.tree.approvals()[&id].state,
        ApprovalState::Used { .. }
    ));
    let e = w.refuse(w.use_cmd(id, "payments:refund", "tickets/T-1", &refund()));
    assert_eq!(e, DomainError::ApprovalUsed { approval: id });
    assert_eq!(e.reason(), "approval_used");
}

#[test]
fn a_retry_under_the_same_command_id_writes_nothing_more() {
    let mut w = World::new();
    let id = w.granted();
    let use_it = w.use_cmd(id, "payments:refund", "tickets/T-1", &refund());
    assert_eq!(w.accept(use_it.clone()).len(), 1);
    assert!(
        w.accept(use_it).is_empty(),
        "an idempotent retry is not a second use"
    );
}

#[test]
fn only_the_grantee_may_request_and_only_for_a_step_up_action_in_scope() {
    let mut w = World::new();
    for actor in [
        json!({"kind": "agent", "id": "intruder"}),
        json!({"kind": "agent", "id": "ops-lead"}),
        principal(),
        json!({"kind": "admin", "id": "security"}),
    ] {
        let e = w.request(actor, &refund()).unwrap_err();
        assert_eq!(e.reason(), "not_authorized", "{e}");
    }
    let id = Uuid::now_v7();
    let e = w.refuse(cmd(bot(), json!({"type": "request_approval", "mandate": w.root, "approval": id,
        "action": "tickets:read", "resource": "tickets/T-1", "params_hash": params_hash(&refund())})));
    assert_eq!(e.reason(), "approval_not_required");
    let e = w.refuse(cmd(bot(), json!({"type": "request_approval", "mandate": w.root, "approval": id,
        "action": "payments:refund", "resource": "orders/O-1", "params_hash": params_hash(&refund())})));
    assert_eq!(e.reason(), "out_of_scope");
    let e = w.refuse(cmd(
        bot(),
        json!({"type": "request_approval", "mandate": w.root, "approval": id,
        "action": "payments:*", "resource": "tickets/T-1", "params_hash": params_hash(&refund())}),
    ));
    assert_eq!(e.reason(), "invalid_field");
    let unknown = MandateId(Uuid::now_v7());
    let e = w.refuse(cmd(bot(), json!({"type": "request_approval", "mandate": unknown, "approval": id,
        "action": "payments:refund", "resource": "tickets/T-1", "params_hash": params_hash(&refund())})));
    assert_eq!(e.reason(), "mandate_not_found");
    let taken = w.request(bot(), &refund()).unwrap();
    let e = w.refuse(cmd(bot(), json!({"type": "request_approval", "mandate": w.root, "approval": taken,
        "action": "payments:refund", "resource": "tickets/T-1", "params_hash": params_hash(&refund())})));
    assert_eq!(e, DomainError::ApprovalExists { approval: taken });
}

#[test]
fn only_the_principal_approves_or_denies() {
    let mut w = World::new();
    let id = w.request(bot(), &refund()).unwrap();
    for actor in [
        bot(),
        json!({"kind": "agent", "id": "ops-lead"}),
        json!({"kind": "principal", "id": "mallory"}),
        json!({"kind": "admin", "id": "security"}),
    ] {
        for verb in ["approve", "deny_approval"] {
            let e = w.refuse(w.decide_cmd(actor.clone(), verb, id));
            assert_eq!(e.reason(), "not_authorized", "{verb} by {actor}: {e}");
        }
    }
    let e = w.refuse(w.use_cmd(id, "payments:refund", "tickets/T-1", &refund()));
    assert_eq!(e, DomainError::ApprovalPending { approval: id });
    w.accept(w.decide_cmd(principal(), "approve", id));
    let e = w.refuse(w.decide_cmd(principal(), "approve", id));
    assert_eq!(e.reason(), "approval_decided");
    let e = w.refuse(w.decide_cmd(principal(), "deny_approval", id));
    assert_eq!(e.reason(), "approval_decided");
}

#[test]
fn a_denied_approval_is_never_usable() {
    let mut w = World::new();
    let id = w.request(bot(), &refund()).unwrap();
    w.accept(w.decide_cmd(principal(), "deny_approval", id));
    let e = w.refuse(w.use_cmd(id, "payments:refund", "tickets/T-1", &refund()));
    assert_eq!(e, DomainError::ApprovalDenied { approval: id });
    let e = w.refuse(w.decide_cmd(principal(), "approve", id));
    assert_eq!(e.reason(), "approval_denied");
}

#[test]
fn an_approval_is_bound_to_action_resource_and_parameters() {
    let mut w = World::new();
    let id = w.granted();
    let other = json!({"amount_cents": 499900, "currency": "EUR"});
    for (action, resource, params, field) in [
        ("payments:refund", "tickets/T-1", &other, "params_hash"),
        ("payments:refund", "tickets/T-2", &refund(), "resource"),
        ("tickets:read", "tickets/T-1", &refund(), "action"),
    ] {
        let e = w.refuse(w.use_cmd(id, action, resource, params));
        assert_eq!(
            e,
            DomainError::ApprovalMismatch {
                approval: id,
                field
            }
        );
    }
    // Key order does not change the hash: it is over canonical JSON.
    let reordered = json!({"currency": "EUR", "amount_cents": 4999});
    w.accept(w.use_cmd(id, "payments:refund", "tickets/T-1", &reordered));
}

#[test]
fn an_approval_expires_and_never_outlives_its_mandate() {
    let mut w = World::new();
    let id = w.granted();
    let expires = w.tree.approvals()[&id].expires_at;
    assert_eq!(expires, t0() + Duration::minutes(15), "default lifetime");
    w.now = expires;
    let e = w.refuse(w.use_cmd(id, "payments:refund", "tickets/T-1", &refund()));
    assert_eq!(e.reason(), "approval_expired");
    // Expired before it was decided: it can no longer be granted.
    w.now = t0();
    let late = w.request(bot(), &refund()).unwrap();
    w.now = t0() + Duration::hours(1);
    let e = w.refuse(w.decide_cmd(principal(), "approve", late));
    assert_eq!(e.reason(), "approval_expired");
    // A long lifetime is capped by the chain's not_after (20:00).
    w.now = t0() + Duration::hours(7) + Duration::minutes(55);
    let id = Uuid::now_v7();
    w.accept(cmd(
        bot(),
        json!({"type": "request_approval", "mandate": w.root, "approval": id,
        "action": "payments:refund", "resource": "tickets/T-1",
        "params_hash": params_hash(&refund()), "ttl_seconds": 86400}),
    ));
    assert_eq!(
        w.tree.approvals()[&id].expires_at,
        Utc.with_ymd_and_hms(2026, 1, 1, 20, 0, 0).unwrap()
    );
}

#[test]
fn ending_or_pausing_the_mandate_makes_a_granted_approval_unusable() {
    for verb in ["pause", "revoke"] {
        let mut w = World::new();
        let id = w.granted();
        w.accept(cmd(principal(), json!({"type": verb, "mandate": w.root})));
        let e = w.refuse(w.use_cmd(id, "payments:refund", "tickets/T-1", &refund()));
        assert_eq!(e.reason(), "not_active", "after {verb}: {e}");
        assert!(matches!(
            w.tree.approvals()[&id].state,
            ApprovalState::Granted { .. }
        ));
    }
    // Past not_after, with no expiry event written yet: unusable too.
    let mut w = World::new();
    let id = w.request(bot(), &refund()).unwrap();
    w.accept(cmd(
        bot(),
        json!({"type": "request_approval", "mandate": w.root,
        "approval": Uuid::now_v7(), "action": "payments:refund", "resource": "tickets/T-9",
        "params_hash": params_hash(&refund())}),
    ));
    w.accept(w.decide_cmd(principal(), "approve", id));
    w.now = Utc.with_ymd_and_hms(2026, 1, 1, 20, 0, 0).unwrap();
    let e = w.refuse(w.use_cmd(id, "payments:refund", "tickets/T-1", &refund()));
    assert!(
        matches!(e.reason(), "approval_expired" | "not_active"),
        "{e}"
    );
}

#[test]
fn bad_input_is_refused_by_the_decoder_with_a_named_field() {
    let w = World::new();
    let base = |extra: serde_json::Value| {
        let mut v = json!({"command_id": CommandId::generate(), "tenant": "acme", "actor": bot(),
            "type": "use_approval", "mandate": w.root, "approval": Uuid::now_v7(),
            "action": "payments:refund", "resource": "tickets/T-1",
            "params_hash": params_hash(&refund())});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        CommandEnvelope::from_json(v.to_string().as_bytes())
    };
    assert!(base(json!({})).is_ok());
    for (extra, needle) in [
        (json!({"params_hash": "abc"}), "params_hash"),
        (json!({"params_hash": "Z".repeat(64)}), "params_hash"),
        (json!({"approval": "not-a-uuid"}), "UUID"),
        (json!({"mandate": 7}), "expected a formatted UUID"),
        (json!({"extra": true}), "extra"),
    ] {
        let e = base(extra.clone()).expect_err(&extra.to_string());
        assert!(e.to_string().contains(needle), "{extra}: {e}");
    }
    let v4 = cmd_json_request(w.root, Uuid::new_v4(), None);
    let e = CommandEnvelope::from_json(v4.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.reason(), "invalid_id");
    let zero = cmd_json_request(w.root, Uuid::now_v7(), Some(0));
    let e = CommandEnvelope::from_json(zero.to_string().as_bytes()).unwrap_err();
    assert!(e.to_string().contains("ttl_seconds"), "{e}");
}

fn cmd_json_request(mandate: MandateId, id: Uuid, ttl: Option<u32>) -> serde_json::Value {
    json!({"command_id": CommandId::generate(), "tenant": "acme", "actor": bot(),
        "type": "request_approval", "mandate": mandate, "approval": id,
        "action": "payments:refund", "resource": "tickets/T-1",
        "params_hash": params_hash(&refund()), "ttl_seconds": ttl})
}

#[test]
fn an_unknown_approval_is_refused_and_approvals_stay_in_their_mandate() {
    let mut w = World::new();
    let unknown = Uuid::now_v7();
    let e = w.refuse(w.use_cmd(unknown, "payments:refund", "tickets/T-1", &refund()));
    assert_eq!(e, DomainError::UnknownApproval { approval: unknown });
    let e = w.refuse(w.decide_cmd(principal(), "approve", unknown));
    assert_eq!(e, DomainError::UnknownApproval { approval: unknown });
    // An approval of the root is unknown under a delegation of it.
    let id = w.granted();
    let child = w.accept(cmd(
        bot(),
        json!({"type": "delegate", "parent": w.root,
        "grantee": "refund-helper",
        "scope": [{"action": "payments:refund", "resource": "tickets/**"}]}),
    ));
    let child = child[0].body.mandate();
    let e = w.refuse(cmd(
        json!({"kind": "agent", "id": "refund-helper"}),
        json!({"type": "use_approval", "mandate": child, "approval": id,
               "action": "payments:refund", "resource": "tickets/T-1",
               "params_hash": params_hash(&refund())}),
    ));
    assert_eq!(e, DomainError::UnknownApproval { approval: id });
}

#[test]
fn replaying_the_log_gives_the_same_approvals() {
    let mut w = World::new();
    let used = w.granted();
    w.accept(w.use_cmd(used, "payments:refund", "tickets/T-1", &refund()));
    let denied = w.request(bot(), &refund()).unwrap();
    w.accept(w.decide_cmd(principal(), "deny_approval", denied));
    let _pending = w.request(bot(), &refund()).unwrap();
    let again = replay(tenant(), w.tree.id(), &w.log);
    assert_eq!(again, w.tree);
    assert_eq!(again.approvals().len(), 3);
}

#[test]
fn approval_commands_route_to_the_tree_of_the_mandate_they_name() {
    let w = World::new();
    let c = w.use_cmd(Uuid::now_v7(), "payments:refund", "tickets/T-1", &refund());
    assert_eq!(c.command.target(), Some(w.root));
    assert!(matches!(c.actor, Actor::Agent(_)));
}

#[test]
fn a_delegate_requests_under_its_own_mandate_and_the_root_principal_approves() {
    let mut w = World::new();
    let child = w.accept(cmd(
        bot(),
        json!({"type": "delegate", "parent": w.root, "grantee": "refund-helper",
               "scope": [{"action": "payments:refund", "resource": "tickets/**"}]}),
    ))[0]
        .body
        .mandate();
    let helper = json!({"kind": "agent", "id": "refund-helper"});
    let id = Uuid::now_v7();
    let request = json!({"type": "request_approval", "mandate": child, "approval": id,
        "action": "payments:refund", "resource": "tickets/T-1",
        "params_hash": params_hash(&refund())});
    // The root's step-up pattern covers the delegation too.
    let d = authorize(&w.tree, child, "payments:refund", "tickets/T-1", w.now);
    assert_eq!(d.outcome, Outcome::NeedsApproval);
    // The holder above is not the grantee of the child: it may not ask for it.
    let e = w.refuse(cmd(bot(), request.clone()));
    assert_eq!(e.reason(), "not_authorized");
    w.accept(cmd(helper.clone(), request));
    // Nor decide it: only the root's principal does.
    let e = w.refuse(cmd(
        bot(),
        json!({"type": "approve", "mandate": child, "approval": id}),
    ));
    assert_eq!(e.reason(), "not_authorized");
    w.accept(cmd(
        principal(),
        json!({"type": "approve", "mandate": child, "approval": id}),
    ));
    let use_it = json!({"type": "use_approval", "mandate": child, "approval": id,
        "action": "payments:refund", "resource": "tickets/T-1",
        "params_hash": params_hash(&refund())});
    let e = w.refuse(cmd(bot(), use_it.clone()));
    assert_eq!(e.reason(), "not_authorized");
    w.accept(cmd(helper.clone(), use_it.clone()));
    let e = w.refuse(cmd(helper, use_it));
    assert_eq!(e, DomainError::ApprovalUsed { approval: id });
}

/// The parameters hash of a fixed value: the vector the Python client's
/// `params_hash` is checked against too (canonical JSON: sorted keys, no
/// whitespace, non-ASCII as is).
#[test]
fn the_parameters_hash_of_a_fixed_value_does_not_drift() {
    let v = json!({"b": [1, "é\n", {"z": null, "a": true}], "a": -2.5, "amount_cents": 4999});
    assert_eq!(
        params_hash(&v),
        "3798b6c329b25ddd93118b1ad1e7c5c2fcdd66ac2c147e99e8c7850b905cc930"
    );
}

#[test]
fn a_request_equal_to_one_still_pending_writes_nothing() {
    let mut w = World::new();
    let first = w.request(bot(), &refund()).unwrap();
    let written = w.log.len();
    // The same mandate, action, resource and parameters: nothing written,
    // whatever the new request's id, lifetime or reason.
    let id = Uuid::now_v7();
    let again = w.accept(cmd(
        bot(),
        json!({"type": "request_approval", "mandate": w.root, "approval": id,
               "action": "payments:refund", "resource": "tickets/T-1",
               "params_hash": params_hash(&refund()), "ttl_seconds": 60,
               "reason": "asked again"}),
    ));
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(w.log.len(), written);
    assert_eq!(w.tree.approvals().len(), 1);
    assert!(!w.tree.approvals().contains_key(&id));
    // A stranger is still refused while one is pending.
    let e = w
        .request(json!({"kind": "agent", "id": "helper"}), &refund())
        .unwrap_err();
    assert_eq!(e.reason(), "not_authorized");
    // Other parameters, or another resource, are another request.
    let other = w.request(bot(), &json!({"amount_cents": 1})).unwrap();
    assert!(w.tree.approvals().contains_key(&other));
    let elsewhere = Uuid::now_v7();
    w.accept(cmd(
        bot(),
        json!({"type": "request_approval", "mandate": w.root, "approval": elsewhere,
               "action": "payments:refund", "resource": "tickets/T-2",
               "params_hash": params_hash(&refund())}),
    ));
    assert!(w.tree.approvals().contains_key(&elsewhere));
    // Once decided, an equal request is new again.
    w.accept(w.decide_cmd(principal(), "deny_approval", first));
    let after_denial = w.request(bot(), &refund()).unwrap();
    assert!(w.tree.approvals().contains_key(&after_denial));
    // And once the pending one has expired.
    w.now = w.tree.approvals()[&after_denial].expires_at;
    let after_expiry = w.request(bot(), &refund()).unwrap();
    assert!(w.tree.approvals().contains_key(&after_expiry));
    assert_eq!(w.tree.approvals().len(), 5);
    // A mandate no longer active refuses, pending or not.
    w.accept(cmd(
        principal(),
        json!({"type": "pause", "mandate": w.root}),
    ));
    let e = w.request(bot(), &refund()).unwrap_err();
    assert_eq!(e.reason(), "not_active");
}

#[test]
fn numbers_hash_as_sent_so_an_integer_and_a_float_differ() {
    use sha2::{Digest, Sha256};
    let sha = |canonical: &str| format!("{:x}", Sha256::digest(canonical.as_bytes()));
    let parsed = |text: &str| params_hash(&serde_json::from_str(text).unwrap());
    // An integer (no fraction, no exponent) is written as an integer...
    assert_eq!(parsed(r#"{"n": 1}"#), sha(r#"{"n":1}"#));
    assert_eq!(params_hash(&json!({"n": 1})), sha(r#"{"n":1}"#));
    // ...any other number as a float: the shortest text that reads back as
    // the same double, with `.0` when it is whole.
    for text in [
        r#"{"n": 1.0}"#,
        r#"{"n": 1.00}"#,
        r#"{"n": 1e0}"#,
        r#"{"n": 10E-1}"#,
    ] {
        assert_eq!(parsed(text), sha(r#"{"n":1.0}"#), "{text}");
    }
    assert_eq!(parsed(r#"{"n": 0.50}"#), sha(r#"{"n":0.5}"#));
    assert_ne!(
        params_hash(&json!({"n": 1})),
        params_hash(&json!({"n": 1.0}))
    );
    // So an approval granted for `1` is not one for `1.0`.
    let mut w = World::new();
    let id = w.request(bot(), &json!({"n": 1})).unwrap();
    w.accept(w.decide_cmd(principal(), "approve", id));
    let e = w.refuse(w.use_cmd(id, "payments:refund", "tickets/T-1", &json!({"n": 1.0})));
    assert_eq!(
        e,
        DomainError::ApprovalMismatch {
            approval: id,
            field: "params_hash"
        }
    );
    w.accept(w.use_cmd(id, "payments:refund", "tickets/T-1", &json!({"n": 1})));
}
