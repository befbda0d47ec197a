#!/usr/bin/env python3
"""A Mandate client written from the wire contract alone.

It speaks to a running `mandate serve` over NATS using only nats-py, the
`jsonschema` package and the JSON Schemas in `schemas/`. Every request it
sends and every reply or signal it receives is validated against the matching
schema file; a document that does not validate stops the run.

The scenario: a principal issues a root mandate, its grantee delegates a
narrower one, a check under the child is allowed, the principal revokes the
root, the `terminated` signal arrives on the root's subject, the same check is
now denied (`not_active`, `revoked`), a bad command is refused, a retried
issue command is answered as a duplicate naming the same mandate, and a
mandate whose mission is a ticket URL ends when the tracker's completion is
published on the mission's encoded subject.

Exit codes: 0 success, 1 a failed expectation, 2 a document that does not
match its schema, 3 the engine could not be reached or did not answer.

    python mandate_client.py --nats nats://127.0.0.1:4222 [--tenant T]
    python mandate_client.py --nats nats://127.0.0.1:4222 --wait-health 15
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import sys
import time
import uuid
from pathlib import Path

try:
    import jsonschema
    import nats
    from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit(f"FAIL: missing dependency ({exc}); pip install nats-py jsonschema")

SCHEMAS = Path(__file__).resolve().parent.parent.parent / "schemas"
REQUEST_TIMEOUT = 5.0
SIGNAL_TIMEOUT = 5.0


class Expectation(Exception):
    """The engine answered, but not what the contract promises for this step."""


class ContractViolation(Exception):
    """A document (sent or received) does not validate against its schema."""


class Unreachable(Exception):
    """No answer from the engine."""


# --------------------------------------------------------------------------
# Schemas


RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _is_rfc3339(value: object) -> bool:
    """Strict RFC 3339 date-time (jsonschema only checks it when an optional
    package is installed, so check it here)."""
    if not isinstance(value, str):
        return True
    m = RFC3339.match(value)
    if not m:
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    dt.datetime(y, mo, d, h, mi, min(s, 59))  # raises on impossible dates
    if h > 23 or mi > 59 or s > 60:
        raise ValueError(f"{value!r} has an impossible time")
    return True


@FORMATS.checks("uuid", raises=ValueError)
def _is_uuid(value: object) -> bool:
    if isinstance(value, str):
        uuid.UUID(value)
    return True


class Schemas:
    """Loads `schemas/*.json` lazily; each file is its own root, so its local
    `#/$defs/...` references resolve within it."""

    def __init__(self, root: Path):
        self.root = root
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    def validator(self, name: str) -> jsonschema.Draft202012Validator:
        if name not in self._validators:
            path = self.root / f"{name}.json"
            schema = json.loads(path.read_text())
            jsonschema.Draft202012Validator.check_schema(schema)
            self._validators[name] = jsonschema.Draft202012Validator(
                schema, format_checker=FORMATS
            )
        return self._validators[name]

    def has(self, name: str) -> bool:
        return (self.root / f"{name}.json").is_file()

    def errors(self, name: str, doc: object) -> list[str]:
        out = []
        for err in sorted(self.validator(name).iter_errors(doc), key=lambda e: list(e.path)):
            where = "/".join(str(p) for p in err.absolute_path) or "(root)"
            out.append(f"at {where}: {err.message}")
            for sub in sorted(err.context or [], key=lambda e: list(e.path))[:6]:
                subwhere = "/".join(str(p) for p in sub.absolute_path) or "(root)"
                out.append(f"    - branch at {subwhere}: {sub.message}")
        return out

    def validate(self, name: str, doc: object, what: str) -> None:
        errs = self.errors(name, doc)
        if errs:
            raise ContractViolation(
                f"{what} does not validate against schemas/{name}.json:\n  "
                + "\n  ".join(errs)
                + "\n  document: "
                + json.dumps(doc, indent=None, sort_keys=True)[:4000]
            )


# --------------------------------------------------------------------------
# The client


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise Expectation(message)


class Client:
    def __init__(self, nc, tenant: str, schemas: Schemas, log):
        self.nc = nc
        self.tenant = tenant
        self.schemas = schemas
        self.log = log

    async def _request(self, subject: str, body: dict) -> dict:
        payload = json.dumps(body).encode()
        try:
            msg = await self.nc.request(subject, payload, timeout=REQUEST_TIMEOUT)
        except NoRespondersError:
            raise Unreachable(f"no responders on {subject}: is `mandate serve` running?")
        except (NatsTimeoutError, asyncio.TimeoutError):
            raise Unreachable(f"no reply on {subject} within {REQUEST_TIMEOUT}s")
        try:
            return json.loads(msg.data)
        except ValueError as exc:
            raise ContractViolation(f"reply on {subject} is not JSON ({exc}): {msg.data[:500]!r}")

    def _check_reply_shape(self, reply: dict, subject: str) -> None:
        # The schema says `ok` with a `result` or not `ok` with an `error`;
        # the nullable fields make that an expectation rather than a schema rule.
        if reply.get("ok") is True:
            expect(reply.get("result") is not None, f"{subject}: ok reply without a result: {reply}")
        else:
            expect(reply.get("error") is not None, f"{subject}: failed reply without an error: {reply}")

    async def command(self, body: dict, *, validate_request: bool = True) -> dict:
        verb = body["type"]
        if validate_request:
            self.schemas.validate("command", body, f"{verb} command")
        subject = f"mandate.cmd.{self.tenant}.{verb}"
        reply = await self._request(subject, body)
        self.schemas.validate("reply-command", reply, f"reply to {verb} command")
        self._check_reply_shape(reply, subject)
        return reply

    async def query(self, verb: str, body: dict) -> dict:
        if self.schemas.has(f"query-{verb}"):
            self.schemas.validate(f"query-{verb}", body, f"{verb} query")
        subject = f"mandate.q.{self.tenant}.{verb}"
        reply = await self._request(subject, body)
        self.schemas.validate(f"reply-{verb}", reply, f"reply to {verb} query")
        self._check_reply_shape(reply, subject)
        return reply

    def envelope(self, actor: dict, command_id: str | None = None) -> dict:
        return {
            "command_id": command_id or str(uuid.uuid4()),
            "tenant": self.tenant,
            "actor": actor,
        }


def ok_result(reply: dict, step: str) -> dict:
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise Expectation(f"{step}: refused with {err.get('code')}: {err.get('message')}")
    return reply["result"]


def refused(reply: dict, step: str, codes: set[str]) -> dict:
    expect(reply.get("ok") is False, f"{step}: expected a refusal, got ok: {json.dumps(reply)[:800]}")
    err = reply["error"]
    expect(
        err["code"] in codes,
        f"{step}: expected error code in {sorted(codes)}, got {err['code']!r} ({err['message']})",
    )
    return err


# --------------------------------------------------------------------------
# Mission subject tokens
#
# A mission reference (`jira:FIN-42`, `gh:org/repo#12`, `FIN-42.1`, a ticket
# URL) is one token of `mission.<tenant>.<token>.completed`: letters, digits,
# `_`, `:` and `-` stay; every other byte (`%` included) is `%` and two
# uppercase hex digits. Only that canonical token is accepted by the engine.

MISSION_TOKEN_PLAIN = re.compile(r"[A-Za-z0-9_:-]")
MAX_MISSION_TOKEN_LEN = 256

# The worked examples of the README and of tests/mission_refs.rs.
MISSION_TOKEN_EXAMPLES = [
    ("jira:FIN-42", "jira:FIN-42"),
    ("gh:org/repo#12", "gh:org%2Frepo%2312"),
    ("FIN-42.1", "FIN-42%2E1"),
    ("100%", "100%25"),
    ("https://tracker.example/browse/FIN-42?focus=a*b>c",
     "https:%2F%2Ftracker%2Eexample%2Fbrowse%2FFIN-42%3Ffocus%3Da%2Ab%3Ec"),
]


def mission_token(ref: str) -> str:
    """The subject token of a mission reference (see above)."""
    if not ref or len(ref) > 128 or not all("!" <= c <= "~" for c in ref):
        raise ValueError(f"mission_ref {ref!r} is not 1 to 128 printable ASCII bytes without spaces")
    token = "".join(c if MISSION_TOKEN_PLAIN.fullmatch(c) else f"%{ord(c):02X}" for c in ref)
    if len(token) > MAX_MISSION_TOKEN_LEN:
        raise ValueError(f"mission_ref {ref!r}: its subject token would be {len(token)} bytes, "
                         f"longer than {MAX_MISSION_TOKEN_LEN}")
    return token


def mission_from_token(token: str) -> str:
    """The mission reference a canonical subject token encodes."""
    ref = re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), token)
    if mission_token(ref) != token:
        raise ValueError(f"{token!r} is not the canonical subject token of a mission_ref")
    return ref


# --------------------------------------------------------------------------
# The scenario


async def scenario(client: Client, log) -> None:
    schemas = client.schemas
    tenant = client.tenant
    suffix = secrets.token_hex(4)
    cfo = {"kind": "principal", "id": "cfo"}
    lead_id, analyst_id = f"research-lead-{suffix}", f"analyst-{suffix}"
    lead = {"kind": "agent", "id": lead_id}
    analyst = {"kind": "agent", "id": analyst_id}
    # A real ticket reference: '/', '.' and '#' are encoded on the subject.
    mission_ref = f"gh:example-org/reports.py#{int(suffix, 16)}"

    # Watch the tenant's event and audit subjects for the whole run: every
    # message there must match commit.json / audit-record.json too.
    observed = {"commit": [], "audit-record": []}
    violations: list[Exception] = []

    def observer(schema: str):
        async def on_msg(msg):
            try:
                # An audit message holds one record or several, one a line.
                if schema == "audit-record":
                    docs = [json.loads(line) for line in msg.data.splitlines() if line.strip()]
                else:
                    docs = [json.loads(msg.data)]
                for doc in docs:
                    schemas.validate(schema, doc, f"message on {msg.subject}")
                    observed[schema].append(doc)
            except ValueError as exc:
                violations.append(ContractViolation(f"message on {msg.subject} is not JSON: {exc}"))
            except ContractViolation as exc:
                violations.append(exc)
        return on_msg

    watchers = [
        await client.nc.subscribe(f"mandate.evt.{tenant}.>", cb=observer("commit")),
        await client.nc.subscribe(f"mandate.audit.{tenant}.>", cb=observer("audit-record")),
    ]
    await client.nc.flush()

    health = ok_result(await client.query("health", {}), "health")
    log(f"engine {health['instance']} up (backend {health['backend']}, position {health['position']})")

    # 1. The principal issues the root mandate.
    issue = {
        **client.envelope(cfo),
        "type": "issue",
        "principal": "cfo",
        "grantee": lead_id,
        "mission": {"purpose": "Quarterly reporting review (python example)", "mission_ref": mission_ref},
        "scope": [{"action": "finance:read", "resource": "reports/**"}],
        "not_after": rfc3339(now_utc() + dt.timedelta(hours=1)),
    }
    res = ok_result(await client.command(issue), "issue")
    root = res.get("mandate")
    expect(root is not None, f"issue: the result names no mandate: {res}")
    expect(res["duplicate"] is False, f"issue: a fresh command id was answered as duplicate: {res}")
    expect(res["command_id"] == issue["command_id"], f"issue: result names command {res['command_id']}")
    issued = [e for c in res["commits"] for e in c["events"] if e.get("type") == "mandate_issued"]
    expect(
        any(e.get("mandate") == root for e in issued),
        f"issue: no mandate_issued event for {root} among the commits: {res['commits']}",
    )
    tree = res["commits"][0]["tree"]
    log(f"cfo issued root {root} to {lead_id} ({mission_ref}, reports/**)")

    # 2. The grantee delegates a narrower mandate.
    delegate = {
        **client.envelope(lead),
        "type": "delegate",
        "parent": root,
        "grantee": analyst_id,
        "scope": [{"action": "finance:read", "resource": "reports/q3/*"}],
    }
    res = ok_result(await client.command(delegate), "delegate")
    child = res.get("mandate")
    expect(child is not None and child != root, f"delegate: unexpected mandate in result: {res}")
    log(f"{lead_id} delegated {child} to {analyst_id} (reports/q3/*)")

    chain = ok_result(await client.query("chain", {"mandate": child}), "chain")
    links = [link["mandate"] for link in chain["chain"]]
    expect(links == [root, child], f"chain of the child: expected [root, child], got {links}")
    expect(chain["chain"][1]["grantor"] == lead, f"chain: child's grantor is {chain['chain'][1]['grantor']}")
    expect(all(link["on_behalf_of"] == "cfo" for link in chain["chain"]), "chain: not all on behalf of cfo")
    expect(chain["effective"]["status"] == "active", f"chain: child not active: {chain['effective']}")
    log(f"chain of the child: {len(chain['chain'])} links, effective {chain['effective']['status']}")

    # 3. Subscribe to the root's signals before anything changes.
    signals: asyncio.Queue = asyncio.Queue()

    async def on_signal(msg):
        try:
            doc = json.loads(msg.data)
        except ValueError as exc:
            await signals.put(ContractViolation(f"signal on {msg.subject} is not JSON: {exc}"))
            return
        try:
            schemas.validate("signal", doc, f"signal on {msg.subject}")
        except ContractViolation as exc:
            await signals.put(exc)
            return
        await signals.put(doc)

    sig_subject = f"mandate.sig.{tenant}.{root}"
    sub = await client.nc.subscribe(sig_subject, cb=on_signal)
    await client.nc.flush()
    log(f"subscribed to {sig_subject}")

    # 4. A check under the child is allowed.
    check = {
        "mandate": child,
        "action": "finance:read",
        "resource": "reports/q3/financials",
        "actor": analyst,
    }
    dec = ok_result(await client.query("check", check), "check")
    expect(dec["outcome"] == "allow", f"check before revoke: expected allow, got {dec['outcome']} ({dec.get('reason')})")
    expect(dec["mandate"] == child and dec["tree"] == tree, f"check: decision names {dec['mandate']} in {dec['tree']}")
    log(f"check {child[:8]} finance:read reports/q3/financials -> allow")

    outside = {**check, "resource": "reports/q4/financials"}
    dec = ok_result(await client.query("check", outside), "check outside scope")
    expect(dec["outcome"] == "deny", f"check outside the child's scope: expected deny, got {dec['outcome']}")
    expect((dec.get("reason") or {}).get("kind") == "out_of_scope",
           f"check outside the child's scope: expected reason out_of_scope, got {dec.get('reason')}")
    log("check finance:read reports/q4/financials -> deny (out_of_scope)")

    # 5. The principal revokes the root; the signal arrives on the root's subject.
    revoke = {**client.envelope(cfo), "type": "revoke", "mandate": root, "reason": "python example"}
    t_revoke = time.monotonic()
    res = ok_result(await client.command(revoke), "revoke")
    expect(res.get("mandate") == root, f"revoke: result names {res.get('mandate')}, not the root")
    log(f"cfo revoked root {root[:8]}")

    deadline = t_revoke + SIGNAL_TIMEOUT
    terminated = None
    seen = []
    while terminated is None:
        left = deadline - time.monotonic()
        if left <= 0:
            st = ok_result(await client.query("status", {"mandate": root}), "status of the root")
            raise Expectation(
                f"no terminated signal on {sig_subject} within {SIGNAL_TIMEOUT}s "
                f"(signals seen: {[s.get('kind') for s in seen]}); yet the revoke was applied: "
                f"status query says own status {st['mandate'].get('status')}, "
                f"effective {st['effective']['status']}"
            )
        try:
            item = await asyncio.wait_for(signals.get(), timeout=left)
        except asyncio.TimeoutError:
            continue
        if isinstance(item, Exception):
            raise item
        seen.append(item)
        if item["kind"] == "terminated":
            terminated = item
    await sub.unsubscribe()
    latency_ms = (time.monotonic() - t_revoke) * 1000
    expect(terminated["mandate"] == root, f"terminated signal names {terminated['mandate']}, not the root")
    expect(terminated["tenant"] == tenant, f"terminated signal names tenant {terminated['tenant']}")
    expect(terminated["status"] == "revoked", f"terminated signal has status {terminated['status']}")
    log(f"signal {terminated['kind']} ({terminated['event_type']}, status {terminated['status']}) "
        f"{latency_ms:.0f} ms after the revoke was sent")

    # 6. The same check under the child is now denied: not active, revoked.
    dec = ok_result(await client.query("check", check), "check after revoke")
    reason = dec.get("reason") or {}
    expect(dec["outcome"] == "deny", f"check after revoke: expected deny, got {dec['outcome']}")
    expect(reason.get("kind") == "not_active", f"check after revoke: expected reason not_active, got {reason}")
    expect(reason.get("status") == "revoked", f"check after revoke: expected status revoked, got {reason}")
    cause = reason.get("cause") or {}
    if cause:
        expect(cause.get("mandate") == root, f"check after revoke: cause names {cause.get('mandate')}, not the root")
    log(f"check {child[:8]} again -> deny (not_active, revoked"
        + (f" by {cause['by']['kind']}:{cause['by']['id']} on {cause['mandate'][:8]}" if cause.get("by") else "")
        + ")")

    status = ok_result(await client.query("status", {"mandate": child}), "status")
    expect(status["effective"]["status"] == "revoked",
           f"status of the child: expected effective revoked, got {status['effective']}")
    log(f"status of the child: effective {status['effective']['status']}")

    # 7. Bad commands are refused.
    mismatch = {**client.envelope(cfo), "type": "revoke", "mandate": child}
    mismatch["tenant"] = f"{tenant}-other"
    reply = await client.command(mismatch)  # schema-valid, but not this subject's tenant
    err = refused(reply, "tenant mismatch", {"invalid_input", "forbidden"})
    log(f"revoke with body tenant {mismatch['tenant']} on {tenant}'s subject -> {err['code']}")

    empty = {**client.envelope(lead), "type": "delegate", "parent": root, "grantee": analyst_id, "scope": []}
    expect(schemas.errors("command", empty) != [], "an empty-scope delegate unexpectedly validates against command.json")
    reply = await client.command(empty, validate_request=False)  # known to be invalid: sent on purpose
    err = refused(reply, "empty-scope delegate", {"invalid_input"})
    log(f"delegate with an empty scope (rejected by command.json too) -> {err['code']}")

    # 8. The issue command, retried with the same command id, is a duplicate.
    res = ok_result(await client.command(issue), "issue retry")
    expect(res["duplicate"] is True, f"issue retry: expected duplicate: true, got {res['duplicate']}")
    expect(res.get("mandate") == root, f"issue retry: names {res.get('mandate')}, not the original {root}")
    log(f"issue retried with command id {issue['command_id'][:8]} -> duplicate, same mandate {root[:8]}")

    # 9. The rest of the read side, for contract coverage.
    hist = ok_result(await client.query("history", {"tree": tree}), "history")
    kinds = [e["type"] for e in hist["events"]]
    expect(hist["tree"] == tree, f"history: tree {hist['tree']} is not {tree}")
    expect(kinds == ["mandate_issued", "mandate_issued", "mandate_revoked"],
           f"history of the tree: expected issued, issued, revoked; got {kinds}")
    expect([e["seq"] for e in hist["events"]] == [1, 2, 3], "history: sequences are not 1, 2, 3")
    expect(all(e["on_behalf_of"] == "cfo" for e in hist["events"]), "history: not all on behalf of cfo")
    expect(hist["events"][1]["actor"] == lead, f"history: the delegation's actor is {hist['events'][1]['actor']}")
    log(f"history of the tree: {', '.join(kinds)}")
    # event.json: prev_hash is the hex SHA-256 of the previous event's canonical
    # encoding (JSON, object keys sorted, no whitespace).
    prev = None
    for e in hist["events"]:
        expect(e.get("prev_hash") == prev,
               f"history: event {e['seq']} has prev_hash {e.get('prev_hash')}, recomputed {prev}")
        prev = hashlib.sha256(
            json.dumps(e, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
    log(f"hash chain of {len(hist['events'])} events verified from the wire form")
    # Named by a mandate, `history` answers with that mandate's own events
    # (the schema's wording, "a tree named by ... any of its mandates", reads
    # as the whole tree); shown, not asserted.
    own = ok_result(await client.query("history", {"mandate": child}), "history by mandate")
    log(f"history named by the child: {', '.join(e['type'] for e in own['events'])}")

    tr = ok_result(await client.query("tree", {"tree": tree}), "tree")
    effective = {m["mandate"]: m["effective"]["status"] for m in tr["effective"]}
    expect(effective == {root: "revoked", child: "revoked"}, f"tree: effective statuses {effective}")
    expect(tr["tree"]["root"] == root, f"tree: root is {tr['tree']['root']}")
    expect(issue["command_id"] in tr["tree"]["commands"], "tree: the issue command id is not recorded")
    log(f"tree {tree[:8]}: {len(effective)} mandates, all effectively revoked, version {tr['tree']['version']}")

    lst = ok_result(await client.query("list", {"mission_ref": mission_ref}), "list")
    expect(len(lst["mandates"]) >= 1, f"list by mission_ref {mission_ref}: nothing listed")
    log(f"list by {mission_ref}: {len(lst['mandates'])} mandates")

    aud = ok_result(await client.query("audit", {"mandate": child}), "audit")
    outcomes = [r["decision"]["outcome"] for r in aud["records"]]
    log(f"audit of the child: {len(outcomes)} recorded decisions ({', '.join(outcomes)})")

    await client.nc.flush()
    await asyncio.sleep(0.2)
    for w in watchers:
        await w.unsubscribe()
    if violations:
        raise violations[0]
    commit_types = [e["type"] for c in observed["commit"] for e in c]
    expect(commit_types == kinds,
           f"commits seen on mandate.evt.{tenant}.>: {commit_types}, history has {kinds}")
    log(f"{len(observed['commit'])} commits on mandate.evt.{tenant}.> and "
        f"{len(observed['audit-record'])} records on mandate.audit.{tenant}.> matched their schemas")

    # 10. A ticket URL as mission: the tracker's completion, published on the
    # encoded subject, ends the mandate.
    for ref, token in MISSION_TOKEN_EXAMPLES:
        expect(mission_token(ref) == token, f"mission_token({ref!r}) is {mission_token(ref)!r}, not {token!r}")
        expect(mission_from_token(token) == ref, f"mission_from_token({token!r}) is not {ref!r}")
    ticket = f"https://tracker.example/browse/PY-{suffix}.1"
    issue2 = {**issue, **client.envelope(cfo), "mission": {"purpose": "ticket as mission", "mission_ref": ticket}}
    res = ok_result(await client.command(issue2), "issue for a ticket URL")
    ticket_root = res.get("mandate")
    expect(ticket_root is not None, f"issue for {ticket}: the result names no mandate: {res}")
    subject = f"mission.{tenant}.{mission_token(ticket)}.completed"
    notice = {"source": "python example", "reason": "ticket closed"}
    schemas.validate("mission-completed", notice, f"completion on {subject}")
    ack = await client.nc.jetstream().publish(subject, json.dumps(notice).encode())
    log(f"completion of {ticket} published on {subject} (stream {ack.stream}, seq {ack.seq})")
    deadline = time.monotonic() + SIGNAL_TIMEOUT
    while True:
        st = ok_result(await client.query("status", {"mandate": ticket_root}), "status of the ticket's root")
        if st["effective"]["status"] == "completed":
            break
        expect(time.monotonic() < deadline,
               f"{ticket}: root still {st['effective']['status']} {SIGNAL_TIMEOUT}s after its completion")
        await asyncio.sleep(0.05)
    lst = ok_result(await client.query("list", {"mission_ref": ticket}), "list by a ticket URL")
    expect([m["mandate"] for m in lst["mandates"]] == [ticket_root],
           f"list by the plain {ticket!r}: {[m['mandate'] for m in lst['mandates']]}, not [{ticket_root}]")
    log(f"root {ticket_root[:8]} for {ticket} -> completed")


# --------------------------------------------------------------------------


async def connect(url: str, timeout: float):
    """One bounded attempt: nats-py would otherwise retry (and log) forever."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    try:
        return await asyncio.wait_for(
            nats.connect(
                url,
                connect_timeout=timeout,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                error_cb=on_error,
            ),
            timeout=timeout + 1,
        )
    except Exception as exc:
        cause = errors[-1] if errors else exc
        raise Unreachable(f"cannot connect to {url}: {cause or type(cause).__name__}") from None


