"""A receiver in Python reads the engine's Security Event Tokens from NATS
and verifies them with PyJWT and the engine's JWKS over HTTP alone: no
Mandate code on the receiving side."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import jwt
from jwt import PyJWKClient

from conftest import Schemas, Stack

SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"


def run(stack: Stack, *args: str, tenant: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(stack.cli(*args, tenant=tenant), capture_output=True, text=True)


def issue_and_revoke(stack: Stack, tenant: str) -> str:
    root = run(
        stack, "--actor", "principal:cfo", "--json", "issue", "--principal", "cfo", "--agent", "lead",
        "--grant", "reports:read on reports/**", "--purpose", "sets", "--ttl", "1h", tenant=tenant,
    )
    assert root.returncode == 0, root.stderr
    mandate: str = json.loads(root.stdout)["mandate"]
    out = run(stack, "--actor", "principal:cfo", "revoke", mandate, "--reason", "left the team", tenant=tenant)
    assert out.returncode == 0, out.stderr
    return mandate


async def test_a_set_from_nats_verifies_with_pyjwt_and_the_http_jwks(
    stack: Stack, nc: Any, tenant: str, schemas: Schemas
) -> None:
    mandate = await asyncio.to_thread(issue_and_revoke, stack, tenant)
    js = nc.jetstream()
    msg = None
    for _ in range(100):
        try:
            msg = await js.get_last_msg("MANDATE_SETS", f"mandate.set.{tenant}")
            break
        except Exception:
            await asyncio.sleep(0.1)
    assert msg is not None, "no SET on mandate.set.<tenant>"
    token = msg.data.decode()

    header = jwt.get_unverified_header(token)
    assert header["typ"] == "secevent+jwt"
    assert header["kid"] == stack.token_kid
    key = await asyncio.to_thread(PyJWKClient(stack.jwks_url).get_signing_key_from_jwt, token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["EdDSA"],
        issuer=f"mandate/{tenant}",
        options={"require": ["iss", "iat", "jti"], "verify_aud": False},
    )
    schemas.validate("set", claims, "a SET's claims")
    assert "aud" not in claims
    assert msg.header is not None and msg.header["Nats-Msg-Id"] == claims["jti"]
    assert claims["sub_id"]["session"] == {"format": "opaque", "id": mandate}
    assert claims["sub_id"]["tenant"] == {"format": "opaque", "id": tenant}
    event = claims["events"][SESSION_REVOKED]
    assert event["initiating_entity"] == "user"
    assert event["reason_admin"] == {"en": "left the team"}
    assert claims["mandate"]["id"] == mandate
    assert claims["mandate"]["status"] == "revoked"
    assert claims["mandate"]["includes_descendants"] is True
