//! `mandate serve --metrics`: a real nats-server and a real `mandate serve`
//! process, scraped over HTTP. The counters move by exactly the commands
//! and checks sent, and nothing else; a revoke's cascade is counted by its
//! descendants; the backlogs count what waits while an engine's background
//! tasks are stopped, and return to zero; the dashboard in `examples/`
//! names only what the endpoint exports, and everything it exports; a bad
//! address stops the start with a clear error; other paths are 404.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Child;
use std::time::Instant;

use common::cli::{mandate, says, serve_listening};
use common::http_get;
use common::prelude::*;
use mandate::domain::command::Change;
use mandate::domain::Outcome;
use mandate::protocol::{CheckQuery, Consistency};

/// A sample's name and labels.
type Series = (String, BTreeMap<String, String>);

/// One scrape: every sample's value, and every family's declared type.
struct Scrape {
    samples: BTreeMap<Series, f64>,
    /// Family name (as in `# TYPE`) → type.
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// Parses the text exposition format: `# TYPE name type` lines, and
    /// `name{k="v",...} value` samples (label values with `\\`, `\"` and
    /// `\n` escapes).
    fn parse(text: &str) -> Self {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = parse_sample(line);
            assert!(
                samples.insert(series.clone(), value).is_none(),
                "series {series:?} appears twice"
            );
        }
        assert!(
            text.trim_end().ends_with("# EOF"),
            "exposition ends with # EOF"
        );
        Scrape { samples, types }
    }

    /// The value of `name` with exactly `labels` (0 if absent: a counter
    /// not yet touched).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = (name.to_string(), label_map(labels));
        self.samples.get(&key).copied().unwrap_or(0.0)
    }

    /// The one sample of `name` whatever its labels (a gauge without any).
    fn only(&self, name: &str) -> Option<f64> {
        let mut found = self.samples.iter().filter(|((n, _), _)| n == name);
        let first = found.next().map(|(_, v)| *v);
        assert!(found.next().is_none(), "{name} has more than one series");
        first
    }

    /// Every sample name the families declare: a counter `c` is `c_total`,
    /// a histogram `h` is `h_bucket`, `h_sum` and `h_count`, an info `i` is
    /// `i_info`, a gauge is its own name.
    fn exported_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (family, kind) in &self.types {
            match kind.as_str() {
                "counter" => {
                    names.insert(format!("{family}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{family}{suffix}"));
                    }
                }
                "info" => {
                    names.insert(format!("{family}_info"));
                }
                "gauge" => {
                    names.insert(family.clone());
                }
                other => panic!("family {family} has an unexpected type {other}"),
            }
        }
        names
    }
}

fn label_map(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `name{labels} value` (or `name value`).
fn parse_sample(line: &str) -> (Series, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            // A key up to `=`, then a quoted value.
            let mut key = String::new();
            for (i, c) in chars.by_ref() {
                match c {
                    '=' => break,
                    '}' if key.is_empty() => {
                        end = Some(i);
                        break;
                    }
                    ',' if key.is_empty() => {}
                    c => key.push(c),
                }
            }
            if end.is_some() {
                break;
            }
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
            let mut value = String::new();
            loop {
                match chars
                    .next()
                    .unwrap_or_else(|| panic!("unterminated value: {line:?}"))
                {
                    (_, '\\') => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(c) => value.push(c),
                        None => panic!("dangling escape: {line:?}"),
                    },
                    (_, '"') => break,
                    (_, c) => value.push(c),
                }
            }
            labels.insert(key, value);
            match chars.peek() {
                Some((_, ',')) => {
                    chars.next();
                }
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                other => panic!("unexpected {other:?} after a label in {line:?}"),
            }
        }
        let end = end.expect("labels end with }");
        rest = &body[end + 1..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("value {value:?} of {line:?} is not a number"));
    ((name, labels), value)
}

/// `mandate serve --metrics` on its own data directory, killed when dropped.
struct Metered {
    child: Child,
    addr: String,
    /// The data directory and the log, under one temporary directory.
    _dir: tempfile::TempDir,
}

