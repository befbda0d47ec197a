//! A guard answers from a [`PreparedChain`]: what `authorize` works out on
//! every call is worked out once per state, and the common case is matched
//! on the request as written. That is only sound if its answer is
//! `authorize`'s, always. These properties compare the two on random chains
//! (any mix of statuses, transitions, deadlines, scopes, step-ups and
//! quarantine, whether or not the engine could have written it), random
//! requests (valid, with wildcards, malformed) and random moments (around
//! every deadline, to the nanosecond).

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};

use mandate::domain::authorize::PreparedChain;
use mandate::domain::scope::is_concrete_request;
use mandate::domain::{authorize, ActionPattern, MandateId, ResourcePattern, Scope, Tree};

const TENANT: &str = "acme";
const TREE: &str = "7d0c5f7e-1b2a-4c3d-9e8f-0a1b2c3d4e5f";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2048,
        ..ProptestConfig::default()
    }
}

/// Action patterns and concrete actions, including what the grammar refuses.
const ACTIONS: &[&str] = &[
    "*",
    "finance:*",
    "finance:read",
    "finance:read:*",
    "finance:read:q3",
    "finance",
    "hr:write",
    "hr:*",
    "tickets:close",
    "a",
];
const BAD_ACTIONS: &[&str] = &[
    "",
    "finance:",
    ":read",
    "a::b",
    "fin*",
    "a b",
    "finance:*:x",
];

const RESOURCES: &[&str] = &[
    "**",
    "reports/**",
    "reports/*",
    "reports/q3/*",
    "reports/q3/summary",
    "reports/*/summary",
    "*/x",
    "tickets/**",
    "tickets/1/comments",
    "reports",
    "x",
];
const BAD_RESOURCES: &[&str] = &[
    "",
    "/a",
    "a//b",
    "a/",
    "reports/../hr",
    "./a",
    "..",
    "a/**/b",
    "a/b*",
    "a b",
];

fn action_pattern() -> impl Strategy<Value = &'static str> {
    prop::sample::select(ACTIONS)
}

fn resource_pattern() -> impl Strategy<Value = &'static str> {
    prop::sample::select(RESOURCES)
}

/// A request: mostly from the patterns (some concrete, some not), sometimes
/// malformed, sometimes far too long.
fn request() -> impl Strategy<Value = (String, String)> {
    let action = prop_oneof![
        6 => action_pattern().prop_map(String::from),
        1 => prop::sample::select(BAD_ACTIONS).prop_map(String::from),
        1 => Just(format!("a:{}", "b".repeat(300))),
    ];
    let resource = prop_oneof![
        6 => resource_pattern().prop_map(String::from),
        1 => prop::sample::select(BAD_RESOURCES).prop_map(String::from),
        1 => Just(format!("a/{}", "b".repeat(300))),
    ];
    (action, resource)
}

/// One link: its grants, step-ups, own status and transition, and deadline
/// (minutes from `t0`).
#[derive(Clone, Debug)]
struct Link {
    grants: Vec<(&'static str, &'static str)>,
    step_up: Vec<&'static str>,
    /// 0 active, 1 paused, 2 resumed (active with a transition), 3 revoked,
    /// 4 expired by an event, 5 completed.
    state: u8,
    transition_at: i64,
    not_after: i64,
}

fn link() -> impl Strategy<Value = Link> {
    (
        prop::collection::vec((action_pattern(), resource_pattern()), 1..6),
        prop::collection::vec(action_pattern(), 0..3),
        prop_oneof![6 => Just(0u8), 4 => 1u8..6],
        -20i64..20,
        -5i64..40,
    )
        .prop_map(|(grants, step_up, state, transition_at, not_after)| Link {
            grants,
            step_up,
            state,
            transition_at,
            not_after,
        })
}

#[derive(Clone, Debug)]
struct Case {
    links: Vec<Link>,
    quarantined: bool,
    /// Ask about a mandate the tree does not hold.
    unknown: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(link(), 1..5),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(links, quarantined, unknown)| Case {
            links,
            quarantined,
            unknown,
        })
}

fn minutes(m: i64) -> DateTime<Utc> {
    t0() + Duration::minutes(m)
}

fn mandate_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{:012}", i + 1)
}

/// The case as a tree, written as its JSON so that any state can be held,
/// not only one the engine would reach.
fn tree(case: &Case) -> Tree {
    let n = case.links.len();
    let mandates: serde_json::Map<String, Value> = case
        .links
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let status = [
                "active",
                "paused",
                "active",
                "revoked",
                "expired",
                "completed",
            ][usize::from(l.state)];
            let transition = (l.state != 0).then(|| {
                json!({
                    "status": status,
                    "seq": i + 2,
                    "at": minutes(l.transition_at),
                    "by": {"kind": "principal", "id": "alice"},
                    "reason": "because",
                })
            });
            let grantor = if i == 0 {
                json!({"kind": "principal", "id": "alice"})
            } else {
                json!({"kind": "agent", "id": format!("agent-{}", i - 1)})
            };
            let scope: Vec<Value> = l
                .grants
                .iter()
                .map(|(a, r)| json!({"action": a, "resource": r}))
                .collect();
            let m = json!({
                "id": mandate_id(i),
                "tree": TREE,
                "tenant": TENANT,
                "parent": (i > 0).then(|| mandate_id(i - 1)),
                "grantor": grantor,
                "grantee": format!("agent-{i}"),
                "principal": "alice",
                "scope": scope,
                "not_after": minutes(l.not_after),
                "depth": (n - i) as u32,
                "step_up": l.step_up,
                "supervisors": [],
                "status": status,
                "issued_at": minutes(-60),
                "transition": transition,
                "children": if i + 1 < n { vec![mandate_id(i + 1)] } else { vec![] },
            });
            (mandate_id(i), m)
        })
        .collect();
    let mut t = json!({
        "tenant": TENANT,
        "id": TREE,
        "version": n as u64 + 3,
        "head_hash": null,
        "root": mandate_id(0),
        "mission": null,
        "principal": "alice",
        "mandates": mandates,
        "commands": {},
    });
    if case.quarantined {
        t["quarantine"] = json!({"position": 42, "reason": "a record did not decode"});
    }
    serde_json::from_value(t).expect("the case is a tree")
}

