//! RFC 8935 push of SETs: each receiver (`mandate serve --set-push URL`)
//! is fed from the SET stream by a durable consumer of its own, named
//! after its URL, audience and tenant, so every instance serving it pulls
//! from the same consumer (one of them delivers each SET), and what was
//! not delivered survives every instance's restart.
//!
//! Each SET is re-signed for the receiver with its audience (`aud`), the
//! same `jti`, and `POST`ed with `Content-Type: application/secevent+jwt`
//! and `Accept: application/json`. Any 2xx acknowledges it. A 400 (the
//! receiver's RFC 8935 error, `{"err": ..., "description": ...}`) is
//! logged and not retried: the same SET would be refused again. Anything
//! else (another status, a timeout, a refused connection) is retried after
//! [`SetReceiver::first_retry`], doubling up to [`SetReceiver::max_retry`],
//! until [`SetReceiver::max_deliveries`] attempts, then given up and logged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, AckKind};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::Uri;

use crate::protocol::set::{SetClaims, SET_CONTENT_TYPE};

use super::super::missions::pull_durable;
use super::super::tokens::TokenKeys;
use super::super::{Engine, EngineError};
use super::{sign_set, SET_STREAM};

/// Attempts at one SET for a receiver unless configured.
pub const DEFAULT_MAX_DELIVERIES: i64 = 10;
/// The pause before a consumer is bound again after a failure.
const REBIND: Duration = Duration::from_secs(1);
/// The most of a receiver's answer that is read.
const MAX_ANSWER: usize = 64 * 1024;

/// One push receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetReceiver {
    /// Where SETs are `POST`ed (`http` or `https`).
    pub url: String,
    /// The `aud` of the SETs it is sent: the receiver's configured audience,
    /// or its URL.
    pub audience: String,
    /// Only this tenant's SETs, or every tenant's.
    pub tenant: Option<crate::domain::TenantId>,
    /// Attempts at one SET before it is given up on (at least 1).
    pub max_deliveries: i64,
    /// The pause after the first failed attempt; it doubles each time.
    pub first_retry: Duration,
    /// The longest pause between attempts.
    pub max_retry: Duration,
    /// How long one attempt may take, connecting included.
    pub timeout: Duration,
}

impl SetReceiver {
    /// A receiver from `URL`, `URL#aud=AUDIENCE`, `URL#tenant=TENANT` or
    /// both (`#aud=...&tenant=...`; the fragment is never sent). Refuses
    /// anything but an `http` or `https` URL with a host, and any other
    /// fragment, naming what is wrong.
    pub fn parse(spec: &str) -> Result<Self, EngineError> {
        let (url, fragment) = match spec.split_once('#') {
            Some((url, fragment)) => (url, Some(fragment)),
            None => (spec, None),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| EngineError::invalid(format!("{url:?} is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            other => {
                return Err(EngineError::invalid(format!(
                    "{url:?}: SETs are pushed over http or https only, not {}",
                    other.map_or("a URL without a scheme".to_string(), |s| format!("{s:?}"))
                )))
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(EngineError::invalid(format!("{url:?}: no host")));
        }
        let mut receiver = Self {
            url: url.to_string(),
            audience: url.to_string(),
            tenant: None,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        };
        for part in fragment.into_iter().flat_map(|f| f.split('&')) {
            match part.split_once('=') {
                Some(("aud", aud)) if !aud.is_empty() => receiver.audience = aud.to_string(),
                Some(("tenant", t)) => {
                    receiver.tenant = Some(crate::domain::TenantId::new(t).map_err(|e| {
                        EngineError::invalid(format!("{spec:?}: tenant {t:?}: {e}"))
                    })?)
                }
                _ => {
                    return Err(EngineError::invalid(format!(
                        "{spec:?}: after '#' only aud=AUDIENCE and tenant=TENANT, joined by '&', not {part:?}"
                    )))
                }
            }
        }
        Ok(receiver)
    }

    /// The durable consumer's name: the same for every instance, distinct
    /// for each URL, audience and tenant.
    pub fn consumer_name(&self) -> String {
        let key = format!(
            "{}\n{}\n{}",
            self.url,
            self.audience,
            self.tenant.as_ref().map_or("", |t| t.as_str())
        );
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, key.as_bytes());
        format!("mandate-set-push-{}", id.simple())
    }

    /// The pause after failed attempt number `attempt` (from 1).
    pub fn retry_after(&self, attempt: i64) -> Duration {
        let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.first_retry
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.max_retry)
    }
}

