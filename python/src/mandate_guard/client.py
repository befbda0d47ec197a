"""The Client: every command and query of the engine, over NATS.

Commands go to `mandate.cmd.<tenant>.<verb>`, queries to
`mandate.q.<tenant>.<verb>`, as the JSON documents of `schemas/`. Every
reply is `{"ok": true, "result": ...}` or `{"ok": false, "error": {...}}`;
an error becomes :class:`~mandate_guard.errors.EngineError` with the
engine's code and reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import uuid
from base64 import urlsafe_b64encode
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from .errors import DecodeError, EngineError, InvalidArgument, NoEngine, TimedOut, TransportError
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .types import (
    JSON,
    Actor,
    ChainReply,
    CommandResult,
    Consistency,
    Decision,
    Grant,
    check_id,
    check_uuid,
    consistency_json,
    format_time,
)

AUTH_HEADER = "Mandate-Auth"
"""The header a signed request carries (see :func:`sign`)."""

SIGNATURE_HEADER = "Mandate-Signature"
"""The header a command signed with a registered Ed25519 key carries (see
:func:`sign_command`)."""

GrantLike = Grant | tuple[str, str] | dict[str, str] | str
"""A grant: `Grant(action, resource)`, `(action, resource)`,
`{"action": ..., "resource": ...}` or `"ACTION on RESOURCE"`."""


def sign(secret: bytes, key: str, subject: str, body: bytes) -> str:
    """The `Mandate-Auth` header value proving the holder of `key`
    (`principal:cfo`, `agent:x`, `ticketing:jira`) sent `body` on `subject`:
    `v1 <key> <hex HMAC-SHA256(secret, subject "\\n" body)>`."""
    mac = hmac.new(secret, subject.encode() + b"\n" + body, hashlib.sha256).hexdigest()
    return f"v1 {key} {mac}"


def canonical(body: Any) -> bytes:
    """`body` as the engine hashes and signs JSON: object keys sorted, no
    whitespace, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(raw: bytes) -> str:
    return urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign_command(key: "Ed25519PrivateKey", key_id: str, subject: str, body: Any) -> str:
    """The `Mandate-Signature` header value signing the command `body` (a
    JSON value, or its bytes) sent on `subject` with `key`, registered in
    the tenant as `key_id`:
    `ed25519 <key_id> <base64url Ed25519 signature>` over
    `b"mandate-command-v1\\n" + subject + b"\\n" + canonical(body)`.
    Needs the `cryptography` package (the `signing` extra)."""
    if isinstance(body, (bytes, bytearray)):
        body = json.loads(body)
    message = b"mandate-command-v1\n" + subject.encode() + b"\n" + canonical(body)
    return f"ed25519 {check_key_id(key_id)} {_b64(key.sign(message))}"


