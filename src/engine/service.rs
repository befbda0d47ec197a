//! The engine on NATS request-reply: `mandate.cmd.<tenant>.<verb>` and
//! `mandate.q.<tenant>.<verb>` in one queue group, so any number of
//! instances share the load. Requests are decoded with the wire types of
//! [`crate::protocol`]; every failure becomes a typed error reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::domain::command::{refuse_reserved_actor, refuse_reserved_command_id};
use crate::domain::model::check_time;
use crate::domain::{Actor, CommandSignature, DomainError, ExternalCommand, TenantId};
use crate::protocol::signature::SIGNATURE_HEADER;
use crate::protocol::{
    AuditQuery, BulkEnvelope, CheckQuery, CommandResult, HealthQuery, ListQuery, MandateQuery,
    Reply, TreeQuery, BULK_VERBS, MAX_REQUEST_BYTES, QUERY_VERBS,
};

use super::metrics::{command_type, query_kind};
use super::{same_tenant, Engine, EngineError};

/// The queue group every engine instance joins.
pub const QUEUE_GROUP: &str = "mandate-engine";

/// Waits for a real round trip through the server on `client`'s connection.
/// `Client::flush` only writes out the buffer; a message to ourselves that
/// comes back proves the server has processed everything sent before it,
/// subscriptions included.
pub async fn round_trip(client: &async_nats::Client, timeout: Duration) -> Result<(), EngineError> {
    let subject = client.new_inbox();
    let mut sub = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| EngineError::unavailable(format!("cannot subscribe: {e}")))?;
    client
        .publish(subject, bytes::Bytes::new())
        .await
        .map_err(|e| EngineError::unavailable(format!("cannot publish: {e}")))?;
    let back = tokio::time::timeout(timeout, sub.next()).await;
    let _ = sub.unsubscribe().await;
    match back {
        Ok(Some(_)) => Ok(()),
        _ => Err(EngineError::unavailable(
            "no round trip through NATS in time",
        )),
    }
}

/// Where a request came from.
#[derive(Clone, Copy)]
enum Origin<'a> {
    /// This process (the in-process client): trusted.
    InProcess,
    /// Over NATS, with the `Mandate-Auth` and `Mandate-Signature` headers
    /// if they were sent.
    Remote {
        auth: Option<&'a str>,
        signature: Option<&'a str>,
    },
}

/// One request, its subject taken apart: `mandate.<cmd|q>.<tenant>.<verb>`.
#[derive(Clone, Copy)]
struct Request<'a> {
    tenant: &'a TenantId,
    verb: &'a str,
    subject: &'a str,
    body: &'a [u8],
    origin: Origin<'a>,
    /// When the request came in: its latency is measured from here.
    started: Instant,
}

/// Refuses a command whose subject names another verb than its body.
fn same_verb(subject_verb: &str, body_verb: &str) -> Result<(), EngineError> {
    if subject_verb != body_verb {
        return Err(EngineError::invalid(format!(
            "subject verb {subject_verb:?} does not match the body's type {body_verb:?}"
        )));
    }
    Ok(())
}

/// Requests handled at once by one instance.
const MAX_IN_FLIGHT: usize = 256;

fn encode<T: Serialize>(r: Result<T, EngineError>) -> Vec<u8> {
    let reply = match r {
        Ok(v) => Reply::ok(v),
        Err(e) => Reply::err(e.to_body()),
    };
    serde_json::to_vec(&reply).expect("replies serialize")
}

/// `body`, if the server lets it through (its `max_payload`, `max`);
/// otherwise an `invalid_input` error naming both sizes and how to ask for
/// less, so the caller gets an answer instead of waiting for its timeout.
fn fitting(body: Vec<u8>, subject: &str, max: usize) -> Vec<u8> {
    if body.len() <= max {
        return body;
    }
    let subject = crate::domain::ids::truncate_for_error(subject);
    tracing::warn!(
        subject = %subject,
        bytes = body.len(),
        max_payload = max,
        "reply too large for the server; an error is sent instead"
    );
    encode::<()>(Err(EngineError::invalid(format!(
        "the reply to {subject} is {} bytes, over the NATS server's max_payload of {max} bytes, \
         so it cannot be sent: ask for less (a smaller `limit`, where the query \
         takes one, as audit does)",
        body.len()
    ))))
}

fn parse<T: for<'de> serde::Deserialize<'de>>(
    what: &'static str,
    body: &[u8],
) -> Result<T, EngineError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        EngineError::from(DomainError::Malformed {
            what,
            reason: e.to_string(),
        })
    })
}

