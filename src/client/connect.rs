//! How a process reaches NATS: the one connection setting shared by the
//! engine (`mandate serve`), the orchestrator [`Client`](super::Client), the
//! agent [`Guard`](super::Guard), ticketing systems and the CLI.
//!
//! A [`NatsConnect`] names the server, how the connection proves who it is
//! (user and password, token, nkey seed or a creds file), TLS (a CA file,
//! a client certificate for mutual TLS, TLS required) and the connection's
//! reply-inbox prefix. The prefix matters once the server gives each role
//! least privilege by subject (`examples/nats-server.conf`): every role and
//! tenant subscribes only under its own prefix, so no one reads another's
//! replies on a shared `_INBOX.>`.
//!
//! ```no_run
//! # async fn f() -> Result<(), mandate::client::ConnectError> {
//! use mandate::client::{NatsAuth, NatsConnect};
//! let nc = NatsConnect::new("tls://nats.example.com:4222")
//!     .auth(NatsAuth::CredsFile("/etc/mandate/agent-acme.creds".into()))
//!     .ca_file("/etc/mandate/ca.pem")
//!     .inbox_prefix("_INBOX_agent_acme")
//!     .connect()
//!     .await?;
//! # let _ = nc; Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

/// How the connection proves who it is. One method per connection.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (a server without authorization, e.g. loopback only).
    #[default]
    None,
    /// A user and password from the server's `authorization { users }`.
    UserPassword {
        /// The user name.
        user: String,
        /// The password (never printed).
        password: String,
    },
    /// A shared token (`authorization { token }`); one identity per server.
    Token(String),
    /// An nkey user: the seed (`SU…`), which signs the server's nonce; the
    /// server knows only the public key.
    NkeySeed(String),
    /// A creds file (a user JWT and its nkey seed), for servers in operator
    /// mode (accounts from JWTs).
    CredsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    /// Names the method and the user or file, never a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => write!(f, "None"),
            NatsAuth::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, ***)"),
            NatsAuth::Token(_) => write!(f, "Token(***)"),
            NatsAuth::NkeySeed(_) => write!(f, "NkeySeed(***)"),
            NatsAuth::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
        }
    }
}

/// TLS settings. A `tls://` URL, a CA file or a client certificate each
/// imply TLS; without a CA file the system's roots are trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of the certificate authorities that sign the server's
    /// certificate (added to the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate of this client, for mutual TLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Refuse to talk to the server without TLS.
    pub required: bool,
}

impl TlsSettings {
    /// Whether any TLS setting is given.
    pub fn is_set(&self) -> bool {
        self.required
            || self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
    }
}

/// Everything needed to open a connection; see the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsConnect {
    /// Server URL(s), comma-separated: `nats://host:4222`, `tls://host:4222`.
    pub url: String,
    /// The connection's name, shown by the server's monitoring.
    pub name: Option<String>,
    /// How the connection proves who it is.
    pub auth: NatsAuth,
    /// TLS settings.
    pub tls: TlsSettings,
    /// The subject prefix of this connection's reply inboxes (default
    /// `_INBOX`). Give each role and tenant its own, matching the
    /// `subscribe` permission the server grants it.
    pub inbox_prefix: Option<String>,
}

/// A connection setting that cannot be used, or a server that refused it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A setting is wrong in itself (named in the message).
    #[error("invalid NATS setting: {0}")]
    Invalid(String),
    /// A file named by a setting cannot be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    File {
        /// What the file is for (e.g. "credentials file").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The server could not be reached, or refused the connection
    /// (authentication, authorization or TLS).
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// What went wrong.
        source: async_nats::ConnectError,
    },
}

impl ConnectError {
    /// Whether the server refused who the connection says it is
    /// (authentication or authorization), as opposed to a setting that was
    /// wrong before trying or a server out of reach. A certificate the
    /// client does not trust shows in the message (async-nats reports it as
    /// an I/O error).
    pub fn is_refused(&self) -> bool {
        use async_nats::ConnectErrorKind as K;
        matches!(
            self,
            ConnectError::Connect { source, .. }
                if matches!(source.kind(), K::AuthorizationViolation | K::Authentication | K::Tls)
        )
    }
}

impl NatsConnect {
    /// A connection to `url` without credentials or TLS settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets the connection's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets how the connection proves who it is.
    pub fn auth(mut self, auth: NatsAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Trusts the certificate authorities in `path` (PEM) for the server.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Presents `cert` with its `key` (PEM) to the server: mutual TLS.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.cert_file = Some(cert.into());
        self.tls.key_file = Some(key.into());
        self
    }

    /// Refuses a server that does not speak TLS.
    pub fn require_tls(mut self, required: bool) -> Self {
        self.tls.required = required;
        self
    }

