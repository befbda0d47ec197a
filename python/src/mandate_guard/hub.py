"""What the guards of one process share: one follower of each tenant's
signals per connection, the lease kept by the engines' beacons, one queue
of re-reads and one clock for expiries.

- **One consumer per tenant and connection.** A feed follows
  `mandate.sig.<tenant>.>` with one JetStream push consumer of its own (a
  named one, created with the filtered create form
  `$JS.API.CONSUMER.CREATE.MANDATE_SIGNALS.<name>.<filter>`, no acks, flow
  control, 1 s idle heartbeats), starting right after the stream's last
  message as the stream's info gives it before the consumer is made. Each
  signal is handed to the guards whose chain holds its mandate: a
  termination cancels them there and then.
- **Fast, then sure.** The feed also holds one core subscription to
  `mandate.sig.<tenant>.*`, which brings each signal as the server relays
  its publish; each signal is handed out once (by event id), whichever path
  brings it first. Only the consumer counts for the lease and for gaps.
- **Nothing is lost across a cut-off.** The feed remembers the stream
  sequence of the last message taken. When the consumer's sequence skips,
  or its heartbeats stop for 3 s, it makes a new consumer starting right
  after it, so what was published meanwhile is replayed in order and only
  the guards those signals name re-read. When the stream no longer holds
  what was missed, every guard of the feed denies and re-reads.
- **The lease is the engines' beacons**, taken in order with the signals,
  as of when the stream stored them: a beacon replayed late does not renew
  the lease.
- **No task or timer per guard.** Re-reads go through one queue per feed,
  a few in flight; every guard's expiry (and lease watch) is one timer heap
  per feed. An idle guard sends nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import json
import logging
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .errors import DecodeError, MandateError, TimedOut, TransportError
from .types import Beacon, Signal

if TYPE_CHECKING:
    from .client import Client
    from .guard import Guard

log = logging.getLogger("mandate_guard")

SIGNAL_STREAM = "MANDATE_SIGNALS"
IDLE_HEARTBEAT = 1.0
# How often a feed asks the stream whether anything after its last message
# was deleted (a purge, a limit): a push consumer moves past such a gap with
# no skip in its own sequence. One request per feed, not per guard.
STREAM_CHECK = 5.0
"""The consumer's idle heartbeat (s); silence for three of them is a loss."""
REREADS_IN_FLIGHT = 8
SEEN_CAPACITY = 4096


@dataclass
class FeedStats:
    """What a hub's feeds have done, for operators and tests."""

    signals: int = 0
    """Signals handed out (beacons not counted)."""
    beacons: int = 0
    rereads: int = 0
    """Chain re-reads made by the queue (a guard's first read is not one)."""
    full_rereads: int = 0
    """Gaps the stream could not replay, so every guard re-read."""
    resumes: int = 0
    """Consumers made again after a cut-off or a lost consumer."""


class Missed:
    """What a guard hears when signals may have been lost."""


MISSED = Missed()
Heard = Signal | Missed


def ack_info(reply: str) -> tuple[int, int, int] | None:
    """(stream seq, consumer seq, stored Unix nanos) of a JetStream message,
    from its reply subject (`$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.
    <cseq>.<nanos>.<pending>`, or the longer form with domain and hash)."""
    if not reply.startswith("$JS.ACK."):
        return None
    tokens = reply[len("$JS.ACK.") :].split(".")
    if len(tokens) == 7:
        at = 0
    elif len(tokens) >= 9:
        at = 2
    else:
        return None
    try:
        return int(tokens[at + 3]), int(tokens[at + 4]), int(tokens[at + 5])
    except ValueError:
        return None


