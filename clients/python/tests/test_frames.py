"""The client's framing and answer matching, against a peer this test scripts byte by byte on a
socket pair: what a real daemon does not do on purpose (split frames, answers out of order,
illegal lengths) is checked here; everything else runs against the real daemon in
test_daemon.py.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
import unittest
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from warden_client import Client, ProtocolError, WardenError  # noqa: E402


def frame(message: Any) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


def read_request(peer: socket.socket) -> dict[str, Any]:
    """One frame the client sent, decoded."""
    header = b""
    while len(header) < 4:
        header += peer.recv(4 - len(header))
    (length,) = struct.unpack(">I", header)
    body = b""
    while len(body) < length:
        body += peer.recv(length - len(body))
    message: dict[str, Any] = json.loads(body)
    return message


class FrameTests(unittest.TestCase):
    def setUp(self) -> None:
        mine, self.peer = socket.socketpair()
        self.client = Client(mine, 5.0)

    def tearDown(self) -> None:
        self.client.close()
        self.peer.close()

    def test_a_request_is_one_frame_of_compact_json_rpc(self) -> None:
        """Pins: a call sends a 4-byte big-endian length and exactly jsonrpc, id, method and
        params; ids count up from 1."""
        self.peer.sendall(frame({"jsonrpc": "2.0", "id": 1, "result": {"status": "ok"}}))
        self.assertEqual(self.client.call("health"), {"status": "ok"})
        header = self.peer.recv(4)
        (length,) = struct.unpack(">I", header)
        body = self.peer.recv(length)
        self.assertEqual(len(body), length)
        self.assertEqual(
            json.loads(body), {"jsonrpc": "2.0", "id": 1, "method": "health", "params": {}}
        )
        self.assertNotIn(b" ", body)

    def test_a_frame_dripped_byte_by_byte_is_read_whole(self) -> None:
        """Pins: a frame arriving in one-byte pieces is one answer."""
        data = frame({"jsonrpc": "2.0", "id": 1, "result": {"n": "é" * 10}})

        def drip() -> None:
            for b in data:
                self.peer.send(bytes([b]))
                time.sleep(0.001)

        t = threading.Thread(target=drip)
        t.start()
        self.assertEqual(self.client.call("x"), {"n": "é" * 10})
        t.join()

    def test_answers_are_matched_by_id_and_notifications_kept_for_their_stream(self) -> None:
        """Pins: an answer to a later request and a notification that arrive first do not
        answer the earlier call; they wait for theirs."""
        self.peer.sendall(
            frame({"jsonrpc": "2.0", "method": "job.update", "params": {"job_id": "j"}})
            + frame({"jsonrpc": "2.0", "id": 2, "result": "second"})
            + frame({"jsonrpc": "2.0", "id": 1, "result": "first"})
        )
        first = self.client._send("a", None)
        second = self.client._send("b", None)
        self.assertEqual(self.client._await(first, time.monotonic() + 5), "first")
        self.assertEqual(self.client._await(second, time.monotonic() + 5), "second")
        self.assertEqual(list(self.client._notes), [("job.update", {"job_id": "j"})])

    def test_a_timeout_mid_frame_keeps_the_stream_in_place(self) -> None:
        """Pins: when a call times out with half a frame read, the rest completes that frame
        later and the next call gets its own answer."""
        late = frame({"jsonrpc": "2.0", "id": 1, "result": "late"})
        self.peer.sendall(late[:7])
        with self.assertRaises(TimeoutError):
            self.client.call("slow", timeout=0.2)
        self.peer.sendall(late[7:] + frame({"jsonrpc": "2.0", "id": 2, "result": "next"}))
        self.assertEqual(self.client.call("next"), "next")

    def test_an_error_answer_raises_its_kind_message_and_data(self) -> None:
        """Pins: an error answer becomes WardenError with kind, code, message and data."""
        error = {
            "code": -32005,
            "message": "too many requests",
            "data": {"kind": "rate_limited", "correlation_id": "0b1c2d3e4f506172", "retry_after_ms": 50},
        }
        self.peer.sendall(frame({"jsonrpc": "2.0", "id": 1, "error": error}))
        with self.assertRaises(WardenError) as caught:
            self.client.call("status")
        e = caught.exception
        self.assertEqual((e.kind, e.code, e.message), ("rate_limited", -32005, "too many requests"))
        self.assertEqual(e.retry_after_ms, 50)
        self.assertEqual(e.correlation_id, "0b1c2d3e4f506172")

    def test_an_error_with_a_null_id_raises_at_once(self) -> None:
        """Pins: an error not about any request (the daemon closes after it) is raised to the
        caller waiting, not left unanswered."""
        error = {"code": -32600, "message": "bye", "data": {"kind": "bad_request", "correlation_id": "x"}}
        self.peer.sendall(frame({"jsonrpc": "2.0", "id": None, "error": error}))
        with self.assertRaises(WardenError) as caught:
            self.client.call("status")
        self.assertEqual(caught.exception.kind, "bad_request")

    def test_illegal_lengths_are_protocol_errors_that_close_the_connection(self) -> None:
        """Pins: a length of 0 or past max_frame is refused without reading (or allocating)
        the announced body, and the connection is closed."""
        for length in (0, (1 << 20) + 1, 0xFFFFFFFF):
            mine, peer = socket.socketpair()
            client = Client(mine, 2.0)
            try:
                peer.sendall(struct.pack(">I", length))
                with self.assertRaises(ProtocolError):
                    client.call("status")
                with self.assertRaises(ConnectionError):
                    client.call("status")
            finally:
                client.close()
                peer.close()

    def test_a_closed_connection_is_a_connection_error_not_a_hang(self) -> None:
        """Pins: the daemon hanging up mid-call raises ConnectionError."""
        self.peer.close()
        with self.assertRaises(OSError):
            self.client.call("status")

    def test_a_request_past_max_frame_is_refused_before_sending(self) -> None:
        """Pins: the client never sends a frame the daemon would refuse for its size."""
        with self.assertRaises(ValueError):
            self.client.call("job.start", {"action": "x", "params": {"v": "x" * (1 << 20)}})
        self.peer.setblocking(False)
        with self.assertRaises(BlockingIOError):
            self.peer.recv(1)


if __name__ == "__main__":
    unittest.main()
