//! The hostile input corpus against an engine served over a real
//! nats-server: every file of `tests/corpus/bad_input/` (listed with what it
//! must get in its `MANIFEST`) is sent as it is on its command or query
//! subject. Each gets a typed error naming the problem (code, reason, a word
//! of the message, a bounded message), nothing reaches the event stream, and
//! the engine keeps serving: a good command after the corpus succeeds.
//!
//! Classes: malformed JSON, wrong types, unknown fields, unknown schema
//! versions and types, payloads over the size limit, invalid and
//! pathological scope patterns, hostile ids (in bodies and in subject
//! tokens, non-UTF-8 included), cross-tenant references, and times out of
//! range. The big cases (64 KiB ids, 10,000 grants, deep nesting) are
//! recipes the test expands (`{{repeat N}}…{{end}}`).

mod common;

use std::path::{Path, PathBuf};

use common::prelude::*;
use serde_json::Value;

/// The longest error message a reply may carry: a hostile value is quoted
/// in part, never echoed whole.
const MAX_MESSAGE: usize = 1024;

/// One line of the manifest.
#[derive(Debug)]
struct Case {
    file: String,
    subject: String,
    code: String,
    reason: Option<String>,
    word: Option<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad_input")
}

fn manifest() -> Vec<Case> {
    let text = std::fs::read_to_string(corpus_dir().join("MANIFEST")).expect("read the manifest");
    let dash = |s: &str| (s != "-").then(|| s.to_string());
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split(" | ").map(str::trim).collect();
            assert_eq!(cols.len(), 5, "manifest line {l:?}");
            Case {
                file: cols[0].to_string(),
                subject: format!("mandate.{}", cols[1]),
                code: cols[2].to_string(),
                reason: dash(cols[3]),
                word: dash(cols[4]),
            }
        })
        .collect()
}

