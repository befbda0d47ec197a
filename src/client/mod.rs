//! The SDK: an orchestrator [`Client`] with a typed method for every command
//! and query, a [`MissionPublisher`] for ticketing systems, and the agent
//! [`Guard`].
//!
//! The client speaks the wire contract of [`crate::protocol`] either over NATS
//! request-reply or, for single-process use (with the `engine` feature),
//! straight to an in-process engine through the very same encoding.
//!
//! It depends only on [`crate::domain`] and [`crate::protocol`] (and on the
//! engine only for that in-process transport), so an agent built with
//! `default-features = false, features = ["client"]` gets the guard without
//! the engine, sled or clap.

pub mod connect;
pub mod guard;
mod hub;
pub mod token;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};

use crate::domain::keys::{KeyId, KeyOwner, RegisterKey, RevokeKey, RotateKey};
use crate::domain::{
    command::{
        AgentBlock, Change, CompleteMission, Delegate, Issue, Narrow, PrincipalBlock, Renew,
    },
    Actor, AgentId, Command, CommandEnvelope, CommandId, Decision, ErrorCode, MandateId,
    MissionRef, PrincipalId, TenantId, SCHEMA_VERSION,
};
#[cfg(feature = "engine")]
use crate::engine::Engine;
use crate::protocol::auth::{sign, sign_as, AUTH_HEADER};
use crate::protocol::signature::SIGNATURE_HEADER;
use crate::protocol::{
    command_subject, mission_subject, query_subject, AuditQuery, AuditReply, Bulk, BulkEnvelope,
    ChainReply, CheckQuery, CommandResult, ErrorBody, Health, HistoryReply, ListQuery, ListReply,
    MandateQuery, MissionCompletedNotice, Reply, StatusReply, TreeQuery, TreeReply,
};

pub use crate::protocol::Consistency;
pub use connect::{ConnectError, NatsAuth, NatsConnect, TlsSettings};
pub use guard::{Guard, GuardConfig, GuardState};
pub use token::{TokenError, TokenVerifier};

/// Client failures. "Engine down" and "engine slow" are told apart.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The engine answered with an error (code and message from the wire).
    #[error("{}", .0.message)]
    Engine(ErrorBody),
    /// No engine is listening (no responders).
    #[error("no engine is serving {0}: is `mandate serve` running?")]
    NoEngine(String),
    /// The engine did not answer in time; the command may have been applied —
    /// retry with the same command id.
    #[error("the engine did not answer {0} in time; retry with the same command id")]
    TimedOut(String),
    /// NATS itself failed.
    #[error("nats: {0}")]
    Nats(String),
    /// The reply did not decode.
    #[error("undecodable reply: {0}")]
    Decode(String),
    /// A setting of the caller's is not usable.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl ClientError {
    /// The engine's error code, when the engine answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Engine(b) => Some(b.code),
            _ => None,
        }
    }

    /// The engine's reason for a refusal (e.g. `not_grantee`), when it gave
    /// one: tells refusals that share a code apart without reading messages.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ClientError::Engine(b) => b.reason.as_deref(),
            _ => None,
        }
    }
}

/// How the client reaches the engine.
#[derive(Clone)]
enum Transport {
    Nats(async_nats::Client),
    #[cfg(feature = "engine")]
    Local(Engine),
}

/// The orchestrator client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
    tenant: TenantId,
    actor: Actor,
    timeout: Duration,
    retries: u32,
    /// The actor's secret, for tenants that require authenticated actors.
    secret: Option<std::sync::Arc<Vec<u8>>>,
    /// The actor's signing key and its id, to sign every command.
    signing: Option<std::sync::Arc<(KeyId, ed25519_dalek::SigningKey)>>,
}

impl Client {
    /// A client over NATS, acting as `actor` in `tenant`.
    pub fn nats(client: async_nats::Client, tenant: TenantId, actor: Actor) -> Self {
        Self {
            transport: Transport::Nats(client),
            tenant,
            actor,
            timeout: Duration::from_secs(5),
            retries: 2,
            secret: None,
            signing: None,
        }
    }

