//! The connection flags of every command that talks to NATS, and their
//! environment variables. They make a [`NatsConnect`].

use std::path::PathBuf;

use clap::Args;

use crate::client::{ConnectError, NatsAuth, NatsConnect, TlsSettings};

/// How to reach NATS and prove who this process is. Secrets are best given
/// through their environment variables (or files), not on the command line.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "NATS connection")]
pub struct ConnectArgs {
    /// NATS server URL(s), comma-separated (`nats://…`, or `tls://…` for
    /// TLS). Without it: the engine a `mandate serve` announced in --data,
    /// else the embedded engine there (one process at a time).
    #[arg(long, global = true, env = "MANDATE_NATS", value_name = "URL")]
    pub nats: Option<String>,
    /// NATS user (with --password).
    #[arg(long, global = true, env = "MANDATE_NATS_USER", value_name = "USER")]
    pub user: Option<String>,
    /// NATS password of --user.
    #[arg(
        long,
        global = true,
        env = "MANDATE_NATS_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<String>,
    /// NATS authentication token.
    #[arg(
        long,
        global = true,
        env = "MANDATE_NATS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// File holding an nkey user seed (`SU…`).
    #[arg(long, global = true, env = "MANDATE_NATS_NKEY", value_name = "FILE")]
    pub nkey: Option<PathBuf>,
    /// NATS credentials file (user JWT and seed; servers in operator mode).
    #[arg(long, global = true, env = "MANDATE_NATS_CREDS", value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// PEM file of the certificate authorities of the server's certificate.
    #[arg(long, global = true, env = "MANDATE_NATS_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with --tls-key).
    #[arg(
        long,
        global = true,
        env = "MANDATE_NATS_TLS_CERT",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "MANDATE_NATS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Refuse a server that does not speak TLS (implied by the other TLS
    /// flags and by a tls:// URL).
    #[arg(long, global = true, env = "MANDATE_NATS_TLS_REQUIRED")]
    pub tls_required: bool,
    /// Subject prefix of this process's reply inboxes (default `_INBOX`);
    /// must match the inbox the server lets this user subscribe to, e.g.
    /// `_INBOX_orch_acme`.
    #[arg(
        long,
        global = true,
        env = "MANDATE_NATS_INBOX_PREFIX",
        value_name = "PREFIX"
    )]
    pub inbox_prefix: Option<String>,
}

impl ConnectArgs {
    /// The connection these flags describe, for `url`; `None` without a URL.
    /// More than one way to authenticate is refused.
    pub fn to_connect(&self) -> Result<Option<NatsConnect>, ConnectError> {
        let Some(url) = &self.nats else {
            return Ok(None);
        };
        // Checked here rather than with clap's `requires`, which does not
        // see global arguments given before the subcommand.
        if self.password.is_some() && self.user.is_none() {
            return Err(ConnectError::Invalid(
                "--password needs --user (MANDATE_NATS_USER)".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConnectError::Invalid(
                "--tls-cert and --tls-key go together (a client certificate and its key)".into(),
            ));
        }
        let mut given = Vec::new();
        if self.user.is_some() {
            given.push("--user");
        }
        if self.token.is_some() {
            given.push("--token");
        }
        if self.nkey.is_some() {
            given.push("--nkey");
        }
        if self.creds.is_some() {
            given.push("--creds");
        }
        if given.len() > 1 {
            return Err(ConnectError::Invalid(format!(
                "choose one way to authenticate to NATS, not {}",
                given.join(" and ")
            )));
        }
        let auth = if let Some(user) = &self.user {
            NatsAuth::UserPassword {
                user: user.clone(),
                password: self.password.clone().unwrap_or_default(),
            }
        } else if let Some(token) = &self.token {
            NatsAuth::Token(token.clone())
        } else if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path).map_err(|source| ConnectError::File {
                what: "nkey seed file",
                path: path.clone(),
                source,
            })?;
            NatsAuth::NkeySeed(seed.trim().to_string())
        } else if let Some(path) = &self.creds {
            NatsAuth::CredsFile(path.clone())
        } else {
            NatsAuth::None
        };
        Ok(Some(NatsConnect {
            url: url.clone(),
            name: Some("mandate".into()),
            auth,
            tls: TlsSettings {
                ca_file: self.tls_ca.clone(),
                cert_file: self.tls_cert.clone(),
                key_file: self.tls_key.clone(),
                required: self.tls_required || url.starts_with("tls://"),
            },
            inbox_prefix: self.inbox_prefix.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        connect: ConnectArgs,
    }

    fn parse(args: &[&str]) -> Result<Option<NatsConnect>, String> {
        let probe = Probe::try_parse_from(std::iter::once("mandate").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        probe.connect.to_connect().map_err(|e| e.to_string())
    }

    #[test]
    fn the_flags_make_one_connection_setting() {
        let c = parse(&[
            "--nats",
            "tls://n:4222",
            "--user",
            "agent-acme",
            "--password",
            "pw",
            "--tls-ca",
            "ca.pem",
            "--inbox-prefix",
            "_INBOX_agent_acme",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.auth,
            NatsAuth::UserPassword {
                user: "agent-acme".into(),
                password: "pw".into()
            }
        );
        assert!(c.tls.required);
        assert_eq!(c.tls.ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(c.inbox_prefix.as_deref(), Some("_INBOX_agent_acme"));
        assert_eq!(parse(&[]).unwrap(), None);
    }

    #[test]
    fn two_ways_to_authenticate_are_refused() {
        let e = parse(&["--nats", "n", "--user", "u", "--token", "t"]).unwrap_err();
        assert!(e.contains("--user and --token"), "{e}");
        let e = parse(&["--nats", "n", "--tls-cert", "c.pem"]).unwrap_err();
        assert!(e.contains("--tls-key go together"), "{e}");
        let e = parse(&["--nats", "n", "--password", "p"]).unwrap_err();
        assert!(e.contains("--password needs --user"), "{e}");
    }
}
