"""Typed shapes of the answers the client's helpers return, as docs/PROTOCOL.md describes them.

These are :class:`typing.TypedDict` views of plain ``dict`` values decoded from JSON: nothing is
checked or converted at run time, and fields a newer daemon adds are kept (clients must ignore
fields they do not know). ``docs/protocol.schema.json`` is the complete, machine-readable
description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict


class PeerInfo(TypedDict):
    uid: int
    gid: int
    pid: int
    groups: list[int]
    exe: str | None


class ListenerInfo(TypedDict):
    path: str
    max_tier: str


class HelloResult(TypedDict):
    protocol: int
    daemon_version: str
    features: list[str]
    max_frame: int
    peer: PeerInfo
    tier: str
    ops: dict[str, bool]
    listener: ListenerInfo
    lockdown: NotRequired[dict[str, Any]]


class JobStarted(TypedDict):
    job_id: str
    existing: bool


class Requester(TypedDict):
    uid: int
    gid: int
    pid: int
    exe: str | None
    client: str
    connection: int


class JobRecord(TypedDict):
    job_id: str
    action: str
    state: str
    progress: int | None
    phase: str | None
    message: str | None
    committed: bool
    exit_code: int | None
    result: Any
    malformed_status_lines: int
    requester: Requester
    origin: str
    dispatch_id: NotRequired[str]
    params: dict[str, Any]
    created_at: str
    started_at: str | None
    ended_at: str | None


#: A piece of a job's output: ``from`` is the byte offset of ``data`` in the job's log, ``next``
#: the offset to ask for next. (Functional syntax: ``from`` is a Python keyword.)
LogChunk = TypedDict(
    "LogChunk",
    {
        "job_id": str,
        "from": int,
        "next": int,
        "data": str,
        "truncated": bool,
        "ended": bool,
    },
)


#: The states after which a job never changes again.
TERMINAL_STATES = frozenset(
    {"succeeded", "failed", "cancelled", "timed_out", "rolled_back", "lost"}
)


@dataclass(frozen=True)
class JobUpdate:
    """A job's record as it changed (a ``job.update`` notification), or, with ``final``, as it
    ended (the answer to ``job.watch``)."""

    record: JobRecord
    final: bool = False


@dataclass(frozen=True)
class JobOutput:
    """A piece of a job's output (a ``job.output`` notification)."""

    chunk: LogChunk

    @property
    def data(self) -> str:
        return self.chunk["data"]


@dataclass(frozen=True)
class Event:
    """One ``event`` notification of ``events.subscribe``: its ``topic`` and ``event`` object.

    A subscriber that fell behind gets one with the topic ``events.lagged`` and the event
    ``{"dropped": N}``: N events were lost, the stream goes on.
    """

    topic: str
    event: dict[str, Any]
