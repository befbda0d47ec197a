"""The guard's local check decides exactly as the engine's `check` query,
over many requests (wildcards, approval patterns, dot segments, bad input)
and over the chain's states (active, paused, narrowed, revoked above)."""

from __future__ import annotations

import itertools
import asyncio
from typing import Callable

from conftest import LEASE, in_
from mandate_guard import Client, Decision, Guard, GuardHub

ACTIONS = [
    "finance:read", "finance:write", "finance:approve:payment", "finance:approve", "finance",
    "finance:read:deep", "tickets:read", "tickets:write", "hr:read", "any:thing",
    "finance:*", "*", "", "finance::read", "finance:re*ad", "fin ance:read", "finance:réad",
    ":read", "finance:", "a" * 257, "x.y@z+w=v-u_t:ok",
]
RESOURCES = [
    "reports/q3/summary", "reports/q3", "reports", "reports/q3/deep/er", "reports/q4/summary",
    "tickets/42/comments", "tickets/42", "tickets/42/comments/7", "public/readme", "public",
    "reports/*", "reports/**", "reports/./q3", "reports/../etc", ".", "..", ".hidden/file",
    "..dots/x", "reports//q3", "/reports", "reports/", "", "reports/q3/summary.pdf", "r" * 300,
    "reports/q*3",
]


def _same(engine: Decision, local: Decision, where: str) -> None:
    assert local.outcome == engine.outcome, f"{where}: outcome {local.outcome} locally, {engine.outcome} by the engine ({engine.reason})"
    assert local.approval == engine.approval, f"{where}: approval {local.approval} locally, {engine.approval} by the engine"
    er, lr = engine.reason, local.reason
    if er is None or lr is None:
        assert er == lr, f"{where}: reason {lr} locally, {er} by the engine"
        return
    if er["kind"] == "not_active":
        assert lr["kind"] == "not_active" and lr["status"] == er["status"], f"{where}: {lr} locally, {er} by the engine"
        ec, lc = er.get("cause") or {}, lr.get("cause") or {}
        assert (lc.get("mandate"), lc.get("status")) == (ec.get("mandate"), ec.get("status")), f"{where}: cause {lc} vs {ec}"
    else:
        assert lr == er, f"{where}: reason {lr} locally, {er} by the engine"
    assert local.mandate == engine.mandate and local.tenant == engine.tenant


async def test_local_checks_decide_as_the_engine(make_client: Callable[..., Client], hub: GuardHub) -> None:
    cfo = make_client("principal:cfo")
    root = (
        await cfo.issue(
            "lead",
            ["finance:* on reports/**", "tickets:read on tickets/*/comments", "* on public/*", "hr:read on reports/q3/*",
             "x.y@z+w=v-u_t:ok on reports/**"],
            in_(3600),
            purpose="parity",
            step_up=["finance:write", "finance:approve:*"],
        )
    ).mandate
    assert root
    lead = cfo.as_actor("agent:lead")
    child = (
        await lead.delegate(
            root,
            "analyst",
            ["finance:* on reports/q3/**", "finance:read on reports/q4/*", "tickets:read on tickets/*/comments",
             "any:thing on public/readme", "x.y@z+w=v-u_t:ok on reports/q3/summary.pdf"],
            step_up=["finance:read:*"],
        )
    ).mandate
    assert child
    guard = await Guard.start(cfo.as_actor("agent:analyst"), hub, child, lease=60)
    seen = {"allow": 0, "deny": 0, "needs_approval": 0}

    async def run(label: str) -> None:
        for action, resource in itertools.product(ACTIONS, RESOURCES):
            engine = await cfo.check(child, action, resource)
            local = guard.check(action, resource)
            _same(engine, local, f"[{label}] {action!r} on {resource!r}")
            assert guard.allows(action, resource) == local.allowed, f"[{label}] allows() {action!r} {resource!r}"
            seen[engine.outcome.value] += 1

    await run("active")
    assert seen["allow"] and seen["deny"] and seen["needs_approval"], f"the requests cover too little: {seen}"

    # Narrowed: the guard re-reads on the signal and still agrees.
    await cfo.narrow(root, ["finance:read on reports/**", "* on public/*"])
    await guard.refresh()
    await run("narrowed")

    # Paused above: not_active with the root as cause.
    await cfo.pause(root, "parity")
    await guard.refresh()
    await run("paused")
    await cfo.resume(root)
    await cfo.revoke(root, "parity")
    await guard.refresh()
    await run("revoked")
    assert guard.check("finance:read", "reports/q3/summary").reason_kind == "not_active"


async def test_a_mandate_with_an_expired_link_is_denied_alike(make_client: Callable[..., Client], hub: GuardHub) -> None:
    cfo = make_client("principal:cfo")
    root = (await cfo.issue("lead", ["a:b on c/**"], in_(3600), purpose="expiry parity")).mandate
    assert root
    child = (await cfo.as_actor("agent:lead").delegate(root, "sub", ["a:b on c/*"], not_after=in_(1.0))).mandate
    assert child
    guard = await Guard.start(cfo, hub, child, lease=LEASE * 10)
    assert guard.check("a:b", "c/d").allowed
    await asyncio.wait_for(guard.cancelled.wait(), 10)
    for action, resource in [("a:b", "c/d"), ("a:b", "c/d/e"), ("*", "c/d"), ("a:b", "x")]:
        _same(await cfo.check(child, action, resource), guard.check(action, resource), f"expired {action} {resource}")
    reason = guard.check("a:b", "c/d").reason or {}
    assert (reason.get("kind"), reason.get("status")) == ("not_active", "expired")
    assert guard.status is not None and guard.status.value == "expired"
