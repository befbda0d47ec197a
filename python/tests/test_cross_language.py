"""A Rust orchestrator (the `mandate` CLI, built on the Rust client) revokes
the root; the Python guard's wrapped task is cancelled."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Callable

from conftest import LEASE, GuardedTask, Stack, in_
from mandate_guard import Client, Guard, GuardHub, Status


async def test_a_rust_orchestrator_revokes_and_the_python_task_is_cancelled(
    stack: Stack, make_client: Callable[..., Client], hub: GuardHub, tenant: str
) -> None:
    # The orchestrator issues the root from Rust, too.
    issued = await asyncio.to_thread(
        subprocess.run,
        stack.cli(
            "--actor", "principal:cfo", "--json", "issue", "--principal", "cfo", "--agent", "orchestrator",
            "--grant", "tickets:* on tickets/**", "--purpose", "cross-language", "--ttl", "1h",
            tenant=tenant,
        ),
        capture_output=True,
        text=True,
    )
    assert issued.returncode == 0, issued.stderr
    root = json.loads(issued.stdout)["mandate"]

    orchestrator = make_client("agent:orchestrator")
    child = (await orchestrator.delegate(root, "py-worker", ["tickets:read on tickets/**"])).mandate
    assert child
    guard = await Guard.start(orchestrator.as_actor("agent:py-worker"), hub, child, lease=LEASE)
    assert guard.check("tickets:read", "tickets/42").allowed

    progress: list[int] = []

    async def worker() -> None:
        for i in range(10_000):
            assert guard.check("tickets:read", f"tickets/{i}").allowed
            progress.append(i)
            await asyncio.sleep(0.01)

    work = GuardedTask(guard, worker)
    await work.started.wait()
    revoked = await asyncio.to_thread(
        subprocess.run,
        stack.cli("--actor", "principal:cfo", "revoke", root, "--reason", "rust says stop", tenant=tenant),
        capture_output=True,
        text=True,
    )
    assert revoked.returncode == 0, revoked.stderr
    reason = await work.cancelled_with(10)
    assert "revoked" in reason and "rust says stop" in reason and root in reason, reason
    assert guard.status is Status.REVOKED and guard.ended_by == "signal"
    done = len(progress)
    await asyncio.sleep(0.2)
    assert len(progress) == done, "the task went on after its cancellation"
    assert not guard.check("tickets:read", "tickets/1").allowed