fn asked(case: &Case) -> MandateId {
    let i = if case.unknown {
        99
    } else {
        case.links.len() - 1
    };
    mandate_id(i).parse().expect("a mandate id")
}

/// Moments around every deadline and transition of the case: a minute
/// before, a nanosecond before, at, and a nanosecond after.
fn moments(case: &Case) -> Vec<DateTime<Utc>> {
    let mut out = vec![minutes(-30), minutes(50)];
    for l in &case.links {
        for m in [l.not_after, l.transition_at] {
            let at = minutes(m);
            out.extend([
                at - Duration::minutes(1),
                at - Duration::nanoseconds(1),
                at,
                at + Duration::nanoseconds(1),
            ]);
        }
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_prepared_chain_answers_exactly_what_authorize_answers(
        case in case(),
        requests in prop::collection::vec(request(), 1..8),
    ) {
        let tree = tree(&case);
        let mandate = asked(&case);
        let prepared = PreparedChain::new(tree.clone(), mandate);
        for now in moments(&case) {
            for (action, resource) in &requests {
                let expected = authorize(&tree, mandate, action, resource, now);
                let fast = prepared.authorize(action, resource, now);
                prop_assert_eq!(&fast, &expected, "{} on {} at {}", action, resource, now);
                prop_assert_eq!(
                    prepared.allows(action, resource, now),
                    expected.is_allowed(),
                    "{} on {} at {}: {:?}", action, resource, now, expected
                );
            }
        }
    }

    #[test]
    fn matching_as_written_agrees_with_matching_parsed(
        pattern in (action_pattern(), resource_pattern()),
        (action, resource) in request(),
    ) {
        let concrete = is_concrete_request(&action, &resource);
        let parsed = mandate::domain::authorize::parse_request(&action, &resource);
        prop_assert_eq!(concrete, parsed.is_ok(), "{} on {}", action, resource);
        if let Ok((a, r)) = parsed {
            let (pa, pr) = (
                ActionPattern::parse(pattern.0).unwrap(),
                ResourcePattern::parse(pattern.1).unwrap(),
            );
            prop_assert_eq!(pa.covers_concrete(&action), pa.covers(&a), "{} vs {}", pattern.0, action);
            prop_assert_eq!(pr.covers_concrete(&resource), pr.covers(&r), "{} vs {}", pattern.1, resource);
        }
    }

    #[test]
    fn a_scope_matcher_allows_exactly_what_its_scope_allows(
        grants in prop::collection::vec((action_pattern(), resource_pattern()), 1..8),
        (action, resource) in request(),
    ) {
        let scope = Scope::parse(grants.iter().map(|(a, r)| format!("{a} on {r}")).collect::<Vec<_>>().iter().map(String::as_str)).unwrap();
        if let Ok((a, r)) = mandate::domain::authorize::parse_request(&action, &resource) {
            let expected = scope.allows(&a, &r);
            prop_assert_eq!(scope.allows_concrete(&action, &resource), expected, "{} on {}", action, resource);
            prop_assert_eq!(scope.matcher().allows(&action, &resource), expected, "{} on {}", action, resource);
        }
    }
}

#[test]
fn the_common_case_is_answered_without_authorize_and_still_equal() {
    // A live chain of three whose leaf allows the request: the case the
    // prepared path exists for, checked by hand as well.
    let live = Link {
        grants: vec![("finance:*", "reports/**")],
        step_up: vec![],
        state: 0,
        transition_at: 0,
        not_after: 30,
    };
    let case = Case {
        links: vec![live.clone(), live.clone(), live],
        quarantined: false,
        unknown: false,
    };
    let tree = tree(&case);
    let mandate = asked(&case);
    let prepared = PreparedChain::new(tree.clone(), mandate);
    let now = minutes(0);
    let d = prepared.authorize("finance:read", "reports/q3/summary", now);
    assert!(d.is_allowed(), "{d:?}");
    assert_eq!(
        d,
        authorize(&tree, mandate, "finance:read", "reports/q3/summary", now)
    );
    assert!(prepared.allows("finance:read", "reports/q3/summary", now));
    // From the earliest deadline on, expired.
    assert!(!prepared.allows("finance:read", "reports/q3/summary", minutes(30)));
    assert!(!prepared.allows("hr:write", "reports/q3/summary", now));
    assert!(!prepared.allows("finance:read", "reports/../hr", now));
}
