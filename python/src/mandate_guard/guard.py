"""The agent guard: what makes revocation real for an agent.

- It joins its process's feed of the tenant's signals (:class:`GuardHub`)
  for every mandate of its chain *before* reading the state, so nothing
  falls between the two.
- :meth:`Guard.check` is answered locally with the engine's own rules on
  the chain it holds; expiry is enforced by the local clock (corrected by
  the engine's when the agent's lags).
- :attr:`Guard.cancelled` (an :class:`asyncio.Event`) is set when the
  mandate ends: a signal, a re-read that finds the chain ended, or the
  chain's `not_after` passing. ``async with guard.guarding():`` and
  ``@guarded(guard)`` cancel the wrapped task then, and also when the guard
  fails closed (its lease lapsed).
- It fails closed: when its process has not heard the engine (beacons, or a
  read of its own) within `lease`, every check is denied until it has.
- It has no task of its own and polls nothing: an idle guard costs the
  engine nothing.
- Its state never goes back: a chain reply older than the one held is
  dropped, and a reply whose chain is not one the engine could have
  written, ending at the guard's mandate, is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import itertools
import logging
import time
import weakref
from enum import Enum
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, TypeVar

from .authorize import PreparedChain
from .client import Client
from .errors import DecodeError, EngineError, InvalidArgument, MandateError
from .hub import Feed, GuardHub, Heard, Missed
from .types import JSON, AtLeast, ChainReply, Consistency, Decision, Outcome, SignalKind, Status, now_utc

log = logging.getLogger("mandate_guard")

_numbers = itertools.count()

T = TypeVar("T")


class GuardState(str, Enum):
    """What the guard currently believes."""

    ACTIVE = "active"
    PAUSED = "paused"
    TERMINATED = "terminated"
    """Revoked, expired or completed, here or above: for good."""
    STALE = "stale"
    """The engine was not heard within the lease (or signals may have been
    missed): denying until it is."""
    QUARANTINED = "quarantined"


class Guard:
    """The agent's guard for one mandate. Start it with :meth:`start`; close
    it (or use it as an async context manager) when done."""

    def __init__(
        self,
        client: Client,
        mandate: str,
        tree: str,
        *,
        lease: float,
        clock_tolerance: float,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.number = next(_numbers)
        self.client = client
        self.mandate = mandate
        self.lease = lease
        self.clock_tolerance = dt.timedelta(seconds=clock_tolerance)
        self._clock = clock
        self._held = PreparedChain(client.tenant, tree, [])
        self._version = -1
        self._behind: dt.timedelta | None = None
        self._feed: Feed | None = None
        self._links: list[str] = []
        self._heard = 0.0
        self._terminated: Status | None = None
        self._suspended: int | None = None
        self._quarantined: JSON | None = None
        self._missed: int | None = None
        self._misses = 0
        self._queued = False
        self._retry = False
        self._expiry_at = 0.0
        self._lease_at = 0.0
        self._reread_at = 0
        self._changed = asyncio.Event()
        self._watchers: dict[asyncio.Task[Any], None] = {}
        self._closed = False
        self.cancelled = asyncio.Event()
        """Set when the mandate ends (here or above); in-flight work should stop."""
        self.reason: str | None = None
        """Why the guard ended or failed closed, once it has."""
        self.ended_by: Literal["signal", "read", "clock"] | None = None
        """What told the guard its mandate ended."""
        self.status: Status | None = None
        """The terminal status, once ended."""

    # -- starting and stopping ----------------------------------------------

    @classmethod
    async def start(
        cls,
        client: Client,
        hub: GuardHub,
        mandate: str,
        *,
        lease: float = 10.0,
        clock_tolerance: float = 1.0,
        clock: Callable[[], dt.datetime] = now_utc,
    ) -> "Guard":
        """Starts a guard for `mandate`: joins the tenant's feed for every
        mandate of its chain, then reads the state (`fresh`).

        `lease` (seconds): after this long without hearing the engine, every
        check is denied; several times the engines' beacon interval."""
        if not lease > 0:
            raise InvalidArgument(
                f"guard lease {lease!r} must be longer than zero, or the guard is stale from the start"
            )
        # The chain never changes (parents are fixed at issue): reading it
        # first only says what to listen to; the state read comes after.
        first = await client.chain(mandate)
        guard = cls(client, mandate, first.tree, lease=lease, clock_tolerance=clock_tolerance, clock=clock)
        links = [m.id for m in first.mandates]
        feed = await hub.attach(client, guard, links)
        guard._feed = feed
        guard._links = links
        # A guard dropped without close() leaves the feed when collected.
        weakref.finalize(guard, feed.detach, guard.number, links).atexit = False
        try:
            await guard._refresh("fresh")
        except BaseException:
            guard.close()
            raise
        return guard

    def close(self) -> None:
        """Takes the guard off its feed (the last guard out ends the feed);
        it denies from then on."""
        if self._closed:
            return
        self._closed = True
        self._note_missed()
        if self._feed is not None:
            self._feed.detach(self.number, self._links)

    async def __aenter__(self) -> "Guard":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- the agent's side ----------------------------------------------------------

    def now(self) -> dt.datetime:
        """The guard's notion of now: the agent's clock, moved forward by as
        much as it was last seen to lag the engine's."""
        local = self._clock()
        return local + self._behind if self._behind is not None else local

    def check(self, action: str, resource: str) -> Decision:
        """Answers locally, without a round trip: the engine's rules on the
        chain held, denied whenever the guard's own state says so."""
        d = self._held.authorize(action, resource, self.now(), self.mandate)
        if d.outcome is Outcome.DENY or self._clear():
            return d
        override: JSON | None
        if self._terminated is not None:
            override = {"kind": "not_active", "status": self._terminated.value, "cause": None}
        elif self._quarantined is not None:
            override = self._quarantined
        elif self._suspended is not None:
            override = {"kind": "not_active", "status": "paused", "cause": None}
        elif self._missed is not None:
            override = {
                "kind": "unverified",
                "reason": "the guard may have missed a signal: it denies until it has re-read its chain",
            }
        elif self._stale():
            override = {
                "kind": "unverified",
                "reason": f"the guard has not heard the engine for longer than its lease of {self.lease:g} s",
            }
        else:
            override = None
        if override is not None:
            d.outcome = Outcome.DENY
            d.reason = override
            d.approval = []
        return d

    def allows(self, action: str, resource: str) -> bool:
        """Exactly `check(action, resource).allowed`, without building the
        decision: the agent's hot path."""
        return self._clear() and self._held.allows(action, resource, self.now())

    @property
    def state(self) -> GuardState:
        if self._terminated is not None:
            return GuardState.TERMINATED
        if self._quarantined is not None:
            return GuardState.QUARANTINED
        if self._closed or self._stale() or self._missed is not None:
            return GuardState.STALE
        status = self._effective()
        if status is Status.ACTIVE and self._suspended is None:
            return GuardState.ACTIVE
        if status in (Status.ACTIVE, Status.PAUSED):
            return GuardState.PAUSED
        return GuardState.TERMINATED

    @property
    def clock_behind(self) -> dt.timedelta | None:
        """How far the agent's clock lags the engine's, when beyond the tolerance."""
        return self._behind

    async def wait_active(self) -> None:
        """Returns once the mandate is active; raises
        :class:`asyncio.CancelledError` (with the reason) when it has ended.
        The way to sit out a pause."""
        while True:
            s = self.state
            if s is GuardState.ACTIVE:
                return
            if s is GuardState.TERMINATED:
                raise asyncio.CancelledError(self.reason or f"mandate {self.mandate} ended")
            self._changed.clear()
            # Staleness comes and goes with time, not with a change: look
            # again now and then.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=1.0)

    async def refresh(self) -> None:
        """Re-reads the state now (`fresh`)."""
        await self._refresh("fresh")

    @contextlib.asynccontextmanager
    async def guarding(self) -> AsyncIterator["Guard"]:
        """Runs the body under the guard: the current task is cancelled
        (``asyncio.CancelledError`` carrying the reason) when the mandate
        ends or the guard fails closed. Entered on a guard that is already
        ended or stale, it raises that ``CancelledError`` at once."""
        task = asyncio.current_task()
        if task is None:
            raise InvalidArgument("guarding() must run inside an asyncio task")
        self._assert_live()
        self._watchers[task] = None
        self._watch_lease()
        try:
            yield self
        finally:
            self._watchers.pop(task, None)

    def _assert_live(self) -> None:
        if self._terminated is not None:
            raise asyncio.CancelledError(self.reason)
        if self._closed:
            raise asyncio.CancelledError(f"the guard of mandate {self.mandate} is closed")
        if self._stale():
            raise asyncio.CancelledError(self._stale_reason())

    # -- internals ----------------------------------------------------------------

    def _effective(self) -> Status:
        from .authorize import effective

        if not self._held.chain:
            return Status.REVOKED
        return effective(self._held.chain, self.now())[0]

    def _clear(self) -> bool:
        return (
            self._terminated is None
            and self._quarantined is None
            and self._suspended is None
            and self._missed is None
            and not self._closed
            and not self._stale()
        )

    def _heard_at(self) -> float:
        heard = self._heard
        if self._feed is not None:
            heard = max(heard, self._feed.beacon)
        return heard

    def _stale(self) -> bool:
        return time.monotonic() - self._heard_at() > self.lease

    def _stale_reason(self) -> str:
        return (
            f"the guard of mandate {self.mandate} failed closed: it has not heard the engine "
            f"for longer than its lease of {self.lease:g} s"
        )

    def _tell_changed(self) -> None:
        self._changed.set()

    def _cancel_watchers(self, reason: str) -> None:
        for task in list(self._watchers):
            task.cancel(reason)
        self._watchers.clear()

    def _terminate(self, status: Status, by: Literal["signal", "read", "clock"], detail: str = "") -> None:
        if self._terminated is None:
            self._terminated = status
            self.status = status
            self.ended_by = by
            self.reason = f"mandate {self.mandate} {status.value}" + (f": {detail}" if detail else "")
        self.cancelled.set()
        self._cancel_watchers(self.reason or f"mandate {self.mandate} ended")
        self._tell_changed()

    def _note_missed(self) -> None:
        self._misses += 1
        self._missed = self._misses
        self._tell_changed()

    def _watch_lease(self) -> None:
        """While a task is guarded, the feed's timer looks at the lease when
        it would lapse (a local timer, no request)."""
        if self._feed is None or not self._watchers:
            return
        at = self._heard_at() + self.lease + 0.001
        if self._lease_at == 0.0 or at < self._lease_at or self._lease_at <= time.monotonic():
            self._lease_at = at
            self._feed.schedule(self, at)

    def _on_timer(self) -> None:
        """The feed's timer for this guard is due: the chain's `not_after`,
        a re-read to try again, or the lease of a guarded task."""
        if self._terminated is not None:
            return
        if self._retry and self._feed is not None:
            self._retry = False
            self._feed.queue_reread(self)
        now = time.monotonic()
        if self._expiry_at and now >= self._expiry_at:
            self._expiry_at = 0.0
            self._settle("clock")
        if self._watchers and self._lease_at and now >= self._lease_at:
            self._lease_at = 0.0
            if self._stale():
                self._cancel_watchers(self._stale_reason())
                self._tell_changed()
            else:
                self._watch_lease()

    def _settle(self, by: Literal["signal", "read", "clock"]) -> None:
        """Applies what the held chain says: ends the guard when it is
        terminal, else sets the feed's timer for the earliest `not_after`."""
        from .authorize import effective

        now = self.now()
        chain = self._held.chain
        status, cause = effective(chain, now) if chain else (Status.REVOKED, None)
        if status.is_terminal:
            detail = ""
            if cause is not None:
                detail = f"{cause.get('status')} on {cause.get('mandate')}"
                if cause.get("reason"):
                    detail += f" ({cause['reason']})"
            self._terminate(status, by, detail)
        elif self._held.deadline is not None and self._feed is not None:
            wait = max((self._held.deadline - now).total_seconds(), 0.005)
            at = time.monotonic() + wait
            if self._expiry_at == 0.0 or at < self._expiry_at:
                self._expiry_at = at
                self._feed.schedule(self, at)
        self._tell_changed()

    async def _reread(self) -> None:
        if self._terminated is not None or self._closed:
            return
        level: Consistency = "fresh" if self._missed is not None or self._reread_at == 0 else AtLeast(self._reread_at)
        try:
            await self._refresh(level)
        except MandateError as exc:
            log.warning("guard of %s could not re-read its chain (%s); it tries again", self.mandate, exc)
            if self._feed is not None:
                self._retry = True
                self._feed.schedule(self, time.monotonic() + 1.0)

    async def _refresh(self, level: Consistency) -> None:
        misses = self._misses
        sent = self._clock()
        try:
            reply = await self.client.chain(self.mandate, consistency=level)
        except EngineError as exc:
            if exc.code == "quarantined" or exc.reason == "log_went_backwards":
                if self._quarantined is None:
                    self._quarantined = {"kind": "unverified", "reason": exc.message}
                    self._tell_changed()
            raise
        self._install(reply, sent)
        if self._missed is not None and self._missed <= misses and not self._closed:
            self._missed = None

    def _install(self, reply: ChainReply, sent: dt.datetime) -> None:
        if reply.version < self._version:
            return  # an older answer overtaken by a newer one
        chain = reply.mandates
        if not chain or chain[-1].id != self.mandate:
            raise DecodeError(
                f"the chain reply ends at {chain[-1].id if chain else None}, not at the guard's mandate {self.mandate}"
            )
        for i, m in enumerate(chain):
            expected_parent = chain[i - 1].id if i else None
            if m.parent != expected_parent or m.tree != reply.tree:
                raise DecodeError(f"the chain reply is not a chain the engine could have written (at {m.id})")
        self._held = PreparedChain(self.client.tenant, reply.tree, chain)
        self._version = reply.version
        q = self._quarantined
        if not (q is not None and q.get("kind") == "quarantined" and reply.position <= int(q.get("position", 0))):
            self._quarantined = None
        if self._suspended is not None and self._suspended <= reply.version:
            self._suspended = None
        lag = reply.engine_time - sent
        self._behind = lag if lag > self.clock_tolerance else None
        self._heard = max(self._heard, time.monotonic())
        self._settle("read")

    def _hear(self, heard: Heard) -> None:
        """Takes what the feed heard for this guard, on the feed's task."""
        if isinstance(heard, Missed):
            self._note_missed()
            if self._feed is not None and not self._closed:
                self._feed.queue_reread(self)
            return
        signal = heard
        if signal.kind is SignalKind.TERMINATED:
            detail = f"{signal.event_type} of {signal.mandate}"
            if signal.reason:
                detail += f" ({signal.reason})"
            self._terminate(signal.status, "signal", detail)
            return  # terminal is absorbing: nothing left to re-read
        if signal.kind is SignalKind.SUSPENDED:
            self._suspended = signal.seq if self._suspended is None else max(self._suspended, signal.seq)
            self._tell_changed()
        elif signal.kind is SignalKind.QUARANTINED:
            self._quarantined = {"kind": "quarantined", "tree": signal.tree, "position": signal.position or 0}
            self._tell_changed()
            return  # the engine refuses to read a quarantined tree
        if signal.head_position is not None:
            self._reread_at = max(self._reread_at, signal.head_position)
        if self._feed is not None:
            self._feed.queue_reread(self)


def guarded(guard: Guard) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Decorates a coroutine function so that each call runs under
    ``guard.guarding()``: cancelled when the mandate ends or the guard fails
    closed."""

    def wrap(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> T:
            async with guard.guarding():
                return await fn(*args, **kwargs)

        return run

    return wrap
