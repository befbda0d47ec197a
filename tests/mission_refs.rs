//! Mission references that are real ticket references (`gh:org/repo#12`,
//! `FIN-42.1`, a ticket URL) and their one reversible subject token:
//!
//! - the encoding round-trips and never yields a byte NATS gives a meaning
//!   to (`.`, `*`, `>`, whitespace), and references of letters, digits, `_`,
//!   `:` and `-` are their own token, so existing subjects keep working;
//! - references that cannot be a token are refused, saying why, and so are
//!   tokens that are not the canonical encoding of a reference;
//! - against a real nats-server, a completion published on the encoded
//!   subject ends the tree of that mission and of no other, and one on a
//!   subject whose token does not decode is dead-lettered, naming why; an
//!   issue for a ticket already completed on its encoded subject is refused.

mod common;

use common::fixtures::{acme, eventually, mission, principal, ticket_issue};
use common::served::Instance;
use common::wire::{client, issued, last_dead_letter, raw, serve_one, tickets};
use mandate::domain::model::{MAX_MISSION_REF_LEN, MAX_MISSION_TOKEN_LEN};
use mandate::domain::{DomainError, MandateId, MissionRef, Status, TenantId};
use mandate::engine::missions::{REJECTED_REASON_HEADER, REJECTED_SUBJECT_HEADER};
use mandate::protocol::{mission_subject, query_subject, ListQuery};
use proptest::prelude::*;

/// Worked examples of the encoding; the README and the Python client
/// (`examples/python/mandate_client.py`) hold the same ones.
const EXAMPLES: &[(&str, &str)] = &[
    ("jira:FIN-42", "jira:FIN-42"),
    ("gh:org/repo#12", "gh:org%2Frepo%2312"),
    ("FIN-42.1", "FIN-42%2E1"),
    ("100%", "100%25"),
    (
        "https://tracker.example/browse/FIN-42?focus=a*b>c",
        "https:%2F%2Ftracker%2Eexample%2Fbrowse%2FFIN-42%3Ffocus%3Da%2Ab%3Ec",
    ),
];

fn refusal(value: &str) -> String {
    match MissionRef::new(value) {
        Ok(m) => panic!("{value:?} was accepted as {m}"),
        Err(e @ DomainError::InvalidId { .. }) => e.to_string(),
        Err(e) => panic!("{value:?} refused with another error: {e:?}"),
    }
}