class GuardHub:
    """Shares one follower of each tenant's signals (per connection) among
    the guards of a process. Make one per process and give it to every
    :meth:`Guard.start <mandate_guard.Guard.start>`."""

    def __init__(self) -> None:
        self._feeds: dict[tuple[int, str], Feed] = {}
        self._starting: dict[tuple[int, str], asyncio.Future[Feed]] = {}

    def subscriptions(self) -> int:
        """How many feeds (one per tenant and connection) the hub holds."""
        return len(self._feeds)

    def stats(self) -> FeedStats:
        out = FeedStats()
        for f in self._feeds.values():
            for k in ("signals", "beacons", "rereads", "full_rereads", "resumes"):
                setattr(out, k, getattr(out, k) + getattr(f.stats, k))
        return out

    async def _feed(self, client: "Client") -> "Feed":
        key = (id(client.nc), client.tenant)
        feed = self._feeds.get(key)
        if feed is not None and not feed.ended:
            return feed
        pending = self._starting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Feed] = asyncio.get_running_loop().create_future()
        self._starting[key] = fut
        try:
            feed = Feed(self, key, client)
            await feed.start()
            self._feeds[key] = feed
            fut.set_result(feed)
            return feed
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no warning when nobody else waits
            raise
        finally:
            del self._starting[key]

    async def attach(self, client: "Client", guard: "Guard", mandates: list[str]) -> "Feed":
        """Puts `guard` on the feed of its tenant for every mandate of its
        chain; the feed follows the stream when this returns, so a state
        read made after misses nothing."""
        feed = await self._feed(client)
        for m in mandates:
            feed.listeners.setdefault(m, {})[guard.number] = weakref.ref(guard)
        return feed

    def _leave(self, feed: "Feed") -> None:
        if self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]

    async def close(self) -> None:
        """Ends every feed (their guards deny from then on)."""
        for f in list(self._feeds.values()):
            f.end()
            for g in f.guards():
                g._hear(MISSED)
        self._feeds.clear()


