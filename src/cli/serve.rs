//! `mandate serve` (on the server of `--nats`, or on a private one: see
//! `bootstrap`), `mandate rebuild`, and the shutdown signal both wait for.

use std::path::Path;

use super::args::{Cli, Cmd};
use super::bootstrap::{self, PrivateServer};
use super::exit::{invalid, Exit, Failure};
use super::parse;
use super::render;
use crate::domain::TenantId;
use crate::engine::auth::AuthConfig;
use crate::engine::sets::SetReceiver;
use crate::engine::tokens::TokenKeys;
use crate::engine::{Engine, EngineConfig};

/// Serves the engine on `nc` until Ctrl-C or SIGTERM: on the server of
/// `--nats`, or on `private` (which then also ends it when it dies).
/// `tenant` is the tenant the private server's readiness probe asks, unless
/// `--tenant` lists the tenants to serve.
pub(super) async fn serve(
    cli: &Cli,
    nc: async_nats::Client,
    private: Option<PrivateServer>,
    tenant: TenantId,
    auth: Option<&Path>,
    allow_open_tenants: bool,
) -> Result<Exit, Failure> {
    let tenants = cli
        .tenant
        .as_deref()
        .map(parse::tenants)
        .transpose()?
        .unwrap_or_default();
    let beacon_interval = match &cli.command {
        Cmd::Serve {
            beacon_interval, ..
        } => parse::parse_interval(beacon_interval)
            .map_err(|e| invalid(format!("--beacon-interval: {}", e.message)))?,
        _ => EngineConfig::default().beacon_interval,
    };
    // Bound before the engine opens: a taken or malformed address fails
    // the start at once, naming it.
    let metrics = match &cli.command {
        Cmd::Serve {
            metrics: Some(addr),
            ..
        } => Some(bind_http("--metrics", addr).await?),
        _ => None,
    };
    let (tokens, token_max_ttl, token_issuer, jwks_http) = match &cli.command {
        Cmd::Serve {
            token_keys,
            token_max_ttl,
            token_issuer,
            jwks_http,
            ..
        } => {
            let keys = if token_keys.is_empty() {
                None
            } else {
                let keys = TokenKeys::load(token_keys).map_err(|e| invalid(e.to_string()))?;
                tracing::info!(kids = ?keys.kids(), "token keys loaded; the first signs");
                Some(std::sync::Arc::new(keys))
            };
            let max = parse::parse_interval(token_max_ttl)
                .map_err(|e| invalid(format!("--token-max-ttl: {}", e.message)))?;
            if max < std::time::Duration::from_secs(1) {
                return Err(invalid("--token-max-ttl: must be at least 1s"));
            }
            if token_issuer.is_empty() {
                return Err(invalid("--token-issuer: must not be empty"));
            }
            if jwks_http.is_some() && keys.is_none() {
                return Err(invalid(
                    "--jwks-http serves the token keys: give at least one --token-key FILE",
                ));
            }
            let listener = match jwks_http {
                Some(addr) => Some(bind_http("--jwks-http", addr).await?),
                None => None,
            };
            (keys, max, token_issuer.clone(), listener)
        }
        _ => (
            None,
            crate::engine::tokens::DEFAULT_MAX_TTL,
            crate::engine::tokens::DEFAULT_ISSUER.to_string(),
            None,
        ),
    };
    let set_push = match &cli.command {
        Cmd::Serve {
            set_push,
            set_push_max_deliveries,
            ..
        } => set_receivers(set_push, *set_push_max_deliveries, tokens.is_some())?,
        _ => Vec::new(),
    };
    let replicas = match &cli.command {
        Cmd::Serve { replicas, .. } => *replicas,
        _ => EngineConfig::default().replicas,
    };
    if !(1..=crate::log::MAX_REPLICAS).contains(&replicas) {
        return Err(invalid(format!(
            "--replicas: must be 1 to {}, not {replicas}",
            crate::log::MAX_REPLICAS
        )));
    }
    let log_config = crate::log::JetStreamConfig {
        replicas,
        ..Default::default()
    };
    let config = EngineConfig {
        set_push,
        replicas,
        tokens,
        token_max_ttl,
        token_issuer,
        tenants,
        beacon_interval,
        auth: auth
            .map(AuthConfig::load)
            .transpose()
            .map_err(|e| invalid(e.to_string()))?
            .map(std::sync::Arc::new),
        // A private server is one user's, on loopback: its tenants are open
        // (and `serve` says so loudly).
        allow_open_tenants: allow_open_tenants || private.is_some(),
        ..EngineConfig::default()
    };
    let Some(server) = private else {
        let engine = Engine::nats(nc, &cli.data, log_config, config)
            .await
            .map_err(|e| bootstrap::explain_serve_open_error(&cli.data, e))?;
        // Once opened (not before: a directory another process holds, or a
        // refused configuration, is left as it was).
        bootstrap::mark_served(&cli.data, bootstrap::ServedBy::Nats)?;
        let _metrics = metrics.map(|l| HttpEndpoint::metrics(l, engine.clone()));
        let _jwks = jwks_http.map(|l| HttpEndpoint::jwks(l, engine.clone()));
        tracing::info!(data = %cli.data.display(), "engine starting");
        engine.serve(shutdown_signal()).await?;
        return Ok(Exit::Ok);
    };
    let probe = config.tenants.first().cloned().unwrap_or(tenant);
    let dir = bootstrap::engine_dir(&cli.data);
    let engine = Engine::nats(nc.clone(), &dir, log_config, config)
        .await
        .map_err(|e| bootstrap::explain_serve_open_error(&dir, e))?;
    let _metrics = metrics.map(|l| HttpEndpoint::metrics(l, engine.clone()));
    let _jwks = jwks_http.map(|l| HttpEndpoint::jwks(l, engine.clone()));
    tracing::info!(data = %dir.display(), url = %server.url(), "engine starting");
    server.run(&engine, nc, probe).await?;
    Ok(Exit::Ok)
}

