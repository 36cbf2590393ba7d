"""Streams over one connection: following a job (``job.watch`` and ``job.logs`` with
``follow``) and an event subscription (``events.subscribe``).

They own turning the notifications a :class:`~warden_client.Client` queued into items, in the
order the daemon sent them, and knowing when a stream has ended (its request's answer came).
They never read the socket themselves: the client does, under the deadline they pass.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from .types import Event, JobOutput, JobRecord, JobUpdate, LogChunk

if TYPE_CHECKING:
    from .client import Client

#: Seconds a request, or a wait for the next event, may take when the caller names no timeout.
DEFAULT_TIMEOUT = 30.0


def deadline_after(timeout: float | None) -> float | None:
    """The monotonic time ``timeout`` seconds from now (``None``: no deadline)."""
    return None if timeout is None else time.monotonic() + timeout


def topic(params: Any) -> Any:
    return params.get("topic") if isinstance(params, dict) else None


class JobFollow(Iterator[JobUpdate | JobOutput]):
    """The updates and output of one job, in the order the daemon sent them, then its final
    record. Made by :meth:`Client.follow`."""

    record: JobRecord | None
    """The final record, once the iteration ended."""

    def __init__(self, client: Client, job_id: str, output: bool, deadline: float | None) -> None:
        self._client = client
        self._job_id = job_id
        self._deadline = deadline
        self.record = None
        client._dropped.discard(job_id)
        self._watch: int | None = client._send("job.watch", {"job_id": job_id})
        self._logs: int | None = (
            client._send("job.logs", {"job_id": job_id, "from": 0, "follow": True})
            if output
            else None
        )
        self._final: JobRecord | None = None
        self._offset = 0
        self._done = False

    def __iter__(self) -> JobFollow:
        return self

    def _ours(self, method: str, params: Any) -> bool:
        return (
            method in ("job.update", "job.output")
            and isinstance(params, dict)
            and params.get("job_id") == self._job_id
        )

    def _output(self, chunk: LogChunk) -> JobOutput | None:
        """The chunk as output, unless it holds nothing new."""
        if not chunk.get("data") or chunk["next"] <= self._offset:
            return None
        self._offset = chunk["next"]
        return JobOutput(chunk)

    def __next__(self) -> JobUpdate | JobOutput:
        client = self._client
        while not self._done:
            note = client._take(self._ours)
            if note is not None:
                method, params = note
                if method == "job.update":
                    return JobUpdate(cast(JobRecord, params))
                out = self._output(cast(LogChunk, params))
                if out is not None:
                    return out
                continue
            if self._logs is not None:
                chunk = client._check_answer(self._logs)
                if chunk is not ...:
                    self._logs = None
                    out = self._output(cast(LogChunk, chunk))
                    if out is not None:
                        return out
                    continue
            if self._watch is not None:
                record = client._check_answer(self._watch)
                if record is not ...:
                    self._watch = None
                    self._final = cast(JobRecord, record)
                    continue
            if self._final is not None and self._logs is None:
                self._done = True
                self.record = self._final
                return JobUpdate(self._final, final=True)
            try:
                client._pump(self._deadline)
            except TimeoutError:
                for request_id in (self._watch, self._logs):
                    if request_id is not None:
                        client._abandoned.add(request_id)
                self._done = True
                raise
        raise StopIteration

    def close(self) -> None:
        """Stops following: later updates and output of this job are dropped, not kept. (The
        daemon goes on sending them until the job ends; the connection stays usable.)"""
        client = self._client
        for request_id in (self._watch, self._logs):
            if request_id is not None:
                client._abandoned.add(request_id)
        self._watch = self._logs = None
        self._done = True
        client._dropped.add(self._job_id)
        client._notes = deque(n for n in client._notes if not self._ours(*n))

    def wait(self) -> JobRecord:
        """Drains the stream and returns the final record."""
        for _ in self:
            pass
        assert self.record is not None  # set when the iteration ends without an error
        return self.record


class EventStream(Iterator[Event]):
    """Events of the subscribed topics, as they come, until the connection closes. Made by
    :meth:`Client.subscribe`; iterate it, or call :meth:`next` with a timeout."""

    def __init__(self, client: Client, topics: list[str]) -> None:
        self._client = client
        self.topics = topics
        self.request_id = client._send("events.subscribe", {"topics": topics})

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        return self.next(None)

    def next(self, timeout: float | None = DEFAULT_TIMEOUT) -> Event:
        """The next event, waiting at most ``timeout`` seconds (:class:`TimeoutError` after).
        The stream ends (:class:`StopIteration` from iteration, or :class:`WardenError`
        ``unavailable`` when the daemon stops) with the connection."""
        client = self._client
        deadline = deadline_after(timeout)
        while True:
            note = client._take(lambda m, p: m in ("event", "events.lagged"))
            if note is not None:
                method, params = note
                if method == "events.lagged":
                    return Event("events.lagged", dict(params or {}))
                return Event(str(params.get("topic")), dict(params.get("event") or {}))
            if client._check_answer(self.request_id) is not ...:
                raise StopIteration
            client._pump(deadline)
