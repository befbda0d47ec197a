//! Least privilege at the transport: nats-server runs with
//! `examples/nats-server.conf` (with `nats-server-2.10.conf` on 2.10 and
//! later), and every role connects as its own user with its own reply-inbox
//! prefix.
//!
//! - inside their subjects the engine, an orchestrator, an agent's guard and
//!   a ticketing system work end to end;
//! - an agent cannot revoke, write the event stream, or touch JetStream
//!   beyond following its own tenant's signals: one ordered consumer on the
//!   signal stream, filtered to `mandate.sig.<tenant>.>` (whose flow
//!   control it may answer), which another tenant's agent may not create; its deliver subject is not checked by
//!   the server, but signals redirected to the engine change nothing;
//! - a ticketing system cannot read signals nor ask the engine anything;
//! - tenant A cannot touch tenant B: not its commands, signals, missions,
//!   nor its replies; and no one reads the shared `_INBOX.>`;
//! - on 2.10 and later the server fsyncs every write; 2.9 refuses that
//!   setting, which is why it lives in a file 2.9 does not read;
//! - an engine whose user kept the older permissions (no subscription to
//!   the subjects of the wrong shape) serves all the same.
//!
//! A refused publish or subscription is answered by the server with a
//! permissions violation, asynchronously: the tests wait for that error and
//! check that nothing got through.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::fixtures::{agent, delegation, mission, principal, root_issue, tenant};
use common::secured::{
    connect_recording, example_config, ordered_signal_consumer, redirect_signals, server_minor,
    settings_for, ServedOn, ServerErrors, User, AGENT_ACME, ENGINE, ORCH_ACME, ORCH_GLOBEX,
    SIGNAL_STREAM, TICKETING_ACME,
};
use common::wire::start_guard;
use common::{server_binary, NatsServer};
use futures::StreamExt;
use mandate::client::{Client, ClientError, GuardState, MissionPublisher, NatsAuth, NatsConnect};
use mandate::domain::{Actor, MandateId, Status};
use mandate::log::EventLog;
use mandate::protocol::{
    mission_subject, signal_subject, tenant_signals_subject, MissionCompletedNotice, Signal,
    SignalKind,
};

/// How long a test waits to be sure something does NOT arrive.
const QUIET: Duration = Duration::from_millis(500);

/// The server, with the example configuration, and the engine serving on it
/// as the `engine` user.
struct Secured {
    server: NatsServer,
    engine: ServedOn,
}

impl Secured {
    async fn start() -> Self {
        let server = NatsServer::start_with_config(|store| example_config(store, ""));
        let (nc, errors) = connect_recording(&settings(&server, &ENGINE)).await;
        let engine = ServedOn::start(nc).await;
        let s = Self { server, engine };
        // Serving: an orchestrator's query is answered.
        let probe = s.client(&ORCH_ACME, "acme", principal("probe")).await;
        common::fixtures::eventually("the engine answers", || {
            let probe = probe.clone();
            async move { probe.health().await.is_ok() }
        })
        .await;
        assert_eq!(
            errors.all(),
            Vec::<String>::new(),
            "the engine was refused something"
        );
        s
    }

    /// A connection as `user` that records what the server refuses it.
    async fn connect(&self, user: &User) -> (async_nats::Client, ServerErrors) {
        connect_recording(&settings(&self.server, user)).await
    }

    /// A client of tenant `t` acting as `actor`, connected as `user`.
    async fn client(&self, user: &User, t: &str, actor: Actor) -> Client {
        let (nc, _) = self.connect(user).await;
        Client::nats(nc, tenant(t), actor).with_timeout(Duration::from_millis(700))
    }
}

fn settings(server: &NatsServer, user: &User) -> NatsConnect {
    settings_for(&server.url(), user)
}

