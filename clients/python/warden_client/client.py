"""A connection to ``wardend``: the socket, the frames, the handshake, and the request/answer loop.

It owns the wire format of docs/PROTOCOL.md (a 4-byte big-endian length, then that many bytes
of UTF-8 JSON-RPC 2.0) and matches answers to requests by ``id``, keeping notifications for the
stream that follows them. It never claims an identity: the daemon learns who the caller is from
the kernel. Every blocking operation takes a timeout; nothing here waits without one unless the
caller asks for it (``timeout=None``).
"""

from __future__ import annotations

import enum
import json
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Final, cast

from .errors import ProtocolError, WardenError
from .streams import DEFAULT_TIMEOUT, EventStream, JobFollow, deadline_after, topic
from .types import HelloResult, JobRecord, JobStarted, LogChunk

#: The protocol version this client speaks.
PROTOCOL_VERSION: Final = 1
#: The socket of a system daemon with the built-in default configuration.
SYSTEM_SOCKET: Final = "/run/warden/warden.sock"
#: The frame limit in force until ``hello`` reports the daemon's.
DEFAULT_MAX_FRAME: Final = 1 << 20
#: Extra seconds allowed on top of a wait the daemon itself bounds (``job.wait``).
_MARGIN: Final = 5.0

_HEADER = struct.Struct(">I")


def default_socket() -> str:
    """The socket to use when none is given, as the Rust client and the CLI pick it:
    ``$WARDEN_SOCKET``, else the system socket if it exists, else the socket of a ``--dev``
    daemon run by this user (``$XDG_RUNTIME_DIR/warden/warden.sock``, or
    ``./warden-dev/warden.sock`` when that variable is unset or not absolute)."""
    env = os.environ.get("WARDEN_SOCKET")
    if env:
        return env
    if os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "warden", "warden.sock")
    return os.path.join(os.getcwd(), "warden-dev", "warden.sock")


class _UseDefault(enum.Enum):
    """Marker for "the client's default timeout" (``None`` means no timeout)."""

    TOKEN = 0


_DEFAULT: Final = _UseDefault.TOKEN