def public_key(key: "Ed25519PrivateKey") -> str:
    """The public key of `key`, base64url without padding, as `register_key` takes it."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return _b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def check_key_id(key_id: str) -> str:
    """A key id: 1 to 64 of `A-Z a-z 0-9 . _ -`."""
    if not (1 <= len(key_id) <= 64) or not all(c.isascii() and (c.isalnum() or c in "._-") for c in key_id):
        raise InvalidArgument(f"key id {key_id!r} must be 1 to 64 of A-Z a-z 0-9 . _ -")
    return key_id


def grant(g: GrantLike) -> Grant:
    """Reads any of the forms of :data:`GrantLike`."""
    if isinstance(g, Grant):
        return g
    if isinstance(g, str):
        parts = [p for p in g.split() if p != "on"]
        if len(parts) != 2:
            raise InvalidArgument(f"grant {g!r}: a grant is written 'ACTION on RESOURCE'")
        return Grant(parts[0], parts[1])
    if isinstance(g, tuple) and len(g) == 2 and all(isinstance(x, str) for x in g):
        return Grant(g[0], g[1])
    if isinstance(g, dict) and set(g) == {"action", "resource"}:
        return Grant(str(g["action"]), str(g["resource"]))
    raise InvalidArgument(f"grant {g!r}: expected Grant, (action, resource), a dict or 'ACTION on RESOURCE'")


def _scope(scope: Iterable[GrantLike]) -> list[JSON]:
    out = [grant(g).to_json() for g in scope]
    if not out:
        raise InvalidArgument("scope must hold at least one grant")
    return out


def _time(t: dt.datetime | str, what: str) -> str:
    if isinstance(t, str):
        return t
    if not isinstance(t, dt.datetime):
        raise InvalidArgument(f"{what} {t!r} must be an aware datetime or an RFC 3339 string")
    return format_time(t)


_log = logging.getLogger("mandate_guard")


async def _log_nats_error(exc: Exception) -> None:
    # nats-py's default prints a traceback per failed reconnect attempt.
    _log.warning("nats: %s", exc or type(exc).__name__)


async def connect(url: str | list[str], *, name: str = "mandate-guard", **options: Any) -> NatsClient:
    """A NATS connection with settings fit for a guard: it reconnects for
    ever (the guards deny while it is down and catch up after). Credentials
    pass through to `nats.connect` (`user_credentials=`, `nkeys_seed=`,
    `user=`/`password=`, `token=`, `tls=`)."""
    options.setdefault("error_cb", _log_nats_error)
    options.setdefault("max_reconnect_attempts", -1)
    options.setdefault("reconnect_time_wait", 0.25)
    options.setdefault("connect_timeout", 5)
    return await nats.connect(url, name=name, **options)


class Client:
    """Commands and queries for one tenant, acting as one actor.

    `secret`: the actor's secret, for tenants whose engine requires
    authenticated actors; each command is then signed (`Mandate-Auth`).
    `signing_key`: `(key_id, Ed25519PrivateKey)`, the actor's key registered
    in the tenant; each command is then signed with it (`Mandate-Signature`,
    recorded by the engine in the command's events).
    `timeout`: seconds to wait for each reply; a timed-out request is sent
    again `retries` times with the same body (same command id: safe).
    """

    def __init__(
        self,
        nc: NatsClient,
        tenant: str,
        actor: Actor | str | None = None,
        *,
        secret: bytes | str | None = None,
        signing_key: "tuple[str, Ed25519PrivateKey] | None" = None,
        timeout: float = 5.0,
        retries: int = 2,
        trace: Callable[[str, JSON, Any], None] | None = None,
    ) -> None:
        self.nc = nc
        self.trace = trace
        """Called with (subject, request body, reply document) for every
        reply decoded: for logging, or for checking replies against
        `schemas/`."""
        self.tenant = check_id(tenant, "tenant")
        if isinstance(actor, str):
            actor = Actor.parse(actor)
        self.actor = actor
        self.secret = secret.encode() if isinstance(secret, str) else secret
        if signing_key is not None:
            check_key_id(signing_key[0])
        self.signing_key = signing_key
        if timeout <= 0:
            raise InvalidArgument(f"timeout {timeout!r} must be positive")
        self.timeout = timeout
        self.retries = max(0, retries)

    def as_actor(self, actor: Actor | str, secret: bytes | str | None = None) -> "Client":
        """The same client acting as someone else."""
        return Client(
            self.nc, self.tenant, actor, secret=secret, timeout=self.timeout, retries=self.retries, trace=self.trace
        )

    # -- transport ---------------------------------------------------------

    async def _request(self, subject: str, body: JSON, signed: bool) -> Any:
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers: dict[str, str] | None = None
        if signed and self.secret is not None and self.actor is not None:
            headers = {AUTH_HEADER: sign(self.secret, self.actor.key, subject, payload)}
        if signed and self.signing_key is not None:
            key_id, key = self.signing_key
            headers = {**(headers or {}), SIGNATURE_HEADER: sign_command(key, key_id, subject, body)}
        attempt = 0
        while True:
            try:
                msg = await self.nc.request(subject, payload, timeout=self.timeout, headers=headers)
                break
            except NoRespondersError:
                raise NoEngine(subject) from None
            except (NatsTimeoutError, asyncio.TimeoutError):
                if attempt < self.retries:
                    attempt += 1
                    continue
                raise TimedOut(subject, self.timeout) from None
            except ConnectionClosedError as exc:
                raise TransportError(f"{subject}: the NATS connection is closed") from exc
            except nats.errors.Error as exc:
                raise TransportError(f"{subject}: {exc or type(exc).__name__}") from exc
        try:
            reply = json.loads(msg.data)
        except ValueError as exc:
            raise DecodeError(f"reply on {subject} is not JSON ({exc}): {msg.data[:300]!r}") from None
        if self.trace is not None:
            self.trace(subject, body, reply)
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise DecodeError(f"reply on {subject} is not a reply object: {str(reply)[:300]}")
        if reply["ok"]:
            if reply.get("result") is None:
                raise DecodeError(f"reply on {subject} is ok without a result")
            return reply["result"]
        err = reply.get("error")
        if not isinstance(err, dict) or not isinstance(err.get("code"), str):
            raise DecodeError(f"reply on {subject} failed without an error body: {str(reply)[:300]}")
        raise EngineError(err["code"], str(err.get("message", "")), err.get("reason"))

    async def query(self, verb: str, body: JSON) -> Any:
        """A raw query: the `result` of `mandate.q.<tenant>.<verb>`. The
        token query is signed as a command is: its asker is proven."""
        return await self._request(f"mandate.q.{self.tenant}.{verb}", body, signed=verb == "token")

    def envelope(self, command: JSON, command_id: str | None = None, correlation_id: str | None = None) -> JSON:
        """A command with its envelope (a fresh command id unless given)."""
        if self.actor is None:
            raise InvalidArgument("this client has no actor: give Client(..., actor=...) to send commands")
        body: JSON = {
            "command_id": check_uuid(command_id, "command_id") if command_id else str(uuid.uuid4()),
            "tenant": self.tenant,
            "actor": self.actor.to_json(),
            "schema_version": 1,
        }
        if correlation_id is not None:
            body["correlation_id"] = correlation_id
        body.update(command)
        return body

    async def send(self, envelope: JSON) -> CommandResult:
        """Sends a prepared command (keep its id to retry it safely)."""
        verb = envelope.get("type")
        if not isinstance(verb, str):
            raise InvalidArgument("a command needs a 'type'")
        result = await self._request(f"mandate.cmd.{self.tenant}.{verb}", envelope, signed=True)
        return CommandResult.from_json(result)

    async def _command(self, command: JSON, command_id: str | None) -> CommandResult:
        return await self.send(self.envelope(command, command_id))

    # -- commands ------------------------------------------------------------

    async def issue(
        self,
        grantee: str,
        scope: Iterable[GrantLike],
        not_after: dt.datetime | str,
        *,
        purpose: str,
        mission_ref: str | None = None,
        principal: str | None = None,
        depth: int | None = None,
        step_up: Sequence[str] = (),
        supervisors: Sequence[str] = (),
        command_id: str | None = None,
    ) -> CommandResult:
        """A principal grants a root mandate to `grantee` for a mission
        (`principal` defaults to the actor's id)."""
        if principal is None:
            if self.actor is None or self.actor.kind != "principal":
                raise InvalidArgument("issue: give principal=, or act as principal:<id>")
            principal = self.actor.id
        mission: JSON = {"purpose": purpose}
        if mission_ref is not None:
            mission["mission_ref"] = mission_ref
        cmd: JSON = {
            "type": "issue",
            "principal": principal,
            "grantee": grantee,
            "mission": mission,
            "scope": _scope(scope),
            "not_after": _time(not_after, "not_after"),
            "step_up": list(step_up),
            "supervisors": list(supervisors),
        }
        if depth is not None:
            cmd["depth"] = depth
        return await self._command(cmd, command_id)

    async def delegate(
        self,
        parent: str,
        grantee: str,
        scope: Iterable[GrantLike],
        *,
        not_after: dt.datetime | str | None = None,
        depth: int | None = None,
        step_up: Sequence[str] = (),
        supervisors: Sequence[str] = (),
        command_id: str | None = None,
    ) -> CommandResult:
        """The holder of `parent` grants a narrower mandate to `grantee`."""
        cmd: JSON = {
            "type": "delegate",
            "parent": parent,
            "grantee": grantee,
            "scope": _scope(scope),
            "step_up": list(step_up),
            "supervisors": list(supervisors),
        }
        if not_after is not None:
            cmd["not_after"] = _time(not_after, "not_after")
        if depth is not None:
            cmd["depth"] = depth
        return await self._command(cmd, command_id)

    async def _on_mandate(self, verb: str, mandate: str, reason: str | None, command_id: str | None) -> CommandResult:
        cmd: JSON = {"type": verb, "mandate": mandate}
        if reason is not None:
            cmd["reason"] = reason
        return await self._command(cmd, command_id)

    async def pause(self, mandate: str, reason: str | None = None, *, command_id: str | None = None) -> CommandResult:
        return await self._on_mandate("pause", mandate, reason, command_id)

    async def resume(self, mandate: str, reason: str | None = None, *, command_id: str | None = None) -> CommandResult:
        return await self._on_mandate("resume", mandate, reason, command_id)

    async def revoke(self, mandate: str, reason: str | None = None, *, command_id: str | None = None) -> CommandResult:
        return await self._on_mandate("revoke", mandate, reason, command_id)

    async def complete(self, mandate: str, reason: str | None = None, *, command_id: str | None = None) -> CommandResult:
        return await self._on_mandate("complete", mandate, reason, command_id)

    async def complete_mission(self, mission_ref: str, *, command_id: str | None = None) -> CommandResult:
        """Completes every tree serving `mission_ref`."""
        return await self._command({"type": "complete_mission", "mission_ref": mission_ref}, command_id)

    async def narrow(self, mandate: str, scope: Iterable[GrantLike], *, command_id: str | None = None) -> CommandResult:
        return await self._command({"type": "narrow", "mandate": mandate, "scope": _scope(scope)}, command_id)

    async def renew(self, mandate: str, not_after: dt.datetime | str, *, command_id: str | None = None) -> CommandResult:
        return await self._command(
            {"type": "renew", "mandate": mandate, "not_after": _time(not_after, "not_after")}, command_id
        )

    async def resolve_quarantine(
        self, mandate: str, position: int, action: str, reason: str | None = None, *, command_id: str | None = None
    ) -> CommandResult:
        """`action`: `"restore"` or `"end"`."""
        cmd: JSON = {"type": "resolve_quarantine", "mandate": mandate, "position": position, "action": action}
        if reason is not None:
            cmd["reason"] = reason
        return await self._command(cmd, command_id)

    # -- step-up approvals -------------------------------------------------

    async def request_approval(
        self,
        mandate: str,
        action: str,
        resource: str,
        params: Any = None,
        *,
        params_hash: str | None = None,
        ttl_seconds: int | None = None,
        reason: str | None = None,
        approval: str | None = None,
        command_id: str | None = None,
    ) -> tuple[str, CommandResult]:
        """The grantee of `mandate` asks for step-up approval of one request,
        bound to the hash of `params` (or `params_hash` as given). Returns the
        approval's id (a new UUID v7 unless `approval` names one; while an
        equal request is still pending, that one's, the result then being a
        duplicate) and the result."""
        approval_id = check_uuid(approval, "approval") if approval else uuid7()
        cmd: JSON = {
            "type": "request_approval",
            "mandate": mandate,
            "approval": approval_id,
            "action": action,
            "resource": resource,
            "params_hash": _hash_of(params, params_hash),
        }
        if ttl_seconds is not None:
            cmd["ttl_seconds"] = ttl_seconds
        if reason is not None:
            cmd["reason"] = reason
        result = await self._command(cmd, command_id)
        for commit in result.commits:
            for event in commit.get("events", []):
                if event.get("type") == "approval_requested":
                    approval_id = str(event["approval"])
        return approval_id, result

    async def approve(
        self, mandate: str, approval: str, reason: str | None = None, *, command_id: str | None = None
    ) -> CommandResult:
        """The tree's principal grants a pending approval."""
        return await self._decide_approval("approve", mandate, approval, reason, command_id)

    async def deny_approval(
        self, mandate: str, approval: str, reason: str | None = None, *, command_id: str | None = None
    ) -> CommandResult:
        """The tree's principal denies a pending approval."""
        return await self._decide_approval("deny_approval", mandate, approval, reason, command_id)

    async def _decide_approval(
        self, verb: str, mandate: str, approval: str, reason: str | None, command_id: str | None
    ) -> CommandResult:
        cmd: JSON = {"type": verb, "mandate": mandate, "approval": approval}
        if reason is not None:
            cmd["reason"] = reason
        return await self._command(cmd, command_id)

    async def use_approval(
        self,
        mandate: str,
        approval: str,
        action: str,
        resource: str,
        params: Any = None,
        *,
        params_hash: str | None = None,
        command_id: str | None = None,
    ) -> CommandResult:
        """The grantee uses a granted approval for exactly the request it was
        granted for. Success is the one allow it gives; a second use raises
        :class:`EngineError` with reason `approval_used`."""
        cmd: JSON = {
            "type": "use_approval",
            "mandate": mandate,
            "approval": approval,
            "action": action,
            "resource": resource,
            "params_hash": _hash_of(params, params_hash),
        }
        return await self._command(cmd, command_id)

    async def _block(self, verb: str, field: str, who: str, reason: str | None, command_id: str | None) -> CommandResult:
        cmd: JSON = {"type": verb, field: who}
        if reason is not None:
            cmd["reason"] = reason
        return await self._command(cmd, command_id)

    async def register_key(
        self,
        key_id: str,
        owner: str,
        public_key: str,
        not_after: dt.datetime | str | None = None,
        *,
        command_id: str | None = None,
    ) -> CommandResult:
        """Registers `owner`'s (`principal:x`, `agent:x`, `admin:x`) Ed25519
        public key (base64url) as `key_id`: an administrator for anyone,
        any other actor for itself."""
        cmd: JSON = {"type": "register_key", "key_id": check_key_id(key_id), "owner": owner, "public_key": public_key}
        if not_after is not None:
            cmd["not_after"] = _time(not_after, "not_after")
        return await self._command(cmd, command_id)

    async def revoke_key(self, key_id: str, reason: str | None = None, *, command_id: str | None = None) -> CommandResult:
        """Revokes a registered key for good."""
        cmd: JSON = {"type": "revoke_key", "key_id": check_key_id(key_id)}
        if reason is not None:
            cmd["reason"] = reason
        return await self._command(cmd, command_id)

    async def rotate_key(
        self, key_id: str, new_key_id: str, public_key: str, *, command_id: str | None = None
    ) -> CommandResult:
        """Registers `new_key_id` for the owner of `key_id` and revokes
        `key_id`, in one commit."""
        cmd: JSON = {
            "type": "rotate_key",
            "key_id": check_key_id(key_id),
            "new_key_id": check_key_id(new_key_id),
            "public_key": public_key,
        }
        return await self._command(cmd, command_id)

    async def keys(self) -> JSON:
        """The tenant's key ring: configured and registered keys, with status."""
        result: JSON = await self.query("keys", {})
        return result

    async def block_agent(self, agent: str, reason: str | None = None, *, command_id: str | None = None) -> CommandResult:
        return await self._block("block_agent", "agent", agent, reason, command_id)

    async def unblock_agent(self, agent: str, reason: str | None = None, *, command_id: str | None = None) -> CommandResult:
        return await self._block("unblock_agent", "agent", agent, reason, command_id)

    async def block_principal(self, principal: str, reason: str | None = None, *, command_id: str | None = None) -> CommandResult:
        return await self._block("block_principal", "principal", principal, reason, command_id)

    async def unblock_principal(
        self, principal: str, reason: str | None = None, *, command_id: str | None = None
    ) -> CommandResult:
        return await self._block("unblock_principal", "principal", principal, reason, command_id)

    async def revoke_agent(self, agent: str, reason: str | None = None, *, command_id: str | None = None) -> CommandResult:
        """Deprovisioning: revokes every live mandate `agent` holds (bulk)."""
        return await self._block("revoke_agent", "agent", agent, reason, command_id)

    async def revoke_principal(
        self, principal: str, reason: str | None = None, *, command_id: str | None = None
    ) -> CommandResult:
        """Offboarding: revokes every live root `principal` granted (bulk)."""
        return await self._block("revoke_principal", "principal", principal, reason, command_id)

    # -- queries ---------------------------------------------------------------

    @staticmethod
    def _mandate_query(mandate: str, at: dt.datetime | str | None, consistency: Consistency) -> JSON:
        q: JSON = {"mandate": mandate, "consistency": consistency_json(consistency)}
        if at is not None:
            q["at"] = _time(at, "at")
        return q

    @staticmethod
    def _tree_query(
        tree: str | None, mandate: str | None, at: dt.datetime | str | None, consistency: Consistency
    ) -> JSON:
        if (tree is None) == (mandate is None):
            raise InvalidArgument("name the tree either by tree= or by mandate=, not both or neither")
        q: JSON = {"consistency": consistency_json(consistency)}
        if tree is not None:
            q["tree"] = tree
        if mandate is not None:
            q["mandate"] = mandate
        if at is not None:
            q["at"] = _time(at, "at")
        return q

    async def status(
        self, mandate: str, *, at: dt.datetime | str | None = None, consistency: Consistency = "fresh"
    ) -> JSON:
        """`{"mandate": {...}, "effective": {"status": ..., "cause": ...}, ...}`."""
        result: JSON = await self.query("status", self._mandate_query(mandate, at, consistency))
        return result

    async def chain(
        self, mandate: str, *, at: dt.datetime | str | None = None, consistency: Consistency = "fresh"
    ) -> ChainReply:
        """The mandate's chain, root first, with the full records a guard holds."""
        return ChainReply.from_json(await self.query("chain", self._mandate_query(mandate, at, consistency)))

    async def tree(
        self,
        *,
        tree: str | None = None,
        mandate: str | None = None,
        at: dt.datetime | str | None = None,
        consistency: Consistency = "fresh",
    ) -> JSON:
        result: JSON = await self.query("tree", self._tree_query(tree, mandate, at, consistency))
        return result

    async def history(
        self,
        *,
        tree: str | None = None,
        mandate: str | None = None,
        at: dt.datetime | str | None = None,
        consistency: Consistency = "fresh",
    ) -> JSON:
        """The tree's events (named by a mandate only: that mandate's own)."""
        result: JSON = await self.query("history", self._tree_query(tree, mandate, at, consistency))
        return result

    async def verify(
        self, *, tree: str | None = None, mandate: str | None = None, consistency: Consistency = "fresh"
    ) -> JSON:
        """Whether the tree's records, re-read from the log, form an unbroken hash chain."""
        result: JSON = await self.query("verify", self._tree_query(tree, mandate, None, consistency))
        return result

    async def list(
        self,
        *,
        agent: str | None = None,
        principal: str | None = None,
        mission_ref: str | None = None,
        consistency: Consistency = "fresh",
    ) -> JSON:
        """Mandates held by an agent, granted by a principal, or serving a mission (exactly one)."""
        given = {k: v for k, v in (("agent", agent), ("principal", principal), ("mission_ref", mission_ref)) if v}
        if len(given) != 1:
            raise InvalidArgument("list: give exactly one of agent=, principal=, mission_ref=")
        q: JSON = {**given, "consistency": consistency_json(consistency)}
        result: JSON = await self.query("list", q)
        return result

    async def check(
        self,
        mandate: str,
        action: str,
        resource: str,
        *,
        actor: Actor | None = None,
        at: dt.datetime | str | None = None,
        consistency: Consistency = "fresh",
    ) -> Decision:
        """The engine's decision (recorded in its audit); a guard answers the
        same locally without a round trip. `actor` defaults to the client's."""
        q: JSON = {
            "mandate": mandate,
            "action": action,
            "resource": resource,
            "consistency": consistency_json(consistency),
        }
        who = actor or self.actor
        if who is not None:
            q["actor"] = who.to_json()
        if at is not None:
            q["at"] = _time(at, "at")
        return Decision.from_json(await self.query("check", q))

    async def audit(self, mandate: str, limit: int = 100) -> JSON:
        """Recorded decisions for a mandate, oldest first."""
        result: JSON = await self.query("audit", {"mandate": mandate, "limit": limit})
        return result

    async def health(self) -> JSON:
        """The answering engine instance's health."""
        result: JSON = await self.query("health", {})
        return result

    async def mission_completed(
        self,
        mission_ref: str,
        notice: JSON | None = None,
        *,
        key: str | None = None,
        secret: bytes | None = None,
    ) -> None:
        """Publishes a mission's completion into the mission stream (as a
        ticketing system does); `key`/`secret` sign it for a tenant that
        requires authentication (`ticketing:<system>` or `admin:<id>`)."""
        subject = f"mission.{self.tenant}.{mission_token(mission_ref)}.completed"
        body = json.dumps(notice or {}, separators=(",", ":")).encode()
        headers = None
        if key is not None and secret is not None:
            headers = {AUTH_HEADER: sign(secret, key, subject, body)}
        try:
            await self.nc.jetstream().publish(subject, body, headers=headers, timeout=self.timeout)
        except nats.errors.Error as exc:
            raise TransportError(f"{subject}: {exc or type(exc).__name__}") from exc


def params_hash(params: Any) -> str:
    """The hash an approval is bound to: lowercase hex SHA-256 of the
    canonical JSON of `params` (keys sorted, no whitespace, non-ASCII as is;
    numbers as given, so `1` and `1.0` hash apart), as the engine's
    `params_hash` computes it."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _hash_of(params: Any, given: str | None) -> str:
    if given is not None:
        if params is not None:
            raise InvalidArgument("give params or params_hash, not both")
        return given
    return params_hash(params)


def uuid7() -> str:
    """A new time-ordered (version 7) UUID."""
    ms = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    raw = bytearray(ms.to_bytes(6, "big") + secrets.token_bytes(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(raw)))


def mission_token(ref: str) -> str:
    """The subject token of a mission reference: letters, digits, `_`, `:`
    and `-` stay, every other byte is `%` and two uppercase hex digits."""
    if not ref or len(ref) > 128 or not all("!" <= c <= "~" for c in ref):
        raise InvalidArgument(f"mission_ref {ref!r} is not 1 to 128 printable ASCII bytes without spaces")
    return "".join(c if (c.isascii() and (c.isalnum() or c in "_:-")) else f"%{ord(c):02X}" for c in ref)