/// Replaces every `from` in `body` by `to`.
fn replace(body: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// Expands `{{repeat N}}TEXT{{end}}` into TEXT N times.
fn expand_repeats(body: &[u8]) -> Vec<u8> {
    const OPEN: &[u8] = b"{{repeat ";
    const END: &[u8] = b"{{end}}";
    let Some(start) = find(body, OPEN) else {
        return body.to_vec();
    };
    let after = &body[start + OPEN.len()..];
    let close = find(after, b"}}").expect("{{repeat N}} is closed");
    let n: usize = std::str::from_utf8(&after[..close])
        .unwrap()
        .parse()
        .expect("{{repeat N}} names a count");
    let inner = &after[close + 2..];
    let end = find(inner, END).expect("{{repeat}} has its {{end}}");
    let mut out = body[..start].to_vec();
    for _ in 0..n {
        out.extend_from_slice(&inner[..end]);
    }
    out.extend(expand_repeats(&inner[end + END.len()..]));
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body of `case`, placeholders filled in.
fn body(case: &Case, acme_root: MandateId, globex_root: MandateId) -> Vec<u8> {
    let raw = std::fs::read(corpus_dir().join(&case.file))
        .unwrap_or_else(|e| panic!("read {}: {e}", case.file));
    let body = replace(&raw, b"{{acme_root}}", acme_root.to_string().as_bytes());
    let body = replace(
        &body,
        b"{{globex_root}}",
        globex_root.to_string().as_bytes(),
    );
    let fresh = CommandId::generate().to_string();
    let body = replace(&body, b"{{command_id}}", fresh.as_bytes());
    expand_repeats(&body)
}

/// Checks one reply against its case; returns what was wrong, if anything.
fn judge(case: &Case, reply: &Value) -> Result<(), String> {
    let fail = |what: &str| {
        let text = reply.to_string();
        let cut = text.char_indices().nth(600).map_or(text.len(), |(i, _)| i);
        Err(format!("{}: {what}: {}", case.file, &text[..cut]))
    };
    if case.code == "ok-without" {
        let hidden = case.word.as_deref().unwrap_or_default();
        if reply["ok"] != true || reply.to_string().contains(hidden) {
            return fail(&format!("expected an answer without {hidden:?}"));
        }
        return Ok(());
    }
    if case.code == "deny" {
        if reply["ok"] != true || reply["result"]["outcome"] != "deny" {
            return fail("expected a deny");
        }
        if let Some(r) = &case.reason {
            if reply["result"]["reason"]["kind"] != r.as_str() {
                return fail(&format!("expected a deny of kind {r}"));
            }
        }
        return Ok(());
    }
    if reply["ok"] != false || reply.get("result").is_some() {
        return fail("expected an error reply");
    }
    let error = &reply["error"];
    if error["code"] != case.code.as_str() {
        return fail(&format!("expected code {}", case.code));
    }
    match (&case.reason, error.get("reason")) {
        (Some(r), Some(got)) if got == r.as_str() => {}
        (None, None) => {}
        (want, got) => return fail(&format!("expected reason {want:?}, got {got:?}")),
    }
    let Some(message) = error["message"].as_str() else {
        return fail("no message");
    };
    if let Some(w) = &case.word {
        if !message.contains(w.as_str()) {
            return fail(&format!("the message does not mention {w:?}"));
        }
    }
    if message.len() > MAX_MESSAGE {
        return fail(&format!(
            "a message of {} bytes (at most {MAX_MESSAGE})",
            message.len()
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_gets_a_typed_error_and_writes_nothing() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let acme_root = issue(
        &nc,
        root_issue("cfo", "planner", None, &["finance:read on reports/**"]),
    )
    .await;
    let globex_root = client(&nc, "globex", principal("boss"))
        .issue(root_issue(
            "boss",
            "spy",
            None,
            &["finance:read on reports/**"],
        ))
        .await
        .expect("issue in globex")
        .mandate
        .expect("an issue names its mandate");
    instance.caught_up().await;
    let before = instance.log_position().await;

    let cases = manifest();
    assert!(cases.len() >= 100, "the corpus lost cases: {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let body = body(case, acme_root, globex_root);
        let reply = raw(&nc, case.subject.clone(), body).await;
        if let Err(e) = judge(case, &reply) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing reached the event stream.
    instance.caught_up().await;
    assert_eq!(
        instance.log_position().await,
        before,
        "the corpus wrote to the log"
    );
    // And the engine still serves: a good command succeeds, and writes.
    let child = delegate(
        &nc,
        "planner",
        acme_root,
        "helper",
        &["finance:read on reports/q3/*"],
    )
    .await;
    let cfo = client(&nc, "acme", principal("cfo"));
    assert_eq!(effective(&cfo, child).await, Status::Active);
    assert!(instance.log_position().await > before);
    instance.stop().await;
}

/// Subject tokens the client library will not send (bytes that are not
/// UTF-8), written on a raw connection: the engine answers with a typed
/// error, or at worst not at all, and keeps serving. Today it does not
/// answer: its NATS client drops the connection on such a message and
/// reconnects (the request is lost, like any request during a reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_token_that_is_not_utf8_does_not_stop_the_engine() {
    use tokio::io::AsyncReadExt;

    let (server, _dir, instance, nc) = serve_one("acme").await;
    let before = instance.log_position().await;
    let mut wire = Vec::new();
    wire.extend_from_slice(b"SUB _raw.reply 1\r\n");
    for subject in [
        &b"mandate.q.ac\xffme.health"[..],
        b"mandate.cmd.\xfe\xff.issue",
        b"mandate.q.acme.\xff",
    ] {
        wire.extend_from_slice(b"PUB ");
        wire.extend_from_slice(subject);
        wire.extend_from_slice(b" _raw.reply 2\r\n{}\r\n");
    }
    wire.extend_from_slice(b"PING\r\n");
    let mut sock = raw_protocol(&server, &wire).await;

    // Whatever comes back within a moment: replies, or nothing.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    eprintln!("raw connection read: {text}");
    // Every reply that came is a typed error (no tenant or verb is valid).
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let reply: Value = serde_json::from_str(line).expect("a JSON reply");
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"]["code"], "invalid_input", "{reply}");
    }

    // The engine still answers, and wrote nothing.
    let c = client(&nc, "acme", principal("probe"));
    c.health().await.expect("the engine still answers");
    let root = issue(
        &nc,
        root_issue("cfo", "planner", None, &["finance:read on reports/**"]),
    )
    .await;
    assert_eq!(effective(&c, root).await, Status::Active);
    assert!(instance.log_position().await > before);
    instance.stop().await;
}

/// The generated recipes expand to what they claim: the size cases really
/// are over the limit, the 60 KiB ids under it, 10,000 grants are there.
#[test]
fn the_recipes_expand_to_their_sizes() {
    let root = MandateId::generate();
    let by_name = |name: &str| {
        let case = manifest().into_iter().find(|c| c.file == name).unwrap();
        body(&case, root, root)
    };
    let limit = mandate::protocol::MAX_REQUEST_BYTES;
    assert!(by_name("size-over-limit.recipe.json").len() > limit);
    assert!(by_name("size-64-kib-grantee.recipe.json").len() > limit);
    let grants = by_name("size-10000-grants.recipe.json");
    assert_eq!(
        String::from_utf8_lossy(&grants)
            .matches("\"action\"")
            .count(),
        10_000
    );
    for under in [
        "id-grantee-60-kib.recipe.json",
        "id-unknown-field-60-kib.recipe.json",
        "id-mandate-60-kib.recipe.json",
    ] {
        let b = by_name(under);
        assert!(
            b.len() > 60 * 1024 && b.len() <= limit,
            "{under}: {}",
            b.len()
        );
    }
}

/// 10,000 grants decoded directly (no size limit in the way): refused by
/// the scope's own bound, naming it.
#[test]
fn ten_thousand_grants_are_refused_by_the_decoder_itself() {
    let root = MandateId::generate();
    let case = manifest()
        .into_iter()
        .find(|c| c.file == "size-10000-grants.recipe.json")
        .unwrap();
    let err = CommandEnvelope::from_json(&body(&case, root, root)).unwrap_err();
    assert!(err.to_string().contains("at most 64"), "{err}");
}

/// A mission completion on a subject that is not UTF-8, stored on the
/// mission stream by a raw publish: the intake must pass over it, and a
/// good completion after it must still end its tree. The NATS client
/// (async-nats 0.51) treats a delivered message whose subject is not UTF-8
/// as a broken connection and reconnects, so no consumer can get past such
/// a record: the marks follower reads the stream through the message-get
/// API instead, dead-letters the record with its sequence and deletes it
/// from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mission_subject_that_is_not_utf8_does_not_jam_the_intake() {
    use mandate::engine::missions::{
        DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECT, MISSION_STREAM, REJECTED_REASON_HEADER,
        REJECTED_SEQUENCE_HEADER, REJECTED_SUBJECT_HEADER,
    };

    let (server, _dir, instance, nc) = serve_one("acme").await;
    let root = issue(
        &nc,
        root_issue(
            "cfo",
            "planner",
            Some("jira:FIN-99"),
            &["finance:read on reports/**"],
        ),
    )
    .await;
    // Stored first (sequence 1), before the good completion.
    let js = async_nats::jetstream::new(nc.clone());
    publish_raw_until_stored(
        &server,
        &nc,
        b"PUB mission.acme.jira:\xff.completed 2\r\n{}\r\nPING\r\n",
        MISSION_STREAM,
        0,
    )
    .await;

    publish_mission(&nc, "acme", "jira:FIN-99", "{}").await;
    let cfo = client(&nc, "acme", principal("cfo"));
    // When the intake's pull takes the bad record before the marks follower
    // has passed over it, the NATS client cannot read its subject and drops
    // the engine's connection. A JetStream request the engine had in flight
    // (here the fresh read of a `status` query) then waits out the client's
    // 5 s timeout. That happened in about half the runs on a quiet machine:
    // the query answered after 5 s, and once in CI on a loaded machine the
    // wait went past the usual patience.
    eventually_within("the good completion ends the tree", PATIENCE * 3, || {
        let cfo = cfo.clone();
        async move {
            cfo.status(root, None)
                .await
                .is_ok_and(|s| s.effective.status == Status::Completed)
        }
    })
    .await;

    // The bad record was dead-lettered with its sequence (the first record
    // of the mission stream) and taken out of the stream.
    let dead_letters = js
        .get_stream(DEAD_LETTER_STREAM)
        .await
        .expect("the dead-letter stream");
    eventually("the bad record is dead-lettered", || async {
        dead_letters
            .get_last_raw_message_by_subject(DEAD_LETTER_SUBJECT)
            .await
            .is_ok()
    })
    .await;
    let header = last_dead_letter(&nc).await;
    assert_eq!(header(REJECTED_SEQUENCE_HEADER), "1");
    assert!(
        header(REJECTED_SUBJECT_HEADER).starts_with("mission.acme.jira:"),
        "{}",
        header(REJECTED_SUBJECT_HEADER)
    );
    assert!(
        header(REJECTED_REASON_HEADER).contains("not UTF-8"),
        "{}",
        header(REJECTED_REASON_HEADER)
    );
    let missions = js
        .get_stream(MISSION_STREAM)
        .await
        .expect("the mission stream");
    eventually("the bad record is off the mission stream", || async {
        missions.get_raw_message(1).await.is_err()
    })
    .await;
    instance.stop().await;
}

/// A record on the event stream whose subject is not UTF-8 (published raw
/// by a client that may write there): the follower must pass over it and
/// keep applying the log.
///
/// The follower and the reads of the whole log find it through the
/// message-get API and pass over it as a corrupt record that names no tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_subject_that_is_not_utf8_does_not_stop_the_follower() {
    let (server, _dir, instance, nc) = serve_one("acme").await;
    let before = instance.log_position().await;
    // Stored before the good commit. Read over the test's connection: the
    // engine's own one is dropped once by the client when the follower is
    // handed the record.
    publish_raw_until_stored(
        &server,
        &nc,
        b"PUB mandate.evt.acme.\xff 2\r\n[]\r\nPING\r\n",
        "MANDATE_EVENTS",
        before,
    )
    .await;

    // The engine's connection is dropped once, when the follower is handed
    // the record (requests meanwhile find no engine); then the follower
    // passes over it and the engine serves again.
    instance.caught_up().await;
    serving(&nc, "acme").await;
    let root = issue(
        &nc,
        root_issue("cfo", "planner", None, &["finance:read on reports/**"]),
    )
    .await;
    instance.caught_up().await;
    let cfo = client(&nc, "acme", principal("cfo"));
    assert_eq!(effective(&cfo, root).await, Status::Active);
    instance.stop().await;

    // A fresh instance reads the whole log at its start, past the record.
    let fresh = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), fresh.path()).await;
    serving(&nc, "acme").await;
    instance.caught_up().await;
    assert_eq!(effective(&cfo, root).await, Status::Active);
    instance.stop().await;
}

/// Publishes `wire` on a raw connection (bytes the client library will not
/// send) and waits until `stream` holds a record past `after`.
async fn publish_raw_until_stored(
    server: &NatsServer,
    nc: &async_nats::Client,
    wire: &[u8],
    stream: &str,
    after: u64,
) {
    use tokio::io::AsyncReadExt;
    let mut sock = raw_protocol(server, wire).await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await;
    let js = async_nats::jetstream::new(nc.clone());
    eventually("the bad record is stored", || {
        let js = js.clone();
        async move {
            let Ok(mut stream) = js.get_stream(stream).await else {
                return false;
            };
            stream
                .info()
                .await
                .is_ok_and(|i| i.state.last_sequence > after)
        }
    })
    .await;
}
