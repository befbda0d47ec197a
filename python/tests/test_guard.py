"""The guard against a real engine: revocation cancels, expiry is local,
the lease fails closed, a cut-off is caught up, guards share one consumer
and idle guards send nothing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Callable

import pytest

from conftest import LEASE, GuardedTask, Proxy, Stack, eventually, in_
from mandate_guard import (
    Client,
    EngineError,
    Guard,
    GuardHub,
    GuardState,
    InvalidArgument,
    Status,
    connect,
    guarded,
)


async def _tree(cfo: Client, depth: int = 2, not_after: float = 3600) -> list[str]:
    """A chain root -> ... of `depth` mandates (agents a0, a1, ...)."""
    res = await cfo.issue("a0", ["work:* on jobs/**"], in_(not_after), purpose="guard test")
    ids = [res.mandate or ""]
    for i in range(1, depth):
        sub = await cfo.as_actor(f"agent:a{i - 1}").delegate(ids[-1], f"a{i}", ["work:* on jobs/**"])
        ids.append(sub.mandate or "")
    return ids


async def test_revoking_an_ancestor_cancels_the_guarded_task(make_client: Callable[..., Client], hub: GuardHub) -> None:
    cfo = make_client("principal:cfo")
    root, mid, leaf = await _tree(cfo, 3)
    guard = await Guard.start(cfo.as_actor("agent:a2"), hub, leaf, lease=LEASE)
    assert guard.state is GuardState.ACTIVE and guard.check("work:run", "jobs/1").allowed
    assert guard.check("work:run", "other/1").reason_kind == "out_of_scope"

    @guarded(guard)
    async def other_work() -> str:
        await asyncio.sleep(60)
        return "never"

    work = GuardedTask(guard, lambda: asyncio.sleep(60))
    task2 = asyncio.create_task(other_work())
    await work.started.wait()
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await cfo.revoke(root, "stop everything")
    reason = await work.cancelled_with(10)
    took = time.monotonic() - t0
    assert "revoked" in reason and root in reason and "stop everything" in reason, reason
    assert guard.reason == reason
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task2, 10)
    assert task2.cancelled()
    assert guard.cancelled.is_set() and guard.status is Status.REVOKED and guard.ended_by == "signal"
    assert guard.state is GuardState.TERMINATED
    # The signal alone ended it (no re-read after a termination).
    assert guard.check("work:run", "jobs/1").reason == {"kind": "not_active", "status": "revoked", "cause": None}
    print(f"revoke to cancellation: {took * 1000:.0f} ms")
    # A guarded block entered on an ended guard does not run.
    ran = False
    with pytest.raises(asyncio.CancelledError):
        async with guard.guarding():
            ran = True
    assert not ran


async def test_pause_denies_and_resume_allows_again_by_signals_alone(
    make_client: Callable[..., Client], hub: GuardHub
) -> None:
    cfo = make_client("principal:cfo")
    root, leaf = await _tree(cfo, 2)
    guard = await Guard.start(cfo, hub, leaf, lease=LEASE)
    await cfo.pause(root, "hold on")
    await eventually(lambda: guard.state is GuardState.PAUSED, what="paused after the pause signal")
    d = guard.check("work:run", "jobs/1")
    assert d.reason_kind == "not_active" and (d.reason or {})["status"] == "paused"
    assert not guard.cancelled.is_set()
    await cfo.resume(root)
    await eventually(lambda: guard.check("work:run", "jobs/1").allowed, what="allowed after the resume signal")
    # wait_active returns at once on an active guard.
    await asyncio.wait_for(guard.wait_active(), 5)
    await cfo.narrow(leaf, ["work:read on jobs/**"])
    await eventually(lambda: guard.check("work:run", "jobs/1").reason_kind == "out_of_scope", what="narrowed")
    assert guard.check("work:read", "jobs/1").allowed


async def test_expiry_is_enforced_by_the_local_clock_without_any_signal(
    stack: Stack, make_client: Callable[..., Client], hub: GuardHub, proxy: Proxy
) -> None:
    cfo = make_client("principal:cfo")
    (leaf,) = await _tree(cfo, 1, not_after=1.2)
    conn = await connect(proxy.url)
    try:
        guard = await Guard.start(Client(conn, cfo.tenant, "agent:a0"), hub, leaf, lease=LEASE)
        assert guard.check("work:run", "jobs/1").allowed

        work = GuardedTask(guard, lambda: asyncio.sleep(60))
        await work.started.wait()
        # Cut off: nothing the engine says can reach the guard now.
        signals_before = hub.stats().signals
        await proxy.cut()
        reason = await work.cancelled_with(5)
        assert "expired" in reason, reason
        assert guard.ended_by == "clock" and guard.status is Status.EXPIRED
        assert hub.stats().signals == signals_before
        assert guard.check("work:run", "jobs/1").reason_kind == "not_active"
    finally:
        await proxy.restore()
        await conn.close()


async def test_a_lapsed_lease_fails_closed_and_recovers(own_stack: Stack, tenant: str) -> None:
    conn = await connect(own_stack.url)
    hub = GuardHub()
    try:
        cfo = Client(conn, tenant, "principal:cfo")
        (leaf,) = await _tree(cfo, 1)
        guard = await Guard.start(cfo, hub, leaf, lease=LEASE)
        await eventually(lambda: hub.stats().beacons > 0, what="a beacon taken")

        work = GuardedTask(guard, lambda: asyncio.sleep(60))
        await asyncio.sleep(0.5)
        assert not work.task.done() and guard.check("work:run", "jobs/1").allowed
        own_stack.stop_engine()
        reason = await work.cancelled_with(LEASE + 5)
        assert "lease" in reason and "failed closed" in reason, reason
        d = guard.check("work:run", "jobs/1")
        assert not d.allowed and d.reason_kind == "unverified" and "lease" in (d.reason or {})["reason"]
        assert guard.state is GuardState.STALE and not guard.cancelled.is_set()
        own_stack.start_engine()
        await eventually(lambda: guard.check("work:run", "jobs/1").allowed, 15, "allowed again after the restart")
        assert guard.state is GuardState.ACTIVE
    finally:
        await hub.close()
        await conn.close()


async def test_a_revoke_made_while_cut_off_is_caught_up(
    make_client: Callable[..., Client], hub: GuardHub, proxy: Proxy
) -> None:
    cfo = make_client("principal:cfo")
    root, leaf = await _tree(cfo, 2)
    conn = await connect(proxy.url)
    try:
        guard = await Guard.start(Client(conn, cfo.tenant, "agent:a1"), hub, leaf, lease=30)
        await eventually(lambda: hub.stats().beacons > 0, what="a beacon taken")
        await proxy.cut()
        await cfo.revoke(root, "while cut off")
        await asyncio.sleep(0.5)
        assert not guard.cancelled.is_set(), "a cut-off guard cannot have heard the revoke"
        await proxy.restore()
        await asyncio.wait_for(guard.cancelled.wait(), 15)
        assert guard.status is Status.REVOKED and guard.ended_by == "signal"
        assert "while cut off" in (guard.reason or "")
    finally:
        await conn.close()


async def test_a_revoke_purged_from_the_stream_while_cut_off_is_not_missed(
    make_client: Callable[..., Client], nc: Any, hub: GuardHub, proxy: Proxy
) -> None:
    # The stream keeps an hour, so its age limit cannot explain a gap: a purge
    # while the guard was cut off must count as a loss, and the beacons stored
    # after it must not let the guard carry on as if nothing was missed.
    cfo = make_client("principal:cfo")
    root, leaf = await _tree(cfo, 2)
    conn = await connect(proxy.url)
    try:
        guard = await Guard.start(Client(conn, cfo.tenant, "agent:a1"), hub, leaf, lease=30)
        await eventually(lambda: hub.stats().beacons > 0, what="a beacon taken")
        await proxy.cut()
        await cfo.revoke(root, "purged while cut off")

        async def signal_stored() -> bool:
            got = await nc.request(
                "$JS.API.STREAM.MSG.GET.MANDATE_SIGNALS",
                json.dumps({"last_by_subj": f"mandate.sig.{cfo.tenant}.{root}"}).encode(),
                timeout=5,
            )
            return "message" in json.loads(got.data)

        for _ in range(100):  # the revoke's signal is stored before it is purged
            if await signal_stored():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the revoke's signal never reached the stream")
        purged = json.loads((await nc.request("$JS.API.STREAM.PURGE.MANDATE_SIGNALS", b"", timeout=5)).data)
        assert purged.get("success") is True and purged.get("purged", 0) >= 1, purged
        await asyncio.sleep(1.0)  # beacons are stored after the purge
        await proxy.restore()
        await asyncio.wait_for(guard.cancelled.wait(), 20)
        assert guard.status is Status.REVOKED
        assert hub.stats().full_rereads >= 1, hub.stats()
        assert not guard.check("work:run", "jobs/1").allowed
    finally:
        await conn.close()


async def test_guards_share_one_consumer_and_idle_guards_send_nothing(
    stack: Stack, nc: Any, make_client: Callable[..., Client], tenant: str
) -> None:
    cfo = make_client("principal:cfo")
    leaves = []
    for i in range(12):
        res = await cfo.issue(f"agent{i}", ["work:* on jobs/**"], in_(3600), purpose=f"idle {i}")
        leaves.append(res.mandate or "")
    prefix = f"_INBOX_IDLE{uuid.uuid4().hex[:8]}"
    conn = await connect(stack.url, inbox_prefix=prefix)
    hub = GuardHub()
    try:
        client = Client(conn, tenant, "agent:agent0")
        guards = [await Guard.start(client, hub, m, lease=LEASE) for m in leaves]
        assert hub.subscriptions() == 1

        async def consumers_of_tenant() -> list[str]:
            msg = await nc.request("$JS.API.CONSUMER.LIST.MANDATE_SIGNALS", b"{}", timeout=5)
            # A consumer being deleted meanwhile can be listed as null.
            infos = [c for c in json.loads(msg.data)["consumers"] or [] if c and c.get("config")]
            return [c["name"] for c in infos if c["config"].get("filter_subject") == f"mandate.sig.{tenant}.>"]

        assert len(await consumers_of_tenant()) == 1

        # Idle: watch every request the guards' connection could make.
        asked: list[str] = []

        async def watch(msg: Any) -> None:
            if (msg.reply or "").startswith(prefix):
                asked.append(msg.subject)

        subs = [await nc.subscribe(s, cb=watch) for s in ("mandate.q.>", "mandate.cmd.>", "$JS.API.>")]
        await nc.flush()
        # The watch sees the guards' requests: one re-read on demand is seen.
        await guards[0].refresh()
        await nc.flush()
        await eventually(lambda: len(asked) == 1, 5, "the watch to see a guard's request")
        asked.clear()
        beacons = hub.stats().beacons
        await asyncio.sleep(6)
        await nc.flush()
        # Nothing to the engine, and nothing per guard: the feed's own check
        # that the stream lost nothing (one stream-info request every 5 s per
        # feed, whatever the number of guards) is all that crosses the wire.
        stream_checks = [s for s in asked if s == "$JS.API.STREAM.INFO.MANDATE_SIGNALS"]
        others = [s for s in asked if s != "$JS.API.STREAM.INFO.MANDATE_SIGNALS"]
        assert others == [], f"idle guards sent requests: {others}"
        assert len(stream_checks) <= 2, f"more than one feed's stream checks: {asked}"
        assert hub.stats().beacons > beacons, "the feed heard beacons meanwhile"
        assert all(g.check("work:run", "jobs/1").allowed for g in guards), "beacons kept every lease"
        for s in subs:
            await s.unsubscribe()

        # A signal reaches exactly the guards of its chain.
        await cfo.revoke(leaves[3])
        await asyncio.wait_for(guards[3].cancelled.wait(), 10)
        await asyncio.sleep(0.2)
        assert [g.cancelled.is_set() for g in guards].count(True) == 1

        # The last guard out ends the feed and deletes its consumer.
        for g in guards:
            g.close()
        assert hub.subscriptions() == 0
        deadline = time.monotonic() + 5
        while await consumers_of_tenant():
            assert time.monotonic() < deadline, "the feed's consumer outlived its last guard"
            await asyncio.sleep(0.1)
        assert guards[0].state is GuardState.STALE and not guards[0].check("work:run", "jobs/1").allowed
    finally:
        await hub.close()
        await conn.close()


async def test_start_refuses_what_it_cannot_guard(make_client: Callable[..., Client], hub: GuardHub) -> None:
    cfo = make_client("principal:cfo")
    with pytest.raises(EngineError) as missing:
        await Guard.start(cfo, hub, str(uuid.uuid4()))
    assert missing.value.code == "not_found"
    (leaf,) = await _tree(cfo, 1)
    with pytest.raises(InvalidArgument):
        await Guard.start(cfo, hub, leaf, lease=0)
    await cfo.revoke(leaf)
    guard = await Guard.start(cfo, hub, leaf)
    assert guard.cancelled.is_set() and guard.ended_by == "read" and guard.status is Status.REVOKED


async def test_a_gap_the_stream_cannot_replay_makes_every_guard_deny_and_re_read(
    own_stack: Stack, tenant: str
) -> None:
    direct = await connect(own_stack.url)
    proxy = Proxy(own_stack.port)
    await proxy.start()
    conn = await connect(proxy.url)
    hub = GuardHub()
    try:
        cfo = Client(direct, tenant, "principal:cfo")
        (doomed,) = await _tree(cfo, 1)
        (kept,) = await _tree(cfo, 1)
        client = Client(conn, tenant, "agent:a0")
        g_doomed = await Guard.start(client, hub, doomed, lease=30)
        g_kept = await Guard.start(client, hub, kept, lease=30)
        await eventually(lambda: hub.stats().beacons > 0, what="a beacon taken")
        await proxy.cut()
        # The stream is lost while the guards are cut off: the engine makes
        # a new one, and the revoke goes there.
        own_stack.stop_engine()
        deleted = json.loads((await direct.request("$JS.API.STREAM.DELETE.MANDATE_SIGNALS", b"", timeout=5)).data)
        assert deleted.get("success") is True, deleted
        own_stack.start_engine()
        await cfo.revoke(doomed, "lost with the stream")
        rereads = hub.stats().rereads
        await proxy.restore()
        await asyncio.wait_for(g_doomed.cancelled.wait(), 20)
        assert g_doomed.status is Status.REVOKED
        await eventually(lambda: hub.stats().full_rereads >= 1, 10, "the loss noticed")
        await eventually(lambda: hub.stats().rereads >= rereads + 1, 10, "the untouched guard re-read")
        await eventually(lambda: g_kept.check("work:run", "jobs/1").allowed, 10, "the untouched guard allows again")
        assert not g_kept.cancelled.is_set()
    finally:
        await hub.close()
        await conn.close()
        await proxy.close()
        await direct.close()


async def test_a_closed_connection_makes_its_guards_deny(stack: Stack, make_client: Callable[..., Client]) -> None:
    cfo = make_client("principal:cfo")
    (leaf,) = await _tree(cfo, 1)
    conn = await connect(stack.url)
    hub = GuardHub()
    try:
        guard = await Guard.start(Client(conn, cfo.tenant, "agent:a0"), hub, leaf, lease=30)

        @guarded(guard)
        async def step(x: int) -> int:
            await asyncio.sleep(0)
            return x + 1

        assert await step(1) == 2, "a guarded call on a live mandate runs to its end"
        assert guard.check("work:run", "jobs/1").allowed
        await conn.close()
        await eventually(lambda: not guard.check("work:run", "jobs/1").allowed, 10, "denied once the connection closed")
        assert guard.check("work:run", "jobs/1").reason_kind == "unverified"
        assert hub.subscriptions() == 0, "the feed of a closed connection left the hub"
    finally:
        await hub.close()
        if not conn.is_closed:
            await conn.close()


async def test_the_guard_fails_closed_across_a_server_restart_and_follows_after(own_stack: Stack, tenant: str) -> None:
    conn = await connect(own_stack.url)
    hub = GuardHub()
    try:
        cfo = Client(conn, tenant, "principal:cfo")
        root, leaf = await _tree(cfo, 2)
        guard = await Guard.start(cfo.as_actor("agent:a1"), hub, leaf, lease=LEASE)
        await eventually(lambda: hub.stats().beacons > 0, what="a beacon taken")
        own_stack.nats.stop()
        await eventually(
            lambda: guard.check("work:run", "jobs/1").reason_kind == "unverified", LEASE + 5, "denied while down"
        )
        assert guard.state is GuardState.STALE
        own_stack.nats.start()
        await eventually(lambda: guard.check("work:run", "jobs/1").allowed, 30, "allowed once the engine is heard again")
        await cfo.revoke(root, "after the restart")
        await asyncio.wait_for(guard.cancelled.wait(), 15)
        assert guard.status is Status.REVOKED and "after the restart" in (guard.reason or "")
    finally:
        await hub.close()
        await conn.close()
