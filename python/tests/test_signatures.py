"""Commands signed with registered Ed25519 keys, from Python: the engine
verifies what this client signs (the canonical encoding agrees across
languages), records it in the events, and refuses a signature that does
not verify. Against the suite's real nats-server and `mandate serve`."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import ADMIN_KEY_SEED, SIGNED_TENANT, Schemas, in_, validating_trace
from mandate_guard import SIGNATURE_HEADER, Client, EngineError, canonical, public_key, sign_command


def test_the_canonical_encoding_sorts_keys_and_keeps_unicode() -> None:
    assert canonical({"b": 1, "a": ["é", None, True]}) == '{"a":["é",null,true],"b":1}'.encode()
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    one = sign_command(key, "k1", "mandate.cmd.t.pause", {"b": 1, "a": 2})
    assert one == sign_command(key, "k1", "mandate.cmd.t.pause", b'{ "a": 2, "b": 1 }')
    assert one != sign_command(key, "k1", "mandate.cmd.t.resume", {"b": 1, "a": 2})
    assert one.startswith("ed25519 k1 ")


async def test_a_registered_key_signs_commands_and_bad_signatures_are_refused(
    nc: Any, schemas: Schemas
) -> None:
    trace = validating_trace(schemas)
    admin_key = Ed25519PrivateKey.from_private_bytes(ADMIN_KEY_SEED)
    admin = Client(nc, SIGNED_TENANT, "admin:security", signing_key=("admin-root", admin_key), trace=trace)
    cfo_key = Ed25519PrivateKey.generate()
    key_id = f"cfo-{uuid.uuid4().hex[:8]}"
    registered = await admin.register_key(key_id, "principal:cfo", public_key(cfo_key))
    assert registered.commits[0]["events"][0]["signature"]["key_id"] == "admin-root"

    cfo = Client(nc, SIGNED_TENANT, "principal:cfo", signing_key=(key_id, cfo_key), trace=trace)
    res = await cfo.issue("lead", ["a:b on c/**"], in_(600), purpose="signed from python")
    history = await cfo.history(mandate=res.mandate)
    sig = history["events"][0]["signature"]
    assert (sig["key_id"], sig["owner"], sig["alg"]) == (key_id, "principal:cfo", "EdDSA")
    verified = await cfo.verify(mandate=res.mandate)
    assert verified["signatures"] == 1 and not verified.get("signature_failures"), verified

    ring = await cfo.keys()
    assert ring["require_signatures"] is True
    assert [k["key_id"] for k in ring["keys"]][:1] == ["admin-root"]

    # Unsigned, on a tenant that requires signatures: refused.
    with pytest.raises(EngineError) as refused:
        await Client(nc, SIGNED_TENANT, "principal:cfo").pause(res.mandate or "")
    assert refused.value.reason == "not_authenticated"
    # Signed with another key under the cfo's key id: refused by name.
    forged = Client(nc, SIGNED_TENANT, "principal:cfo", signing_key=(key_id, Ed25519PrivateKey.generate()))
    with pytest.raises(EngineError) as refused:
        await forged.pause(res.mandate or "")
    assert refused.value.reason == "not_authenticated"
    assert "does not match" in str(refused.value)
    # A body changed after signing: refused.
    body = cfo.envelope({"type": "pause", "mandate": res.mandate})
    subject = f"mandate.cmd.{SIGNED_TENANT}.pause"
    header = sign_command(cfo_key, key_id, subject, body)
    body["reason"] = "added after signing"
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=5, headers={SIGNATURE_HEADER: header})
    reply = json.loads(msg.data)
    assert reply["ok"] is False and reply["error"]["reason"] == "not_authenticated", reply
    assert (await cfo.history(mandate=res.mandate))["events"][-1]["type"] == "mandate_issued"

    # Revoked: the key signs nothing more.
    await cfo.revoke_key(key_id, "rotating out")
    with pytest.raises(EngineError) as refused:
        await cfo.pause(res.mandate or "")
    assert "revoked" in str(refused.value)
