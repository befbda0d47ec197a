//! The gateway itself: an MCP server toward the agent whose every request
//! goes through the guard before it reaches the MCP server behind it, as a
//! request of the gateway's own MCP client.
//!
//! - `tools/call`, `resources/read` and `prompts/get` are mapped
//!   ([`super::mapping`]) and checked; only an allow is sent on.
//! - The list requests (`tools/list`, `resources/list`,
//!   `resources/templates/list`, `prompts/list`) pass while the mandate is
//!   live: active or paused, not ended, and the guard sure of it.
//! - Every request sent on is awaited together with the guard's
//!   cancellation token (and the agent's own cancellation): when the
//!   mandate ends, each call in flight at once gets `notifications/cancelled`
//!   toward the server, under the upstream request id its wait holds, and
//!   an error toward the agent. The requests in flight are exactly these
//!   waits, each woken by the token itself, so none is missed and none
//!   waits for another: no registry has to be walked, and none can miss a
//!   request sent while it is walked.
//! - A call whose action needs step-up approval is refused with a request
//!   for approval the gateway made to the engine as the mandate's grantee,
//!   bound to the action, the resource and the hash of the call's
//!   parameters: a tool call's or a prompt's `arguments` object (`{}` when
//!   absent), a resource read's `{"uri": ...}`. The agent calls again with
//!   the approved id under `_meta["mandate/approval"]`; the gateway sends
//!   `use_approval` to the engine, which writes the use in the tree's log,
//!   and only its success lets the call through, once. The guard's local
//!   check never consumes an approval, and an approval on a call that needs
//!   none is not used.
//! - Once the mandate has ended, every request is refused; nothing reaches
//!   the server again.
//! - A guard that fails closed without an end (paused, lease lapsed, cut
//!   off, quarantined) refuses new calls but leaves those in flight alone:
//!   only a definite end cancels.
//! - Anything else the agent asks (completion, logging level, tasks,
//!   subscriptions) is refused as unknown: the gateway passes on only what
//!   it checks.

use std::collections::HashMap;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult, ClientRequest,
    ErrorCode, GetPromptRequest, GetPromptRequestParams, GetPromptResponse, Implementation,
    ListPromptsRequest, ListPromptsResult, ListResourceTemplatesRequest,
    ListResourceTemplatesResult, ListResourcesRequest, ListResourcesResult, ListToolsRequest,
    ListToolsResult, PaginatedRequestParams, ReadResourceRequest, ReadResourceRequestParams,
    ReadResourceResponse, ServerCapabilities, ServerConfig, ServerResult,
};
use rmcp::service::{PeerRequestOptions, RequestContext, RoleClient, RoleServer};
use rmcp::{ErrorData, Peer, ServerHandler, ServiceError};
use tokio_util::sync::CancellationToken;

use super::mapping::{Checked, Mapping, Unmappable};
use super::refusal::{self, Requested, APPROVAL_META};
use crate::client::{Client, ClientError, Guard, GuardState};
use crate::domain::approval::UseApproval;
use crate::domain::{Command, CommandEnvelope, Decision, MandateId, Outcome};
use rmcp::model::RequestMetaObject;
use serde_json::Value;
use uuid::Uuid;

/// The gateway, shared by every agent session (one on stdio; one per
/// session over streamable HTTP).
#[derive(Clone)]
pub(super) struct Gateway {
    shared: Arc<Shared>,
}

struct Shared {
    guard: Guard,
    /// The engine, as the actor that requests and uses approvals.
    approvals: Client,
    /// Uses of approvals whose outcome is unknown (the engine did not
    /// answer: it may have written the use), by approval: the agent's next
    /// call with that approval and the same request sends the same command
    /// again, so a use the engine wrote comes back as its original result
    /// instead of `approval_used`.
    unsettled: std::sync::Mutex<HashMap<Uuid, CommandEnvelope>>,
    /// The guard's cancellation token: fires when the mandate ends.
    end: CancellationToken,
    mandate: MandateId,
    /// The chain's mandate ids, root first (a chain never changes).
    chain: Vec<String>,
    mapping: Mapping,
    upstream: Peer<RoleClient>,
    info: ServerConfig,
}

/// The most uses of unknown outcome kept for a resend (each is a call the
/// engine did not answer; past this, further ones are not kept).
const MAX_UNSETTLED: usize = 1024;