async def wait_health(url: str, tenant: str, schemas: Schemas, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    last = "never connected"
    while time.monotonic() < deadline:
        nc = None
        try:
            nc = await connect(url, 2)
            client = Client(nc, tenant, schemas, print)
            reply = await client.query("health", {})
            if reply.get("ok"):
                print(f"health: {json.dumps(reply['result'])}")
                return
            last = f"health answered not ok: {reply.get('error')}"
        except (Unreachable, OSError, nats.errors.Error) as exc:  # not up yet
            last = str(exc) or type(exc).__name__
        finally:
            if nc is not None:
                try:
                    await nc.close()
                except Exception:
                    pass
        await asyncio.sleep(0.25)
    raise Unreachable(f"engine not healthy within {seconds}s ({last})")


async def main_async(args) -> int:
    schemas = Schemas(Path(args.schemas))
    if args.wait_health is not None:
        await wait_health(args.nats, args.tenant, schemas, args.wait_health)
        return 0

    start = time.monotonic()

    def log(line: str) -> None:
        print(f"  +{(time.monotonic() - start) * 1000:7.1f} ms  {line}", flush=True)

    print(f"mandate python client: {args.nats}, tenant {args.tenant}")
    nc = await connect(args.nats, 5)
    try:
        await scenario(Client(nc, args.tenant, schemas, log), log)
    finally:
        await nc.close()
    print("OK: every request, reply, signal and observed message matched its schema; every expectation held")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nats", default=os.environ.get("MANDATE_NATS"),
                   help="NATS URL (default: $MANDATE_NATS)")
    p.add_argument("--tenant", default=f"py{secrets.token_hex(4)}",
                   help="tenant (default: a fresh random one)")
    p.add_argument("--schemas", default=str(SCHEMAS), help=f"schema directory (default: {SCHEMAS})")
    p.add_argument("--wait-health", type=float, metavar="SECONDS",
                   help="only poll the health query until it answers, then exit")
    args = p.parse_args()
    if not args.nats:
        p.error("no NATS URL: pass --nats or set MANDATE_NATS")
    try:
        return asyncio.run(main_async(args))
    except Expectation as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    except ContractViolation as exc:
        print(f"FAIL (contract): {exc}", file=sys.stderr)
        return 2
    except Unreachable as exc:
        print(f"FAIL (unreachable): {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