/// A query's `at` must be a time RFC 3339 can write: the reply repeats it.
fn at_in_range(at: Option<chrono::DateTime<chrono::Utc>>) -> Result<(), EngineError> {
    at.map_or(Ok(()), |t| check_time("at", t))
        .map_err(EngineError::from)
}

impl Engine {
    /// Handles one request from this process (trusted: no authentication);
    /// returns the reply body. Never panics on any input.
    pub async fn handle(&self, subject: &str, body: &[u8]) -> Vec<u8> {
        self.handle_request(subject, body, Origin::InProcess).await
    }

    /// Handles one request that came over NATS, with its `Mandate-Auth`
    /// header if any: commands of tenants that require it are authenticated.
    pub async fn handle_remote(&self, subject: &str, auth: Option<&str>, body: &[u8]) -> Vec<u8> {
        self.handle_remote_signed(subject, auth, None, body).await
    }

    /// [`Engine::handle_remote`] with the `Mandate-Signature` header too,
    /// if any: a command that carries one must verify.
    pub async fn handle_remote_signed(
        &self,
        subject: &str,
        auth: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Vec<u8> {
        self.handle_request(subject, body, Origin::Remote { auth, signature })
            .await
    }

    /// Refuses a remote command whose actor is not proven, and returns its
    /// verified signature, if it carries one. A signature, when present,
    /// must verify (never falling back to the HMAC); a `Mandate-Auth`
    /// header, when present, must be well formed, on an open tenant too
    /// (where a well-formed one is not checked against any key); a tenant
    /// that requires signatures refuses a command without one; otherwise
    /// the HMAC proves the actor as before ([`Engine::authenticate`]).
    async fn authenticate_command(
        &self,
        req: &Request<'_>,
        actor: &Actor,
    ) -> Result<Option<CommandSignature>, EngineError> {
        let Origin::Remote {
            auth: auth_header,
            signature,
        } = req.origin
        else {
            return Ok(None);
        };
        let auth = self.inner.config.auth.as_ref();
        if !auth.is_some_and(|a| a.requires(req.tenant)) && !self.inner.config.allow_open_tenants {
            return Err(super::auth::refuse_closed_tenant(req.tenant));
        }
        if let Some(header) = auth_header {
            super::auth::parse_header(header)?;
        }
        if let Some(header) = signature {
            return self
                .verify_signature(req.tenant, actor, req.subject, req.body, header)
                .await
                .map(Some);
        }
        if auth.is_some_and(|a| a.requires_signatures(req.tenant)) {
            return Err(DomainError::NotAuthenticated {
                reason: format!(
                    "tenant {} requires a {SIGNATURE_HEADER} header on every command and token query: the {} header alone no longer suffices",
                    req.tenant,
                    super::auth::AUTH_HEADER
                ),
            }
            .into());
        }
        self.authenticate(req.origin, req.tenant, actor, req.subject, req.body)?;
        Ok(None)
    }

    /// Refuses a remote command whose actor is not proven: a listed tenant
    /// needs its proof, and any other tenant is served only when open tenants
    /// are allowed.
    fn authenticate(
        &self,
        origin: Origin<'_>,
        tenant: &TenantId,
        actor: &Actor,
        subject: &str,
        body: &[u8],
    ) -> Result<(), EngineError> {
        let Origin::Remote { auth, .. } = origin else {
            return Ok(());
        };
        match &self.inner.config.auth {
            Some(config) if config.requires(tenant) => {
                config.verify(tenant, actor, subject, body, auth)
            }
            _ if self.inner.config.allow_open_tenants => Ok(()),
            _ => Err(super::auth::refuse_closed_tenant(tenant)),
        }
    }

    async fn handle_request(&self, subject: &str, body: &[u8], origin: Origin<'_>) -> Vec<u8> {
        let started = Instant::now();
        let parts: Vec<&str> = subject.split('.').collect();
        let (kind, tenant, verb) = match parts.as_slice() {
            ["mandate", kind @ ("cmd" | "q"), tenant, verb] => (*kind, *tenant, *verb),
            _ => {
                let shape = match parts.get(1) {
                    Some(&"cmd") => "mandate.cmd.<tenant>.<command>",
                    Some(&"q") => "mandate.q.<tenant>.<query>",
                    _ => "mandate.cmd.<tenant>.<command> nor mandate.q.<tenant>.<query>",
                };
                return encode::<()>(Err(EngineError::invalid(format!(
                    "subject {:?} is not {shape}",
                    crate::domain::ids::truncate_for_error(subject)
                ))));
            }
        };
        let tenant = TenantId::new(tenant)
            .map_err(EngineError::from)
            .and_then(|t| {
                if body.len() > MAX_REQUEST_BYTES {
                    return Err(EngineError::invalid(format!(
                        "request body of {} bytes exceeds the limit of {MAX_REQUEST_BYTES} bytes",
                        body.len()
                    )));
                }
                Ok(t)
            });
        let tenant = match tenant {
            Ok(t) => t,
            // Refused before it is read: counted all the same.
            Err(e) => {
                let (metrics, took) = (&self.inner.metrics, started.elapsed());
                match (kind, verb) {
                    ("cmd", _) => metrics.command(command_type(verb), Err(&e), took),
                    (_, "check") => metrics.check(None, Err(&e), took),
                    _ => metrics.query(query_kind(verb), Some(&e), took),
                }
                return encode::<()>(Err(e));
            }
        };
        let request = Request {
            tenant: &tenant,
            verb,
            subject,
            body,
            origin,
            started,
        };
        if kind == "cmd" {
            self.handle_command(request).await
        } else {
            self.handle_query(request).await
        }
    }

    async fn handle_command(&self, req: Request<'_>) -> Vec<u8> {
        let r = self.command_of(req).await;
        self.inner.metrics.command(
            command_type(req.verb),
            r.as_ref().map(|c| c.duplicate),
            req.started.elapsed(),
        );
        encode(r)
    }

    async fn command_of(&self, req: Request<'_>) -> Result<CommandResult, EngineError> {
        if BULK_VERBS.contains(&req.verb) {
            return async {
                let bulk = BulkEnvelope::from_json(req.body)?;
                same_tenant(req.tenant, &bulk.tenant)?;
                refuse_reserved_actor(&bulk.actor)?;
                refuse_reserved_command_id(bulk.command_id)?;
                let signature = self.authenticate_command(&req, &bulk.actor).await?;
                let body_verb = match bulk.bulk {
                    crate::protocol::Bulk::RevokeAgent { .. } => "revoke_agent",
                    crate::protocol::Bulk::RevokePrincipal { .. } => "revoke_principal",
                };
                same_verb(req.verb, body_verb)?;
                self.execute_bulk_signed(bulk, signature).await
            }
            .await;
        }
        // A command from outside never carries the engine's own actor.
        let external = ExternalCommand::from_json(req.body)?;
        let cmd = external.envelope();
        same_tenant(req.tenant, &cmd.tenant)?;
        let signature = self.authenticate_command(&req, &cmd.actor).await?;
        same_verb(req.verb, cmd.command.verb())?;
        self.execute_signed(external, signature).await
    }

    async fn handle_query(&self, req: Request<'_>) -> Vec<u8> {
        if req.verb == "check" {
            return self.handle_check(req).await;
        }
        let kind = query_kind(req.verb);
        // Each answer is counted as it is encoded.
        let at = req.started;
        // Each read brings its tree up to the log first, as far as its
        // consistency level asks (`Engine::freshen`).
        match req.verb {
            "status" => self.answered(
                kind,
                at,
                match parse::<MandateQuery>("status query", req.body)
                    .and_then(|q| at_in_range(q.at).map(|()| q))
                {
                    Ok(q) => self.status_of(req.tenant, &q).await,
                    Err(e) => Err(e),
                },
            ),
            "chain" => self.answered(
                kind,
                at,
                match parse::<MandateQuery>("chain query", req.body)
                    .and_then(|q| at_in_range(q.at).map(|()| q))
                {
                    Ok(q) => self.chain_of(req.tenant, &q).await,
                    Err(e) => Err(e),
                },
            ),
            "tree" => self.answered(
                kind,
                at,
                match parse::<TreeQuery>("tree query", req.body)
                    .and_then(|q| at_in_range(q.at).map(|()| q))
                {
                    Ok(q) => self.tree(req.tenant, &q).await,
                    Err(e) => Err(e),
                },
            ),
            "history" => self.answered(
                kind,
                at,
                match parse::<TreeQuery>("history query", req.body)
                    .and_then(|q| at_in_range(q.at).map(|()| q))
                {
                    Ok(q) => self.history(req.tenant, &q).await,
                    Err(e) => Err(e),
                },
            ),
            "verify" => self.answered(
                kind,
                at,
                match parse::<TreeQuery>("verify query", req.body)
                    .and_then(|q| at_in_range(q.at).map(|()| q))
                {
                    Ok(q) => self.verify(req.tenant, &q).await,
                    Err(e) => Err(e),
                },
            ),
            "list" => self.answered(
                kind,
                at,
                match parse::<ListQuery>("list query", req.body) {
                    Ok(q) => self.list(req.tenant, &q).await,
                    Err(e) => Err(e),
                },
            ),
            "audit" => {
                let r = match parse::<AuditQuery>("audit query", req.body) {
                    Ok(q) => self.audit(req.tenant, q.mandate, q.limit).await,
                    Err(e) => Err(e),
                };
                self.answered(kind, at, r)
            }
            "token" => {
                let r = match parse::<crate::protocol::token::TokenQuery>("token query", req.body) {
                    // A token is a credential: its asker is proven as for a
                    // command, never taken on the body's word.
                    // A signed token query is verified as a signed
                    // command is, and a tenant that requires signatures
                    // requires one here too.
                    Ok(q) => match self.authenticate_command(&req, &q.actor).await {
                        Ok(_) => self.token(req.tenant, &q).await,
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                self.answered(kind, at, r)
            }
            "jwks" => self.answered(
                kind,
                at,
                match parse::<crate::protocol::token::JwksQuery>("jwks query", req.body) {
                    Ok(crate::protocol::token::JwksQuery {}) => self.jwks(),
                    Err(e) => Err(e),
                },
            ),
            "keys" => self.answered(
                kind,
                at,
                match parse::<crate::protocol::KeysQuery>("keys query", req.body) {
                    Ok(crate::protocol::KeysQuery {}) => self.keys(req.tenant).await,
                    Err(e) => Err(e),
                },
            ),
            "health" => self.answered(
                kind,
                at,
                match parse::<HealthQuery>("health query", req.body) {
                    Ok(HealthQuery {}) => self.health_of(req.tenant).await,
                    Err(e) => Err(e),
                },
            ),
            other => self.answered(
                kind,
                at,
                Err::<(), _>(EngineError::invalid(format!(
                    "unknown query verb {:?}; known: {}",
                    crate::domain::ids::truncate_for_error(other),
                    QUERY_VERBS.join(", ")
                ))),
            ),
        }
    }

    /// Counts a query's answer, then encodes it.
    fn answered<T: Serialize>(
        &self,
        kind: &'static str,
        started: Instant,
        r: Result<T, EngineError>,
    ) -> Vec<u8> {
        self.inner
            .metrics
            .query(kind, r.as_ref().err(), started.elapsed());
        encode(r)
    }

    async fn handle_check(&self, req: Request<'_>) -> Vec<u8> {
        let mut consistency = None;
        let r = match parse::<CheckQuery>("check query", req.body)
            .and_then(|q| at_in_range(q.at).map(|()| q))
        {
            Ok(mut q) => {
                consistency = Some(q.consistency);
                // The audit names who asked only if that is proven
                // (where the req.tenant requires proof).
                let proven = q.actor.as_ref().is_some_and(|a| {
                    self.authenticate(req.origin, req.tenant, a, req.subject, req.body)
                        .is_ok()
                });
                if !proven {
                    q.actor = None;
                }
                self.check_for_reply(req.tenant, &q).await
            }
            Err(e) => Err(e),
        };
        self.inner.metrics.check(
            consistency,
            r.as_ref().map(|(d, _)| d.outcome),
            req.started.elapsed(),
        );
        // The decision's JSON as written for its audit record.
        encode(r.map(|(_, json)| json))
    }

    /// Says at start, loudly, whether tenants without authentication are
    /// served: with them open, anyone who can publish on their command
    /// subjects acts as anyone.
    fn announce_policy(&self, served: &[String]) {
        let listed: Vec<&str> = self
            .inner
            .config
            .auth
            .as_ref()
            .map(|a| a.tenants.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if self.inner.config.allow_open_tenants {
            tracing::warn!(
                served = ?served,
                authenticated = ?listed,
                "OPEN TENANTS ALLOWED: commands of every served tenant not listed in the auth \
                 configuration are accepted without any proof of their actor; anyone who can \
                 publish on mandate.cmd.<tenant>.* may act as any principal, agent or \
                 administrator there. Restrict those subjects with NATS permissions, or list \
                 the tenants in --auth"
            );
        } else {
            tracing::info!(
                served = ?served,
                authenticated = ?listed,
                "open tenants not allowed: commands of tenants not listed in the auth \
                 configuration are refused (serve with --allow-open-tenants to accept them)"
            );
        }
    }

    /// Serves requests over NATS until `shutdown` resolves, then stops taking
    /// new ones and waits for those in flight. Runs the background tasks too.
    pub async fn serve(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), EngineError> {
        let client = self.inner.nats.clone().ok_or_else(|| {
            EngineError::invalid(
                "serve needs a NATS connection; the embedded engine is used in-process",
            )
        })?;
        let mut background = self.start();
        // One subscription per served tenant (or one for all), per kind;
        // beside each, the subjects of that kind with a token too few or too
        // many (`mandate.cmd.<t>`, `mandate.cmd.<t>.<verb>.…`), so such a
        // request is answered with an error naming the shape, not met with
        // no responders. The three patterns never match the same subject, so
        // no request is taken twice. Where NATS permissions still allow only
        // `mandate.<kind>.*.*`, the server refuses the other two
        // (asynchronously: a permissions violation, logged as a server
        // error) and the engine serves all the same.
        let tenants: Vec<String> = match self.inner.config.tenants.as_slice() {
            [] => vec!["*".into()],
            some => some.iter().map(|t| t.to_string()).collect(),
        };
        let mut commands = Vec::new();
        let mut queries = Vec::new();
        for t in &tenants {
            for (kind, into) in [("cmd", &mut commands), ("q", &mut queries)] {
                for subject in [
                    format!("mandate.{kind}.{t}.*"),
                    format!("mandate.{kind}.{t}"),
                    format!("mandate.{kind}.{t}.*.>"),
                ] {
                    into.push(
                        client
                            .queue_subscribe(subject, QUEUE_GROUP.into())
                            .await
                            .map_err(|e| {
                                EngineError::unavailable(format!("cannot subscribe: {e}"))
                            })?,
                    );
                }
            }
        }
        let mut commands = futures::stream::select_all(commands);
        let mut queries = futures::stream::select_all(queries);
        // A round trip, so the subscriptions are registered before we say so.
        round_trip(&client, Duration::from_secs(10)).await?;
        self.announce_policy(&tenants);
        tracing::info!(instance = %self.instance(), "serving");
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        tokio::pin!(shutdown);
        loop {
            let msg = tokio::select! {
                m = commands.next() => m,
                m = queries.next() => m,
                _ = &mut shutdown => break,
                // Fail-stop: an instance whose projection no longer follows
                // the log (nor applies expiries and mission completions)
                // must not go on answering as if it did.
                r = background.ended() => {
                    let e = match r {
                        Err(e) => e,
                        Ok(()) => EngineError::unavailable("background tasks ended"),
                    };
                    tracing::error!(error = %e, "background tasks failed; no longer serving");
                    for sub in commands.iter_mut().chain(queries.iter_mut()) {
                        let _ = sub.unsubscribe().await;
                    }
                    return Err(e);
                }
            };
            let Some(msg) = msg else { break };
            let Some(reply_to) = msg.reply.clone() else {
                tracing::debug!(subject = %msg.subject, "request without reply subject ignored");
                continue;
            };
            let check = msg.subject.starts_with("mandate.q.") && msg.subject.ends_with(".check");
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| EngineError::unavailable("request slots closed"))?;
            let me = self.clone();
            let client = client.clone();
            let mut work = Box::pin(async move {
                let auth = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(super::auth::AUTH_HEADER))
                    .map(|v| v.as_str().to_string());
                let signature = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(SIGNATURE_HEADER))
                    .map(|v| v.as_str().to_string());
                let body = me
                    .handle_remote_signed(
                        msg.subject.as_str(),
                        auth.as_deref(),
                        signature.as_deref(),
                        &msg.payload,
                    )
                    .await;
                let body = fitting(body, msg.subject.as_str(), client.max_payload());
                if let Err(e) = client.publish(reply_to, body.into()).await {
                    tracing::warn!(error = %e, "reply not sent");
                }
                drop(permit);
            });
            // A check is small (its chain): one that never waits (`local`,
            // an `at_least` already applied, a refusal) is answered here, in
            // one poll, without a task of its own; one that waits (a log
            // read) goes on in its own task. Every other request has its
            // own task from the start, so a long read (a `list`, a `verify`)
            // never holds up the intake.
            if !check || futures::poll!(&mut work).is_pending() {
                tokio::spawn(work);
            }
        }
        tracing::info!("draining in-flight requests");
        for sub in commands.iter_mut().chain(queries.iter_mut()) {
            let _ = sub.unsubscribe().await;
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            slots.acquire_many(MAX_IN_FLIGHT as u32),
        )
        .await;
        let _ = client.flush().await;
        background.stop().await
    }
}
