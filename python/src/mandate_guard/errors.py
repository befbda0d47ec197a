"""What can go wrong talking to the engine, told apart by type."""

from __future__ import annotations


class MandateError(Exception):
    """Base of every error this package raises."""


class EngineError(MandateError):
    """The engine answered and refused: `code` is the stable wire code
    (`invalid_input`, `not_found`, `forbidden`, `terminal`, `widens`, ...),
    `reason` the stable kind of a domain refusal (`not_grantee`,
    `scope_widens`, ...; `None` outside the domain's rules)."""

    def __init__(self, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason


class NoEngine(MandateError):
    """Nobody listens on the subject: no engine serves this tenant (the
    request was never delivered, so it is safe to send again)."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"no engine answers on {subject}: is `mandate serve` running for this tenant?")
        self.subject = subject


class TimedOut(MandateError):
    """An engine may have received the request but did not answer in time
    (a command may have been applied: resend it with the same command id)."""

    def __init__(self, subject: str, seconds: float) -> None:
        super().__init__(f"no reply on {subject} within {seconds:g} s")
        self.subject = subject


class DecodeError(MandateError):
    """A reply (or signal) does not have the shape the wire contract gives it."""


class InvalidArgument(MandateError, ValueError):
    """A value given to this package is not one the wire contract accepts;
    nothing was sent."""


class TransportError(MandateError):
    """NATS failed in some other way (connection closed, permission denied)."""