    /// A client of an in-process engine.
    #[cfg(feature = "engine")]
    pub fn local(engine: Engine, tenant: TenantId, actor: Actor) -> Self {
        Self {
            transport: Transport::Local(engine),
            tenant,
            actor,
            timeout: Duration::from_secs(5),
            retries: 0,
            secret: None,
            signing: None,
        }
    }

    /// The same client acting as someone else (without the previous
    /// actor's secret or signing key).
    pub fn as_actor(&self, actor: Actor) -> Self {
        Self {
            actor,
            secret: None,
            signing: None,
            ..self.clone()
        }
    }

    /// Signs every command with the actor's Ed25519 key, registered in the
    /// tenant (or configured by the operator) as `key_id`: the
    /// `Mandate-Signature` header ([`crate::protocol::signature`]). The
    /// engine records the signature in the command's events. Queries are
    /// not signed. In-process clients are trusted and send no header.
    pub fn with_signing_key(mut self, key_id: KeyId, key: ed25519_dalek::SigningKey) -> Self {
        self.signing = Some(std::sync::Arc::new((key_id, key)));
        self
    }

    /// Signs every request with the actor's secret (`Mandate-Auth` header),
    /// for tenants that require authenticated actors. In-process clients are
    /// trusted and need none.
    pub fn with_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = Some(std::sync::Arc::new(secret.into()));
        self
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The tenant this client acts in.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The actor this client acts as.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The underlying NATS connection, if any.
    pub fn nats_client(&self) -> Option<&async_nats::Client> {
        match &self.transport {
            Transport::Nats(c) => Some(c),
            #[cfg(feature = "engine")]
            Transport::Local(_) => None,
        }
    }

    /// The in-process engine, if any.
    #[cfg(feature = "engine")]
    pub fn engine(&self) -> Option<&Engine> {
        match &self.transport {
            Transport::Local(e) => Some(e),
            Transport::Nats(_) => None,
        }
    }

