"""A resource server in Python verifies mandate tokens with PyJWT and the
engine's JWKS over HTTP alone: no Mandate code on the verifying side. The
tokens come from the `mandate` CLI (the engine's `token` query)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
import urllib.request
from typing import Any

import jwt
import pytest
from jwt import PyJWKClient

from conftest import Schemas, Stack


def run(stack: Stack, *args: str, tenant: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(stack.cli(*args, tenant=tenant), capture_output=True, text=True)


def issue_chain(stack: Stack, tenant: str) -> tuple[str, str]:
    """cfo → lead (root), lead → analyst (child)."""
    root = run(
        stack, "--actor", "principal:cfo", "--json", "issue", "--principal", "cfo", "--agent", "lead",
        "--grant", "reports:read on reports/**", "--purpose", "tokens", "--ttl", "1h", tenant=tenant,
    )
    assert root.returncode == 0, root.stderr
    root_id: str = json.loads(root.stdout)["mandate"]
    child = run(
        stack, "--actor", "agent:lead", "--json", "delegate", root_id, "--agent", "analyst",
        "--grant", "reports:read on reports/q3/*", tenant=tenant,
    )
    assert child.returncode == 0, child.stderr
    child_id: str = json.loads(child.stdout)["mandate"]
    return root_id, child_id


def token_for(stack: Stack, tenant: str, mandate: str, actor: str, *more: str) -> str:
    out = run(stack, "--actor", actor, "token", mandate, *more, tenant=tenant)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


class ResourceServer:
    """What another team's service does: its ordinary JWT library, the
    issuer's JWKS URL, its own audience and the issuer it trusts."""

    def __init__(self, jwks_url: str, issuer: str, audience: str) -> None:
        self.keys = PyJWKClient(jwks_url)
        self.issuer = issuer
        self.audience = audience

    def verify(self, token: str) -> dict[str, Any]:
        key = self.keys.get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=["EdDSA"],
            audience=self.audience,
            issuer=self.issuer,
            options={"require": ["exp", "iat", "nbf", "sub", "iss", "aud"]},
        )
        return claims


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


async def test_a_python_resource_server_verifies_tokens_with_pyjwt_and_the_http_jwks(
    stack: Stack, tenant: str, schemas: Schemas
) -> None:
    root, child = await asyncio.to_thread(issue_chain, stack, tenant)
    token = await asyncio.to_thread(
        token_for, stack, tenant, child, "agent:analyst", "--aud", "reports-api", "--ttl", "60s"
    )
    server = ResourceServer(stack.jwks_url, f"mandate/{tenant}", "reports-api")
    claims = await asyncio.to_thread(server.verify, token)

    schemas.validate("token-claims", claims, "a token's claims")
    with urllib.request.urlopen(stack.jwks_url, timeout=10) as r:
        assert r.headers["Content-Type"] == "application/json"
        jwks = json.load(r)
    schemas.validate("jwks", jwks, "the HTTP JWKS")
    assert [k["kid"] for k in jwks["keys"]] == [stack.token_kid]
    assert jwt.get_unverified_header(token)["kid"] == stack.token_kid
    assert claims["sub"] == "cfo"
    assert claims["tenant"] == tenant
    assert claims["mandate"] == child
    assert claims["scope"] == ["reports:read on reports/q3/*"]
    # RFC 8693: the acting agent outermost, the one that delegated to it inside.
    assert claims["act"]["sub"] == "analyst"
    assert claims["act"]["act"]["sub"] == "lead"
    assert claims["act"]["act"]["mandate"] == root
    assert "act" not in claims["act"]["act"]
    assert 0 < claims["exp"] - claims["iat"] <= 60
    assert abs(claims["iat"] - time.time()) < 60

    # Tampered: a wider scope in the payload, the signature kept.
    header, payload, signature = token.split(".")
    body = json.loads(unb64(payload))
    body["scope"] = ["reports:* on **"]
    forged = ".".join([header, b64(json.dumps(body).encode()), signature])
    with pytest.raises(jwt.InvalidSignatureError):
        await asyncio.to_thread(server.verify, forged)
    # Unsigned (alg none) is refused before any key is looked at.
    unsigned = ".".join([b64(b'{"alg":"none","typ":"JWT"}'), payload, ""])
    with pytest.raises(jwt.PyJWTError):
        await asyncio.to_thread(server.verify, unsigned)
    # Meant for another service.
    with pytest.raises(jwt.InvalidAudienceError):
        await asyncio.to_thread(
            ResourceServer(stack.jwks_url, f"mandate/{tenant}", "payroll").verify, token
        )
    # Issued for another tenant's issuer.
    with pytest.raises(jwt.InvalidIssuerError):
        await asyncio.to_thread(ResourceServer(stack.jwks_url, "mandate/other", "reports-api").verify, token)


async def test_an_expired_token_is_refused_by_pyjwt(stack: Stack, tenant: str) -> None:
    _, child = await asyncio.to_thread(issue_chain, stack, tenant)
    token = await asyncio.to_thread(
        token_for, stack, tenant, child, "agent:analyst", "--aud", "reports-api", "--ttl", "1s"
    )
    server = ResourceServer(stack.jwks_url, f"mandate/{tenant}", "reports-api")
    await asyncio.sleep(2.2)
    with pytest.raises(jwt.ExpiredSignatureError):
        await asyncio.to_thread(server.verify, token)


async def test_no_token_for_a_stranger_or_a_revoked_mandate(stack: Stack, tenant: str) -> None:
    root, child = await asyncio.to_thread(issue_chain, stack, tenant)
    stranger = await asyncio.to_thread(run, stack, "--actor", "agent:intruder", "token", child, tenant=tenant)
    assert stranger.returncode != 0
    assert "not the grantee" in stranger.stderr
    revoked = await asyncio.to_thread(run, stack, "--actor", "principal:cfo", "revoke", root, tenant=tenant)
    assert revoked.returncode == 0, revoked.stderr
    after = await asyncio.to_thread(run, stack, "--actor", "agent:analyst", "token", child, tenant=tenant)
    assert after.returncode != 0
    assert "revoked" in after.stderr