/// The answer of one attempt.
enum Answer {
    /// A 2xx.
    Accepted,
    /// A 400: the receiver's error code and description.
    Refused(String),
    /// Anything else: worth another try.
    Failed(String),
}

/// Feeds one receiver until the engine stops.
pub(super) async fn pusher(
    engine: Engine,
    js: jetstream::Context,
    keys: Arc<TokenKeys>,
    receiver: SetReceiver,
) -> Result<(), EngineError> {
    let client = Http::new(&receiver)?;
    let filter = match &receiver.tenant {
        Some(t) => crate::protocol::set::set_subject(t),
        None => "mandate.set.>".to_string(),
    };
    let name = receiver.consumer_name();
    tracing::info!(url = %receiver.url, audience = %receiver.audience, consumer = %name, "pushing security events");
    loop {
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("SET push to {}", receiver.url)),
            filter_subject: filter.clone(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: receiver.timeout + Duration::from_secs(20),
            max_deliver: receiver.max_deliveries,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        };
        let what = "SET push: the receiver's consumer";
        let Some(mut messages) = pull_durable(&js, SET_STREAM, config, what, REBIND).await else {
            continue;
        };
        while let Some(msg) = messages.next().await {
            let attempt = msg.info().map_or(1, |i| i.delivered);
            let counters = &engine.inner.sets;
            let body = match for_receiver(&keys, &msg.payload, &receiver.audience) {
                Ok(body) => body,
                Err(e) => {
                    tracing::error!(url = %receiver.url, error = %e, "SET push: not a SET in the SET stream; passed over");
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            match client.post(&receiver, body).await {
                Answer::Accepted => {
                    counters.pushed.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = msg.ack().await {
                        tracing::warn!(url = %receiver.url, error = %e, "SET push: ack failed; it may be pushed again");
                    }
                }
                Answer::Refused(error) => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(url = %receiver.url, subject = %msg.subject, %error, "SET refused by its receiver (400); not retried");
                    let _ = msg.ack_with(AckKind::Term).await;
                }
                Answer::Failed(error) if attempt >= receiver.max_deliveries => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(url = %receiver.url, subject = %msg.subject, attempt, %error, "SET push given up after its last attempt");
                    let _ = msg.ack_with(AckKind::Term).await;
                }
                Answer::Failed(error) => {
                    counters.retried.fetch_add(1, Ordering::Relaxed);
                    let delay = receiver.retry_after(attempt);
                    tracing::warn!(url = %receiver.url, attempt, ?delay, %error, "SET push failed; will retry");
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
        }
        tokio::time::sleep(REBIND).await;
    }
}

/// The stored SET re-signed for a receiver: the same claims, `aud` its
/// audience.
fn for_receiver(keys: &TokenKeys, stored: &[u8], audience: &str) -> Result<String, EngineError> {
    let text = std::str::from_utf8(stored).map_err(|e| EngineError::invalid(e.to_string()))?;
    let payload = text
        .split('.')
        .nth(1)
        .ok_or_else(|| EngineError::invalid("not a compact JWS"))?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| EngineError::invalid(format!("payload not base64url: {e}")))?;
    let mut claims: SetClaims = serde_json::from_slice(&json)
        .map_err(|e| EngineError::invalid(format!("not SET claims: {e}")))?;
    claims.aud = Some(audience.to_string());
    sign_set(keys, &claims)
}