impl Metered {
    /// Starts it on `server` and waits until it answers requests and scrapes.
    async fn start(server: &NatsServer, nc: &async_nats::Client) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (data, log) = (dir.path().join("data"), dir.path().join("serve.log"));
        let url = server.url();
        let (child, addr) = serve_listening(
            &data,
            &["--nats", &url, "serve", "--allow-open-tenants"],
            "--metrics",
            &log,
        )
        .await;
        let metered = Metered {
            child,
            addr,
            _dir: dir,
        };
        serving(nc, "acme").await;
        metered
    }

    async fn scrape(&self) -> Scrape {
        let addr = self.addr.clone();
        let (status, headers, body) =
            tokio::task::spawn_blocking(move || http_get(&addr, "/metrics"))
                .await
                .unwrap();
        assert_eq!(status, 200, "{body}");
        let content_type = headers.get("content-type").cloned().unwrap_or_default();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "content type {content_type}"
        );
        Scrape::parse(&body)
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `after − before` for every series of `name` in either scrape, by the
/// labels `keep` (others summed), leaving out those that did not move.
fn moved(before: &Scrape, after: &Scrape, name: &str, keep: &[&str]) -> BTreeMap<Vec<String>, f64> {
    let mut delta: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    for (scrape, sign) in [(after, 1.0), (before, -1.0)] {
        for ((n, labels), v) in &scrape.samples {
            if n != name {
                continue;
            }
            let key = keep
                .iter()
                .map(|k| labels.get(*k).cloned().unwrap_or_default())
                .collect();
            *delta.entry(key).or_default() += sign * v;
        }
    }
    delta.retain(|_, v| *v != 0.0);
    delta
}

/// The nice value of the thread of process `pid` named `name`, if there is
/// one (Linux: `/proc/<pid>/task/<tid>/stat`, whose 19th field is it).
fn thread_nice(pid: u32, name: &str) -> Option<i64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // The fields after the command's closing parenthesis start at the
        // 3rd (state); the nice value is the 19th.
        let after = &stat[stat.rfind(')')? + 2..];
        return after.split(' ').nth(19 - 3)?.parse().ok();
    }
    None
}

fn expect(entries: &[(&[&str], f64)]) -> BTreeMap<Vec<String>, f64> {
    entries
        .iter()
        .map(|(k, v)| (k.iter().map(|s| s.to_string()).collect(), *v))
        .collect()
}