    /// Sets the reply-inbox prefix (e.g. `_INBOX_agent_acme`).
    pub fn inbox_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inbox_prefix = Some(prefix.into());
        self
    }

    /// The async-nats options these settings make, checked: every file
    /// named is read (a creds file) or must exist, and the inbox prefix
    /// must be a plain subject. Add to them (an event callback, say)
    /// before connecting with them.
    pub async fn options(&self) -> Result<async_nats::ConnectOptions, ConnectError> {
        let mut opts = async_nats::ConnectOptions::new()
            // Permission violations are answered asynchronously: without
            // this they would pass unseen.
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::ServerError(e) => tracing::warn!("nats server error: {e}"),
                    other => tracing::debug!("nats: {other}"),
                }
            });
        if let Some(name) = &self.name {
            opts = opts.name(name);
        }
        match &self.auth {
            NatsAuth::None => {}
            NatsAuth::UserPassword { user, password } => {
                if user.is_empty() {
                    return Err(ConnectError::Invalid("the NATS user is empty".into()));
                }
                opts = opts.user_and_password(user.clone(), password.clone());
            }
            NatsAuth::Token(token) => {
                if token.is_empty() {
                    return Err(ConnectError::Invalid("the NATS token is empty".into()));
                }
                opts = opts.token(token.clone());
            }
            NatsAuth::NkeySeed(seed) => {
                let seed = seed.trim();
                // A user seed: `S` (seed) then `U` (user). The server's
                // nonce is signed with it; an account or operator seed
                // would only be refused by the server, less clearly.
                if !seed.starts_with("SU") {
                    return Err(ConnectError::Invalid(
                        "an nkey seed must be a user seed (it starts with SU)".into(),
                    ));
                }
                opts = opts.nkey(seed.to_string());
            }
            NatsAuth::CredsFile(path) => {
                opts = opts
                    .credentials_file(path)
                    .await
                    .map_err(|source| ConnectError::File {
                        what: "credentials file",
                        path: path.clone(),
                        source,
                    })?;
            }
        }
        if let Some(ca) = &self.tls.ca_file {
            readable("TLS CA file", ca)?;
            opts = opts.add_root_certificates(ca.clone());
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(cert), Some(key)) => {
                readable("TLS client certificate", cert)?;
                readable("TLS client key", key)?;
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => {
                return Err(ConnectError::Invalid(
                    "a TLS client certificate needs both its certificate and its key file".into(),
                ))
            }
        }
        if self.tls.is_set() {
            opts = opts.require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            check_inbox_prefix(prefix)?;
            opts = opts.custom_inbox_prefix(prefix);
        }
        Ok(opts)
    }

    /// Connects with these settings.
    pub async fn connect(&self) -> Result<async_nats::Client, ConnectError> {
        self.connect_with(self.options().await?).await
    }

    /// Connects to this URL with `options` (made by [`NatsConnect::options`],
    /// then added to).
    pub async fn connect_with(
        &self,
        options: async_nats::ConnectOptions,
    ) -> Result<async_nats::Client, ConnectError> {
        if self.url.trim().is_empty() {
            return Err(ConnectError::Invalid("the NATS URL is empty".into()));
        }
        options
            .connect(self.url.as_str())
            .await
            .map_err(|source| ConnectError::Connect {
                url: self.url.clone(),
                source,
            })
    }
}

/// Fails unless `path` is a readable file; names it otherwise. (async-nats
/// reads TLS files only while connecting, with a vaguer error.)
fn readable(what: &'static str, path: &Path) -> Result<(), ConnectError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| ConnectError::File {
            what,
            path: path.to_path_buf(),
            source,
        })
}

/// An inbox prefix is one or more subject tokens, without wildcards: the
/// inboxes are `<prefix>.<id>.<n>`, and the server grants `<prefix>.>`.
fn check_inbox_prefix(prefix: &str) -> Result<(), ConnectError> {
    let bad = |why: &str| {
        ConnectError::Invalid(format!(
            "inbox prefix {prefix:?} {why} (write tokens like _INBOX_agent_acme)"
        ))
    };
    if prefix.is_empty() {
        return Err(bad("is empty"));
    }
    if prefix.split('.').any(str::is_empty) {
        return Err(bad("has an empty token"));
    }
    if prefix
        .chars()
        .any(|c| c == '*' || c == '>' || c.is_whitespace() || c.is_control())
    {
        return Err(bad("may not hold wildcards or whitespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_printed() {
        let c = NatsConnect::new("nats://x").auth(NatsAuth::UserPassword {
            user: "engine".into(),
            password: "hunter2".into(),
        });
        let shown = format!("{c:?}");
        assert!(
            shown.contains("engine") && !shown.contains("hunter2"),
            "{shown}"
        );
        let shown = format!("{:?}", NatsAuth::Token("t0k3n".into()));
        assert!(!shown.contains("t0k3n"), "{shown}");
        let shown = format!("{:?}", NatsAuth::NkeySeed("SUABC".into()));
        assert!(!shown.contains("SUABC"), "{shown}");
    }

    #[tokio::test]
    async fn bad_settings_are_named_before_connecting() {
        let err = |c: NatsConnect| async move { c.options().await.unwrap_err().to_string() };
        let e = err(NatsConnect::new("nats://x").inbox_prefix("_INBOX.>")).await;
        assert!(e.contains("wildcards"), "{e}");
        let e = err(NatsConnect::new("nats://x").inbox_prefix("a..b")).await;
        assert!(e.contains("empty token"), "{e}");
        let e = err(NatsConnect::new("nats://x").auth(NatsAuth::NkeySeed("SAxyz".into()))).await;
        assert!(e.contains("user seed"), "{e}");
        let e = err(NatsConnect::new("nats://x").ca_file("/nonexistent/ca.pem")).await;
        assert!(e.contains("TLS CA file /nonexistent/ca.pem"), "{e}");
        let e = err(
            NatsConnect::new("nats://x").auth(NatsAuth::CredsFile("/nonexistent.creds".into()))
        )
        .await;
        assert!(e.contains("credentials file /nonexistent.creds"), "{e}");
        let mut half = NatsConnect::new("nats://x");
        half.tls.cert_file = Some("/etc/hostname".into());
        let e = err(half).await;
        assert!(e.contains("both its certificate and its key"), "{e}");
    }
}