/// An HTTP/1 client for one receiver: a connection per attempt (a push
/// receiver hears rarely), over TLS for `https`.
struct Http {
    uri: Uri,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Http {
    fn new(receiver: &SetReceiver) -> Result<Self, EngineError> {
        let uri: Uri = receiver
            .url
            .parse()
            .map_err(|e| EngineError::invalid(format!("{}: {e}", receiver.url)))?;
        let tls = match uri.scheme_str() {
            Some("https") => {
                let mut roots = tokio_rustls::rustls::RootCertStore::empty();
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                let config = tokio_rustls::rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
            }
            _ => None,
        };
        Ok(Self { uri, tls })
    }

    /// One `POST` of `body`, within the receiver's timeout.
    async fn post(&self, receiver: &SetReceiver, body: String) -> Answer {
        match tokio::time::timeout(receiver.timeout, self.exchange(body)).await {
            Err(_) => Answer::Failed(format!("no answer within {:?}", receiver.timeout)),
            Ok(Err(e)) => Answer::Failed(e),
            Ok(Ok((status, _))) if status.is_success() => Answer::Accepted,
            Ok(Ok((status, answer))) if status == hyper::StatusCode::BAD_REQUEST => {
                Answer::Refused(rfc8935_error(&answer))
            }
            Ok(Ok((status, answer))) => Answer::Failed(format!(
                "{status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            )),
        }
    }

    async fn exchange(&self, body: String) -> Result<(hyper::StatusCode, Bytes), String> {
        let host = self.uri.host().unwrap_or_default();
        let port = self
            .uri
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        // Origin form (`/path?query`), as a client speaking to the origin
        // sends it; the authority goes in `Host`.
        let target = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let request = hyper::Request::post(target)
            .header(hyper::header::HOST, self.authority())
            .header(hyper::header::CONTENT_TYPE, SET_CONTENT_TYPE)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        match &self.tls {
            Some(tls) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(
                    host.trim_matches(['[', ']']).to_string(),
                )
                .map_err(|e| format!("{host}: {e}"))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {host}: {e}"))?;
                send(hyper_util::rt::TokioIo::new(stream), request).await
            }
            None => send(hyper_util::rt::TokioIo::new(tcp), request).await,
        }
    }

    fn authority(&self) -> String {
        self.uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }
}

/// Sends `request` over a fresh HTTP/1 connection and reads the answer.
async fn send<IO>(
    io: IO,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, Bytes), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP request: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

/// The `err` and `description` of an RFC 8935 error body, or the body as
/// it is.
fn rfc8935_error(answer: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        err: String,
        #[serde(default)]
        description: Option<String>,
    }
    match serde_json::from_slice::<ErrorBody>(answer) {
        Ok(e) => match e.description {
            Some(d) => format!("{}: {d}", e.err),
            None => e.err,
        },
        Err(_) => format!(
            "no RFC 8935 error body: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_parse_and_refuse() {
        let r = SetReceiver::parse("https://rx.example/events#aud=urn:rx&tenant=acme").unwrap();
        assert_eq!(r.url, "https://rx.example/events");
        assert_eq!(r.audience, "urn:rx");
        assert_eq!(r.tenant.as_ref().map(|t| t.as_str()), Some("acme"));
        let plain = SetReceiver::parse("http://127.0.0.1:8080/set").unwrap();
        assert_eq!(plain.audience, "http://127.0.0.1:8080/set");
        assert_ne!(r.consumer_name(), plain.consumer_name());
        for bad in [
            "ftp://rx.example/x",
            "rx.example/x",
            "/events",
            "https://rx.example/x#audience=y",
        ] {
            let e = SetReceiver::parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::engine::EngineErrorKind::Invalid, "{bad}");
        }
    }

    #[test]
    fn retries_double_up_to_the_cap() {
        let r = SetReceiver::parse("http://h/x").unwrap();
        let waits: Vec<u64> = (1..=9).map(|a| r.retry_after(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn an_rfc8935_error_is_read() {
        assert_eq!(
            rfc8935_error(br#"{"err":"invalid_request","description":"bad"}"#),
            "invalid_request: bad"
        );
        assert!(rfc8935_error(b"nope").contains("nope"));
    }
}