/// The receivers of `--set-push`, each attempted up to `max_deliveries`
/// times; refused without a token key (`has_key`), naming the flag.
fn set_receivers(
    urls: &[String],
    max_deliveries: i64,
    has_key: bool,
) -> Result<Vec<SetReceiver>, Failure> {
    if urls.is_empty() {
        return Ok(Vec::new());
    }
    if !has_key {
        return Err(invalid(
            "--set-push sends security events signed with the token key: give at least one --token-key FILE",
        ));
    }
    if max_deliveries < 1 {
        return Err(invalid("--set-push-max-deliveries: must be at least 1"));
    }
    urls.iter()
        .map(|url| {
            let receiver =
                SetReceiver::parse(url).map_err(|e| invalid(format!("--set-push {url}: {e}")))?;
            Ok(SetReceiver {
                max_deliveries,
                ..receiver
            })
        })
        .collect()
}

/// The content type of [`Engine::metrics`]: the OpenMetrics text format
/// (Prometheus negotiates it; its `info` type and `# EOF` need it).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `--metrics ADDR` or `--jwks-http ADDR` (`flag`): an IP address and
/// a port.
async fn bind_http(flag: &str, addr: &str) -> Result<tokio::net::TcpListener, Failure> {
    let parsed: std::net::SocketAddr = addr.parse().map_err(|_| {
        invalid(format!(
            "{flag} {addr:?}: not an address to listen on; give an IP address and a port, e.g. 127.0.0.1:9464"
        ))
    })?;
    tokio::net::TcpListener::bind(parsed).await.map_err(|e| {
        Failure::new(
            Exit::Unavailable,
            format!("{flag} {parsed}: cannot listen there: {e}"),
        )
    })
}

/// Where every JWT library looks for an issuer's keys (RFC 8414 names the
/// directory; the file name is the common convention).
const JWKS_PATH: &str = "/.well-known/jwks.json";

/// One HTTP/1 endpoint of `serve` (`--metrics`, `--jwks-http`), for as long
/// as `serve` runs (the task ends when this is dropped); every path but its
/// own is 404.
struct HttpEndpoint(tokio::task::JoinHandle<()>);

impl HttpEndpoint {
    /// `GET /metrics`: the engine's metrics in the exposition format.
    fn metrics(listener: tokio::net::TcpListener, engine: Engine) -> Self {
        use axum::http::{header, StatusCode};
        use axum::response::IntoResponse;
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(
                    |axum::extract::State(engine): axum::extract::State<Engine>| async move {
                        match engine.metrics().await {
                            Ok(text) => {
                                ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
                            }
                            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
                                .into_response(),
                        }
                    },
                ),
            )
            .with_state(engine);
        Self::spawn(listener, app, "metrics", "/metrics")
    }

    /// `GET /.well-known/jwks.json`: the token verification keys.
    fn jwks(listener: tokio::net::TcpListener, engine: Engine) -> Self {
        use axum::http::{header, StatusCode};
        use axum::response::IntoResponse;
        let app = axum::Router::new()
            .route(
                JWKS_PATH,
                axum::routing::get(
                    |axum::extract::State(engine): axum::extract::State<Engine>| async move {
                        match engine.jwks().and_then(|k| {
                            serde_json::to_string(&k)
                                .map_err(|e| crate::engine::EngineError::invalid(e.to_string()))
                        }) {
                            Ok(body) => (
                                [
                                    (header::CONTENT_TYPE, "application/json"),
                                    (header::CACHE_CONTROL, "max-age=60"),
                                ],
                                body,
                            )
                                .into_response(),
                            Err(e) => {
                                (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
                            }
                        }
                    },
                ),
            )
            .with_state(engine);
        Self::spawn(listener, app, "token keys", JWKS_PATH)
    }

    /// Serves `app` on `listener`, answering 404 (naming `path`) elsewhere.
    fn spawn(
        listener: tokio::net::TcpListener,
        app: axum::Router,
        what: &'static str,
        path: &'static str,
    ) -> Self {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let app = app.fallback(move || async move {
            (
                axum::http::StatusCode::NOT_FOUND,
                format!("not found; the {what} are at {path}\n"),
            )
        });
        tracing::info!("{what} served on http://{addr}{path}");
        HttpEndpoint(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the {what} endpoint stopped");
            }
        }))
    }
}

impl Drop for HttpEndpoint {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Rebuilds the projection from the log and compares it with the live one:
/// internal (6) when they differ.
pub(super) async fn rebuild(
    engine: &Engine,
    accept_log_loss: bool,
    json: bool,
) -> Result<Exit, Failure> {
    let started = std::time::Instant::now();
    if accept_log_loss {
        let (records, held) = engine.accept_log_loss().await?;
        say!("log loss accepted: {held} held trees released; rebuilt {records} log records from the log as it is");
        return Ok(Exit::Ok);
    }
    let report = engine.rebuild_check().await?;
    render::rebuild(&report, started.elapsed().as_secs_f64(), json);
    Ok(if report.equal {
        Exit::Ok
    } else {
        Exit::Internal
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
