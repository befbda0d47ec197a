//! The properties the fuzz targets check, one function per target. The
//! targets in `fuzz/fuzz_targets/` call them on libFuzzer's inputs, and
//! `tests/fuzz_regressions.rs` replays every input saved under
//! `tests/corpus/fuzz/<target>/` through them as ordinary tests; both include
//! this file, so the two can never check different things.
//!
//! Only the domain and the protocol are used: the fuzz crate builds Mandate
//! without default features.

use mandate::domain::{
    replay, verify_chain, ActionPattern, CommandEnvelope, Event, ExternalCommand, MissionRef,
    ResourcePattern, Scope, TenantId,
};
use mandate::protocol::{
    AuditQuery, BulkEnvelope, CheckQuery, HealthQuery, ListQuery, MandateQuery,
    MissionCompletedNotice, TreeQuery,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A command body from the wire: decoding never panics; a command that
/// decodes is encoded and decoded back to itself, with the same digest; the
/// outside-command gate agrees with the decoder. Returns whether the input
/// decoded (and so was checked further).
pub fn decode_command(data: &[u8]) -> bool {
    let decoded = CommandEnvelope::from_json(data);
    let external = ExternalCommand::from_json(data);
    let cmd = match decoded {
        Ok(cmd) => cmd,
        Err(e) => {
            let _ = e.to_string();
            assert!(
                external.is_err(),
                "the gate accepts what the decoder refuses"
            );
            return false;
        }
    };
    if let Ok(ext) = external {
        assert_eq!(ext.envelope(), &cmd);
    }
    let again = serde_json::to_vec(&cmd).expect("a decoded command encodes");
    let back = CommandEnvelope::from_json(&again).unwrap_or_else(|e| {
        panic!(
            "a decoded command does not decode again ({e}): {}",
            String::from_utf8_lossy(&again)
        )
    });
    assert_eq!(back, cmd, "a command changes through encode and decode");
    assert_eq!(back.digest(), cmd.digest());
    true
}

/// Decodes `data` as `T`; what decodes must round-trip exactly.
fn round_trips<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    data: &[u8],
) -> usize {
    let Ok(v) = serde_json::from_slice::<T>(data) else {
        return 0;
    };
    {
        let again = serde_json::to_vec(&v).expect("a decoded value encodes");
        let back: T = serde_json::from_slice(&again).unwrap_or_else(|e| {
            panic!(
                "a decoded {} does not decode again ({e}): {}",
                std::any::type_name::<T>(),
                String::from_utf8_lossy(&again)
            )
        });
        assert_eq!(back, v);
    }
    1
}

/// Everything else a hostile peer can put on the wire: a commit on the event
/// stream (decoded, folded into a tree, hashed and chain-checked: never a
/// panic, whatever the events say), every query body, a bulk command, a
/// mission-completion body, and a mission reference or subject token.
/// Returns how many of these decoders accepted the input.
pub fn decode_wire(data: &[u8]) -> usize {
    let mut decoded = 0;
    if let Ok(events) = Event::decode_commit(data) {
        decoded += 1;
        let again = Event::encode_commit(&events);
        let back = Event::decode_commit(&again).expect("a decoded commit decodes again");
        assert_eq!(back, events, "a commit changes through encode and decode");
        for e in &events {
            let _ = e.hash();
        }
        let _ = verify_chain(&events);
        if let Some(first) = events.first() {
            // The projector folds whatever decodes: `apply` never fails.
            let tree = replay(first.tenant.clone(), first.tree, &events);
            for m in tree.mandates().keys() {
                let _ = tree.chain(*m);
                let _ = tree.effective(*m, first.time);
            }
        }
    }
    decoded += round_trips::<MandateQuery>(data)
        + round_trips::<TreeQuery>(data)
        + round_trips::<ListQuery>(data)
        + round_trips::<CheckQuery>(data)
        + round_trips::<AuditQuery>(data)
        + round_trips::<HealthQuery>(data)
        + round_trips::<BulkEnvelope>(data)
        + round_trips::<MissionCompletedNotice>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(m) = MissionRef::new(text) {
            // One mission, one subject token, and back.
            let token = m.subject_token();
            let back = MissionRef::from_subject_token(&token)
                .unwrap_or_else(|e| panic!("token {token:?} of {text:?} does not decode: {e}"));
            assert_eq!(back, m);
        }
        if let Ok(m) = MissionRef::from_subject_token(text) {
            assert_eq!(
                m.subject_token(),
                text,
                "a token decodes but is not canonical"
            );
        }
        decoded += usize::from(TenantId::new(text).is_ok());
    }
    decoded
}

/// A reader of fuzz bytes that yields zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> usize {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                usize::from(*b)
            }
            None => 0,
        }
    }
    fn pick<'p>(&mut self, pool: &[&'p str]) -> &'p str {
        pool[self.next() % pool.len()]
    }
}

