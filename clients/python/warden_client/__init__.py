"""warden_client: talk to ``wardend`` from Python, over its Unix socket.

:meth:`Client.connect` opens the socket and performs the ``hello`` handshake; :meth:`Client.call`
sends any method; helpers start, follow, wait for, cancel and read jobs, and subscribe to events.
The daemon decides who the caller is from the kernel, so there is nothing here to claim an
identity with. Standard library only.
"""

from .client import PROTOCOL_VERSION, SYSTEM_SOCKET, Client, default_socket
from .errors import KINDS, ProtocolError, WardenError
from .streams import DEFAULT_TIMEOUT, EventStream, JobFollow
from .types import (
    TERMINAL_STATES,
    Event,
    HelloResult,
    JobOutput,
    JobRecord,
    JobStarted,
    JobUpdate,
    LogChunk,
)

__all__ = [
    "Client",
    "DEFAULT_TIMEOUT",
    "Event",
    "EventStream",
    "HelloResult",
    "JobFollow",
    "JobOutput",
    "JobRecord",
    "JobStarted",
    "JobUpdate",
    "KINDS",
    "LogChunk",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "SYSTEM_SOCKET",
    "TERMINAL_STATES",
    "WardenError",
    "default_socket",
]
