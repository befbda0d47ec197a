"""A real nats-server and a real `mandate serve` for the suite.

NATS_SERVER_BIN (default /usr/sbin/nats-server) and MANDATE_BIN (default
../target/debug/mandate from this directory) name the binaries; each server
runs on a free port with a temporary store and is stopped when the suite
ends. Nothing here is a mock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import jsonschema
import pytest
import pytest_asyncio

from mandate_guard import Client, GuardHub, connect
from mandate_guard.types import JSON

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NATS_SERVER_BIN = os.environ.get("NATS_SERVER_BIN", "/usr/sbin/nats-server")
MANDATE_BIN = os.environ.get("MANDATE_BIN", str(REPO / "target" / "debug" / "mandate"))
SCHEMAS = Path(os.environ.get("MANDATE_SCHEMAS", str(REPO / "schemas")))
BEACON_INTERVAL = "200ms"
LEASE = 1.5
"""The guards' lease in the suite: several beacon intervals."""
SECURE_TENANT = "pysecure"
SECRETS = {"principal:cfo": "s3cret-cfo", "agent:lead": "s3cret-lead"}
SIGNED_TENANT = "pysigned"
"""A tenant that requires signed commands; its administrator's key is
configured (`ADMIN_KEY_SEED`, key id `admin-root`)."""
ADMIN_KEY_SEED = bytes(range(32))


def admin_public_key() -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mandate_guard import public_key

    return public_key(Ed25519PrivateKey.from_private_bytes(ADMIN_KEY_SEED))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {seconds} s")