class Feed:
    """One tenant's signals on one connection, and the guards that hear them."""

    def __init__(self, hub: GuardHub, key: tuple[int, str], client: "Client") -> None:
        self.hub = hub
        self.key = key
        self.tenant = key[1]
        self.client = client
        self.nc: NatsClient = client.nc
        self.beacon = 0.0
        """When the newest beacon taken was stored, in `time.monotonic()`."""
        self.listeners: dict[str, dict[int, weakref.ref[Guard]]] = {}
        self.stats = FeedStats()
        self.ended = False
        self._queue: collections.deque[weakref.ref[Guard]] = collections.deque()
        self._queued = asyncio.Event()
        self._timers: list[tuple[float, int, int]] = []
        self._timer_seq = itertools.count()
        self._timed: dict[int, weakref.ref[Guard]] = {}
        self._timer_moved = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._seen: set[str] = set()
        self._seen_order: collections.deque[str] = collections.deque()
        self._fast: Subscription | None = None
        self.consumer: str | None = None
        # The follower's place in the stream.
        self._last = 0
        self._last_stored = time.time_ns()
        self._created: str | None = None
        self._made = 0

    # -- life --------------------------------------------------------------

    async def start(self) -> None:
        # The fast path first; the consumer is what no signal escapes.
        try:
            self._fast = await self.nc.subscribe(f"mandate.sig.{self.tenant}.*", cb=self._on_fast)
        except nats.errors.Error as exc:
            log.debug("fast path not subscribed: %s", exc)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._spawn(self._follow(ready))
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout=30)
        except asyncio.TimeoutError:
            self.end()
            raise TimedOut(f"following tenant {self.tenant}'s signals", 30) from None
        except MandateError:
            self.end()
            raise
        self._spawn(self._reread_worker())
        self._spawn(self._timer_worker())

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.hub._leave(self)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Outside the loop (a guard collected after it stopped): the
            # tasks went with the loop; the server drops the consumer once
            # nobody listens.
            loop = None
        current = asyncio.current_task() if loop is not None else None
        for t in self._tasks:
            if t is not current and not t.done():
                with contextlib.suppress(RuntimeError):
                    t.cancel()
        fast, self._fast = self._fast, None
        name, self.consumer = self.consumer, None
        if loop is None or self.nc.is_closed:
            return
        if fast is not None:
            _background(loop, fast.unsubscribe())
        if name is not None:
            _background(loop, self._delete_consumer(name))

    def detach(self, number: int, mandates: list[str]) -> None:
        """Takes guard `number` off the feed; the last one out ends it."""
        for m in mandates:
            lst = self.listeners.get(m)
            if lst is not None:
                lst.pop(number, None)
                if not lst:
                    del self.listeners[m]
        self._timed.pop(number, None)
        if not self.listeners:
            self.end()

    def guards(self) -> list["Guard"]:
        seen: dict[int, Guard] = {}
        for lst in self.listeners.values():
            for n, ref in lst.items():
                g = ref()
                if g is not None:
                    seen[n] = g
        return list(seen.values())

    # -- hearing -------------------------------------------------------------

    def _deliver(self, mandate: str, heard: Heard) -> None:
        for ref in list(self.listeners.get(mandate, {}).values()):
            g = ref()
            if g is not None:
                g._hear(heard)

    def lost_everything(self, why: str) -> None:
        """Signals were lost and the stream cannot replay them: every guard
        denies and re-reads, through the queue."""
        self.stats.full_rereads += 1
        guards = self.guards()
        log.warning("tenant %s: %s: every guard (%d) re-reads", self.tenant, why, len(guards))
        for g in guards:
            g._hear(MISSED)

    def _take_signal(self, signal: Signal) -> None:
        if signal.event_id in self._seen:
            return
        self._seen.add(signal.event_id)
        self._seen_order.append(signal.event_id)
        if len(self._seen_order) > SEEN_CAPACITY:
            self._seen.discard(self._seen_order.popleft())
        self.stats.signals += 1
        self._deliver(signal.mandate, signal)

    async def _on_fast(self, msg: Msg) -> None:
        if self.ended or msg.subject.endswith(".beacon"):
            return
        try:
            self._take_signal(Signal.from_json(json.loads(msg.data)))
        except (ValueError, DecodeError):
            pass  # the consumer brings it too, and says so there

    def _take(self, msg: Msg, stored_nanos: int) -> None:
        if msg.subject.endswith(".beacon"):
            try:
                Beacon.from_json(json.loads(msg.data))
            except (ValueError, DecodeError) as exc:
                log.warning("passed over a beacon on %s that does not decode: %s", msg.subject, exc)
                return
            self.stats.beacons += 1
            age = max(0, time.time_ns() - stored_nanos) / 1e9
            self.beacon = max(self.beacon, time.monotonic() - age)
            return
        try:
            signal = Signal.from_json(json.loads(msg.data))
        except (ValueError, DecodeError) as exc:
            log.warning("passed over a message on %s that is not a signal: %s", msg.subject, exc)
            return
        self._take_signal(signal)

    # -- queue and timers ------------------------------------------------------

    def queue_reread(self, guard: "Guard") -> None:
        if guard._queued:
            return
        guard._queued = True
        self._queue.append(weakref.ref(guard))
        self._queued.set()

    def schedule(self, guard: "Guard", when: float) -> None:
        """Wakes `guard` at `when` (`time.monotonic()`)."""
        self._timed[guard.number] = weakref.ref(guard)
        earliest = self._timers[0][0] if self._timers else None
        heapq.heappush(self._timers, (when, next(self._timer_seq), guard.number))
        if earliest is None or when < earliest:
            self._timer_moved.set()

    async def _reread_worker(self) -> None:
        limit = asyncio.Semaphore(REREADS_IN_FLIGHT)

        async def one(g: "Guard") -> None:
            async with limit:
                g._queued = False
                await g._reread()

        while True:
            batch = [g for g in (r() for r in self._queue) if g is not None]
            self._queue.clear()
            if not batch:
                self._queued.clear()
                await self._queued.wait()
                continue
            await asyncio.gather(*(one(g) for g in batch))
            self.stats.rereads += len(batch)

    async def _timer_worker(self) -> None:
        while True:
            self._timer_moved.clear()
            now = time.monotonic()
            due: list[int] = []
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
            for n in dict.fromkeys(due):
                ref = self._timed.get(n)
                g = ref() if ref is not None else None
                if g is not None:
                    g._on_timer()
            if self._timers:
                wait = max(0.0, self._timers[0][0] - time.monotonic())
                try:
                    await asyncio.wait_for(self._timer_moved.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
            else:
                await self._timer_moved.wait()

    # -- following the stream ----------------------------------------------------

    async def _js(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            msg = await self.nc.request(subject, payload, timeout=5)
        except nats.errors.NoRespondersError:
            raise TransportError(f"{subject}: no JetStream answers (is the server run with -js?)") from None
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            raise TimedOut(subject, 5) from None
        except nats.errors.Error as exc:
            raise TransportError(f"{subject}: {exc or type(exc).__name__}") from exc
        try:
            doc = json.loads(msg.data)
        except ValueError:
            raise DecodeError(f"{subject}: reply is not JSON: {msg.data[:200]!r}") from None
        if not isinstance(doc, dict):
            raise DecodeError(f"{subject}: reply is not an object")
        err = doc.get("error")
        if err:
            raise TransportError(f"{subject}: {err.get('description', err)} (code {err.get('err_code')})")
        return doc

    async def _stream_info(self) -> dict[str, Any]:
        return await self._js(f"$JS.API.STREAM.INFO.{SIGNAL_STREAM}")

    async def _delete_consumer(self, name: str) -> None:
        await self._js(f"$JS.API.CONSUMER.DELETE.{SIGNAL_STREAM}.{name}")

    async def _make(self) -> tuple[Subscription, str]:
        """Subscribes to a fresh inbox, then makes a consumer delivering
        there from right after the last message taken (the first time: the
        stream's last message, read before the consumer is made)."""
        if self._created is None:
            info = await self._stream_info()
            self._created = str(info.get("created"))
            self._last = int(info.get("state", {}).get("last_seq", 0))
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 28)
        self._made += 1
        name = f"mandate_hub_{uuid.uuid4().hex[:12]}_{self._made}"
        flt = f"mandate.sig.{self.tenant}.>"
        config = {
            "name": name,
            "deliver_subject": inbox,
            "filter_subject": flt,
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": self._last + 1,
            "ack_policy": "none",
            "replay_policy": "instant",
            "flow_control": True,
            "idle_heartbeat": int(IDLE_HEARTBEAT * 1e9),
            "inactive_threshold": 30 * 10**9,
            "mem_storage": True,
            "num_replicas": 1,
        }
        try:
            await self._js(
                f"$JS.API.CONSUMER.CREATE.{SIGNAL_STREAM}.{name}.{flt}",
                {"stream_name": SIGNAL_STREAM, "config": config},
            )
        except BaseException:
            await _quietly(sub.unsubscribe())
            raise
        return sub, name

    async def _replayable(self) -> bool:
        """After a loss: can the stream still replay everything after the
        last message taken?"""
        info = await self._stream_info()
        created = str(info.get("created"))
        state = info.get("state", {})
        last_seq = int(state.get("last_seq", 0))
        if self._created is None:
            self._created = created
        if created != self._created or last_seq < self._last:
            self._created = created
            self._last = 0
            return False
        # Replayable only when nothing after ours was deleted: if the
        # stream's first message is past ours, its age limit, another limit
        # or a purge removed what lay between, and beacons are never rolled
        # up, so that is a loss.
        return int(state.get("first_seq", 0)) <= self._last + 1

    async def _nothing_deleted(self) -> bool:
        """Whether the stream still holds everything after the last message
        taken (same stream, nothing deleted past it). A stream that cannot
        be asked counts as whole: the lease covers an unreachable server."""
        try:
            info = await self._stream_info()
        except MandateError:
            return True
        state = info.get("state", {})
        return str(info.get("created")) == self._created and int(state.get("first_seq", 0)) <= self._last + 1

    async def _follow(self, ready: asyncio.Future[None]) -> None:
        first = True
        backoff = 0.05
        while not self.ended:
            if not first:
                try:
                    if not await self._replayable():
                        self.lost_everything("the signal stream no longer holds what was missed")
                except MandateError as exc:
                    log.debug("the signal stream could not be asked (%s); retrying", exc)
                    if self.nc.is_closed:
                        break
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
            try:
                sub, name = await self._make()
            except (MandateError, nats.errors.Error) as exc:
                if first:
                    ready.set_exception(
                        TransportError(
                            f"cannot follow tenant {self.tenant}'s signals: {exc} (a guard's NATS user needs "
                            f"to read the info of stream {SIGNAL_STREAM} and to create a consumer on it "
                            f"filtered to mandate.sig.{self.tenant}.>)"
                        )
                    )
                    return
                log.debug("the signal consumer could not be made again (%s); retrying", exc)
                if self.nc.is_closed:
                    break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            old, self.consumer = self.consumer, name
            if old is not None:
                _background(asyncio.get_running_loop(), self._delete_consumer(old))
            if not first:
                self.stats.resumes += 1
            backoff = 0.05
            if first:
                first = False
                ready.set_result(None)
            try:
                closed = await self._take_until_lost(sub)
            finally:
                if not self.nc.is_closed:
                    await _quietly(sub.unsubscribe())
            if closed:
                break
        if not self.ended:
            # The connection is closed for good: nothing will be heard here
            # again. The feed leaves the hub and its guards deny.
            guards = self.guards()
            self.end()
            for g in guards:
                g._hear(MISSED)

    async def _take_until_lost(self, sub: Subscription) -> bool:
        """Takes messages until the consumer is lost; True when the
        connection is closed for good."""
        consumer_seq = 0
        reconnects = self.nc.stats.get("reconnects", 0)
        loop = asyncio.get_running_loop()
        next_check = loop.time() + STREAM_CHECK
        while True:
            wait = min(IDLE_HEARTBEAT * 3, max(next_check - loop.time(), 0.0))
            try:
                msg = await sub.next_msg(timeout=wait)
            except nats.errors.TimeoutError:
                if self.nc.is_closed:
                    return True
                if loop.time() < next_check:
                    return False  # heartbeats stopped: the consumer is gone
                next_check = loop.time() + STREAM_CHECK
                if not await self._nothing_deleted():
                    return False
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                return True
            # A consumer resumes after a reconnect with no gap in its own
            # sequence even when the stream lost messages meanwhile (a purge
            # moves it past them): ask the stream before taking anything.
            now = self.nc.stats.get("reconnects", 0)
            if now != reconnects:
                reconnects = now
                if not await self._nothing_deleted():
                    return False
            if loop.time() >= next_check:
                next_check = loop.time() + STREAM_CHECK
                if not await self._nothing_deleted():
                    return False
            headers = msg.headers or {}
            status = headers.get("Status")
            if status == "100":
                if msg.reply:  # flow control: answered, or the server stops
                    await _quietly(self.nc.publish(msg.reply, b""))
                    continue
                stalled = headers.get("Nats-Consumer-Stalled")
                if stalled:
                    await _quietly(self.nc.publish(stalled, b""))
                last = headers.get("Nats-Last-Consumer")
                if last is not None and last.isdigit() and int(last) != consumer_seq:
                    return False
                continue
            if status:
                continue
            info = ack_info(msg.reply or "")
            if info is None:
                continue
            stream_seq, cseq, stored = info
            if cseq != consumer_seq + 1:
                return False
            consumer_seq = cseq
            self._last = stream_seq
            self._last_stored = stored
            self._take(msg, stored)


_BACKGROUND: set[asyncio.Task[None]] = set()


def _background(loop: asyncio.AbstractEventLoop, aw: Any) -> None:
    """Runs `aw` to its end, best effort, holding its task meanwhile."""
    task = loop.create_task(_quietly(aw))
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def _quietly(aw: Any) -> None:
    try:
        await aw
    except Exception:  # best effort
        pass


__all__ = ["GuardHub", "FeedStats", "Feed", "ack_info", "MISSED"]
