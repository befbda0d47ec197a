"""The engine's authorization rules, for a guard's local check.

This decides exactly as the engine's `authorize` does (outcome, reason and
approval patterns, in the same order of rules):

1. a mandate the chain does not hold: `unknown_mandate`;
2. an action or resource that is not a concrete request (bad grammar, a
   wildcard, `.`/`..` resource segments): `invalid_request`;
3. a chain whose effective status is not active (paused, revoked, expired
   by `not_after`, completed, here or above): `not_active` with its cause;
4. the first link, root first, whose scope does not allow the request:
   `out_of_scope` naming it;
5. step-up patterns of the chain covering the action: `needs_approval`
   listing them; otherwise `allow`.

Patterns: actions are `:`-separated segments optionally ending in `*` (one
or more further segments); resources are `/`-separated, `*` one segment, a
trailing `**` any suffix (the empty one included). Segments are letters,
digits and `-_.@+=`, at most 256 bytes in all.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Sequence

from .types import JSON, Decision, Mandate, Outcome, Status, format_time

MAX_PATTERN_LEN = 256


class PatternError(ValueError):
    """A pattern or request that does not follow the grammar; the message is
    the engine's own wording."""


def _debug(s: str) -> str:
    """A string quoted as the engine quotes it in messages (Rust's `{:?}`)."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\0":
            out.append("\\0")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _truncate(value: str) -> str:
    raw = value.encode()
    if len(raw) <= 80:
        return value
    end = 80
    while end > 0 and (raw[end] & 0xC0) == 0x80:
        end -= 1
    return raw[:end].decode() + "\u2026"


def _invalid(pattern: str, reason: str) -> PatternError:
    return PatternError(f"invalid scope pattern {_debug(_truncate(pattern))}: {reason}")


_SEGMENT = re.compile(r"[A-Za-z0-9._@+=-]+")
_CONCRETE_ACTION = re.compile(r"[A-Za-z0-9._@+=-]+(?::[A-Za-z0-9._@+=-]+)*")
_RESOURCE_SEGMENT = r"(?!\.\.?(?:/|\Z))[A-Za-z0-9._@+=-]+"
_CONCRETE_RESOURCE = re.compile(f"{_RESOURCE_SEGMENT}(?:/{_RESOURCE_SEGMENT})*")


def _valid_segment(s: str) -> bool:
    return _SEGMENT.fullmatch(s) is not None


def _segments(s: str, kind: str, sep: str) -> list[str]:
    if len(s.encode()) > MAX_PATTERN_LEN:
        raise _invalid(s, "longer than 256 bytes")
    if not s:
        raise _invalid(s, f"{kind} must not be empty")
    return s.split(sep)


@dataclass(frozen=True)
class ActionPattern:
    prefix: tuple[str, ...]
    wildcard: bool

    @staticmethod
    def parse(s: str) -> "ActionPattern":
        parts = _segments(s, "action", ":")
        wildcard = parts[-1] == "*"
        body = parts[:-1] if wildcard else parts
        for seg in body:
            if "*" in seg:
                raise _invalid(s, "'*' may only be the last action segment")
            if not _valid_segment(seg):
                raise _invalid(
                    s, f"action segment {_debug(seg)} must be non-empty letters, digits or -_.@+="
                )
        return ActionPattern(tuple(body), wildcard)

    def covers_concrete(self, action: str) -> bool:
        segs = action.split(":")
        n = len(self.prefix)
        if len(segs) < n or tuple(segs[:n]) != self.prefix:
            return False
        return (len(segs) > n) == self.wildcard

    def __str__(self) -> str:
        return ":".join(self.prefix + (("*",) if self.wildcard else ()))


_ANY = None  # a `*` resource segment


@dataclass(frozen=True)
class ResourcePattern:
    segs: tuple[str | None, ...]
    rest: bool

    @staticmethod
    def parse(s: str) -> "ResourcePattern":
        parts = _segments(s, "resource", "/")
        segs: list[str | None] = []
        rest = False
        for i, seg in enumerate(parts):
            if seg == "**" and i + 1 == len(parts):
                rest = True
            elif seg == "**":
                raise _invalid(s, "'**' may only be the last resource segment")
            elif seg == "*":
                segs.append(_ANY)
            elif "*" in seg:
                raise _invalid(s, "'*' must be a whole segment")
            elif seg in (".", ".."):
                raise _invalid(
                    s,
                    f"resource segment {_debug(seg)} is a relative path step; resources are canonical paths",
                )
            elif not _valid_segment(seg):
                raise _invalid(
                    s, f"resource segment {_debug(seg)} must be non-empty letters, digits or -_.@+="
                )
            else:
                segs.append(seg)
        return ResourcePattern(tuple(segs), rest)

    def covers_concrete(self, resource: str) -> bool:
        segs = resource.split("/")
        if len(segs) < len(self.segs):
            return False
        for p, s in zip(self.segs, segs):
            if p is not _ANY and p != s:
                return False
        return self.rest or len(segs) == len(self.segs)


def is_concrete_request(action: str, resource: str) -> bool:
    """True when `action` on `resource` is a concrete request (what
    :func:`parse_request` accepts), without building patterns."""

    # Both patterns admit ASCII only, so characters are bytes.
    return (
        len(action) <= MAX_PATTERN_LEN
        and len(resource) <= MAX_PATTERN_LEN
        and _CONCRETE_ACTION.fullmatch(action) is not None
        and _CONCRETE_RESOURCE.fullmatch(resource) is not None
    )


def parse_request(action: str, resource: str) -> str | None:
    """Why `action` on `resource` is not a concrete request, or `None` when
    it is one (the engine's wording)."""
    try:
        a = ActionPattern.parse(action)
        r = ResourcePattern.parse(resource)
    except PatternError as exc:
        return str(exc)
    if a.wildcard or r.rest or any(s is _ANY for s in r.segs):
        return (
            f"a checked request must be concrete: action {_debug(action)} on resource "
            f"{_debug(resource)} contains a wildcard"
        )
    return None


def _action_regex(a: ActionPattern) -> str:
    prefix = ":".join(re.escape(p) for p in a.prefix)
    if not a.wildcard:
        return prefix
    return f"{prefix}:[^:\n]+(?::[^:\n]+)*" if prefix else "[^:\n]+(?::[^:\n]+)*"


def _resource_regex(r: ResourcePattern) -> str:
    segs = "/".join("[^/\n]+" if s is _ANY else re.escape(s) for s in r.segs)
    if not r.rest:
        return segs
    return f"{segs}(?:/[^/\n]+)*" if segs else "[^/\n]+(?:/[^/\n]+)*"


class _PreparedScope:
    """One mandate's scope as one regular expression over
    `action "\n" resource`, for concrete requests (which hold no newline)."""

    __slots__ = ("grants", "_regex")

    def __init__(self, mandate: Mandate) -> None:
        self.grants = [
            (ActionPattern.parse(g.action), ResourcePattern.parse(g.resource)) for g in mandate.scope
        ]
        self._regex = re.compile(
            "|".join(f"(?:{_action_regex(a)})\n(?:{_resource_regex(r)})" for a, r in self.grants)
        )

    def allows(self, action: str, resource: str) -> bool:
        """For a concrete request: does a grant cover it?"""
        return self._regex.fullmatch(f"{action}\n{resource}") is not None

    def allows_slowly(self, action: str, resource: str) -> bool:
        """The same, segment by segment (the engine's way; for tests)."""
        return any(a.covers_concrete(action) and r.covers_concrete(resource) for a, r in self.grants)


def effective(chain: Sequence[Mandate], now: dt.datetime) -> tuple[Status, JSON | None]:
    """The effective status of the last mandate of `chain` (root first) at
    `now`, and its cause (the engine's `Effective`)."""
    terminal: JSON | None = None
    paused: JSON | None = None
    terminal_at: dt.datetime | None = None
    paused_at: dt.datetime | None = None
    for m in chain:
        t = m.transition
        cand: JSON | None = None
        cand_at: dt.datetime | None = None
        if t is not None and t.status.is_terminal:
            cand, cand_at = _cause(m.id, t.status, t.at, t.by.to_json(), t.reason), t.at
        elif m.not_after <= now:
            cand = _cause(m.id, Status.EXPIRED, m.not_after, None, "not_after passed")
            cand_at = m.not_after
        elif t is not None:
            if paused_at is None or t.at < paused_at:
                paused, paused_at = _cause(m.id, t.status, t.at, t.by.to_json(), t.reason), t.at
        if cand is not None and cand_at is not None:
            if terminal_at is None or cand_at < terminal_at:
                terminal, terminal_at = cand, cand_at
    cause = terminal if terminal is not None else paused
    if cause is None:
        return Status.ACTIVE, None
    return Status(cause["status"]), cause


def _cause(mandate: str, status: Status, at: dt.datetime, by: JSON | None, reason: str | None) -> JSON:
    c: JSON = {"mandate": mandate, "status": status.value, "at": format_time(at)}
    if by is not None:
        c["by"] = by
    if reason is not None:
        c["reason"] = reason
    return c


def chain_link(m: Mandate) -> JSON:
    r = m.raw
    return {
        "mandate": m.id,
        "grantor": r.get("grantor"),
        "grantee": m.grantee,
        "on_behalf_of": m.principal,
        "scope": [g.to_json() for g in m.scope],
        "not_after": r.get("not_after"),
        "status": m.status.value,
    }


class PreparedChain:
    """A chain (root first, ending at the mandate checked under) made ready
    for checks: patterns parsed once."""

    def __init__(self, tenant: str, tree: str | None, chain: Sequence[Mandate]) -> None:
        self.tenant = tenant
        self.tree = tree
        self.chain = tuple(chain)
        self.mandate = self.chain[-1].id if self.chain else ""
        self._scopes = [_PreparedScope(m) for m in self.chain]
        self._step_up = [ActionPattern.parse(p) for m in self.chain for p in m.step_up]
        self._links = [chain_link(m) for m in self.chain]
        self.deadline = min((m.not_after for m in self.chain), default=None)
        # Until the earliest `not_after`, a chain with no pause or end of its
        # own is active: worked out once, not per check.
        self._active_until = (
            self.deadline if self.chain and all(m.transition is None for m in self.chain) else None
        )

    def _effective(self, now: dt.datetime) -> tuple[Status, JSON | None]:
        if self._active_until is not None and now < self._active_until:
            return Status.ACTIVE, None
        return effective(self.chain, now)

    def allows(self, action: str, resource: str, now: dt.datetime) -> bool:
        """Exactly `self.authorize(...).outcome is Outcome.ALLOW`, without
        building the decision."""
        if not self.chain or self._effective(now)[0] is not Status.ACTIVE:
            return False
        if not is_concrete_request(action, resource):
            return False
        return all(s.allows(action, resource) for s in self._scopes) and not any(
            p.covers_concrete(action) for p in self._step_up
        )

    def authorize(self, action: str, resource: str, now: dt.datetime, mandate: str | None = None) -> Decision:
        d = Decision(
            outcome=Outcome.DENY,
            reason=None,
            approval=[],
            tenant=self.tenant,
            tree=self.tree,
            mandate=mandate or self.mandate,
            action=action,
            resource=resource,
            at=now,
            chain=list(self._links),
        )
        if not self.chain or (mandate is not None and mandate != self.mandate):
            d.reason = {"kind": "unknown_mandate"}
            d.tree = None
            d.chain = []
            return d
        status, cause = self._effective(now)
        d.effective = {"status": status.value} if cause is None else {"status": status.value, "cause": cause}
        bad = None if is_concrete_request(action, resource) else parse_request(action, resource)
        if bad is not None:
            d.reason = {"kind": "invalid_request", "reason": bad}
            return d
        if status is not Status.ACTIVE:
            d.reason = {"kind": "not_active", "status": status.value, "cause": cause}
            return d
        for m, scope in zip(self.chain, self._scopes):
            if not scope.allows(action, resource):
                d.reason = {"kind": "out_of_scope", "mandate": m.id}
                return d
        approval = [str(p) for p in self._step_up if p.covers_concrete(action)]
        d.approval = approval
        d.outcome = Outcome.NEEDS_APPROVAL if approval else Outcome.ALLOW
        return d


def authorize(
    tenant: str, chain: Sequence[Mandate], action: str, resource: str, now: dt.datetime
) -> Decision:
    """The engine's decision for `action` on `resource` under the last
    mandate of `chain` (root first) at `now`."""
    tree = chain[0].tree if chain else None
    return PreparedChain(tenant, tree, chain).authorize(action, resource, now)
