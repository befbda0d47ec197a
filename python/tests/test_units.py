"""The parts that need no engine: patterns, effective status, wire parsing."""

from __future__ import annotations

import datetime as dt

import pytest

from mandate_guard import DecodeError, Mandate, Outcome, authorize, parse_request, parse_time
from mandate_guard.authorize import is_concrete_request
from mandate_guard.hub import ack_info

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 1, 1, 12, tzinfo=UTC)


def mandate(id: str, parent: str | None, scope: list[tuple[str, str]], **kw: object) -> Mandate:
    doc = {
        "id": id, "tree": "t", "tenant": "acme", "parent": parent, "grantee": "a", "principal": "p",
        "grantor": {"kind": "principal", "id": "p"},
        "scope": [{"action": a, "resource": r} for a, r in scope],
        "step_up": kw.get("step_up", []), "supervisors": [], "depth": 1, "children": [],
        "not_after": kw.get("not_after", "2026-01-01T13:00:00Z"), "status": kw.get("status", "active"),
        "issued_at": "2026-01-01T11:00:00Z", "transition": kw.get("transition"),
    }
    return Mandate.from_json(doc)


def test_patterns_match_as_the_engine_says() -> None:
    chain = [mandate("r", None, [("finance:*", "reports/**"), ("*", "public/*")], step_up=["finance:approve:*"])]
    cases = {
        ("finance:read", "reports/q3/x"): "allow",
        ("finance:read", "reports"): "allow",  # `**` takes the empty suffix too
        ("finance", "reports/x"): "deny",  # `finance:*` needs one more segment
        ("finance:approve:pay", "reports/x"): "needs_approval",
        ("finance:approve", "reports/x"): "allow",
        ("hr:read", "public/readme"): "allow",
        ("hr:read", "public/a/b"): "deny",
        ("hr:read", "public"): "deny",
    }
    for (a, r), outcome in cases.items():
        assert authorize("acme", chain, a, r, NOW).outcome.value == outcome, (a, r)


def test_bad_requests_are_named_in_the_engines_words() -> None:
    assert parse_request("finance:read", "reports/../x") == (
        'invalid scope pattern "reports/../x": resource segment ".." is a relative path step; '
        "resources are canonical paths"
    )
    assert parse_request("finance:*", "x") == (
        'a checked request must be concrete: action "finance:*" on resource "x" contains a wildcard'
    )
    assert parse_request("", "x") == 'invalid scope pattern "": action must not be empty'
    assert parse_request("a:b*", "x") == "invalid scope pattern \"a:b*\": '*' may only be the last action segment"
    assert parse_request("a", "x" * 300) is not None and "longer than 256 bytes" in (parse_request("a", "x" * 300) or "")
    assert parse_request("fïnance", "x") is not None
    assert parse_request("a:b", ".hidden/..x") is None
    for action, resource in [("a:b", "c/d"), ("a:*", "c"), ("a", "c/*"), ("a", "c/**"), ("", "c"), ("a", ""),
                             ("a", "c/./d"), ("a", "c/../d"), ("a::b", "c"), ("a", "c//d"), ("é", "c"), ("a", "x" * 257)]:
        assert is_concrete_request(action, resource) == (parse_request(action, resource) is None), (action, resource)


def test_the_earliest_end_on_the_chain_is_the_effective_one() -> None:
    revoked = {"status": "revoked", "seq": 3, "at": "2026-01-01T11:30:00Z", "by": {"kind": "principal", "id": "p"}}
    paused = {"status": "paused", "seq": 2, "at": "2026-01-01T11:10:00Z", "by": {"kind": "principal", "id": "p"}}
    chain = [
        mandate("r", None, [("a:b", "c")], transition=paused, status="paused"),
        mandate("m", "r", [("a:b", "c")], not_after="2026-01-01T11:20:00Z"),
        mandate("l", "m", [("a:b", "c")], transition=revoked, status="revoked"),
    ]
    d = authorize("acme", chain, "a:b", "c", NOW)
    assert d.outcome is Outcome.DENY and d.reason is not None
    assert d.reason["status"] == "expired" and d.reason["cause"]["mandate"] == "m"
    d = authorize("acme", chain[:1], "a:b", "c", NOW)
    assert d.reason is not None and d.reason["status"] == "paused"
    # A bad request is named before the status.
    assert authorize("acme", chain, "*", "c", NOW).reason_kind == "invalid_request"
    assert authorize("acme", [], "a:b", "c", NOW).reason_kind == "unknown_mandate"


def test_wire_times_and_ack_subjects() -> None:
    assert parse_time("2026-01-01T12:00:00.123456789Z") == dt.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert parse_time("2026-01-01T14:00:00+02:00") == NOW
    for bad in ("2026-01-01 12:00:00", "2026-13-01T12:00:00Z", 5):
        with pytest.raises(DecodeError):
            parse_time(bad)
    assert ack_info("$JS.ACK.MANDATE_SIGNALS.c1.1.42.7.1700000000000000000.0") == (42, 7, 1700000000000000000)
    assert ack_info("$JS.ACK.dom.hash.MANDATE_SIGNALS.c1.1.42.7.1700000000000000000.0.tok") == (42, 7, 1700000000000000000)
    assert ack_info("_INBOX.x") is None and ack_info("$JS.ACK.S.c.1.x.7.1.0") is None


def test_the_compiled_scope_matches_segment_by_segment() -> None:
    import itertools

    from mandate_guard.authorize import _PreparedScope

    actions = ["*", "a:*", "a:b", "a:b:*", "a.b:c", "x"]
    resources = ["**", "r/**", "r/*", "r/*/c", "r", "r/b/**", "*", "*/b", "r.x/*"]
    requests_a = ["a", "a:b", "a:b:c", "a:bc", "a.b:c", "x", "x:y", "ab:c"]
    requests_r = ["r", "r/b", "r/b/c", "r/b/c/d", "rr/b", "r.x/y", "q/b", "r/x/c"]
    for a, r in itertools.product(actions, resources):
        scope = _PreparedScope(mandate("m", None, [(a, r)]))
        for ra, rr in itertools.product(requests_a, requests_r):
            assert scope.allows(ra, rr) == scope.allows_slowly(ra, rr), (a, r, ra, rr)