class Client:
    """One connection to the daemon, past its ``hello``. Open it with :meth:`connect`.

    Not thread-safe: use one client per thread. Requests may be pipelined and streams may run
    beside other calls on the same connection; an ``events.subscribe`` stream lasts as long as
    the connection, so give it a client of its own.
    """

    hello: HelloResult
    """The daemon's answer to ``hello``: who it thinks the caller is, its tier, the limits."""

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        # Use connect(); this only wraps an open socket.
        self._sock: socket.socket | None = sock
        self._timeout = timeout
        self._next_id = 1
        self._max_frame = DEFAULT_MAX_FRAME
        # Bytes received but not yet a whole frame: a timeout mid-frame leaves them here, so the
        # stream never loses its place.
        self._buf = bytearray()
        # Answers that arrived while another request was being waited for, by id.
        self._answers: dict[int, dict[str, Any]] = {}
        # Ids whose caller gave up (timed out): their answers are dropped when they come.
        self._abandoned: set[int] = set()
        # Notifications not yet taken by the stream they belong to, in arrival order.
        self._notes: deque[tuple[str, Any]] = deque()
        # Jobs whose follower stopped early: their updates and output are dropped when they come.
        self._dropped: set[str] = set()

    @classmethod
    def connect(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        client_name: str = "warden-python",
        features: Iterable[str] = (),
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Client:
        """Connects to ``path`` (:func:`default_socket` when ``None``) and says ``hello``.

        ``timeout`` is the default for every request on this client (``None``: wait as long as
        it takes). Raises :class:`FileNotFoundError` or :class:`ConnectionRefusedError` when no
        daemon listens there, :class:`PermissionError` when the socket excludes this user, and
        :class:`WardenError` when the daemon refuses the handshake.
        """
        target = os.fspath(path) if path is not None else default_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(target)
            client = cls(sock, timeout)
            params = {
                "protocol": PROTOCOL_VERSION,
                "client": client_name,
                "features": list(features),
            }
            client.hello = cast(HelloResult, client.call("hello", params))
        except BaseException:
            sock.close()
            raise
        client._max_frame = max(int(client.hello.get("max_frame", 0)), DEFAULT_MAX_FRAME)
        return client

    def close(self) -> None:
        """Closes the connection; streams on it end."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # The generic call.

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None | _UseDefault = _DEFAULT,
    ) -> Any:
        """Calls ``method`` with ``params`` and returns its ``result``; raises
        :class:`WardenError` when the daemon answers with an error and :class:`TimeoutError`
        when no answer comes within ``timeout`` seconds (the client's default when not given)."""
        deadline = deadline_after(self._timeout if isinstance(timeout, _UseDefault) else timeout)
        request_id = self._send(method, params)
        return self._await(request_id, deadline)

    # Typed helpers.

    def health(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.call("health"))

    def version(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.call("version"))

    def whoami(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.call("whoami"))

    def status(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.call("status"))

    def actions(self) -> list[dict[str, Any]]:
        """The actions this caller could start now."""
        return cast(list[dict[str, Any]], self.call("actions.list")["actions"])

    def describe(self, action: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.call("actions.describe", {"action": action}))

    def start(
        self,
        action: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> JobStarted:
        """Starts a job of ``action``. The same ``idempotency_key`` from the same user within
        10 minutes answers the job it made before (``existing: true``)."""
        p: dict[str, Any] = {"action": action, "params": dict(params or {})}
        if idempotency_key is not None:
            p["idempotency_key"] = idempotency_key
        return cast(JobStarted, self.call("job.start", p))

    def get(self, job_id: str) -> JobRecord:
        """The job as it stands."""
        return cast(JobRecord, self.call("job.get", {"job_id": job_id}))

    def jobs(
        self, *, all: bool = False, state: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Job summaries, newest first: the caller's own, or with ``all`` everyone's."""
        p: dict[str, Any] = {"scope": "all" if all else "mine"}
        if state is not None:
            p["state"] = state
        if limit is not None:
            p["limit"] = limit
        return cast(list[dict[str, Any]], self.call("job.list", p)["jobs"])

    def wait(self, job_id: str, timeout: float = DEFAULT_TIMEOUT) -> JobRecord:
        """The job once it is final, or as it stands after ``timeout`` seconds (at most an
        hour: the daemon's limit). Check ``record["state"]`` against
        :data:`~warden_client.TERMINAL_STATES`."""
        p = {"job_id": job_id, "timeout_ms": int(timeout * 1000)}
        return cast(JobRecord, self.call("job.wait", p, timeout=timeout + _MARGIN))

    def cancel(self, job_id: str, *, timeout: float | None = DEFAULT_TIMEOUT) -> JobRecord:
        """Cancels a job and answers it once it is final (``cancelled``, or ``rolled_back`` past
        its commit point when its action has a rollback; ``conflict`` when it has none)."""
        return cast(JobRecord, self.call("job.cancel", {"job_id": job_id}, timeout=timeout))

    def logs(self, job_id: str, start: int = 0) -> LogChunk:
        """Up to 64 KiB of the job's output from byte ``start``; ask again from ``next``."""
        return cast(LogChunk, self.call("job.logs", {"job_id": job_id, "from": start}))

    def follow(
        self, job_id: str, *, output: bool = True, timeout: float | None = None
    ) -> JobFollow:
        """Follows a job to its end: an iterator of :class:`JobUpdate` (``job.watch``) and, with
        ``output``, :class:`JobOutput` (``job.logs`` following), ending with the final record
        (``final=True``, also kept as :attr:`JobFollow.record`). ``timeout`` bounds the whole
        stream (``None``: as long as the job runs; its action's own timeout bounds that)."""
        return JobFollow(self, job_id, output, deadline_after(timeout))

    def subscribe(
        self, topics: Iterable[str], *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> EventStream:
        """Subscribes to events of ``topics`` (``job``, ``resource``, ``ops``, ``lockdown``,
        ``alert``, ``audit``) and returns once the daemon confirmed it, so nothing published
        after this returns is missed. ``timeout`` bounds the wait for that confirmation. The
        stream lasts as long as the connection: subscribe on a client of its own."""
        stream = EventStream(self, list(topics))
        deadline = deadline_after(timeout)
        while True:
            note = self._take(lambda m, p: m == "event" and topic(p) == "subscribed")
            if note is not None:
                return stream
            self._check_answer(stream.request_id)
            self._pump(deadline)

    # The wire.

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError("the connection to wardend is closed")
        return self._sock

    def _send(self, method: str, params: Mapping[str, Any] | None) -> int:
        request_id = self._next_id
        self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        message["params"] = dict(params) if params is not None else {}
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        if len(body) > self._max_frame:
            raise ValueError(f"request of {len(body)} bytes exceeds max_frame {self._max_frame}")
        sock = self._socket()
        sock.settimeout(self._timeout)
        try:
            sock.sendall(_HEADER.pack(len(body)) + body)
        except OSError:
            # Part of the frame may have gone out: the stream has lost its place for good.
            self.close()
            raise
        return request_id

    def _read_frame(self, deadline: float | None) -> Any:
        """The next frame's JSON, waiting until ``deadline`` (monotonic seconds)."""
        sock = self._socket()
        while True:
            if len(self._buf) >= _HEADER.size:
                (length,) = _HEADER.unpack_from(self._buf)
                if length == 0 or length > self._max_frame:
                    self.close()
                    raise ProtocolError(f"frame length {length} is outside 1..{self._max_frame}")
                if len(self._buf) >= _HEADER.size + length:
                    body = bytes(self._buf[_HEADER.size : _HEADER.size + length])
                    del self._buf[: _HEADER.size + length]
                    try:
                        return json.loads(body.decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as e:
                        self.close()
                        raise ProtocolError(f"frame is not UTF-8 JSON: {e}") from None
            if deadline is None:
                sock.settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no answer from wardend in time")
                sock.settimeout(left)
            try:
                got = sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("no answer from wardend in time") from None
            if not got:
                self.close()
                raise ConnectionError("wardend closed the connection")
            self._buf += got

    def _pump(self, deadline: float | None) -> None:
        """Reads one frame and files it: an answer under its id, a notification in the queue."""
        message = self._read_frame(deadline)
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise ProtocolError(f"not a JSON-RPC 2.0 message: {message!r}")
        if "id" in message and ("result" in message or "error" in message):
            request_id = message["id"]
            if request_id is None:
                # An error not about any one request: the daemon closes the connection after it.
                raise WardenError.from_wire(message.get("error"))
            if not isinstance(request_id, int):
                raise ProtocolError(f"answer to an id this client never sent: {request_id!r}")
            if request_id in self._abandoned:
                self._abandoned.discard(request_id)
            else:
                self._answers[request_id] = message
        elif isinstance(message.get("method"), str) and "id" not in message:
            params = message.get("params")
            if isinstance(params, dict) and params.get("job_id") in self._dropped:
                return
            self._notes.append((message["method"], params))
        else:
            raise ProtocolError(f"neither an answer nor a notification: {message!r}")

    def _check_answer(self, request_id: int) -> Any:
        """The result of ``request_id`` if its answer has come (raising its error), else ``...``."""
        message = self._answers.pop(request_id, None)
        if message is None:
            return ...
        if "error" in message:
            raise WardenError.from_wire(message["error"])
        return message["result"]

    def _await(self, request_id: int, deadline: float | None) -> Any:
        try:
            while True:
                result = self._check_answer(request_id)
                if result is not ...:
                    return result
                self._pump(deadline)
        except TimeoutError:
            self._abandoned.add(request_id)
            raise

    def _take(self, wanted: Any) -> tuple[str, Any] | None:
        """Removes and returns the first queued notification ``wanted(method, params)`` accepts."""
        for i, (method, params) in enumerate(self._notes):
            if wanted(method, params):
                del self._notes[i]
                return method, params
        return None