/// A secured server with its engine, acme's orchestrator acting as the cfo,
/// and a tree for `mission_ref` made through it by [`root_and_child`];
/// returns (setup, cfo, root, child).
async fn secured_with_tree(mission_ref: &str) -> (Secured, Client, MandateId, MandateId) {
    let s = Secured::start().await;
    let cfo = s.client(&ORCH_ACME, "acme", principal("cfo")).await;
    let (root, child) = root_and_child(&cfo, mission_ref).await;
    (s, cfo, root, child)
}

/// Issues a root for `mission_ref` to `a1` as the cfo, delegates it to `a2`
/// as `a1`, all through acme's orchestrator user; returns (root, child).
async fn root_and_child(orch: &Client, mission_ref: &str) -> (MandateId, MandateId) {
    let grants = ["finance:read on reports/**"];
    let root = orch
        .issue(root_issue("cfo", "a1", Some(mission_ref), &grants))
        .await
        .expect("the orchestrator issues")
        .mandate
        .unwrap();
    let nc = orch.nats_client().expect("over NATS").clone();
    let as_a1 = Client::nats(nc, tenant("acme"), agent("a1"));
    let child = as_a1
        .delegate(delegation(root, "a2", &grants))
        .await
        .expect("the orchestrator delegates for a1")
        .mandate
        .unwrap();
    (root, child)
}