    /// The signals of `tenant` straight from the in-process engine's bus,
    /// when this client is in-process; `None` over NATS. All an in-process
    /// guard knows of the engine's signals comes through here.
    fn in_process_signals(
        &self,
        tenant: &TenantId,
    ) -> Option<futures::stream::BoxStream<'static, guard::Heard>> {
        match &self.transport {
            #[cfg(feature = "engine")]
            Transport::Local(engine) => engine.bus().guard_signals(tenant),
            Transport::Nats(_) => {
                let _ = tenant;
                None
            }
        }
    }

    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        subject: String,
        body: &B,
    ) -> Result<T, ClientError> {
        let payload = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let reply = match &self.transport {
            #[cfg(feature = "engine")]
            Transport::Local(engine) => engine.handle(&subject, &payload).await,
            Transport::Nats(client) => {
                let mut headers = async_nats::HeaderMap::new();
                if let Some(secret) = &self.secret {
                    if let Some(v) = sign(secret, &self.actor, &subject, &payload) {
                        headers.insert(AUTH_HEADER, v.as_str());
                    }
                }
                if let Some((key_id, key)) = self.signing.as_deref() {
                    // Commands, and the token query, whose asker is
                    // proven as for a command.
                    if subject.starts_with("mandate.cmd.")
                        || (subject.starts_with("mandate.q.") && subject.ends_with(".token"))
                    {
                        let v = crate::protocol::signature::sign(key, key_id, &subject, &payload)
                            .map_err(|e| ClientError::Invalid(e.to_string()))?;
                        headers.insert(SIGNATURE_HEADER, v.as_str());
                    }
                }
                let mut attempt = 0;
                loop {
                    let r = tokio::time::timeout(
                        self.timeout,
                        client.request_with_headers(
                            subject.clone(),
                            headers.clone(),
                            payload.clone().into(),
                        ),
                    )
                    .await;
                    match r {
                        Ok(Ok(msg)) => break msg.payload.to_vec(),
                        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                            return Err(ClientError::NoEngine(subject))
                        }
                        Ok(Err(e)) if e.kind() != async_nats::RequestErrorKind::TimedOut => {
                            return Err(ClientError::Nats(e.to_string()))
                        }
                        // Timed out: the same body (same command id) is safe to resend.
                        _ if attempt < self.retries => attempt += 1,
                        _ => return Err(ClientError::TimedOut(subject)),
                    }
                }
            }
        };
        let reply: Reply<T> =
            serde_json::from_slice(&reply).map_err(|e| ClientError::Decode(e.to_string()))?;
        reply.into_result().map_err(ClientError::Engine)
    }

    fn envelope(&self, command: Command) -> CommandEnvelope {
        CommandEnvelope {
            command_id: CommandId::generate(),
            tenant: self.tenant.clone(),
            actor: self.actor.clone(),
            correlation_id: None,
            schema_version: SCHEMA_VERSION,
            command,
        }
    }

    /// `command` in an envelope with a new command id, as this client would
    /// send it: send it with [`Client::send`], and again, unchanged, when a
    /// send ends without the engine's answer (the engine answers a command
    /// id it applied with the original result).
    pub fn prepare(&self, command: Command) -> CommandEnvelope {
        self.envelope(command)
    }

    /// Sends a prepared command (keep its id to retry it safely).
    pub async fn send(&self, cmd: &CommandEnvelope) -> Result<CommandResult, ClientError> {
        self.request(command_subject(&self.tenant, cmd.command.verb()), cmd)
            .await
    }

    async fn command(&self, command: Command) -> Result<CommandResult, ClientError> {
        self.send(&self.envelope(command)).await
    }

    /// Issues a root mandate.
    pub async fn issue(&self, issue: Issue) -> Result<CommandResult, ClientError> {
        self.command(Command::Issue(issue)).await
    }
    /// Delegates a narrower mandate (the client's actor must hold the parent).
    pub async fn delegate(&self, delegate: Delegate) -> Result<CommandResult, ClientError> {
        self.command(Command::Delegate(delegate)).await
    }
    pub async fn pause(
        &self,
        mandate: MandateId,
        reason: Option<String>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::Pause(Change { mandate, reason }))
            .await
    }
    pub async fn resume(
        &self,
        mandate: MandateId,
        reason: Option<String>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::Resume(Change { mandate, reason }))
            .await
    }
    pub async fn revoke(
        &self,
        mandate: MandateId,
        reason: Option<String>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::Revoke(Change { mandate, reason }))
            .await
    }
    pub async fn complete(
        &self,
        mandate: MandateId,
        reason: Option<String>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::Complete(Change { mandate, reason }))
            .await
    }
    pub async fn complete_mission(
        &self,
        mission_ref: MissionRef,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::CompleteMission(CompleteMission { mission_ref }))
            .await
    }
    pub async fn narrow(
        &self,
        mandate: MandateId,
        scope: crate::domain::Scope,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::Narrow(Narrow { mandate, scope }))
            .await
    }
    pub async fn renew(
        &self,
        mandate: MandateId,
        not_after: DateTime<Utc>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::Renew(Renew { mandate, not_after }))
            .await
    }
    /// An administrator restores a quarantined tree or ends it for good,
    /// naming the bad record's log position (as `health` lists it).
    pub async fn resolve_quarantine(
        &self,
        mandate: MandateId,
        position: u64,
        action: crate::domain::command::Resolution,
        reason: Option<String>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::ResolveQuarantine(
            crate::domain::command::ResolveQuarantine {
                mandate,
                position,
                action,
                reason,
            },
        ))
        .await
    }

    /// Asks for step-up approval of one request under `mandate` (as its
    /// grantee): the approval is bound to the action, the resource and the
    /// hash of `params` ([`crate::domain::approval::params_hash`]). Returns
    /// the approval's id with the command's result: a new one, or, while an
    /// equal request is still pending, that one (the result is then a
    /// `duplicate` whose commit is that request's).
    pub async fn request_approval(
        &self,
        mandate: MandateId,
        action: &str,
        resource: &str,
        params: &serde_json::Value,
        ttl_seconds: Option<u32>,
        reason: Option<String>,
    ) -> Result<(uuid::Uuid, CommandResult), ClientError> {
        let hash = crate::domain::approval::params_hash(params);
        self.request_approval_hashed(mandate, action, resource, hash, ttl_seconds, reason)
            .await
    }
    /// [`Client::request_approval`] with the parameters hash given as is.
    pub async fn request_approval_hashed(
        &self,
        mandate: MandateId,
        action: &str,
        resource: &str,
        params_hash: String,
        ttl_seconds: Option<u32>,
        reason: Option<String>,
    ) -> Result<(uuid::Uuid, CommandResult), ClientError> {
        let approval = uuid::Uuid::now_v7();
        let result = self
            .command(Command::RequestApproval(
                crate::domain::approval::RequestApproval {
                    mandate,
                    approval,
                    action: action.to_string(),
                    resource: resource.to_string(),
                    params_hash,
                    ttl_seconds,
                    reason,
                },
            ))
            .await?;
        let approval = result
            .commits
            .iter()
            .flat_map(|c| &c.events)
            .find_map(|e| match &e.body {
                crate::domain::EventBody::ApprovalRequested(r) => Some(r.approval),
                _ => None,
            })
            .unwrap_or(approval);
        Ok((approval, result))
    }
    /// Grants a pending approval (as the tree's principal).
    pub async fn approve(
        &self,
        mandate: MandateId,
        approval: uuid::Uuid,
        reason: Option<String>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::Approve(crate::domain::approval::DecideApproval {
            mandate,
            approval,
            reason,
        }))
        .await
    }
    /// Denies a pending approval (as the tree's principal).
    pub async fn deny_approval(
        &self,
        mandate: MandateId,
        approval: uuid::Uuid,
        reason: Option<String>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::DenyApproval(
            crate::domain::approval::DecideApproval {
                mandate,
                approval,
                reason,
            },
        ))
        .await
    }
    /// Uses a granted approval for exactly the request it was granted for
    /// (as the mandate's grantee). `Ok` is the one allow the approval gives:
    /// the engine wrote its use, and any further use is refused
    /// (`approval_used`) on every instance.
    pub async fn use_approval(
        &self,
        mandate: MandateId,
        approval: uuid::Uuid,
        action: &str,
        resource: &str,
        params: &serde_json::Value,
    ) -> Result<CommandResult, ClientError> {
        self.use_approval_hashed(
            mandate,
            approval,
            action,
            resource,
            crate::domain::approval::params_hash(params),
        )
        .await
    }
    /// [`Client::use_approval`] with the parameters hash given as is.
    pub async fn use_approval_hashed(
        &self,
        mandate: MandateId,
        approval: uuid::Uuid,
        action: &str,
        resource: &str,
        params_hash: String,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::UseApproval(crate::domain::approval::UseApproval {
            mandate,
            approval,
            action: action.to_string(),
            resource: resource.to_string(),
            params_hash,
        }))
        .await
    }

    async fn bulk(&self, bulk: Bulk, verb: &str) -> Result<CommandResult, ClientError> {
        let env = BulkEnvelope {
            command_id: CommandId::generate(),
            tenant: self.tenant.clone(),
            actor: self.actor.clone(),
            correlation_id: None,
            schema_version: SCHEMA_VERSION,
            bulk,
        };
        self.request(command_subject(&self.tenant, verb), &env)
            .await
    }
    /// Deprovisioning: revoke everything an agent holds.
    pub async fn revoke_agent(
        &self,
        agent: AgentId,
        reason: Option<String>,
    ) -> Result<CommandResult, ClientError> {
        self.bulk(Bulk::RevokeAgent { agent, reason }, "revoke_agent")
            .await
    }
    /// Offboarding: revoke everything a principal granted.
    pub async fn revoke_principal(
        &self,
        principal: PrincipalId,
        reason: Option<String>,
    ) -> Result<CommandResult, ClientError> {
        self.bulk(
            Bulk::RevokePrincipal { principal, reason },
            "revoke_principal",
        )
        .await
    }

    /// Lifts the block `revoke_agent` left on an agent, so it may receive
    /// mandates again (tenant administrators only).
    pub async fn unblock_agent(
        &self,
        agent: AgentId,
        reason: Option<String>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::UnblockAgent(AgentBlock { agent, reason }))
            .await
    }
    /// Lifts the block `revoke_principal` left on a principal, so it may
    /// grant mandates again (tenant administrators only).
    pub async fn unblock_principal(
        &self,
        principal: PrincipalId,
        reason: Option<String>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::UnblockPrincipal(PrincipalBlock {
            principal,
            reason,
        }))
        .await
    }

    async fn query<B: Serialize, T: DeserializeOwned>(
        &self,
        verb: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.request(query_subject(&self.tenant, verb), body).await
    }
    /// A mandate's own and effective status, read `fresh`.
    pub async fn status(
        &self,
        mandate: MandateId,
        at: Option<DateTime<Utc>>,
    ) -> Result<StatusReply, ClientError> {
        self.status_with(fresh(mandate, at)).await
    }
    /// A mandate's status at the query's consistency level (e.g.
    /// `Consistency::AtLeast` with a command's commit position).
    pub async fn status_with(&self, q: MandateQuery) -> Result<StatusReply, ClientError> {
        self.query("status", &q).await
    }
    /// The chain root → mandate, read `fresh`.
    pub async fn chain(
        &self,
        mandate: MandateId,
        at: Option<DateTime<Utc>>,
    ) -> Result<ChainReply, ClientError> {
        self.chain_with(fresh(mandate, at)).await
    }
    /// The chain root → mandate at the query's consistency level.
    pub async fn chain_with(&self, q: MandateQuery) -> Result<ChainReply, ClientError> {
        self.query("chain", &q).await
    }
    /// The whole tree, at the query's consistency level (`fresh` unless set).
    pub async fn tree(&self, q: TreeQuery) -> Result<TreeReply, ClientError> {
        self.query("tree", &q).await
    }
    pub async fn history(&self, q: TreeQuery) -> Result<HistoryReply, ClientError> {
        self.query("history", &q).await
    }
    /// Verifies a tree's hash chain (the auditor's tamper check).
    pub async fn verify(&self, q: TreeQuery) -> Result<crate::protocol::VerifyReply, ClientError> {
        self.query("verify", &q).await
    }
    /// Mandates by agent, principal or mission, at the query's consistency
    /// level (`fresh` unless set).
    pub async fn list(&self, q: ListQuery) -> Result<ListReply, ClientError> {
        self.query("list", &q).await
    }
    /// Asks the engine, as this client's actor (recorded in the audit),
    /// read `fresh`. Agents normally ask their [`Guard`] instead, without a
    /// round trip.
    pub async fn check(
        &self,
        mandate: MandateId,
        action: &str,
        resource: &str,
        at: Option<DateTime<Utc>>,
    ) -> Result<Decision, ClientError> {
        self.check_as(Some(&self.actor), mandate, action, resource, at)
            .await
    }
    /// Asks the engine on behalf of `asker`, whom the audit records; `None`
    /// names nobody. Never a `system` actor: the engine refuses one
    /// (`reserved_actor`). Read `fresh`.
    pub async fn check_as(
        &self,
        asker: Option<&Actor>,
        mandate: MandateId,
        action: &str,
        resource: &str,
        at: Option<DateTime<Utc>>,
    ) -> Result<Decision, ClientError> {
        let q = CheckQuery {
            mandate,
            action: action.into(),
            resource: resource.into(),
            at,
            actor: asker.cloned(),
            consistency: Consistency::Fresh,
        };
        self.check_with(q).await
    }
    /// Sends a check as built: its `actor` is recorded in the audit, its
    /// `consistency` says how fresh the answer must be.
    pub async fn check_with(&self, q: CheckQuery) -> Result<Decision, ClientError> {
        self.query("check", &q).await
    }
    pub async fn audit(&self, mandate: MandateId, limit: usize) -> Result<AuditReply, ClientError> {
        self.query("audit", &AuditQuery { mandate, limit }).await
    }
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.query("health", &serde_json::json!({})).await
    }
    /// A signed token for `mandate`, asked as this client's actor (its
    /// grantee, its principal or an administrator), read `fresh`: `ttl` in
    /// seconds (the engine's maximum when `None`), `aud` its audience.
    pub async fn token(
        &self,
        mandate: MandateId,
        ttl: Option<u64>,
        aud: Option<String>,
    ) -> Result<crate::protocol::token::TokenReply, ClientError> {
        self.token_with(crate::protocol::token::TokenQuery {
            mandate,
            actor: self.actor.clone(),
            ttl,
            aud,
            consistency: Consistency::Fresh,
        })
        .await
    }
    /// Sends a token query as built.
    pub async fn token_with(
        &self,
        q: crate::protocol::token::TokenQuery,
    ) -> Result<crate::protocol::token::TokenReply, ClientError> {
        self.query("token", &q).await
    }
    /// The engine's token verification keys (a JWK set, signing key first).
    pub async fn jwks(&self) -> Result<crate::protocol::token::Jwks, ClientError> {
        self.query("jwks", &serde_json::json!({})).await
    }

    /// The tenant's key ring: configured and registered signing keys, with
    /// their status.
    pub async fn keys(&self) -> Result<crate::protocol::KeysReply, ClientError> {
        self.query("keys", &serde_json::json!({})).await
    }

    /// Registers `owner`'s Ed25519 public key (base64url) as `key_id` (an
    /// administrator for anyone, any other actor for itself).
    pub async fn register_key(
        &self,
        key_id: KeyId,
        owner: KeyOwner,
        public_key: String,
        not_after: Option<DateTime<Utc>>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::RegisterKey(RegisterKey {
            key_id,
            owner,
            public_key,
            not_after,
        }))
        .await
    }

    /// Revokes a registered key for good.
    pub async fn revoke_key(
        &self,
        key_id: KeyId,
        reason: Option<String>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::RevokeKey(RevokeKey { key_id, reason }))
            .await
    }

    /// Registers `new_key_id` for the owner of `key_id` and revokes
    /// `key_id`, in one commit.
    pub async fn rotate_key(
        &self,
        key_id: KeyId,
        new_key_id: KeyId,
        public_key: String,
        not_after: Option<DateTime<Utc>>,
    ) -> Result<CommandResult, ClientError> {
        self.command(Command::RotateKey(RotateKey {
            key_id,
            new_key_id,
            public_key,
            not_after,
        }))
        .await
    }
}