fn check_query(mandate: MandateId, action: &str, consistency: Consistency) -> CheckQuery {
    CheckQuery {
        mandate,
        action: action.into(),
        resource: "reports/q3/summary".into(),
        at: None,
        actor: None,
        consistency,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_commands_and_checks_sent() {
    let server = NatsServer::start();
    let nc = connect(&server).await;
    let engine = Metered::start(&server, &nc).await;
    let cfo = client(&nc, "acme", principal("cfo"));
    let lead = client(&nc, "acme", agent("lead"));
    let stranger = client(&nc, "acme", agent("stranger"));
    let before = engine.scrape().await;

    // Commands: 7 applied, 1 duplicate, 5 refused (4 codes, 2 of them
    // before the body was read).
    let grants = &["finance:read on reports/**"];
    let root = issued(&cfo, root_issue("cfo", "lead", None, grants)).await; // issue applied
    let again = envelope(
        "acme",
        principal("cfo"),
        Command::Issue(root_issue("cfo", "lead", None, grants)),
    );
    let first = cfo.send(&again).await.expect("issue");
    assert!(!first.duplicate);
    assert!(cfo.send(&again).await.expect("retry").duplicate); // issue duplicate
    let child = lead
        .delegate(delegation(root, "ana", &["finance:read on reports/q3/**"]))
        .await
        .expect("delegate")
        .mandate
        .unwrap();
    cfo.pause(child, None).await.expect("pause");
    cfo.resume(child, None).await.expect("resume");
    let second_child = lead
        .delegate(delegation(root, "bob", &["finance:read on reports/q4/**"]))
        .await
        .expect("delegate")
        .mandate
        .unwrap();
    let refusals = [
        // Widens: finance:write was never granted.
        lead.delegate(delegation(root, "eve", &["finance:write on reports/**"]))
            .await
            .unwrap_err()
            .code(),
        // Not found.
        cfo.revoke(MandateId::generate(), None)
            .await
            .unwrap_err()
            .code(),
        // Forbidden: a stranger may not pause the lead's mandate.
        stranger.pause(root, None).await.unwrap_err().code(),
    ];
    assert_eq!(
        refusals,
        [
            Some(ErrorCode::Widens),
            Some(ErrorCode::NotFound),
            Some(ErrorCode::Forbidden)
        ]
    );
    // A body that is not JSON, and a verb no build knows.
    for (subject, body) in [
        ("mandate.cmd.acme.revoke", "{not json"),
        ("mandate.cmd.acme.frobnicate", "{}"),
    ] {
        let reply = nc
            .request(subject.to_string(), body.as_bytes().to_vec().into())
            .await
            .expect("a reply");
        let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["error"]["code"], "invalid_input", "{reply}");
    }
    cfo.revoke(second_child, None).await.expect("revoke"); // revoke applied

    // Checks: 3 allow (2 fresh, 1 local), 3 deny (2 out of scope, 1 of an
    // unknown mandate), 1 refused (not JSON).
    let asks = [
        (root, "finance:read", Consistency::Fresh, Outcome::Allow),
        (child, "finance:read", Consistency::Fresh, Outcome::Allow),
        (root, "finance:read", Consistency::Local, Outcome::Allow),
        (root, "finance:write", Consistency::Fresh, Outcome::Deny),
        (child, "hr:read", Consistency::Fresh, Outcome::Deny),
        (
            MandateId::generate(),
            "finance:read",
            Consistency::Fresh,
            Outcome::Deny,
        ),
    ];
    for (m, action, level, want) in asks {
        let d = lead
            .check_with(check_query(m, action, level))
            .await
            .expect("check");
        assert_eq!(d.outcome, want, "{d:?}");
    }
    let reply = nc
        .request("mandate.q.acme.check".to_string(), "[".into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&reply.payload).contains("invalid_input"));
    // Other queries: 2 status, 1 chain.
    cfo.status(root, None).await.expect("status");
    cfo.status(child, None).await.expect("status");
    cfo.chain(child, None).await.expect("chain");

    let after = engine.scrape().await;
    assert_eq!(
        moved(
            &before,
            &after,
            "mandate_commands_total",
            &["type", "outcome", "code"]
        ),
        expect(&[
            (&["issue", "applied", ""], 2.0),
            (&["issue", "duplicate", ""], 1.0),
            (&["delegate", "applied", ""], 2.0),
            (&["delegate", "refused", "widens"], 1.0),
            (&["pause", "applied", ""], 1.0),
            (&["pause", "refused", "forbidden"], 1.0),
            (&["resume", "applied", ""], 1.0),
            (&["revoke", "applied", ""], 1.0),
            (&["revoke", "refused", "not_found"], 1.0),
            (&["revoke", "refused", "invalid_input"], 1.0),
            (&["unknown", "refused", "invalid_input"], 1.0),
        ]),
        "commands by type, outcome and code"
    );
    // Each command's latency was observed once, under its type.
    assert_eq!(
        moved(
            &before,
            &after,
            "mandate_command_duration_seconds_count",
            &["type"]
        ),
        expect(&[
            (&["issue"], 3.0),
            (&["delegate"], 3.0),
            (&["pause"], 2.0),
            (&["resume"], 1.0),
            (&["revoke"], 3.0),
            (&["unknown"], 1.0),
        ])
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "mandate_checks_total",
            &["outcome", "consistency", "code"]
        ),
        expect(&[
            (&["allow", "fresh", ""], 2.0),
            (&["allow", "local", ""], 1.0),
            (&["deny", "fresh", ""], 3.0),
            (&["refused", "unknown", "invalid_input"], 1.0),
        ]),
        "checks by outcome, consistency and code"
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "mandate_check_duration_seconds_count",
            &["consistency"]
        ),
        expect(&[(&["fresh"], 5.0), (&["local"], 1.0), (&["unknown"], 1.0)])
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "mandate_queries_total",
            &["kind", "outcome"]
        ),
        expect(&[(&["status", "ok"], 2.0), (&["chain", "ok"], 1.0)])
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "mandate_query_duration_seconds_count",
            &["kind"]
        ),
        expect(&[(&["status"], 2.0), (&["chain"], 1.0)])
    );
    // A histogram's buckets are cumulative: its +Inf bucket is its count.
    for (name, label) in [
        ("mandate_command_duration_seconds", "type"),
        ("mandate_check_duration_seconds", "consistency"),
    ] {
        let count = moved(&before, &after, &format!("{name}_count"), &[label]);
        let inf: BTreeMap<Vec<String>, f64> =
            moved(&before, &after, &format!("{name}_bucket"), &[label, "le"])
                .into_iter()
                .filter(|(k, _)| k[1] == "+Inf")
                .map(|(k, v)| (vec![k[0].clone()], v))
                .collect();
        assert_eq!(inf, count, "{name}: +Inf buckets move with the count");
    }
    // Signals: pause, resume and the revoke each published one.
    assert_eq!(
        moved(
            &before,
            &after,
            "mandate_signals_published_total",
            &["kind"]
        ),
        expect(&[
            (&["suspended"], 1.0),
            (&["resumed"], 1.0),
            (&["terminated"], 1.0)
        ])
    );
    let info: Vec<_> = after
        .samples
        .iter()
        .filter(|((n, _), _)| n == "mandate_engine_info")
        .collect();
    assert_eq!(info.len(), 1, "one engine_info series");
    let ((_, labels), value) = info[0];
    assert_eq!(*value, 1.0);
    assert_eq!(labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(labels["instance_id"].starts_with("engine-"), "{labels:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_counts_its_descendants_and_the_backlogs_return_to_zero() {
    let server = NatsServer::start();
    let nc = connect(&server).await;
    let engine = Metered::start(&server, &nc).await;
    let cfo = client(&nc, "acme", principal("cfo"));
    let grants = &["finance:read on reports/**"];
    // root → ana, bob; ana → carl, dave; bob → eve.
    let root = issued(&cfo, root_issue("cfo", "lead", None, grants)).await;
    let delegate = |holder: &str, parent: MandateId, to: &str| {
        let c = client(&nc, "acme", agent(holder));
        let d = delegation(parent, to, grants);
        async move { c.delegate(d).await.expect("delegate").mandate.unwrap() }
    };
    let ana = delegate("lead", root, "ana").await;
    let bob = delegate("lead", root, "bob").await;
    delegate("ana", ana, "carl").await;
    delegate("ana", ana, "dave").await;
    let eve = delegate("bob", bob, "eve").await;
    let before = engine.scrape().await;

    // eve ends with nothing below her; then the root ends ana, bob, carl
    // and dave (eve was ended already).
    cfo.revoke(eve, None).await.expect("revoke eve");
    cfo.send(&envelope(
        "acme",
        principal("cfo"),
        Command::Revoke(Change {
            mandate: root,
            reason: Some("offboarded".into()),
        }),
    ))
    .await
    .expect("revoke the root");
    let count = "mandate_cascade_descendants_ended_count";
    let deadline = Instant::now() + PATIENCE;
    let after = loop {
        let after = engine.scrape().await;
        if after.get(count, &[]) - before.get(count, &[]) >= 2.0 {
            break after;
        }
        assert!(Instant::now() < deadline, "the cascades were never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(after.get(count, &[]) - before.get(count, &[]), 2.0);
    let sum = "mandate_cascade_descendants_ended_sum";
    assert_eq!(after.get(sum, &[]) - before.get(sum, &[]), 4.0);
    // One observation of 0 (eve) and one of 4 (the root).
    let bucket =
        |s: &Scrape, le: &str| s.get("mandate_cascade_descendants_ended_bucket", &[("le", le)]);
    assert_eq!(bucket(&after, "0.0") - bucket(&before, "0.0"), 1.0);
    assert_eq!(bucket(&after, "2.0") - bucket(&before, "2.0"), 1.0);
    assert_eq!(bucket(&after, "5.0") - bucket(&before, "5.0"), 2.0);
    // Counted on the engine's counting thread, at the lowest priority, and
    // none skipped.
    assert_eq!(
        after.only("mandate_cascade_counts_skipped_total"),
        Some(0.0)
    );
    assert_eq!(
        thread_nice(engine.child.id(), "cascade-count"),
        Some(19),
        "the cascade counts run at nice 19"
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "mandate_signals_published_total",
            &["kind"]
        ),
        expect(&[(&["terminated"], 2.0)])
    );

    // Every backlog drains: nothing left to apply, expire, publish or take.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = engine.scrape().await;
        let gauges = [
            "mandate_projection_lag",
            "mandate_expiry_backlog",
            "mandate_outbox_depth",
            "mandate_mission_intake_pending",
            "mandate_mission_marks_lag",
        ]
        .map(|g| (g, s.only(g)));
        if gauges.iter().all(|(_, v)| *v == Some(0.0)) {
            let position = s.only("mandate_projection_position").unwrap();
            assert!(
                position >= 8.0,
                "the projection applied every commit: {position}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backlogs never drained: {gauges:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The bulk path counts too: revoking an agent's mandates is one command.
    let before = engine.scrape().await;
    let admin = client(&nc, "acme", admin("it"));
    let held = issued(&cfo, root_issue("cfo", "zed", None, grants)).await;
    admin
        .revoke_agent(agent_id("zed"), None)
        .await
        .expect("revoke_agent");
    let after = engine.scrape().await;
    assert_eq!(
        moved(
            &before,
            &after,
            "mandate_commands_total",
            &["type", "outcome"]
        ),
        expect(&[
            (&["issue", "applied"], 1.0),
            (&["revoke_agent", "applied"], 1.0)
        ])
    );
    let status = cfo.status(held, None).await.expect("status");
    assert_eq!(status.mandate.status(), Status::Revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_names_exactly_what_the_endpoint_exports() {
    let server = NatsServer::start();
    let nc = connect(&server).await;
    let engine = Metered::start(&server, &nc).await;
    let cfo = client(&nc, "acme", principal("cfo"));
    let root = issued(
        &cfo,
        root_issue("cfo", "lead", None, &["finance:read on reports/**"]),
    )
    .await;
    // A family shows once it has a series: a check, a query (the wait for
    // the engine asked for health), a command and its signal.
    cfo.check(root, "finance:read", "reports/x", None)
        .await
        .unwrap();
    cfo.pause(root, None).await.unwrap();
    let exported = engine.scrape().await.exported_names();

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .expect("the dashboard is JSON");
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "a DS_PROMETHEUS datasource input"
    );
    let mut exprs = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {} has targets", panel["title"]));
        assert!(!targets.is_empty(), "panel {} has targets", panel["title"]);
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {}",
            panel["title"]
        );
        for t in targets {
            exprs.push(t["expr"].as_str().expect("an expr").to_string());
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        exprs.push(v["definition"].as_str().unwrap().to_string());
    }
    let mut named = BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("mandate_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            named.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    let unknown: Vec<_> = named.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names metrics not exported: {unknown:?}"
    );
    // Every family has a panel (a histogram through any of its series).
    let unshown: Vec<_> = exported
        .iter()
        .filter(|name| {
            let family = name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .unwrap_or(name);
            !named.iter().any(|n| n.starts_with(family))
        })
        .collect();
    assert!(
        unshown.is_empty(),
        "exported metrics without a panel: {unshown:?}"
    );
    // Quantiles come from buckets, rates from counters.
    assert!(exprs
        .iter()
        .any(|e| e.contains("histogram_quantile(") && e.contains("_bucket")));
    for expr in &exprs {
        if expr.contains("_total") {
            assert!(
                expr.contains("rate("),
                "a counter is graphed as a rate: {expr}"
            );
        }
    }

    // Any other path is 404; so is a near miss.
    for path in ["/", "/metric", "/metrics/x", "/health"] {
        let addr = engine.addr.clone();
        let (status, _, _) = tokio::task::spawn_blocking(move || http_get(&addr, path))
            .await
            .unwrap();
        assert_eq!(status, 404, "GET {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_metrics_address_stops_the_start_and_names_it() {
    let server = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let url = server.url();
    let serve = |addr: &str| {
        mandate(
            data.path(),
            &[
                "--nats",
                &url,
                "serve",
                "--allow-open-tenants",
                "--metrics",
                addr,
            ],
        )
    };
    for bad in ["localhost", "nonsense:80", "127.0.0.1", "127.0.0.1:99999"] {
        says(&serve(bad), 2, &["--metrics", bad, "IP address and a port"]);
    }
    // A port already taken: unavailable (4), naming the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    says(
        &serve(&addr),
        4,
        &["--metrics", &addr, "cannot listen there"],
    );
    // The engine never opened: it made none of its streams.
    let js = async_nats::jetstream::new(connect(&server).await);
    let mut names = js.stream_names();
    use futures::StreamExt;
    assert_eq!(
        names.next().await.transpose().unwrap(),
        None,
        "no stream was made"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_is_counted_until_the_background_tasks_take_it() {
    use chrono::Utc;
    use mandate::engine::{Clock, Engine, EngineConfig};
    use mandate::log::JetStreamConfig;

    let server = NatsServer::start();
    let nc = connect(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(Utc::now());
    let config = EngineConfig {
        allow_open_tenants: true,
        clock: clock.clone(),
        expiry_tick: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    // Opened, not started: nothing follows the log, expires or reads the
    // mission stream yet.
    let engine = Engine::nats(nc.clone(), dir.path(), JetStreamConfig::default(), config)
        .await
        .expect("open the engine");
    let scrape = || async { Scrape::parse(&engine.metrics().await.expect("metrics")) };
    let grants = &["finance:read on reports/**"];
    let cfo = Client::local(engine.clone(), tenant("acme"), principal("cfo"));
    let not_after = clock.now() + chrono::Duration::minutes(30);
    let root = issued(
        &cfo,
        Issue {
            not_after,
            ..root_issue("cfo", "lead", None, grants)
        },
    )
    .await;
    let lead = Client::local(engine.clone(), tenant("acme"), agent("lead"));
    lead.delegate(delegation(root, "ana", grants))
        .await
        .expect("delegate");
    let js = async_nats::jetstream::new(nc.clone());
    let subject = mandate::protocol::mission_subject(&tenant("acme"), &mission("jira:FIN-7"));
    js.publish(subject, "{}".into())
        .await
        .unwrap()
        .await
        .expect("the completion is stored");
    clock.advance(chrono::Duration::hours(1));

    let waiting = scrape().await;
    // The writer applied its two commits, but the in-order checkpoint only
    // moves with the follower.
    assert_eq!(waiting.only("mandate_projection_lag"), Some(2.0));
    assert_eq!(waiting.only("mandate_projection_position"), Some(0.0));
    assert_eq!(
        waiting.only("mandate_expiry_backlog"),
        Some(2.0),
        "root and ana are due"
    );
    assert_eq!(waiting.only("mandate_mission_marks_lag"), Some(1.0));
    // The in-process client's requests are counted like any others.
    assert_eq!(
        moved(
            &Scrape::parse("# EOF\n"),
            &waiting,
            "mandate_commands_total",
            &["type", "outcome"]
        ),
        expect(&[
            (&["issue", "applied"], 1.0),
            (&["delegate", "applied"], 1.0)
        ])
    );

    let background = engine.start();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = scrape().await;
        let figures = [
            "mandate_projection_lag",
            "mandate_expiry_backlog",
            "mandate_mission_marks_lag",
            "mandate_mission_intake_pending",
        ]
        .map(|g| (g, s.only(g)));
        if figures.iter().all(|(_, v)| *v == Some(0.0)) {
            break;
        }
        assert!(Instant::now() < deadline, "never drained: {figures:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = cfo.status(root, None).await.expect("status");
    assert_eq!(status.mandate.status(), Status::Expired);
    background.stop().await.expect("the background tasks stop");
}
