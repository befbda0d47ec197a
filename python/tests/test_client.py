"""Every command and query round trip, each request and reply checked
against `schemas/`; errors typed with the engine's code and reason."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import uuid
from typing import Any, Callable

import pytest

from conftest import SECRETS, SECURE_TENANT, Schemas, Stack, in_, validating_trace
from mandate_guard import (
    AtLeast,
    Client,
    EngineError,
    InvalidArgument,
    NoEngine,
    Outcome,
    TimedOut,
    connect,
    mission_token,
    params_hash,
    sign,
    uuid7,
)


def test_the_signed_header_matches_the_engines_known_vector() -> None:
    # The vector of src/protocol/auth.rs, computed independently there.
    assert sign(b"s3cret", "principal:cfo", "mandate.cmd.acme.revoke", b"{}") == (
        "v1 principal:cfo 253a6e69b331d97e857453ad5a3aea0c166aff40dc449a47b48bd369a46a4e97"
    )


def test_mission_tokens_follow_the_worked_examples() -> None:
    for ref, token in [
        ("jira:FIN-42", "jira:FIN-42"),
        ("gh:org/repo#12", "gh:org%2Frepo%2312"),
        ("FIN-42.1", "FIN-42%2E1"),
        ("100%", "100%25"),
    ]:
        assert mission_token(ref) == token
    with pytest.raises(InvalidArgument):
        mission_token("has space")


async def test_every_command_and_query_round_trips(make_client: Callable[..., Client], schemas: Schemas) -> None:
    before = dict(schemas.validated)
    cfo = make_client("principal:cfo")
    lead = cfo.as_actor("agent:lead")
    admin = cfo.as_actor("admin:security")
    ref = f"jira:PY-{secrets.token_hex(3)}"

    issued = await cfo.issue(
        "lead",
        ["finance:* on reports/**", ("tickets:read", "tickets/*")],
        in_(3600),
        purpose="quarterly review",
        mission_ref=ref,
        step_up=["finance:write"],
    )
    root = issued.mandate
    assert root is not None and not issued.duplicate and issued.position > 0
    child = (await lead.delegate(root, "analyst", [("finance:read", "reports/q3/*")])).mandate
    assert child is not None and child != root

    chain = await cfo.chain(child)
    assert [m.id for m in chain.mandates] == [root, child]
    assert chain.mandates[1].parent == root and chain.tree == issued.tree

    status = await cfo.status(child, consistency=AtLeast(issued.position))
    assert status["effective"]["status"] == "active"
    tree = await cfo.tree(tree=issued.tree)
    assert tree["tree"]["root"] == root
    assert (await cfo.verify(mandate=root))["tree"] == issued.tree
    listed = await cfo.list(mission_ref=ref, consistency="local")
    assert [m["mandate"] for m in listed["mandates"]] == [root]
    assert (await cfo.list(agent="analyst"))["mandates"]

    allowed = await cfo.check(child, "finance:read", "reports/q3/x")
    assert allowed.outcome is Outcome.ALLOW and allowed.mandate == child
    approval = await cfo.check(root, "finance:write", "reports/x")
    assert approval.outcome is Outcome.NEEDS_APPROVAL and approval.approval == ["finance:write"]
    schemas.validate("decision", approval.to_json(), "a decision as the package writes it")

    narrowed = await cfo.narrow(root, ["finance:read on reports/**", "tickets:read on tickets/*"])
    assert narrowed.mandate == root
    denied = await cfo.check(root, "finance:write", "reports/x")
    assert denied.outcome is Outcome.DENY and denied.reason_kind == "out_of_scope"
    await cfo.renew(root, in_(7200))
    await cfo.pause(child, "a look")
    assert (await cfo.status(child))["effective"]["status"] == "paused"
    await cfo.resume(child, "fine")
    assert (await cfo.status(child))["effective"]["status"] == "active"

    history = await cfo.history(tree=issued.tree)
    types = [e["type"] for e in history["events"]]
    assert types[:2] == ["mandate_issued", "mandate_issued"] and "mandate_paused" in types
    # A record reaches the audit stream a few milliseconds after its answer.
    for _ in range(100):
        audit = await cfo.audit(child)
        if audit["records"]:
            break
        await asyncio.sleep(0.05)
    assert [r["decision"]["outcome"] for r in audit["records"]] == ["allow"]
    assert (await cfo.health())["position"] >= issued.position

    # A retried command id is a duplicate naming the same mandate.
    cid, until = str(uuid.uuid4()), in_(60)
    first = await cfo.issue("lead", ["x:y on z"], until, purpose="retry", command_id=cid)
    again = await cfo.issue("lead", ["x:y on z"], until, purpose="retry", command_id=cid)
    assert again.duplicate and again.mandate == first.mandate
    with pytest.raises(EngineError) as reused:
        await cfo.issue("lead", ["x:y on z"], in_(90), purpose="retry", command_id=cid)
    assert (reused.value.code, reused.value.reason) == ("conflict", "command_id_reused")

    await cfo.complete(child, "done")
    assert (await cfo.status(child))["effective"]["status"] == "completed"
    await cfo.complete_mission(ref)
    assert (await cfo.status(root))["effective"]["status"] == "completed"

    # Agent and principal blocks, bulk revokes.
    await admin.block_agent("rogue", "compromised")
    with pytest.raises(EngineError) as blocked:
        await cfo.issue("rogue", ["a:b on c"], in_(60), purpose="to a blocked agent")
    assert blocked.value.code == "forbidden"
    await admin.unblock_agent("rogue")
    await cfo.issue("rogue", ["a:b on c"], in_(60), purpose="after the unblock")
    bulk = await admin.revoke_agent("rogue", "deprovisioned")
    assert not bulk.duplicate
    await admin.block_principal("ex-cfo")
    await admin.unblock_principal("ex-cfo")
    await admin.revoke_principal("ex-cfo", "offboarded")

    for name in ("command", "reply-command", "reply-chain", "reply-status", "reply-tree", "reply-verify",
                 "reply-list", "reply-check", "reply-history", "reply-audit", "reply-health", "bulk-command"):
        assert schemas.validated.get(name, 0) > before.get(name, 0), f"nothing was validated against {name}"


def test_the_parameters_hash_matches_the_engines_vector() -> None:
    # The vector of tests/domain_approvals.rs, computed by the engine's code.
    value = {"b": [1, "é\n", {"z": None, "a": True}], "a": -2.5, "amount_cents": 4999}
    assert params_hash(value) == "3798b6c329b25ddd93118b1ad1e7c5c2fcdd66ac2c147e99e8c7850b905cc930"
    # Numbers hash as sent: an integer and a float differ, as in the engine.
    assert params_hash({"n": 1}) == hashlib.sha256(b'{"n":1}').hexdigest()
    assert params_hash({"n": 1.0}) == hashlib.sha256(b'{"n":1.0}').hexdigest()
    assert params_hash({"n": 0.50}) == hashlib.sha256(b'{"n":0.5}').hexdigest()
    ids = {uuid.UUID(uuid7()) for _ in range(100)}
    assert len(ids) == 100 and {i.version for i in ids} == {7}


async def test_an_approval_is_used_once_through_the_engine(make_client: Callable[..., Client], schemas: Schemas) -> None:
    carol = make_client("principal:carol")
    bot = carol.as_actor("agent:support-bot")
    refund = {"amount_cents": 4999, "currency": "EUR"}
    root = (
        await carol.issue(
            "support-bot",
            ["payments:refund on tickets/**"],
            in_(600),
            purpose="refunds",
            step_up=["payments:refund"],
        )
    ).mandate
    assert root is not None
    assert (await bot.check(root, "payments:refund", "tickets/T-1")).outcome is Outcome.NEEDS_APPROVAL
    approval, requested = await bot.request_approval(root, "payments:refund", "tickets/T-1", refund, reason="twice")
    assert requested.position > 0
    # An equal request while it is pending answers with it and writes nothing.
    again, repeated = await bot.request_approval(root, "payments:refund", "tickets/T-1", refund)
    assert (again, repeated.duplicate) == (approval, True)
    with pytest.raises(EngineError) as pending:
        await bot.use_approval(root, approval, "payments:refund", "tickets/T-1", refund)
    assert pending.value.reason == "approval_pending"
    with pytest.raises(EngineError) as not_approver:
        await bot.approve(root, approval)
    assert not_approver.value.reason == "not_authorized"
    await carol.approve(root, approval, "ok")
    with pytest.raises(EngineError) as other:
        await bot.use_approval(root, approval, "payments:refund", "tickets/T-1", {**refund, "amount_cents": 1})
    assert other.value.reason == "approval_mismatch"
    used = await bot.use_approval(root, approval, "payments:refund", "tickets/T-1", params_hash=params_hash(refund))
    assert not used.duplicate
    with pytest.raises(EngineError) as replay:
        await bot.use_approval(root, approval, "payments:refund", "tickets/T-1", refund)
    assert (replay.value.code, replay.value.reason) == ("invalid_state", "approval_used")
    denied, _ = await bot.request_approval(root, "payments:refund", "tickets/T-2", refund)
    await carol.deny_approval(root, denied, "no")
    with pytest.raises(EngineError) as refused:
        await bot.use_approval(root, denied, "payments:refund", "tickets/T-2", refund)
    assert refused.value.reason == "approval_denied"
    with pytest.raises(InvalidArgument):
        await bot.use_approval(root, denied, "payments:refund", "tickets/T-2", refund, params_hash="ab" * 32)


async def test_refusals_carry_the_engines_code_and_reason(
    make_client: Callable[..., Client], schemas: Schemas
) -> None:
    cfo = make_client("principal:cfo")
    root = (await cfo.issue("lead", ["finance:read on reports/**"], in_(600), purpose="refusals")).mandate
    assert root is not None
    lead = cfo.as_actor("agent:lead")
    with pytest.raises(EngineError) as widen:
        await lead.delegate(root, "analyst", ["finance:write on reports/**"])
    assert widen.value.code == "widens" and widen.value.reason == "scope_widens"
    with pytest.raises(EngineError) as stranger:
        await cfo.as_actor("agent:stranger").revoke(root)
    assert stranger.value.code == "forbidden" and stranger.value.reason
    schemas.expect_invalid, sent = True, schemas.invalid_sent
    try:
        with pytest.raises(EngineError) as bad:
            await cfo.issue("lead", ["finance:read on reports/../x"], in_(600), purpose="bad pattern")
    finally:
        schemas.expect_invalid = False
    assert schemas.invalid_sent == sent + 1, "the schema refuses the pattern too"
    assert bad.value.code == "invalid_input" and "relative path step" in bad.value.message
    with pytest.raises(EngineError) as missing:
        await cfo.status(str(uuid.uuid4()))
    assert missing.value.code == "not_found"
    await cfo.revoke(root, "for the test")
    with pytest.raises(EngineError) as terminal:
        await cfo.pause(root)
    assert terminal.value.code == "terminal"
    # Nothing is sent for what the package can tell is wrong.
    with pytest.raises(InvalidArgument):
        await cfo.issue("lead", [], in_(60), purpose="empty scope")
    with pytest.raises(InvalidArgument):
        await cfo.tree()
    with pytest.raises(InvalidArgument):
        await cfo.list(agent="a", principal="b")
    with pytest.raises(InvalidArgument):
        Client(cfo.nc, "not a tenant")


async def test_signed_commands_on_a_tenant_that_requires_them(
    nc: Any, schemas: Schemas
) -> None:
    trace = validating_trace(schemas)
    cfo = Client(nc, SECURE_TENANT, "principal:cfo", secret=SECRETS["principal:cfo"], trace=trace)
    res = await cfo.issue("lead", ["a:b on c/**"], in_(600), purpose="signed")
    lead = cfo.as_actor("agent:lead", SECRETS["agent:lead"])
    assert (await lead.delegate(res.mandate or "", "sub", ["a:b on c/d"])).mandate
    for wrong in (None, "not-the-secret"):
        with pytest.raises(EngineError) as refused:
            await Client(nc, SECURE_TENANT, "principal:cfo", secret=wrong).issue(
                "lead", ["a:b on c"], in_(600), purpose="unsigned"
            )
        assert refused.value.code == "forbidden"
        assert refused.value.reason == "not_authenticated"


async def test_no_engine_and_timed_out_are_told_apart() -> None:
    bare = Stack(engine=False)
    try:
        conn = await connect(bare.url)
        try:
            client = Client(conn, "nobody", timeout=0.3, retries=1)
            with pytest.raises(NoEngine):
                await client.health()
            sub = await conn.subscribe("mandate.q.nobody.health")  # hears, never answers
            with pytest.raises(TimedOut):
                await client.health()
            assert sub.pending_msgs == 2, "a timed-out request is sent again, `retries` times"
        finally:
            await conn.close()
    finally:
        bare.close()


async def test_signals_and_beacons_match_their_schemas(
    nc: Any, make_client: Callable[..., Client], tenant: str, schemas: Schemas
) -> None:
    seen: list[tuple[str, Any]] = []

    async def on_msg(m: Any) -> None:
        seen.append((m.subject, json.loads(m.data)))

    sub = await nc.subscribe(f"mandate.sig.{tenant}.>", cb=on_msg)
    cfo = make_client("principal:cfo")
    root = (await cfo.issue("lead", ["a:b on c"], in_(600), purpose="signals")).mandate
    assert root
    await cfo.pause(root)
    await cfo.revoke(root)
    deadline = asyncio.get_running_loop().time() + 10
    while not any(s.endswith(".beacon") for s, _ in seen) or sum(1 for s, _ in seen if s.endswith(root)) < 2:
        assert asyncio.get_running_loop().time() < deadline, f"signals seen: {[s for s, _ in seen]}"
        await asyncio.sleep(0.05)
    await sub.unsubscribe()
    kinds = []
    for subject, doc in seen:
        if subject.endswith(".beacon"):
            schemas.validate("beacon", doc, f"beacon on {subject}")
        else:
            schemas.validate("signal", doc, f"signal on {subject}")
            kinds.append(doc["kind"])
    assert kinds == ["suspended", "terminated"]