/// A `status` or `chain` query read `fresh`.
fn fresh(mandate: MandateId, at: Option<DateTime<Utc>>) -> MandateQuery {
    MandateQuery {
        mandate,
        at,
        consistency: Consistency::Fresh,
    }
}

/// What a ticketing or workflow system uses to say a mission is complete.
#[derive(Clone)]
pub enum MissionPublisher {
    /// Publishes to the mission stream (durable: applied even if the engine
    /// is down right now).
    Nats(Box<async_nats::jetstream::Context>),
    /// Completes the mission on an in-process engine.
    #[cfg(feature = "engine")]
    Local(Engine),
}

impl MissionPublisher {
    /// Says mission `mission` of `tenant` is complete. Over NATS this returns
    /// once JetStream stored the message.
    pub async fn completed(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
        notice: &MissionCompletedNotice,
    ) -> Result<(), ClientError> {
        self.publish(tenant, mission, notice, None).await
    }

    /// Like [`MissionPublisher::completed`], proven with a `Mandate-Auth`
    /// header from the key `key` (`ticketing:<system>` or `admin:<id>`) and
    /// its secret, as a tenant that requires authentication demands.
    pub async fn completed_signed(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
        notice: &MissionCompletedNotice,
        key: &str,
        secret: &[u8],
    ) -> Result<(), ClientError> {
        self.publish(tenant, mission, notice, Some((key, secret)))
            .await
    }

    async fn publish(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
        notice: &MissionCompletedNotice,
        auth: Option<(&str, &[u8])>,
    ) -> Result<(), ClientError> {
        match self {
            MissionPublisher::Nats(js) => {
                let body =
                    serde_json::to_vec(notice).map_err(|e| ClientError::Decode(e.to_string()))?;
                let subject = mission_subject(tenant, mission);
                let mut headers = async_nats::HeaderMap::new();
                if let Some((key, secret)) = auth {
                    let proof = sign_as(secret, key, &subject, &body);
                    headers.insert(AUTH_HEADER, proof.as_str());
                }
                js.publish_with_headers(subject, headers, body.into())
                    .await
                    .map_err(|e| ClientError::Nats(e.to_string()))?
                    .await
                    .map_err(|e| ClientError::Nats(e.to_string()))?;
                Ok(())
            }
            #[cfg(feature = "engine")]
            MissionPublisher::Local(engine) => engine
                .complete_mission(tenant, mission, Actor::mission_intake(), None, None)
                .await
                .map(|_| ())
                .map_err(|e| ClientError::Engine(e.to_body())),
        }
    }
}