impl Shared {
    fn unsettled(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, CommandEnvelope>> {
        self.unsettled.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a wait for the server's answer ended.
enum Waited {
    Answered(
        Box<Result<Result<ServerResult, ServiceError>, tokio::sync::oneshot::error::RecvError>>,
    ),
    MandateEnded,
    AgentCancelled,
}

impl Gateway {
    pub(super) fn new(
        guard: Guard,
        approvals: Client,
        chain: Vec<String>,
        mapping: Mapping,
        upstream: Peer<RoleClient>,
    ) -> Self {
        let mut capabilities = ServerCapabilities::default();
        let mut instructions = None;
        if let Some(info) = upstream.peer_info() {
            capabilities.tools = info.capabilities.tools.clone();
            capabilities.resources = info.capabilities.resources.clone();
            capabilities.prompts = info.capabilities.prompts.clone();
            instructions = info.instructions.clone();
        }
        // Subscriptions are not relayed: do not offer them.
        if let Some(r) = capabilities.resources.as_mut() {
            r.subscribe = None;
        }
        let mut info = ServerConfig::new(capabilities);
        info.server_info = Implementation::new(
            format!("mandate-mcp-gateway ({})", mapping.server()),
            env!("CARGO_PKG_VERSION"),
        );
        info.instructions = instructions;
        Self {
            shared: Arc::new(Shared {
                end: guard.cancellation(),
                mandate: guard.mandate(),
                guard,
                approvals,
                unsettled: Default::default(),
                chain,
                mapping,
                upstream,
                info,
            }),
        }
    }

    /// Fires when the mandate ends.
    pub(super) fn ended(&self) -> CancellationToken {
        self.shared.end.clone()
    }

    /// Why the mandate ended, in words.
    pub(super) fn end_text(&self) -> String {
        match self.shared.guard.state() {
            GuardState::Terminated(status) => format!("it is {status}"),
            _ => "it ended".into(),
        }
    }

    /// A checked request: mapped, allowed by the guard (or by the use of
    /// its approval, through the engine), then sent on.
    async fn guarded(
        &self,
        method: &str,
        mapped: Result<Checked, Unmappable>,
        asked: Asked,
        request: ClientRequest,
        agent_ct: CancellationToken,
    ) -> Result<ServerResult, ErrorData> {
        let s = &self.shared;
        if s.end.is_cancelled() {
            return Err(self.refused_after_end(method, None));
        }
        let checked = mapped.map_err(|u| refusal::invalid(method, s.mandate, &s.chain, &u.0))?;
        let approval = approval_of(&asked.meta)
            .map_err(|why| refusal::invalid(method, s.mandate, &s.chain, &why))?;
        let decision = s.guard.check(&checked.action, &checked.resource);
        if decision.outcome == Outcome::NeedsApproval {
            match approval {
                None => {
                    return Err(self
                        .request_approval(method, &decision, &asked.params)
                        .await)
                }
                Some(id) => {
                    self.use_approval(method, &decision, id, &asked.params)
                        .await?
                }
            }
        } else if !decision.is_allowed() {
            tracing::info!(
                method,
                action = %checked.action,
                resource = %checked.resource,
                outcome = ?decision.outcome,
                "refused"
            );
            return Err(refusal::refused(&decision, method));
        }
        self.forward(method, request, agent_ct, Some(&checked))
            .await
    }

    /// Asks the engine for approval of a call the guard found in scope but
    /// under step-up; the answer is the agent's refusal either way.
    async fn request_approval(&self, method: &str, d: &Decision, params: &Value) -> ErrorData {
        let s = &self.shared;
        let asked = s
            .approvals
            .request_approval(
                s.mandate,
                &d.action,
                &d.resource,
                params,
                None,
                Some(format!("requested through the MCP gateway ({method})")),
            )
            .await;
        let requested = match asked {
            Ok((approval, result)) => {
                // The request's event, as the engine wrote it.
                let expires_at = result
                    .commits
                    .iter()
                    .flat_map(|c| &c.events)
                    .filter_map(|e| serde_json::to_value(&e.body).ok())
                    .find(|b| b["approval"] == serde_json::json!(approval))
                    .map(|b| b["expires_at"].clone());
                tracing::info!(method, action = %d.action, resource = %d.resource, %approval, existing = result.duplicate, "approval requested");
                Requested::Made {
                    approval,
                    params_hash: crate::domain::approval::params_hash(params),
                    expires_at,
                    existing: result.duplicate,
                }
            }
            Err(e) => {
                tracing::warn!(method, action = %d.action, resource = %d.resource, error = %e, "the engine did not take the request for approval");
                Requested::Failed(e)
            }
        };
        refusal::needs_approval(d, method, &requested)
    }

    /// Uses the call's approval through the engine: `Ok` is the one allow
    /// it gives (the engine wrote the use); anything else refuses the call.
    ///
    /// A use the engine did not answer (timed out, no engine, NATS failed)
    /// may have been written all the same. Its command is kept, and the
    /// agent's next call with the same approval and request sends it again
    /// with the same command id: a use written before comes back as the
    /// original result, not `approval_used`. Such an allow is given only if
    /// a fresh check still finds the mandate live and the action in scope.
    async fn use_approval(
        &self,
        method: &str,
        d: &Decision,
        approval: Uuid,
        params: &Value,
    ) -> Result<(), ErrorData> {
        let s = &self.shared;
        let command = UseApproval {
            mandate: s.mandate,
            approval,
            action: d.action.clone(),
            resource: d.resource.clone(),
            params_hash: crate::domain::approval::params_hash(params),
        };
        let kept = s
            .unsettled()
            .get(&approval)
            .filter(|e| matches!(&e.command, Command::UseApproval(u) if *u == command))
            .cloned();
        let resent = kept.is_some();
        let envelope = kept.unwrap_or_else(|| s.approvals.prepare(Command::UseApproval(command)));
        let sent = s.approvals.send(&envelope).await;
        {
            let mut unsettled = s.unsettled();
            match &sent {
                Err(ClientError::TimedOut(_) | ClientError::NoEngine(_) | ClientError::Nats(_)) => {
                    if unsettled.len() < MAX_UNSETTLED || unsettled.contains_key(&approval) {
                        unsettled.insert(approval, envelope);
                    }
                }
                // The engine answered this command: its outcome is known.
                _ => {
                    if unsettled
                        .get(&approval)
                        .is_some_and(|e| e.command_id == envelope.command_id)
                    {
                        unsettled.remove(&approval);
                    }
                }
            }
        }
        match sent {
            Ok(used) => {
                if resent && used.duplicate {
                    // Written by an earlier call: the mandate must still be
                    // live for this one, as the engine sees it now.
                    match s
                        .approvals
                        .check(s.mandate, &d.action, &d.resource, None)
                        .await
                    {
                        Ok(now) if now.outcome != Outcome::Deny => {}
                        Ok(now) => return Err(refusal::refused(&now, method)),
                        Err(e) => return Err(refusal::approval_refused(d, method, approval, &e)),
                    }
                }
                tracing::info!(method, action = %d.action, resource = %d.resource, %approval, resent, "approval used");
                Ok(())
            }
            Err(e) => {
                tracing::info!(method, action = %d.action, resource = %d.resource, %approval, error = %e, "approval refused");
                Err(refusal::approval_refused(d, method, approval, &e))
            }
        }
    }

    /// A list request: sent on while the mandate is live.
    async fn listed(
        &self,
        method: &str,
        request: ClientRequest,
        agent_ct: CancellationToken,
    ) -> Result<ServerResult, ErrorData> {
        let s = &self.shared;
        match s.guard.state() {
            GuardState::Active | GuardState::Paused => {
                self.forward(method, request, agent_ct, None).await
            }
            GuardState::Terminated(_) => Err(self.refused_after_end(method, None)),
            GuardState::Stale | GuardState::Quarantined => Err(ErrorData::new(
                refusal::DENIED,
                format!(
                    "{method}: the state of mandate {} cannot be confirmed now (the guard fails closed)",
                    s.mandate
                ),
                Some(serde_json::json!({
                    "reason": "unverified",
                    "mandate": s.mandate,
                    "chain": s.chain,
                })),
            )),
        }
    }

    fn refused_after_end(&self, method: &str, checked: Option<&Checked>) -> ErrorData {
        refusal::ended(
            method,
            self.shared.mandate,
            &self.shared.chain,
            &self.end_text(),
            false,
            checked.map(|c| (c.action.as_str(), c.resource.as_str())),
        )
    }

    /// Sends `request` to the server and waits for its answer, the
    /// mandate's end, or the agent's cancellation, whichever comes first;
    /// the last two cancel it upstream.
    async fn forward(
        &self,
        method: &str,
        request: ClientRequest,
        agent_ct: CancellationToken,
        checked: Option<&Checked>,
    ) -> Result<ServerResult, ErrorData> {
        let s = &self.shared;
        if s.end.is_cancelled() {
            return Err(self.refused_after_end(method, checked));
        }
        let mut handle = s
            .upstream
            .send_cancellable_request(request, PeerRequestOptions::no_options())
            .await
            .map_err(|e| refusal::upstream(method, s.mandate, &e.to_string()))?;
        let id = handle.id.clone();
        let what = match checked {
            Some(c) => format!("{method} {} on {}", c.action, c.resource),
            None => method.to_string(),
        };
        // The end is looked at first: an answer that arrives together with
        // it is not passed on.
        let waited = tokio::select! {
            biased;
            _ = s.end.cancelled() => Waited::MandateEnded,
            _ = agent_ct.cancelled() => Waited::AgentCancelled,
            r = &mut handle.rx => Waited::Answered(Box::new(r)),
        };
        match waited {
            Waited::MandateEnded => {
                let why = self.end_text();
                let sent = handle
                    .cancel(Some(format!("mandate {} has ended: {why}", s.mandate)))
                    .await;
                if let Err(e) = &sent {
                    tracing::warn!(request = %id, error = %e, "could not tell the server to cancel");
                }
                tracing::warn!(request = %id, %what, "cancelled in flight: the mandate has ended");
                Err(refusal::ended(
                    method,
                    s.mandate,
                    &s.chain,
                    &why,
                    true,
                    checked.map(|c| (c.action.as_str(), c.resource.as_str())),
                ))
            }
            Waited::AgentCancelled => {
                let _ = handle
                    .cancel(Some("the agent cancelled the request".into()))
                    .await;
                Err(ErrorData::new(
                    ErrorCode::INTERNAL_ERROR,
                    format!("{method}: cancelled by the agent"),
                    None,
                ))
            }
            Waited::Answered(answer) => match *answer {
                Ok(Ok(result)) => Ok(result),
                Ok(Err(ServiceError::McpError(e))) => Err(e),
                Ok(Err(e)) => Err(refusal::upstream(method, s.mandate, &e.to_string())),
                Err(_) => Err(refusal::upstream(
                    method,
                    s.mandate,
                    "the connection to the server closed",
                )),
            },
        }
    }
}

/// What a checked request asks besides its action and resource: the
/// parameters an approval is bound to (by their hash), and the agent's
/// `_meta`, which may carry the approval to use (it is never passed on).
struct Asked {
    params: Value,
    meta: RequestMetaObject,
}

/// The approval a request's `_meta` names, if any; a value that is not an
/// approval id (a UUID) is an invalid request.
fn approval_of(meta: &RequestMetaObject) -> Result<Option<Uuid>, String> {
    match meta.get(APPROVAL_META) {
        None => Ok(None),
        Some(Value::String(s)) => s.parse::<Uuid>().map(Some).map_err(|e| {
            format!("_meta[\"{APPROVAL_META}\"] {s:?} is not an approval id (a UUID): {e}; refused")
        }),
        Some(other) => Err(format!(
            "_meta[\"{APPROVAL_META}\"] must be an approval id (a UUID string), not {other}; refused"
        )),
    }
}

/// An answer of the server that is not of the kind asked for.
fn unexpected(method: &str) -> ErrorData {
    ErrorData::new(
        ErrorCode::INTERNAL_ERROR,
        format!("{method}: the MCP server behind the gateway answered with an unexpected result"),
        None,
    )
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        self.shared.info.clone()
    }

    async fn call_tool(
        &self,
        mut request: CallToolRequestParams,
        mut context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        const METHOD: &str = "tools/call";
        let mapped = self
            .shared
            .mapping
            .tool_call(&request.name, request.arguments.as_ref());
        request.meta = None;
        let asked = Asked {
            params: Value::Object(request.arguments.clone().unwrap_or_default()),
            // The SDK moves a request's `_meta` into its context.
            meta: std::mem::take(&mut context.meta),
        };
        let forwarded = ClientRequest::CallToolRequest(CallToolRequest::new(request));
        match self
            .guarded(METHOD, mapped, asked, forwarded, context.ct)
            .await?
        {
            ServerResult::CallToolResult(r) => Ok(CallToolResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(CallToolResponse::InputRequired(r)),
            ServerResult::CreateTaskResult(r) => Ok(CallToolResponse::Task(r)),
            // The union is untagged: a result without content may read as
            // another kind; read it again as what it must be.
            other => serde_json::to_value(&other)
                .ok()
                .and_then(|v| serde_json::from_value::<CallToolResult>(v).ok())
                .map(CallToolResponse::Complete)
                .ok_or_else(|| unexpected(METHOD)),
        }
    }

    async fn read_resource(
        &self,
        mut request: ReadResourceRequestParams,
        mut context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        const METHOD: &str = "resources/read";
        let mapped = self.shared.mapping.resource_read(&request.uri);
        request.meta = None;
        let asked = Asked {
            params: serde_json::json!({ "uri": request.uri }),
            // The SDK moves a request's `_meta` into its context.
            meta: std::mem::take(&mut context.meta),
        };
        let forwarded = ClientRequest::ReadResourceRequest(ReadResourceRequest::new(request));
        match self
            .guarded(METHOD, mapped, asked, forwarded, context.ct)
            .await?
        {
            ServerResult::ReadResourceResult(r) => Ok(ReadResourceResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(ReadResourceResponse::InputRequired(r)),
            _ => Err(unexpected(METHOD)),
        }
    }

    async fn get_prompt(
        &self,
        mut request: GetPromptRequestParams,
        mut context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        const METHOD: &str = "prompts/get";
        let mapped = self.shared.mapping.prompt_get(&request.name);
        request.meta = None;
        let asked = Asked {
            params: Value::Object(request.arguments.clone().unwrap_or_default()),
            // The SDK moves a request's `_meta` into its context.
            meta: std::mem::take(&mut context.meta),
        };
        let forwarded = ClientRequest::GetPromptRequest(GetPromptRequest::new(request));
        match self
            .guarded(METHOD, mapped, asked, forwarded, context.ct)
            .await?
        {
            ServerResult::GetPromptResult(r) => Ok(GetPromptResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(GetPromptResponse::InputRequired(r)),
            _ => Err(unexpected(METHOD)),
        }
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        const METHOD: &str = "tools/list";
        let forwarded = ClientRequest::ListToolsRequest(ListToolsRequest {
            method: Default::default(),
            params: without_meta(request),
            extensions: Default::default(),
        });
        match self.listed(METHOD, forwarded, context.ct).await? {
            ServerResult::ListToolsResult(r) => Ok(r),
            _ => Err(unexpected(METHOD)),
        }
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        const METHOD: &str = "resources/list";
        let forwarded = ClientRequest::ListResourcesRequest(ListResourcesRequest {
            method: Default::default(),
            params: without_meta(request),
            extensions: Default::default(),
        });
        match self.listed(METHOD, forwarded, context.ct).await? {
            ServerResult::ListResourcesResult(r) => Ok(r),
            _ => Err(unexpected(METHOD)),
        }
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        const METHOD: &str = "resources/templates/list";
        let forwarded = ClientRequest::ListResourceTemplatesRequest(ListResourceTemplatesRequest {
            method: Default::default(),
            params: without_meta(request),
            extensions: Default::default(),
        });
        match self.listed(METHOD, forwarded, context.ct).await? {
            ServerResult::ListResourceTemplatesResult(r) => Ok(r),
            _ => Err(unexpected(METHOD)),
        }
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        const METHOD: &str = "prompts/list";
        let forwarded = ClientRequest::ListPromptsRequest(ListPromptsRequest {
            method: Default::default(),
            params: without_meta(request),
            extensions: Default::default(),
        });
        match self.listed(METHOD, forwarded, context.ct).await? {
            ServerResult::ListPromptsResult(r) => Ok(r),
            _ => Err(unexpected(METHOD)),
        }
    }
}

/// The agent's request metadata (progress tokens, protocol fields) is its
/// own session's; the gateway's client sets its own.
fn without_meta(params: Option<PaginatedRequestParams>) -> Option<PaginatedRequestParams> {
    params.map(|mut p| {
        p.meta = None;
        p
    })
}
