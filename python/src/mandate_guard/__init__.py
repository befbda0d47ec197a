"""Mandate for Python agents: a guard that stops work the moment its
mandate ends, and a client for every command and query of the engine.

    import asyncio
    from mandate_guard import Client, Guard, GuardHub, connect

    nc = await connect("nats://127.0.0.1:4222")
    client = Client(nc, "acme", "agent:analyst")
    hub = GuardHub()
    guard = await Guard.start(client, hub, mandate_id, lease=10)
    async with guard.guarding():          # cancelled when the mandate ends
        if guard.check("finance:read", "reports/q3/summary").allowed:
            ...
"""

from .authorize import PatternError, PreparedChain, authorize, effective, parse_request
from .client import (
    AUTH_HEADER,
    SIGNATURE_HEADER,
    Client,
    GrantLike,
    canonical,
    connect,
    grant,
    mission_token,
    params_hash,
    public_key,
    sign,
    sign_command,
    uuid7,
)
from .errors import (
    DecodeError,
    EngineError,
    InvalidArgument,
    MandateError,
    NoEngine,
    TimedOut,
    TransportError,
)
from .guard import Guard, GuardState, guarded
from .hub import FeedStats, GuardHub
from .types import (
    JSON,
    Actor,
    AtLeast,
    Beacon,
    ChainReply,
    CommandResult,
    Consistency,
    Decision,
    Grant,
    Mandate,
    Outcome,
    Signal,
    SignalKind,
    Status,
    format_time,
    parse_time,
)

__version__ = "0.1.0"

__all__ = [
    "AUTH_HEADER",
    "JSON",
    "SIGNATURE_HEADER",
    "Actor",
    "AtLeast",
    "Beacon",
    "ChainReply",
    "Client",
    "CommandResult",
    "Consistency",
    "DecodeError",
    "Decision",
    "EngineError",
    "FeedStats",
    "Grant",
    "GrantLike",
    "Guard",
    "GuardHub",
    "GuardState",
    "InvalidArgument",
    "Mandate",
    "MandateError",
    "NoEngine",
    "Outcome",
    "PatternError",
    "PreparedChain",
    "Signal",
    "SignalKind",
    "Status",
    "TimedOut",
    "TransportError",
    "authorize",
    "canonical",
    "connect",
    "effective",
    "format_time",
    "grant",
    "guarded",
    "mission_token",
    "params_hash",
    "parse_request",
    "parse_time",
    "public_key",
    "sign",
    "sign_command",
    "uuid7",
]
