"""Errors of the warden client.

A daemon's refusal is one exception class, :class:`WardenError`, carrying the stable ``kind``
(clients branch on it, never on the message), the message and the error's ``data``. What goes
wrong on this side of the socket uses Python's own classes: :class:`TimeoutError` when a deadline
passes, :class:`ConnectionError` (or another :class:`OSError`) when the socket fails, and
:class:`ProtocolError` when the daemon sends something that is not this protocol.
"""

from __future__ import annotations

from typing import Any, Final

#: The stable error kinds of protocol version 1 (docs/PROTOCOL.md, "Errors").
KINDS: Final = frozenset(
    {
        "bad_request",
        "forbidden",
        "not_found",
        "conflict",
        "busy",
        "rate_limited",
        "locked_down",
        "cancelled",
        "unavailable",
        "internal",
    }
)


class WardenError(Exception):
    """The daemon answered a request with an error.

    ``kind`` is stable; ``message`` is for people; ``data`` is the error's ``data`` object as
    sent (``kind``, ``correlation_id``, and where they apply ``retry_after_ms`` and ``detail``).
    """

    kind: str
    message: str
    code: int
    data: dict[str, Any]

    def __init__(self, kind: str, message: str, code: int, data: dict[str, Any]) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.code = code
        self.data = data

    @property
    def correlation_id(self) -> str | None:
        """The id the daemon's log line for this error carries."""
        value = self.data.get("correlation_id")
        return value if isinstance(value, str) else None

    @property
    def retry_after_ms(self) -> int | None:
        """How long to wait before trying again (``busy``, ``rate_limited``), if said."""
        value = self.data.get("retry_after_ms")
        return value if isinstance(value, int) else None

    @classmethod
    def from_wire(cls, error: object) -> WardenError:
        """The exception for a JSON-RPC ``error`` member; :class:`ProtocolError` if malformed."""
        if not isinstance(error, dict):
            raise ProtocolError(f"error member is not an object: {error!r}")
        code = error.get("code")
        message = error.get("message")
        data = error.get("data")
        if not isinstance(code, int) or not isinstance(message, str):
            raise ProtocolError(f"error member lacks code or message: {error!r}")
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
            raise ProtocolError(f"error member lacks data.kind: {error!r}")
        return cls(data["kind"], message, code, data)


class ProtocolError(Exception):
    """The daemon sent something that is not warden's protocol (or the connection broke mid-frame)."""
