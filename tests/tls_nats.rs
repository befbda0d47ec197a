//! Mandate over a TLS-only nats-server that also requires a client
//! certificate (mutual TLS) and a user: the engine (nkey user), the
//! orchestrator client (user and password) and the agent's guard (nkey
//! user) run one story end to end: issue, delegate, the guard allows, a
//! revoke, the guard stops. A plain connection, one without a client
//! certificate, and one with a CA that did not sign the server are refused.
//!
//! The certificates are made at test time with the `openssl` command.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::fixtures::{agent, delegation, principal, root_issue, tenant};
use common::secured::{connect_recording, ServedOn};
use common::wire::start_guard;
use common::NatsServer;
use mandate::client::{Client, GuardState, NatsAuth, NatsConnect};
use mandate::domain::Status;

/// A certificate authority, a server certificate for 127.0.0.1 and a client
/// certificate, all under one directory.
struct Certs {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A CA that signed nothing here: a client trusting only it must
    /// refuse the server.
    stranger_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (the TLS tests make their certificates with it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    fn make(dir: &Path) -> Self {
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        for ca in ["ca", "stranger-ca"] {
            let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
            args.extend(ec);
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=mandate test {ca}"),
            );
            args.extend([
                "-keyout",
                &key,
                "-out",
                &pem,
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(dir, &args);
        }
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (key, csr, pem, extfile, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
                format!("/CN=mandate test {name}"),
            );
            std::fs::write(dir.join(&extfile), ext).unwrap();
            let mut args = vec!["req", "-nodes"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(dir, &args);
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &pem,
                    "-extfile",
                    &extfile,
                ],
            );
        }
        Certs {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            stranger_ca: dir.join("stranger-ca.pem"),
        }
    }
}

/// An nkey user: its seed (given to the client) and public key (to the
/// server).
struct NkeyUser {
    seed: String,
    public: String,
}

fn nkey_user() -> NkeyUser {
    let kp = nkeys::KeyPair::new_user();
    NkeyUser {
        seed: kp.seed().unwrap(),
        public: kp.public_key(),
    }
}

/// The TLS-only server, its certificates, and the nkey users of the engine
/// and the agent.
struct TlsSetup {
    server: NatsServer,
    certs: Certs,
    _certs_dir: tempfile::TempDir,
    engine: NkeyUser,
    agent: NkeyUser,
}

const ORCH_PASSWORD: &str = "orch-acme-secret";

impl TlsSetup {
    fn start() -> Self {
        let certs_dir = tempfile::tempdir().unwrap();
        let certs = Certs::make(certs_dir.path());
        let engine = nkey_user();
        let agent = nkey_user();
        let server = NatsServer::start_with_config(|store| {
            let path = store.join("tls.conf");
            let text = format!(
                r#"
jetstream {{ store_dir: "{js}" }}
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  ca_file: "{ca}"
  verify: true
  timeout: 3
}}
authorization {{
  users = [
    {{ nkey: "{engine}" }}
    {{ nkey: "{agent}", permissions: {{
        publish: {{ allow: ["mandate.q.acme.check", "mandate.q.acme.chain",
          "$JS.API.CONSUMER.CREATE.MANDATE_SIGNALS.*.mandate.sig.acme.>",
          "$JS.API.CONSUMER.DELETE.MANDATE_SIGNALS.*",
          "$JS.API.STREAM.INFO.MANDATE_SIGNALS", "$JS.FC.MANDATE_SIGNALS.*.*"] }}
        subscribe: {{ allow: ["mandate.sig.acme.*", "_INBOX_agent_acme.>"] }} }} }}
    {{ user: "orchestrator-acme", password: "{ORCH_PASSWORD}", permissions: {{
        publish: {{ allow: ["mandate.cmd.acme.*", "mandate.q.acme.*"] }}
        subscribe: {{ allow: ["_INBOX_orch_acme.>"] }} }} }}
  ]
}}
"#,
                js = store.join("js").display(),
                cert = certs.server_cert.display(),
                key = certs.server_key.display(),
                ca = certs.ca.display(),
                engine = engine.public,
                agent = agent.public,
            );
            std::fs::write(&path, text).unwrap();
            path
        });
        Self {
            server,
            certs,
            _certs_dir: certs_dir,
            engine,
            agent,
        }
    }

    fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.server.port())
    }

    /// Mutual TLS with the test CA, as `auth`, with `prefix` for replies.
    fn settings(&self, auth: NatsAuth, prefix: &str) -> NatsConnect {
        NatsConnect::new(self.url())
            .auth(auth)
            .ca_file(&self.certs.ca)
            .client_cert(&self.certs.client_cert, &self.certs.client_key)
            .inbox_prefix(prefix)
    }
}