/// Waits until `sub` gets nothing for [`QUIET`].
async fn assert_nothing_arrives(sub: &mut async_nats::Subscriber, what: &str) {
    if let Ok(Some(msg)) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("{what}: a message arrived on {}", msg.subject);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_works_end_to_end_inside_its_subjects() {
    let (s, cfo, root, child) = secured_with_tree("FIN-42").await;

    // The agent: its guard subscribes to the chain's signals and reads the
    // chain; the agent may also ask the engine to check.
    let (agent_nc, agent_errors) = s.connect(&AGENT_ACME).await;
    let a2 = Client::nats(agent_nc, tenant("acme"), agent("a2"));
    let guard = start_guard(a2.clone(), child, Duration::from_secs(30)).await;
    assert!(guard.check("finance:read", "reports/q3").is_allowed());
    let asked = a2
        .check(child, "finance:read", "reports/q3", None)
        .await
        .expect("the agent may ask the engine");
    assert!(asked.is_allowed(), "{asked:?}");

    // The ticketing system completes the mission: a JetStream publish whose
    // acknowledgement reaches its own inbox.
    let (ticket_nc, ticket_errors) = s.connect(&TICKETING_ACME).await;
    MissionPublisher::Nats(Box::new(async_nats::jetstream::new(ticket_nc)))
        .completed(
            &tenant("acme"),
            &mission("FIN-42"),
            &MissionCompletedNotice::default(),
        )
        .await
        .expect("the mission stream acknowledges the ticketing system's completion");

    // The engine ends the tree; the signal reaches the guard.
    tokio::time::timeout(Duration::from_secs(10), guard.cancellation().cancelled())
        .await
        .expect("the guard is cancelled when the mission completes");
    assert!(matches!(guard.state(), GuardState::Terminated(_)));
    assert!(!guard.check("finance:read", "reports/q3").is_allowed());
    let status = cfo.status(root, None).await.unwrap();
    assert_eq!(status.mandate.status(), Status::Completed);

    assert_eq!(agent_errors.all(), Vec::<String>::new());
    assert_eq!(ticket_errors.all(), Vec::<String>::new());
    s.engine.stop().await.expect("the engine stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_revoke_nor_write_the_event_stream() {
    let (s, cfo, root, child) = secured_with_tree("FIN-7").await;
    let before = s.engine.engine.log().last_position().await.unwrap();

    let (nc, errors) = s.connect(&AGENT_ACME).await;
    // A revoke, well formed, in its own tenant: never reaches the engine.
    let a1 = Client::nats(nc.clone(), tenant("acme"), agent("a1"))
        .with_timeout(Duration::from_millis(700));
    let refused = a1.revoke(root, None).await.unwrap_err();
    assert!(matches!(refused, ClientError::TimedOut(_)), "{refused:?}");
    errors.publish_refused("mandate.cmd.acme.revoke").await;

    // A forged commit on the tree's subject of the event stream.
    let tree = cfo.status(root, None).await.unwrap().mandate.tree();
    let forged = format!("mandate.evt.acme.{tree}");
    nc.publish(forged.clone(), "[]".into()).await.unwrap();
    errors.publish_refused(&forged).await;
    // JetStream itself: no stream to delete or purge, no consumer to read
    // the log with.
    for api in [
        "$JS.API.STREAM.PURGE.MANDATE_EVENTS",
        "$JS.API.STREAM.DELETE.MANDATE_SIGNALS",
        "$JS.API.CONSUMER.CREATE.MANDATE_EVENTS",
    ] {
        let _ = tokio::time::timeout(QUIET, nc.request(api, "{}".into())).await;
        errors.publish_refused(api).await;
    }
    // Nor may it listen in on commands or on the event stream.
    let _cmds = nc.subscribe("mandate.cmd.acme.*").await.unwrap();
    errors.subscription_refused("mandate.cmd.acme.*").await;
    let _events = nc.subscribe("mandate.evt.>").await.unwrap();
    errors.subscription_refused("mandate.evt.>").await;

    assert_eq!(
        s.engine.engine.log().last_position().await.unwrap(),
        before,
        "nothing the agent sent reached the event stream"
    );
    for m in [root, child] {
        let status = cfo.status(m, None).await.unwrap();
        assert_eq!(status.effective.status, Status::Active, "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_follows_its_tenant_signals_with_one_ordered_consumer() {
    let (s, cfo, root, _) = secured_with_tree("FIN-9").await;
    let (nc, errors) = s.connect(&AGENT_ACME).await;

    // The hub's consumer: named, filtered to acme's signals, new ones only.
    let (name, made) = ordered_signal_consumer(&nc, &tenant_signals_subject(&tenant("acme"))).await;
    let consumer = made.expect("acme's agent may follow acme's signals");
    let mut signals = consumer
        .messages()
        .await
        .expect("the consumer delivers to the agent's own inbox");

    // The engine ends the tree: its signal comes through the consumer.
    cfo.revoke(root, Some("closed".into()))
        .await
        .expect("the orchestrator revokes");
    let revoked = tokio::time::timeout(common::fixtures::PATIENCE, async {
        while let Some(m) = signals.next().await {
            let m = m.expect("the ordered consumer delivers without a gap");
            let signal: Signal = serde_json::from_slice(&m.payload).expect("a signal");
            if signal.mandate == root {
                return signal;
            }
        }
        panic!("the consumer ended");
    })
    .await
    .expect("the revoke's signal reaches the agent's consumer");
    assert_eq!(revoked.kind, SignalKind::Terminated, "{revoked:?}");
    assert_eq!(revoked.tenant, tenant("acme"));
    // Beacons: engines do not publish them yet (issue 13); once they do,
    // this consumer receives one on `mandate.sig.acme.beacon` every second.

    // What a hub may also need: the stream's first and last sequence after
    // a long cut-off, and deleting its old consumer before recreating it.
    let mut js = async_nats::jetstream::new(nc.clone());
    js.set_timeout(Duration::from_secs(2));
    let mut stream = js
        .get_stream(SIGNAL_STREAM)
        .await
        .expect("the agent may read the signal stream's info");
    let info = stream.info().await.expect("stream info");
    assert!(info.state.last_sequence >= 1, "{:?}", info.state);
    js.delete_consumer_from_stream(&name, SIGNAL_STREAM)
        .await
        .expect("the agent may delete its consumer");

    assert_eq!(errors.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_consumer_keeps_up_with_a_burst_under_flow_control() {
    let s = Secured::start().await;
    let (nc, errors) = s.connect(&AGENT_ACME).await;
    let (_, made) = ordered_signal_consumer(&nc, &tenant_signals_subject(&tenant("acme"))).await;
    let mut signals = made.expect("the consumer").messages().await.unwrap();

    // More than the server lets a push consumer have in flight unanswered:
    // it asks for flow control, which the agent must be allowed to answer,
    // or the deliveries stall.
    let (engine_nc, _) = s.connect(&ENGINE).await;
    let js = async_nats::jetstream::new(engine_nc);
    let (count, size) = (1000usize, 16 * 1024);
    let mut acks = Vec::with_capacity(count);
    for _ in 0..count {
        acks.push(
            js.publish("mandate.sig.acme.burst", vec![b'x'; size].into())
                .await
                .expect("the engine publishes"),
        );
    }
    for ack in acks {
        ack.await.expect("the signal stream stores it");
    }
    let mut got = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        while got < count {
            signals
                .next()
                .await
                .expect("the consumer goes on")
                .expect("no gap");
            got += 1;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the agent's consumer got {got} of {count}"));
    assert_eq!(errors.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_follow_another_tenants_signals() {
    let s = Secured::start().await;
    let (nc, errors) = s.connect(&AGENT_ACME).await;

    // Globex's signals, by the named create form: refused at the subject.
    let globex = tenant_signals_subject(&tenant("globex"));
    let (name, made) = ordered_signal_consumer(&nc, &globex).await;
    assert!(made.is_err(), "acme's agent made a consumer on {globex}");
    let refused = format!("$JS.API.CONSUMER.CREATE.{SIGNAL_STREAM}.{name}.{globex}");
    let violation = errors.publish_refused(&refused).await;
    assert!(violation.contains("Permissions Violation"), "{violation}");

    // Acme's filter in the subject, another (or none) in the body: the
    // server refuses the mismatch, so the subject's filter is the one.
    let js_request = |subject: String, body: serde_json::Value| {
        let nc = nc.clone();
        async move {
            let reply = tokio::time::timeout(
                Duration::from_secs(5),
                nc.request(subject.clone(), body.to_string().into()),
            )
            .await
            .unwrap_or_else(|_| panic!("no reply to {subject}"))
            .unwrap_or_else(|e| panic!("request {subject}: {e}"));
            serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()
        }
    };
    let acme = tenant_signals_subject(&tenant("acme"));
    for body_filter in [Some(globex.as_str()), Some("mandate.sig.>"), None] {
        let name = format!("mandate_hub_{}", uuid::Uuid::new_v4().simple());
        let mut config = serde_json::json!({
            "name": name,
            "deliver_subject": nc.new_inbox(),
            "deliver_policy": "new",
            "ack_policy": "none",
        });
        if let Some(f) = body_filter {
            config["filter_subject"] = f.into();
        }
        let reply = js_request(
            format!("$JS.API.CONSUMER.CREATE.{SIGNAL_STREAM}.{name}.{acme}"),
            serde_json::json!({"stream_name": SIGNAL_STREAM, "config": config}),
        )
        .await;
        assert!(
            reply["error"].is_object(),
            "a body filtered on {body_filter:?} under acme's subject was accepted: {reply}"
        );
    }

    // Nor any other way to a consumer or to the streams: no unnamed or
    // durable create, no listing (consumer names stay unknown), no other
    // stream's info.
    for api in [
        format!("$JS.API.CONSUMER.CREATE.{SIGNAL_STREAM}"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{SIGNAL_STREAM}.hub"),
        format!("$JS.API.CONSUMER.LIST.{SIGNAL_STREAM}"),
        format!("$JS.API.CONSUMER.NAMES.{SIGNAL_STREAM}"),
        format!("$JS.API.CONSUMER.INFO.{SIGNAL_STREAM}.hub"),
        "$JS.API.STREAM.INFO.MANDATE_EVENTS".to_string(),
        "$JS.API.STREAM.NAMES".to_string(),
    ] {
        let _ = tokio::time::timeout(QUIET, nc.request(api.clone(), "{}".into())).await;
        errors.publish_refused(&api).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_redirecting_its_signals_to_the_engine_changes_nothing() {
    let (s, cfo, root, child) = secured_with_tree("FIN-10").await;
    let (nc, _) = s.connect(&AGENT_ACME).await;
    // A copy of whatever reaches the engine's revoke subject.
    let (engine_nc, _) = s.connect(&ENGINE).await;
    let mut revokes = engine_nc
        .subscribe("mandate.cmd.acme.revoke")
        .await
        .unwrap();
    engine_nc.flush().await.unwrap();

    // A consumer on acme's signals that delivers to the engine's revoke
    // subject (the engine's queue subscription and the copy above both get
    // what it delivers). Permissions read subjects, and the deliver subject
    // is in the body: the server takes it (2.9 and 2.15).
    let acme = tenant_signals_subject(&tenant("acme"));
    let (redirected, _) = redirect_signals(&nc, &acme, "mandate.cmd.acme.revoke", "all").await;
    if !redirected {
        // A server that checks the deliver subject: nothing to redirect.
        return;
    }

    // A signal of acme (the root paused) reaches the engine as a "revoke".
    cfo.pause(root, None)
        .await
        .expect("the orchestrator pauses");
    let redirected = tokio::time::timeout(common::fixtures::PATIENCE, revokes.next())
        .await
        .expect("the signal is delivered on the revoke subject")
        .unwrap();
    let signal: Signal = serde_json::from_slice(&redirected.payload).expect("a signal");
    assert_eq!(signal.mandate, root);

    // The engine takes no signal for a command: nothing is revoked.
    tokio::time::sleep(QUIET).await;
    for m in [root, child] {
        let status = cfo.status(m, None).await.unwrap();
        assert_eq!(status.effective.status, Status::Paused, "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticketing_system_cannot_read_signals_nor_ask_the_engine() {
    let (s, cfo, root, _) = secured_with_tree("FIN-8").await;

    let (nc, errors) = s.connect(&TICKETING_ACME).await;
    let mut signals = nc.subscribe("mandate.sig.acme.*").await.unwrap();
    errors.subscription_refused("mandate.sig.acme.*").await;
    cfo.revoke(root, Some("closed".into()))
        .await
        .expect("the orchestrator revokes");
    assert_nothing_arrives(&mut signals, "a ticketing system listening to signals").await;

    let ticketing = Client::nats(nc.clone(), tenant("acme"), principal("ticketing"))
        .with_timeout(Duration::from_millis(700));
    let refused = ticketing.status(root, None).await.unwrap_err();
    assert!(matches!(refused, ClientError::TimedOut(_)), "{refused:?}");
    errors.publish_refused("mandate.q.acme.status").await;
    // Its one subject is the mission stream's, of its own tenant.
    nc.publish("mandate.cmd.acme.revoke", "{}".into())
        .await
        .unwrap();
    errors.publish_refused("mandate.cmd.acme.revoke").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_touch_another_replies_included() {
    let s = Secured::start().await;
    let globex = s.client(&ORCH_GLOBEX, "globex", principal("ceo")).await;
    let globex_root = globex
        .issue(root_issue(
            "ceo",
            "g1",
            Some("G-1"),
            &["crm:read on accounts/*"],
        ))
        .await
        .expect("globex's orchestrator issues in globex")
        .mandate
        .unwrap();

    // Acme's orchestrator: not globex's commands or queries.
    let (acme_nc, acme_errors) = s.connect(&ORCH_ACME).await;
    let acme_as_globex = Client::nats(acme_nc.clone(), tenant("globex"), principal("ceo"))
        .with_timeout(Duration::from_millis(700));
    let refused = acme_as_globex.revoke(globex_root, None).await.unwrap_err();
    assert!(matches!(refused, ClientError::TimedOut(_)), "{refused:?}");
    acme_errors
        .publish_refused("mandate.cmd.globex.revoke")
        .await;
    let refused = acme_as_globex.status(globex_root, None).await.unwrap_err();
    assert!(matches!(refused, ClientError::TimedOut(_)), "{refused:?}");
    acme_errors.publish_refused("mandate.q.globex.status").await;

    // Nor globex's replies, nor anyone's on the shared inbox.
    let mut theirs = acme_nc.subscribe("_INBOX_orch_globex.>").await.unwrap();
    acme_errors
        .subscription_refused("_INBOX_orch_globex.>")
        .await;
    let mut shared = acme_nc.subscribe("_INBOX.>").await.unwrap();
    acme_errors.subscription_refused("_INBOX.>").await;
    let status = globex.status(globex_root, None).await.unwrap();
    assert_eq!(status.effective.status, Status::Active);
    assert_nothing_arrives(&mut theirs, "acme reading globex's replies").await;
    assert_nothing_arrives(&mut shared, "acme reading the shared inbox").await;

    // Acme's agent: not globex's signals. Acme's ticketing system: not
    // globex's missions.
    let (agent_nc, agent_errors) = s.connect(&AGENT_ACME).await;
    let globex_signals = signal_subject(&tenant("globex"), globex_root);
    let mut sub = agent_nc.subscribe(globex_signals.clone()).await.unwrap();
    agent_errors.subscription_refused(&globex_signals).await;
    let (ticket_nc, ticket_errors) = s.connect(&TICKETING_ACME).await;
    let globex_mission = mission_subject(&tenant("globex"), &mission("G-1"));
    ticket_nc
        .publish(globex_mission.clone(), "{}".into())
        .await
        .unwrap();
    ticket_errors.publish_refused(&globex_mission).await;
    globex
        .pause(globex_root, None)
        .await
        .expect("globex pauses its own");
    assert_nothing_arrives(&mut sub, "acme's agent listening to globex's signals").await;
    let status = globex.status(globex_root, None).await.unwrap();
    assert_eq!(
        status.mandate.status(),
        Status::Paused,
        "the mission of globex was not completed by acme's ticketing system"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_on_the_default_inbox_gets_no_reply() {
    let s = Secured::start().await;
    let mut plain = settings(&s.server, &ORCH_ACME);
    plain.inbox_prefix = None;
    let (nc, errors) = connect_recording(&plain).await;
    let c =
        Client::nats(nc, tenant("acme"), principal("cfo")).with_timeout(Duration::from_millis(700));
    assert!(c.health().await.is_err());
    errors
        .wait_for(&["Permissions Violation for Subscription", "\"_INBOX."])
        .await;
}

/// A deployment that kept the engine's older permissions (commands and
/// queries on `mandate.<kind>.*.*` only): the server refuses the engine's
/// subscriptions to the subjects of the wrong shape, asynchronously, and
/// the engine serves all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_with_the_older_permissions_serves_all_the_same() {
    let wrong_shape = [
        "mandate.cmd.*",
        "mandate.cmd.*.*.>",
        "mandate.q.*",
        "mandate.q.*.*.>",
    ];
    let server =
        NatsServer::start_with_config(|store| {
            let top = example_config(store, "");
            let conf = store.join("nats-server.conf");
            let text = std::fs::read_to_string(&conf).unwrap();
            let mut older = text.clone();
            for subject in wrong_shape {
                older = older.replace(&format!("\"{subject}\","), "");
            }
            assert!(
            wrong_shape.iter().all(|s| !older.contains(&format!("\"{s}\""))),
            "examples/nats-server.conf no longer lists the engine's subjects as this test expects"
        );
            std::fs::write(&conf, older).unwrap();
            top
        });
    let (nc, errors) = connect_recording(&settings(&server, &ENGINE)).await;
    let engine = ServedOn::start(nc).await;
    for subject in wrong_shape {
        errors.subscription_refused(subject).await;
    }
    // Refused those, and nothing else.
    assert_eq!(
        errors.violations().len(),
        wrong_shape.len(),
        "{:?}",
        errors.all()
    );
    let (nc, _) = connect_recording(&settings(&server, &ORCH_ACME)).await;
    let cfo =
        Client::nats(nc, tenant("acme"), principal("cfo")).with_timeout(Duration::from_millis(700));
    common::fixtures::eventually("the engine answers", || {
        let cfo = cfo.clone();
        async move { cfo.health().await.is_ok() }
    })
    .await;
    let (root, child) = root_and_child(&cfo, "FIN-77").await;
    cfo.revoke(root, None)
        .await
        .expect("the orchestrator revokes");
    for m in [root, child] {
        let status = cfo.status(m, None).await.unwrap();
        assert_eq!(status.effective.status, Status::Revoked, "{m}");
    }
    engine.stop().await.expect("the engine ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_at_connect() {
    let server = NatsServer::start_with_config(|store| example_config(store, ""));
    let mut wrong = settings(&server, &AGENT_ACME);
    wrong.auth = NatsAuth::UserPassword {
        user: "agent-acme".into(),
        password: "guess".into(),
    };
    let err = wrong.connect().await.unwrap_err();
    assert!(err.is_refused(), "{err}");
    let anonymous = NatsConnect::new(server.url()).connect().await.unwrap_err();
    assert!(anonymous.is_refused(), "{anonymous}");
}

/// The example's durability setting: on 2.10 and later the server runs
/// with every JetStream write fsynced (read back from its monitoring
/// endpoint); 2.9 refuses the 2.10 file, and so must read the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_always_is_set_where_the_server_knows_it() {
    if server_minor() >= 10 {
        let monitor = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let _server = NatsServer::start_with_config(|store| {
            example_config(store, &format!("http: \"127.0.0.1:{monitor}\""))
        });
        let varz = http_get_json(monitor, "/varz");
        assert_eq!(
            varz["jetstream"]["config"]["sync_always"],
            serde_json::json!(true),
            "{}",
            varz["jetstream"]
        );
    } else {
        let dir = tempfile::tempdir().unwrap();
        example_config(dir.path(), "");
        let out = std::process::Command::new(server_binary())
            .arg("-c")
            .arg(dir.path().join("nats-server-2.10.conf"))
            .args(["-a", "127.0.0.1", "-p", "-1"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "2.9 started with sync_interval");
        assert!(stderr.contains("sync_interval"), "{stderr}");
    }
}

/// The JSON body of `GET path` on the local monitoring port, once it answers.
fn http_get_json(port: u16, path: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            if let Some((_, body)) = text.split_once("\r\n\r\n") {
                return serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"));
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the monitoring port {port} never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the `mandate` binary with `args` and `env`, as a separate process.
async fn mandate_cli(args: Vec<String>, env: Vec<(&'static str, String)>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let data = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mandate"));
        cmd.arg("--data").arg(data.path()).args(&args);
        for var in [
            "MANDATE_NATS",
            "MANDATE_NATS_USER",
            "MANDATE_NATS_PASSWORD",
            "MANDATE_NATS_INBOX_PREFIX",
            "MANDATE_TENANT",
            "MANDATE_ACTOR",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env);
        cmd.output().expect("run the mandate binary")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_connects_as_its_role_user_with_its_inbox_prefix() {
    let (s, _, root, _) = secured_with_tree("FIN-9").await;
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = ["--nats", &s.server.url(), "--tenant", "acme"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a.extend(["--json".to_string(), "status".into(), root.to_string()]);
        a
    };
    let password = vec![("MANDATE_NATS_PASSWORD", ORCH_ACME.1.to_string())];

    let out = mandate_cli(
        args(&["--user", ORCH_ACME.0, "--inbox-prefix", ORCH_ACME.2]),
        password.clone(),
    )
    .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&root.to_string()), "{text}");

    // The shared inbox is refused: no reply, the engine is unavailable.
    let out = mandate_cli(args(&["--user", ORCH_ACME.0]), password).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A wrong password: no connection.
    let out = mandate_cli(
        args(&["--user", ORCH_ACME.0, "--inbox-prefix", ORCH_ACME.2]),
        vec![("MANDATE_NATS_PASSWORD", "guess".to_string())],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
}
