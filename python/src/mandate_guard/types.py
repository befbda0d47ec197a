"""The wire objects of `schemas/` this package reads, as dataclasses.

Each `from_json` takes the decoded JSON document and raises
:class:`~mandate_guard.errors.DecodeError` when a required field is missing
or has the wrong type; fields the package does not use stay in `raw`.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Union

from .errors import DecodeError, InvalidArgument

JSON = dict[str, Any]
"""A decoded JSON object."""

UTC = dt.timezone.utc

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_time(value: object, what: str = "time") -> dt.datetime:
    """An RFC 3339 date-time as an aware datetime. Digits past microseconds
    are dropped (the time is read at most a microsecond early, never late)."""
    if not isinstance(value, str):
        raise DecodeError(f"{what}: expected an RFC 3339 date-time string, got {value!r}")
    m = _RFC3339.match(value)
    if not m:
        raise DecodeError(f"{what}: {value!r} is not an RFC 3339 date-time")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    frac = (m.group(7) or "")[:6].ljust(6, "0")
    zone = m.group(8)
    if zone in ("Z", "z"):
        tz = UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        return dt.datetime(y, mo, d, h, mi, min(s, 59), int(frac), tzinfo=tz).astimezone(UTC)
    except ValueError as exc:
        raise DecodeError(f"{what}: {value!r} is not a possible date-time ({exc})") from None


def format_time(t: dt.datetime) -> str:
    """An aware datetime as RFC 3339 in UTC (`2026-01-02T03:04:05.123456Z`)."""
    if t.tzinfo is None:
        raise InvalidArgument(f"datetime {t!r} has no time zone: give an aware datetime (e.g. tz=timezone.utc)")
    t = t.astimezone(UTC)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += f".{t.microsecond:06d}"
    return text + "Z"


def now_utc() -> dt.datetime:
    return dt.datetime.now(UTC)


_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_id(value: str, what: str) -> str:
    """A tenant, agent or principal id: 1 to 64 letters, digits, `_` or `-`."""
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidArgument(f"{what} {value!r} must be 1 to 64 letters, digits, '_' or '-'")
    return value


def check_uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidArgument(f"{what} {value!r} is not a UUID") from None


@dataclass(frozen=True)
class Actor:
    """Who acts: `principal`, `agent` or `admin` (the engine's own are `system`)."""

    kind: Literal["principal", "agent", "admin", "system"]
    id: str

    @staticmethod
    def principal(id: str) -> "Actor":
        return Actor("principal", check_id(id, "principal id"))

    @staticmethod
    def agent(id: str) -> "Actor":
        return Actor("agent", check_id(id, "agent id"))

    @staticmethod
    def admin(id: str) -> "Actor":
        return Actor("admin", check_id(id, "admin id"))

    @staticmethod
    def parse(text: str) -> "Actor":
        """`principal:cfo`, `agent:x` or `admin:y`."""
        kind, sep, ident = text.partition(":")
        if not sep or kind not in ("principal", "agent", "admin"):
            raise InvalidArgument(f"actor {text!r} must be principal:<id>, agent:<id> or admin:<id>")
        return Actor(kind, check_id(ident, f"{kind} id"))  # type: ignore[arg-type]

    @property
    def key(self) -> str:
        """The key name a signed request carries (`principal:cfo`)."""
        return f"{self.kind}:{self.id}"

    def to_json(self) -> JSON:
        return {"kind": self.kind, "id": self.id}

    @staticmethod
    def from_json(doc: object) -> "Actor":
        if not isinstance(doc, dict) or doc.get("kind") not in ("principal", "agent", "admin", "system"):
            raise DecodeError(f"not an actor: {doc!r}")
        ident = doc.get("id")
        if not isinstance(ident, str):
            raise DecodeError(f"actor without a string id: {doc!r}")
        return Actor(doc["kind"], ident)


@dataclass(frozen=True)
class AtLeast:
    """Consistency `{"at_least": position}`: at least the state after the
    commit at that log position (from a command's `commits[].position`)."""

    position: int


Consistency = Union[Literal["fresh", "local"], AtLeast]
"""How fresh a read must be: `"fresh"` (default), `"local"` or `AtLeast(n)`."""


def consistency_json(c: Consistency) -> object:
    if isinstance(c, AtLeast):
        if not isinstance(c.position, int) or c.position < 0:
            raise InvalidArgument(f"at_least position {c.position!r} must be a non-negative integer")
        return {"at_least": c.position}
    if c not in ("fresh", "local"):
        raise InvalidArgument(f"consistency {c!r} must be 'fresh', 'local' or AtLeast(position)")
    return c


class Status(str, Enum):
    ACTIVE = "active"
    PAUSED = "paused"
    REVOKED = "revoked"
    EXPIRED = "expired"
    COMPLETED = "completed"

    @property
    def is_terminal(self) -> bool:
        return self in (Status.REVOKED, Status.EXPIRED, Status.COMPLETED)


def _status(value: object, what: str) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise DecodeError(f"{what}: {value!r} is not a status") from None


def _get(doc: JSON, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in doc:
        raise DecodeError(f"{what}: field {key!r} is missing")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DecodeError(f"{what}: field {key!r} has the wrong type: {value!r}")
    return value


def _obj(doc: object, what: str) -> JSON:
    if not isinstance(doc, dict):
        raise DecodeError(f"{what}: expected a JSON object, got {type(doc).__name__}")
    return doc


@dataclass(frozen=True)
class Grant:
    """One grant: an action pattern on a resource pattern."""

    action: str
    resource: str

    def to_json(self) -> JSON:
        return {"action": self.action, "resource": self.resource}


@dataclass(frozen=True)
class Transition:
    """Why and when a mandate left `active` on its own."""

    status: Status
    seq: int
    at: dt.datetime
    by: Actor
    reason: str | None


@dataclass(frozen=True)
class Mandate:
    """One mandate's full record (what a guard holds for each link)."""

    id: str
    tree: str
    parent: str | None
    grantee: str
    principal: str
    scope: tuple[Grant, ...]
    step_up: tuple[str, ...]
    not_after: dt.datetime
    status: Status
    transition: Transition | None
    raw: JSON = field(repr=False, compare=False)

    @staticmethod
    def from_json(doc: object) -> "Mandate":
        d = _obj(doc, "mandate")
        w = f"mandate {d.get('id')!r}"
        scope = []
        for g in _get(d, "scope", list, w):
            g = _obj(g, f"{w}: grant")
            scope.append(Grant(_get(g, "action", str, w), _get(g, "resource", str, w)))
        tr = d.get("transition")
        transition = None
        if tr is not None:
            t = _obj(tr, f"{w}: transition")
            transition = Transition(
                status=_status(t.get("status"), f"{w}: transition"),
                seq=_get(t, "seq", int, w),
                at=parse_time(t.get("at"), f"{w}: transition at"),
                by=Actor.from_json(t.get("by")),
                reason=t.get("reason"),
            )
        parent = d.get("parent")
        if parent is not None and not isinstance(parent, str):
            raise DecodeError(f"{w}: parent {parent!r} is not a string")
        step_up = _get(d, "step_up", list, w)
        if not all(isinstance(p, str) for p in step_up):
            raise DecodeError(f"{w}: step_up holds a non-string")
        return Mandate(
            id=_get(d, "id", str, w),
            tree=_get(d, "tree", str, w),
            parent=parent,
            grantee=_get(d, "grantee", str, w),
            principal=_get(d, "principal", str, w),
            scope=tuple(scope),
            step_up=tuple(step_up),
            not_after=parse_time(d.get("not_after"), f"{w}: not_after"),
            status=_status(d.get("status"), w),
            transition=transition,
            raw=d,
        )


@dataclass(frozen=True)
class ChainReply:
    """Reply to `chain`: the mandates root first, and the tree's version."""

    tree: str
    mandates: tuple[Mandate, ...]
    effective: JSON
    version: int
    position: int
    engine_time: dt.datetime
    raw: JSON = field(repr=False, compare=False)

    @staticmethod
    def from_json(doc: object) -> "ChainReply":
        d = _obj(doc, "chain reply")
        w = "chain reply"
        return ChainReply(
            tree=_get(d, "tree", str, w),
            mandates=tuple(Mandate.from_json(m) for m in _get(d, "mandates", list, w)),
            effective=_get(d, "effective", dict, w),
            version=_get(d, "version", int, w),
            position=_get(d, "position", int, w),
            engine_time=parse_time(d.get("engine_time"), f"{w}: engine_time"),
            raw=d,
        )


class SignalKind(str, Enum):
    TERMINATED = "terminated"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    NARROWED = "narrowed"
    QUARANTINED = "quarantined"
    RESTORED = "restored"


@dataclass(frozen=True)
class Signal:
    """A notice that authority changed (schemas/signal.json)."""

    kind: SignalKind
    tenant: str
    tree: str
    mandate: str
    status: Status
    event_id: str
    event_type: str
    seq: int
    time: dt.datetime
    reason: str | None
    position: int | None
    head_position: int | None
    raw: JSON = field(repr=False, compare=False)

    @staticmethod
    def from_json(doc: object) -> "Signal":
        d = _obj(doc, "signal")
        w = "signal"
        try:
            kind = SignalKind(d.get("kind"))
        except ValueError:
            raise DecodeError(f"signal: unknown kind {d.get('kind')!r}") from None
        position = d.get("position")
        head = d.get("head_position")
        for name, v in (("position", position), ("head_position", head)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise DecodeError(f"signal: {name} {v!r} is not an integer")
        return Signal(
            kind=kind,
            tenant=_get(d, "tenant", str, w),
            tree=_get(d, "tree", str, w),
            mandate=_get(d, "mandate", str, w),
            status=_status(d.get("status"), w),
            event_id=_get(d, "event_id", str, w),
            event_type=_get(d, "event_type", str, w),
            seq=_get(d, "seq", int, w),
            time=parse_time(d.get("time"), "signal time"),
            reason=d.get("reason"),
            position=position,
            head_position=head,
            raw=d,
        )


@dataclass(frozen=True)
class Beacon:
    """An engine's periodic word that it serves a tenant (schemas/beacon.json)."""

    tenant: str
    instance: str
    time: dt.datetime
    interval_ms: int

    @staticmethod
    def from_json(doc: object) -> "Beacon":
        d = _obj(doc, "beacon")
        return Beacon(
            tenant=_get(d, "tenant", str, "beacon"),
            instance=_get(d, "instance", str, "beacon"),
            time=parse_time(d.get("time"), "beacon time"),
            interval_ms=_get(d, "interval_ms", int, "beacon"),
        )


class Outcome(str, Enum):
    ALLOW = "allow"
    DENY = "deny"
    NEEDS_APPROVAL = "needs_approval"


@dataclass
class Decision:
    """The answer to a check (schemas/decision.json), from the engine or
    worked out locally by a guard. `reason` is the deny reason object
    (`{"kind": "out_of_scope", "mandate": ...}`), `None` unless denied."""

    outcome: Outcome
    reason: JSON | None
    approval: list[str]
    tenant: str
    tree: str | None
    mandate: str
    action: str
    resource: str
    at: dt.datetime
    effective: JSON | None = None
    chain: list[JSON] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW

    @property
    def reason_kind(self) -> str | None:
        """`not_active`, `out_of_scope`, `invalid_request`, `unverified`, ...;
        `None` when not denied."""
        return None if self.reason is None else str(self.reason.get("kind"))

    def to_json(self) -> JSON:
        out: JSON = {
            "outcome": self.outcome.value,
            "tenant": self.tenant,
            "mandate": self.mandate,
            "action": self.action,
            "resource": self.resource,
            "at": format_time(self.at),
            "chain": self.chain,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.approval:
            out["approval"] = list(self.approval)
        if self.tree is not None:
            out["tree"] = self.tree
        if self.effective is not None:
            out["effective"] = self.effective
        return out

    @staticmethod
    def from_json(doc: object) -> "Decision":
        d = _obj(doc, "decision")
        w = "decision"
        try:
            outcome = Outcome(d.get("outcome"))
        except ValueError:
            raise DecodeError(f"decision: unknown outcome {d.get('outcome')!r}") from None
        reason = d.get("reason")
        if reason is not None and not isinstance(reason, dict):
            raise DecodeError(f"decision: reason {reason!r} is not an object")
        return Decision(
            outcome=outcome,
            reason=reason,
            approval=list(d.get("approval") or []),
            tenant=_get(d, "tenant", str, w),
            tree=d.get("tree"),
            mandate=_get(d, "mandate", str, w),
            action=_get(d, "action", str, w),
            resource=_get(d, "resource", str, w),
            at=parse_time(d.get("at"), "decision at"),
            effective=d.get("effective"),
            chain=list(d.get("chain") or []),
        )


@dataclass(frozen=True)
class CommandResult:
    """The result of a command (schemas/reply-command.json)."""

    command_id: str
    duplicate: bool
    mandate: str | None
    commits: list[JSON]
    raw: JSON = field(repr=False, compare=False)

    @property
    def position(self) -> int:
        """The log position of the last commit written (0 if none): read
        with `AtLeast(result.position)` to see this command's effect."""
        return max((int(c.get("position", 0)) for c in self.commits), default=0)

    @property
    def tree(self) -> str | None:
        return str(self.commits[0]["tree"]) if self.commits else None

    @staticmethod
    def from_json(doc: object) -> "CommandResult":
        d = _obj(doc, "command result")
        w = "command result"
        mandate = d.get("mandate")
        if mandate is not None and not isinstance(mandate, str):
            raise DecodeError(f"{w}: mandate {mandate!r} is not a string")
        return CommandResult(
            command_id=_get(d, "command_id", str, w),
            duplicate=_get(d, "duplicate", bool, w),
            mandate=mandate,
            commits=_get(d, "commits", list, w),
            raw=d,
        )