/// Action segments the generator draws from: few, so that parent and child
/// share them often; `*` and empty ones exercise the parser.
const ACTION_SEGS: &[&str] = &["a", "b", "read", "*", "*", "a.b", ""];
/// Resource segments, likewise (`.`/`..` must be refused).
const RESOURCE_SEGS: &[&str] = &["a", "b", "q3", "*", "*", "**", "**", "a.b", ".", "..", ""];
/// Literals a concrete request is made of: the generator's, and one that no
/// pattern names.
const LITERALS: &[&str] = &["a", "b", "read", "q3", "a.b", "zz"];

fn gen_pattern(u: &mut Bytes<'_>, pool: &[&str], sep: &str) -> String {
    let n = 1 + u.next() % 4;
    (0..n).map(|_| u.pick(pool)).collect::<Vec<_>>().join(sep)
}

fn gen_scope(u: &mut Bytes<'_>) -> Vec<String> {
    let n = 1 + u.next() % 3;
    (0..n)
        .map(|_| {
            let action = gen_pattern(u, ACTION_SEGS, ":");
            let resource = gen_pattern(u, RESOURCE_SEGS, "/");
            format!("{action} on {resource}")
        })
        .collect()
}

/// Concrete requests a grant allows, derived from its patterns: each
/// wildcard filled in from `u` (an action `*` by one to three segments, a
/// resource `*` by one, a trailing `**` by none to three).
fn samples(
    u: &mut Bytes<'_>,
    action: &ActionPattern,
    resource: &ResourcePattern,
) -> Vec<(ActionPattern, ResourcePattern)> {
    let action_text = action.to_string();
    let resource_text = resource.to_string();
    (0..4)
        .map(|_| {
            let mut a: Vec<&str> = Vec::new();
            for seg in action_text.split(':') {
                if seg == "*" {
                    for _ in 0..1 + u.next() % 3 {
                        a.push(u.pick(LITERALS));
                    }
                } else {
                    a.push(seg);
                }
            }
            let mut r: Vec<&str> = Vec::new();
            for seg in resource_text.split('/') {
                match seg {
                    "**" => {
                        for _ in 0..u.next() % 4 {
                            r.push(u.pick(LITERALS));
                        }
                    }
                    "*" => r.push(u.pick(LITERALS)),
                    lit => r.push(lit),
                }
            }
            if r.is_empty() {
                // `**` alone matches any resource; one segment stands for it.
                r.push(u.pick(LITERALS));
            }
            let a = ActionPattern::parse(&a.join(":")).expect("a filled-in action parses");
            let r = ResourcePattern::parse(&r.join("/")).expect("a filled-in resource parses");
            assert!(a.is_concrete() && r.is_concrete());
            (a, r)
        })
        .collect()
}

/// Scope parsing and containment. Patterns print as they parse; and
/// `covers` is sound: when a parent scope covers a child, every concrete
/// request derived from the child's grants is allowed by the child and by
/// the parent. Returns how many derived requests it checked.
pub fn scope_covers(data: &[u8]) -> usize {
    let mut u = Bytes(data);
    // Half the inputs are free text for the parsers, half come from the
    // generator so that containment is reached often.
    if u.next() % 2 == 1 {
        let text = String::from_utf8_lossy(u.0).into_owned();
        let _ = Scope::parse(text.lines());
        for line in text.lines() {
            round_trip_patterns(line);
        }
        return 0;
    }
    let parent_text = gen_scope(&mut u);
    let child_text = gen_scope(&mut u);
    for g in parent_text.iter().chain(&child_text) {
        round_trip_patterns(g);
    }
    let (Ok(parent), Ok(child)) = (
        Scope::parse(parent_text.iter().map(String::as_str)),
        Scope::parse(child_text.iter().map(String::as_str)),
    ) else {
        return 0;
    };
    assert!(
        parent.covers(&parent),
        "a scope covers itself: {parent_text:?}"
    );
    if !parent.covers(&child) {
        return 0;
    }
    let mut checked = 0;
    for g in child.grants() {
        for (a, r) in samples(&mut u, &g.action, &g.resource) {
            assert!(
                child.allows(&a, &r),
                "{child_text:?} does not allow {a} on {r}, derived from its own grant {g}"
            );
            assert!(
                parent.allows(&a, &r),
                "{parent_text:?} covers {child_text:?} but does not allow {a} on {r}"
            );
            checked += 1;
        }
    }
    checked
}

/// A pattern that parses prints as text that parses to the same pattern.
fn round_trip_patterns(grant: &str) {
    let mut parts = grant.splitn(2, " on ");
    let (Some(action), Some(resource)) = (parts.next(), parts.next()) else {
        return;
    };
    if let Ok(a) = ActionPattern::parse(action) {
        assert_eq!(ActionPattern::parse(&a.to_string()).as_ref(), Ok(&a));
    }
    if let Ok(r) = ResourcePattern::parse(resource) {
        assert_eq!(ResourcePattern::parse(&r.to_string()).as_ref(), Ok(&r));
    }
}