/// The story, with the engine already serving: acme's orchestrator (on
/// `orch`) issues and delegates, the agent's guard (on `agent_nc`) allows,
/// the orchestrator revokes the root, the guard stops.
async fn story(orch: async_nats::Client, agent_nc: async_nats::Client) {
    let cfo = Client::nats(orch.clone(), tenant("acme"), principal("cfo"))
        .with_timeout(Duration::from_millis(700));
    common::fixtures::eventually("the engine answers", || {
        let cfo = cfo.clone();
        async move { cfo.health().await.is_ok() }
    })
    .await;

    // Issue, delegate.
    let grants = ["finance:read on reports/**"];
    let root = cfo
        .issue(root_issue("cfo", "a1", None, &grants))
        .await
        .expect("issue")
        .mandate
        .unwrap();
    let child = Client::nats(orch, tenant("acme"), agent("a1"))
        .delegate(delegation(root, "a2", &grants))
        .await
        .expect("delegate")
        .mandate
        .unwrap();

    // The guard allows.
    let guard = start_guard(
        Client::nats(agent_nc, tenant("acme"), agent("a2")),
        child,
        Duration::from_secs(30),
    )
    .await;
    assert!(guard.check("finance:read", "reports/q3").is_allowed());
    assert_eq!(guard.state(), GuardState::Active);

    // A revoke at the root stops it, through the signal (a guard reads its
    // chain only when told to).
    cfo.revoke(root, Some("done".into())).await.expect("revoke");
    tokio::time::timeout(Duration::from_secs(10), guard.cancellation().cancelled())
        .await
        .expect("the guard is cancelled by the revoke");
    assert_eq!(guard.state(), GuardState::Terminated(Status::Revoked));
    assert!(!guard.check("finance:read", "reports/q3").is_allowed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_runs_over_mutual_tls() {
    let tls = TlsSetup::start();
    let (engine_nc, engine_errors) = connect_recording(
        &tls.settings(NatsAuth::NkeySeed(tls.engine.seed.clone()), "_INBOX_engine"),
    )
    .await;
    let engine = ServedOn::start(engine_nc).await;
    let orch = tls
        .settings(
            NatsAuth::UserPassword {
                user: "orchestrator-acme".into(),
                password: ORCH_PASSWORD.into(),
            },
            "_INBOX_orch_acme",
        )
        .connect()
        .await
        .expect("the orchestrator connects over TLS");
    let (agent_nc, agent_errors) = connect_recording(&tls.settings(
        NatsAuth::NkeySeed(tls.agent.seed.clone()),
        "_INBOX_agent_acme",
    ))
    .await;
    story(orch, agent_nc).await;
    assert_eq!(engine_errors.all(), Vec::<String>::new());
    assert_eq!(agent_errors.all(), Vec::<String>::new());
    engine.stop().await.expect("the engine stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_tls_or_without_a_client_certificate_are_refused() {
    let tls = TlsSetup::start();
    let engine = || NatsAuth::NkeySeed(tls.engine.seed.clone());

    // Plain NATS to a TLS-only server.
    let plain = NatsConnect::new(tls.server.url()).auth(engine());
    // (The client follows the server into TLS, and then does not trust the
    // server's certificate: no CA given.)
    let err = plain.connect().await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");

    // TLS, but no client certificate: the server verifies clients.
    let no_cert = NatsConnect::new(tls.url())
        .auth(engine())
        .ca_file(&tls.certs.ca);
    assert!(no_cert.connect().await.is_err());

    // A CA that did not sign the server's certificate.
    let stranger = NatsConnect::new(tls.url())
        .auth(engine())
        .ca_file(&tls.certs.stranger_ca)
        .client_cert(&tls.certs.client_cert, &tls.certs.client_key);
    let err = stranger.connect().await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // Everything right but the nkey: a user the server does not know.
    let unknown = tls.settings(NatsAuth::NkeySeed(nkey_user().seed), "_INBOX_x");
    let err = unknown.connect().await.unwrap_err();
    assert!(err.is_refused(), "{err}");

    // And with everything right, it connects.
    tls.settings(engine(), "_INBOX_engine")
        .connect()
        .await
        .expect("the engine's settings connect");
}

// --- Creds files: a server in operator mode -------------------------------

/// Base64url without padding, as JWTs are written.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A NATS JWT (v2) about `subject`, of `kind` (`nats` claims), signed by
/// `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = b64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = b64url(claims.to_string().as_bytes());
    let signed = format!("{header}.{claims}");
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64url(&signature))
}

/// A creds file for a new user of `account`, named `name`, with the user
/// permissions `permissions` (`pub`, `sub`, `resp` claims).
fn creds_file(
    dir: &Path,
    account: &nkeys::KeyPair,
    name: &str,
    permissions: serde_json::Value,
) -> PathBuf {
    let user = nkeys::KeyPair::new_user();
    let mut nats = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2,
    });
    for (k, v) in permissions.as_object().unwrap() {
        nats[k] = v.clone();
    }
    let token = jwt(account, &user.public_key(), name, nats);
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    let path = dir.join(format!("{name}.creds"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A TLS-only server in operator mode (accounts from JWTs, preloaded), and
/// creds files for the engine, acme's orchestrator and acme's agent.
struct CredsSetup {
    server: NatsServer,
    certs: Certs,
    dir: tempfile::TempDir,
    engine: PathBuf,
    orchestrator: PathBuf,
    agent: PathBuf,
}

impl CredsSetup {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::make(dir.path());
        let operator = nkeys::KeyPair::new_operator();
        let system = nkeys::KeyPair::new_account();
        let account = nkeys::KeyPair::new_account();
        let operator_jwt = jwt(
            &operator,
            &operator.public_key(),
            "mandate-test",
            serde_json::json!({ "type": "operator", "version": 2 }),
        );
        let unlimited = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
        });
        let system_jwt = jwt(
            &operator,
            &system.public_key(),
            "SYS",
            serde_json::json!({ "limits": unlimited, "type": "account", "version": 2 }),
        );
        let mut limits = unlimited.clone();
        for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[k] = serde_json::json!(-1);
        }
        let account_jwt = jwt(
            &operator,
            &account.public_key(),
            "MANDATE",
            serde_json::json!({ "limits": limits, "type": "account", "version": 2 }),
        );
        let engine = creds_file(dir.path(), &account, "engine", serde_json::json!({}));
        // A user allowed to publish and to subscribe to those subjects only.
        let limited = |name: &str, publish: &[&str], subscribe: &[&str]| {
            let allowed = serde_json::json!({
                "pub": { "allow": publish },
                "sub": { "allow": subscribe },
            });
            creds_file(dir.path(), &account, name, allowed)
        };
        let orchestrator = limited(
            "orchestrator-acme",
            &["mandate.cmd.acme.*", "mandate.q.acme.*"],
            &["_INBOX_orch_acme.>"],
        );
        let agent = limited(
            "agent-acme",
            &[
                "mandate.q.acme.check",
                "mandate.q.acme.chain",
                // A guard's process follows its tenant's signals with one
                // consumer (as in examples/nats-server.conf).
                "$JS.API.CONSUMER.CREATE.MANDATE_SIGNALS.*.mandate.sig.acme.>",
                "$JS.API.CONSUMER.DELETE.MANDATE_SIGNALS.*",
                "$JS.API.STREAM.INFO.MANDATE_SIGNALS",
                "$JS.FC.MANDATE_SIGNALS.*.*",
            ],
            &["mandate.sig.acme.*", "_INBOX_agent_acme.>"],
        );
        let server = NatsServer::start_with_config(|store| {
            let path = store.join("operator.conf");
            let text = format!(
                r#"
operator: "{operator_jwt}"
system_account: "{system_pub}"
resolver: MEMORY
resolver_preload: {{
  {system_pub}: "{system_jwt}"
  {account_pub}: "{account_jwt}"
}}
jetstream {{ store_dir: "{js}" }}
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  ca_file: "{ca}"
  timeout: 3
}}
"#,
                system_pub = system.public_key(),
                account_pub = account.public_key(),
                js = store.join("js").display(),
                cert = certs.server_cert.display(),
                key = certs.server_key.display(),
                ca = certs.ca.display(),
            );
            std::fs::write(&path, text).unwrap();
            path
        });
        Self {
            server,
            certs,
            dir,
            engine,
            orchestrator,
            agent,
        }
    }

    fn settings(&self, creds: &Path, prefix: &str) -> NatsConnect {
        NatsConnect::new(format!("tls://127.0.0.1:{}", self.server.port()))
            .auth(NatsAuth::CredsFile(creds.to_path_buf()))
            .ca_file(&self.certs.ca)
            .inbox_prefix(prefix)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_runs_with_creds_files_over_tls() {
    let setup = CredsSetup::start();
    let (engine_nc, engine_errors) =
        connect_recording(&setup.settings(&setup.engine, "_INBOX_engine")).await;
    let engine = ServedOn::start(engine_nc).await;
    let orch = setup
        .settings(&setup.orchestrator, "_INBOX_orch_acme")
        .connect()
        .await
        .expect("the orchestrator connects with its creds");
    let (agent_nc, agent_errors) =
        connect_recording(&setup.settings(&setup.agent, "_INBOX_agent_acme")).await;
    story(orch, agent_nc).await;
    assert_eq!(engine_errors.all(), Vec::<String>::new());
    assert_eq!(agent_errors.all(), Vec::<String>::new());
    engine.stop().await.expect("the engine stops cleanly");

    // A creds file of a user the account never signed is refused.
    let stranger = creds_file(
        setup.dir.path(),
        &nkeys::KeyPair::new_account(),
        "stranger",
        serde_json::json!({}),
    );
    let err = setup
        .settings(&stranger, "_INBOX_x")
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_refused(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_tls_connects_and_a_wrong_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path());
    let server = NatsServer::start_with_config(|store| {
        let path = store.join("token.conf");
        let text = format!(
            "jetstream {{ store_dir: \"{js}\" }}\n\
             tls {{ cert_file: \"{cert}\", key_file: \"{key}\", timeout: 3 }}\n\
             authorization {{ token: \"engine-token\" }}\n",
            js = store.join("js").display(),
            cert = certs.server_cert.display(),
            key = certs.server_key.display(),
        );
        std::fs::write(&path, text).unwrap();
        path
    });
    let url = format!("tls://127.0.0.1:{}", server.port());
    let settings = |token: &str| {
        NatsConnect::new(url.clone())
            .auth(NatsAuth::Token(token.into()))
            .ca_file(&certs.ca)
    };
    let engine = ServedOn::start(
        settings("engine-token")
            .connect()
            .await
            .expect("the token connects"),
    )
    .await;
    let nc = settings("engine-token").connect().await.unwrap();
    let c =
        Client::nats(nc, tenant("acme"), principal("cfo")).with_timeout(Duration::from_millis(700));
    common::fixtures::eventually("the engine answers", || {
        let c = c.clone();
        async move { c.health().await.is_ok() }
    })
    .await;
    let err = settings("guess").connect().await.unwrap_err();
    assert!(err.is_refused(), "{err}");
    engine.stop().await.expect("the engine stops cleanly");
}