fn token_refusal(token: &str) -> String {
    match MissionRef::from_subject_token(token) {
        Ok(m) => panic!("token {token:?} was accepted as {m:?}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts the refusal `message` of `what` mentions each of `mentions`.
fn assert_mentions(what: &str, message: &str, mentions: &[&str]) {
    for m in mentions {
        assert!(
            message.contains(m),
            "{what}: {message:?} should mention {m:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The encoding
// ---------------------------------------------------------------------------

#[test]
fn worked_examples_encode_and_decode() {
    for (plain, token) in EXAMPLES {
        let m = mission(plain);
        assert_eq!(m.subject_token(), *token, "token of {plain}");
        assert_eq!(MissionRef::from_subject_token(token).unwrap(), m);
        assert_eq!(m.as_str(), *plain, "the reference itself is kept as given");
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::Value::String(plain.to_string()),
            "the JSON value is the plain reference"
        );
    }
    assert_eq!(
        mission_subject(&TenantId::new("acme").unwrap(), &mission("gh:org/repo#12")),
        "mission.acme.gh:org%2Frepo%2312.completed"
    );
}

/// A printable ASCII reference without spaces, of any length the bound
/// allows, biased towards the bytes that must be escaped.
fn reference() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::char::range('!', '~'),
            1 => prop::sample::select(vec!['.', '*', '>', '%', '/', '#', '$', '~']),
        ],
        1..=MAX_MISSION_REF_LEN,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every accepted reference encodes to a token that decodes back to it,
    /// holds nothing NATS reads as a separator or wildcard, and fits the
    /// bound; a reference refused is refused for its token's length only.
    #[test]
    fn encoding_round_trips_into_one_safe_token(value in reference()) {
        match MissionRef::new(value.clone()) {
            Ok(m) => {
                let token = m.subject_token();
                prop_assert!(!token.is_empty() && token.len() <= MAX_MISSION_TOKEN_LEN);
                prop_assert!(
                    token.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>')),
                    "token {:?} of {:?}", token, value
                );
                prop_assert_eq!(MissionRef::from_subject_token(&token).unwrap(), m);
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.contains("subject token would be"), "{}", message);
            }
        }
    }

    /// References valid before tokens existed are their own token.
    #[test]
    fn plain_references_are_their_own_token(value in "[A-Za-z0-9_:-]{1,128}") {
        let m = MissionRef::new(value.clone()).unwrap();
        prop_assert_eq!(m.subject_token(), value.as_str());
    }

    /// Any string at all: a token the decoder accepts is exactly the token
    /// of what it decodes to (one mission, one subject).
    #[test]
    fn only_canonical_tokens_decode(token in "[A-Za-z0-9%:.a-f /#]{0,40}") {
        if let Ok(m) = MissionRef::from_subject_token(&token) {
            prop_assert_eq!(m.subject_token(), token.as_str());
        }
    }
}

// ---------------------------------------------------------------------------
// Refused references and tokens
// ---------------------------------------------------------------------------

#[test]
fn references_that_cannot_be_a_token_are_refused_saying_why() {
    let long = "a".repeat(MAX_MISSION_REF_LEN + 1);
    // 128 bytes, but 86 slashes make a token of 42 + 86 * 3 = 300 bytes.
    let slashes = format!("{}{}", "a".repeat(42), "/".repeat(86));
    assert_eq!(slashes.len(), MAX_MISSION_REF_LEN);
    // (what, reference, what the refusal must mention)
    let cases: [(&str, &str, &[&str]); 7] = [
        ("empty", "", &["must not be empty"]),
        (
            "a space",
            "FIN 42",
            &["' '", "printable ASCII without spaces"],
        ),
        ("a tab", "FIN\t42", &["'\\t'"]),
        ("a NUL", "FIN\u{0}42", &["'\\0'"]),
        ("an accent", "café-42", &["'é'"]),
        ("too long", &long, &["longer than 128"]),
        (
            "a token too wide",
            &slashes,
            &["subject token would be 300 bytes", "longer than 256"],
        ),
    ];
    for (what, value, mentions) in cases {
        assert_mentions(what, &refusal(value), mentions);
    }
    // The same through JSON: the wire refuses it as the constructor does.
    let err = serde_json::from_value::<MissionRef>(serde_json::json!(slashes)).unwrap_err();
    assert!(
        err.to_string().contains("subject token would be 300 bytes"),
        "{err}"
    );
}

#[test]
fn tokens_that_are_not_a_canonical_encoding_are_refused_saying_why() {
    // (what, token, what the refusal must mention)
    let cases: [(&str, &str, &[&str]); 7] = [
        (
            "lowercase hex",
            "gh:org%2frepo%2312",
            &["two uppercase hex digits"],
        ),
        ("a cut escape", "FIN-42%2", &["two uppercase hex digits"]),
        ("an unescaped slash", "gh:org/repo", &["must be escaped"]),
        (
            "an escaped letter",
            "%46IN-42",
            &["not the canonical token", "\"FIN-42\""],
        ),
        (
            "an escaped space",
            "FIN%2042",
            &["decodes to a refused mission_ref"],
        ),
        ("not UTF-8", "%FF", &["UTF-8"]),
        ("empty", "", &["must not be empty"]),
    ];
    for (what, token, mentions) in cases {
        assert_mentions(what, &token_refusal(token), mentions);
    }
}

// ---------------------------------------------------------------------------
// Against a real nats-server
// ---------------------------------------------------------------------------

async fn status(instance: &Instance, m: MandateId) -> Status {
    instance
        .engine
        .status(&acme(), m, None)
        .await
        .unwrap_or_else(|e| panic!("status of {m}: {e}"))
        .effective
        .status
}

/// Publishes `{}` on `subject` (literal, not built by the library) and waits
/// for the mission stream to store it.
async fn publish(nc: &async_nats::Client, subject: &str) {
    async_nats::jetstream::new(nc.clone())
        .publish(subject.to_string(), "{}".into())
        .await
        .expect("publish a completion")
        .await
        .expect("the mission stream stores the completion");
}

async fn rejected(nc: &async_nats::Client) -> u64 {
    let v = raw(nc, query_subject(&acme(), "health"), b"{}".to_vec()).await;
    v["result"]["rejected_mission_completions"]
        .as_u64()
        .unwrap_or_else(|| panic!("health names no rejected count: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_on_the_encoded_subject_ends_that_missions_tree_only() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let cfo = client(&nc, "acme", principal("cfo"));

    // The ticket, and neighbours that a naive encoding or a prefix match
    // would confuse with it.
    let [ticket, repo, other, dotted, plain] = tickets(
        &cfo,
        [
            "gh:org/repo#12",
            "gh:org/repo",
            "gh:org/repo#123",
            "FIN-42.1",
            "FIN-42",
        ],
    )
    .await;

    publish(&nc, "mission.acme.gh:org%2Frepo%2312.completed").await;
    eventually("the tree of gh:org/repo#12 is completed", || async {
        status(&instance, ticket).await == Status::Completed
    })
    .await;

    publish(&nc, "mission.acme.FIN-42%2E1.completed").await;
    eventually("the tree of FIN-42.1 is completed", || async {
        status(&instance, dotted).await == Status::Completed
    })
    .await;

    // Listed under the plain reference, as issued.
    let listed = cfo
        .list(ListQuery {
            agent: None,
            principal: None,
            mission_ref: Some(mission("gh:org/repo#12")),
            consistency: Default::default(),
        })
        .await
        .expect("list by the plain reference");
    assert!(
        listed.mandates.iter().any(|m| m.mandate == ticket),
        "list by gh:org/repo#12 misses {ticket}: {listed:?}"
    );

    // The intake handles completions in order: once a later one has ended
    // its tree, the earlier ones are all settled, and ended nothing else.
    publish(&nc, "mission.acme.gh:org%2Frepo.completed").await;
    eventually("the tree of gh:org/repo is completed", || async {
        status(&instance, repo).await == Status::Completed
    })
    .await;
    assert_eq!(status(&instance, other).await, Status::Active);
    assert_eq!(status(&instance, plain).await, Status::Active);
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_whose_token_does_not_decode_is_dead_lettered_saying_why() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let cfo = client(&nc, "acme", principal("cfo"));
    let ticket = issued(&cfo, ticket_issue("gh:org/repo#12")).await;
    let before = rejected(&nc).await;

    // Lowercase hex: not the canonical token of gh:org/repo#12.
    let bad = "mission.acme.gh:org%2frepo%2312.completed";
    publish(&nc, bad).await;
    eventually("the completion is dead-lettered", || async {
        rejected(&nc).await > before
    })
    .await;
    let header = last_dead_letter(&nc).await;
    assert_eq!(header(REJECTED_SUBJECT_HEADER), bad);
    let reason = header(REJECTED_REASON_HEADER);
    assert!(
        reason.contains("mission subject token") && reason.contains("uppercase hex"),
        "{reason}"
    );

    // The canonical subject still completes it: the refusal ended nothing.
    assert_eq!(status(&instance, ticket).await, Status::Active);
    publish(&nc, "mission.acme.gh:org%2Frepo%2312.completed").await;
    eventually("the tree of gh:org/repo#12 is completed", || async {
        status(&instance, ticket).await == Status::Completed
    })
    .await;
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issue_for_a_ticket_completed_on_its_encoded_subject_is_refused() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let cfo = client(&nc, "acme", principal("cfo"));
    // Closed before any tree serves it: stored on the stream before the
    // issue is sent, so the issue's fresh read of the encoded subject finds it.
    publish(&nc, "mission.acme.gh:org%2Frepo%2399.completed").await;
    let refused = cfo
        .issue(ticket_issue("gh:org/repo#99"))
        .await
        .expect_err("no mandate for a ticket already closed");
    let message = refused.to_string();
    assert!(message.contains("gh:org/repo#99"), "{message}");
    instance.stop().await;
}