class Process:
    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        out.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Stack:
    """nats-server with JetStream, and `mandate serve` on it."""

    def __init__(self, engine: bool = True) -> None:
        for b in (NATS_SERVER_BIN, MANDATE_BIN):
            if not os.access(b, os.X_OK):
                raise RuntimeError(f"{b} is not an executable (set NATS_SERVER_BIN / MANDATE_BIN)")
        self.dir = Path(tempfile.mkdtemp(prefix="mandate-py-"))
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.nats = Process(
            [NATS_SERVER_BIN, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.dir / "nats")],
            self.dir / "nats.log",
        )
        auth = self.dir / "auth.json"
        auth.write_text(
            json.dumps(
                {
                    "tenants": {
                        SECURE_TENANT: {"keys": SECRETS},
                        SIGNED_TENANT: {
                            "signing_keys": {"admin-root": {"owner": "admin:security", "public_key": admin_public_key()}},
                            "require_signatures": True,
                        },
                    }
                }
            )
        )
        # The engine signs mandate tokens with a key of its own, and serves
        # their verification keys over HTTP (JWKS).
        self.token_key = self.dir / "token.pem"
        made = subprocess.run(
            [MANDATE_BIN, "token-keygen", "--out", str(self.token_key)], capture_output=True, text=True
        )
        if made.returncode != 0:
            raise RuntimeError(f"mandate token-keygen failed: {made.stderr}")
        self.token_kid = made.stdout.strip()
        self.jwks_port = free_port()
        self.jwks_url = f"http://127.0.0.1:{self.jwks_port}/.well-known/jwks.json"
        self.engine = Process(
            [
                MANDATE_BIN, "serve", "--nats", self.url, "--data", str(self.dir / "data"),
                "--allow-open-tenants", "--auth", str(auth), "--beacon-interval", BEACON_INTERVAL,
                "--token-key", str(self.token_key), "--jwks-http", f"127.0.0.1:{self.jwks_port}",
            ],
            self.dir / "engine.log",
        )
        self.nats.start()
        wait_port(self.port)
        if engine:
            self.start_engine()

    def start_engine(self) -> None:
        self.engine.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = subprocess.run(self.cli("health"), capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the engine did not answer health:\n{self.engine.tail()}")

    def stop_engine(self) -> None:
        self.engine.stop()

    def cli(self, *args: str, tenant: str = "acme") -> list[str]:
        return [MANDATE_BIN, "--nats", self.url, "--tenant", tenant, *args]

    def close(self) -> None:
        self.engine.stop()
        self.nats.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def own_stack() -> Iterator[Stack]:
    """A stack of its own, for a test that stops or cuts parts of it."""
    s = Stack()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def tenant() -> str:
    return f"py{secrets.token_hex(5)}"


# -- schemas -------------------------------------------------------------------

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if isinstance(value, str) and not _RFC3339.match(value):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    return True


@FORMATS.checks("uuid", raises=ValueError)
def _uuid(value: object) -> bool:
    if isinstance(value, str):
        uuid.UUID(value)
    return True


class Schemas:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._v: dict[str, jsonschema.Draft202012Validator] = {}
        self.validated: dict[str, int] = {}
        self.expect_invalid = False
        """Set while a test sends requests the schemas refuse, on purpose."""
        self.invalid_sent = 0

    def request(self, name: str, doc: object, what: str) -> None:
        """Validates a request; one sent invalid on purpose is counted."""
        if self.expect_invalid and list(self.validator(name).iter_errors(doc)):
            self.invalid_sent += 1
            return
        self.validate(name, doc, what)

    def validator(self, name: str) -> jsonschema.Draft202012Validator:
        if name not in self._v:
            schema = json.loads((self.root / f"{name}.json").read_text())
            jsonschema.Draft202012Validator.check_schema(schema)
            self._v[name] = jsonschema.Draft202012Validator(schema, format_checker=FORMATS)
        return self._v[name]

    def has(self, name: str) -> bool:
        return (self.root / f"{name}.json").is_file()

    def validate(self, name: str, doc: object, what: str) -> None:
        errors = sorted(self.validator(name).iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            lines = [f"at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:8]]
            raise AssertionError(
                f"{what} does not validate against schemas/{name}.json:\n  " + "\n  ".join(lines)
                + f"\n  document: {json.dumps(doc)[:2000]}"
            )
        self.validated[name] = self.validated.get(name, 0) + 1


@pytest.fixture(scope="session")
def schemas() -> Schemas:
    return Schemas(SCHEMAS)


def validating_trace(schemas: Schemas) -> Callable[[str, JSON, Any], None]:
    """Checks every request sent and reply received against `schemas/`."""

    def trace(subject: str, body: JSON, reply: Any) -> None:
        parts = subject.split(".")
        kind, verb = parts[1], parts[3]
        if kind == "cmd":
            bulk = verb in ("revoke_agent", "revoke_principal")
            schemas.request("bulk-command" if bulk else "command", body, f"{verb} command")
            schemas.validate("reply-command", reply, f"reply on {subject}")
        else:
            if schemas.has(f"query-{verb}"):
                schemas.request(f"query-{verb}", body, f"{verb} query")
            schemas.validate(f"reply-{verb}", reply, f"reply on {subject}")

    return trace


# -- connections ------------------------------------------------------------------


@pytest_asyncio.fixture
async def nc(stack: Stack) -> AsyncIterator[Any]:
    conn = await connect(stack.url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def make_client(nc: Any, tenant: str, schemas: Schemas) -> Callable[..., Client]:
    def make(actor: str | None = None, *, conn: Any = None, tenant_: str | None = None, **kw: Any) -> Client:
        return Client(conn or nc, tenant_ or tenant, actor, trace=validating_trace(schemas), **kw)

    return make


@pytest_asyncio.fixture
async def hub() -> AsyncIterator[GuardHub]:
    h = GuardHub()
    try:
        yield h
    finally:
        await h.close()


def in_(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)


async def eventually(cond: Callable[[], bool], seconds: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {seconds} s")
        await asyncio.sleep(0.02)


# -- a TCP proxy that can cut a process off its server --------------------------------


class Proxy:
    """Forwards 127.0.0.1:<port> to a NATS server; `cut()` drops every
    connection and refuses new ones until `restore()`."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w.close()
            return
        self._writers.update((w, uw))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        self._writers.discard(w)
        self._writers.discard(uw)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()


@pytest_asyncio.fixture
async def proxy(stack: Stack) -> AsyncIterator[Proxy]:
    p = Proxy(stack.port)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


class GuardedTask:
    """Runs `body()` under `guard.guarding()` in a task of its own and keeps
    the message of the `CancelledError` the body saw: the reason (Python
    3.10 drops it on the way out of the task; 3.11 keeps it)."""

    def __init__(self, guard: Any, body: Callable[[], Any]) -> None:
        self.guard = guard
        self.body = body
        self.seen: list[str] = []
        self.started = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async with self.guard.guarding():
                self.started.set()
                await self.body()
        except asyncio.CancelledError as exc:
            self.seen.append(str(exc))
            raise

    async def cancelled_with(self, seconds: float) -> str:
        """Waits for the task to end cancelled; returns the reason it saw."""
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(self.task, seconds)
        assert self.task.cancelled(), "the task ended, but not cancelled"
        assert self.seen, "the body saw no CancelledError"
        return self.seen[0]
