"""The Python client against a real ``wardend --dev``: handshake, errors, jobs, logs, events.

The daemon binary comes from ``$WARDEND_BIN`` (the Rust test ``python_client`` in
crates/wardend/tests passes the one cargo built); the daemon's directory goes under
``$WARDEN_PY_TEST_DIR``, which must be safe from other users (wardend refuses socket directories
others could write to, so not /tmp). Without ``$WARDEND_BIN`` the tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from warden_client import (  # noqa: E402
    TERMINAL_STATES,
    Client,
    JobOutput,
    JobUpdate,
    WardenError,
)


class Daemon:
    """A ``wardend --dev`` process on a private socket, stopped and removed by :meth:`stop`."""

    def __init__(self, binary: str, base: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wpy-", dir=base))
        self.socket = self.dir / "dev" / "warden.sock"
        self.state = self.dir / "state"
        self.log_path = self.dir / "wardend.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, RUST_LOG="info")
        self.proc = subprocess.Popen(
            [binary, "--dev", "--socket", str(self.socket), "--state-dir", str(self.state)],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"wardend did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connect(self, **kwargs: Any) -> Client:
        return Client.connect(self.socket, client_name="python-tests", **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


DAEMON: Daemon | None = None


def setUpModule() -> None:
    global DAEMON
    binary = os.environ.get("WARDEND_BIN")
    if not binary:
        raise unittest.SkipTest("WARDEND_BIN is not set: run through `cargo test -p wardend`")
    base = os.environ.get("WARDEN_PY_TEST_DIR") or os.environ.get("XDG_RUNTIME_DIR")
    if not base:
        raise unittest.SkipTest("neither WARDEN_PY_TEST_DIR nor XDG_RUNTIME_DIR is set")
    DAEMON = Daemon(binary, base)


def tearDownModule() -> None:
    if DAEMON is not None:
        DAEMON.stop()


def daemon() -> Daemon:
    assert DAEMON is not None
    return DAEMON


class ClientTests(unittest.TestCase):
    def setUp(self) -> None:
        self.client = daemon().connect()

    def tearDown(self) -> None:
        self.client.close()

    def test_hello_names_the_protocol_and_the_caller_the_kernel_reported(self) -> None:
        """Pins: hello answers protocol 1, this process's uid and pid from the kernel, the dev
        user's admin tier and the frame limit in force."""
        hello = self.client.hello
        self.assertEqual(hello["protocol"], 1)
        self.assertEqual(hello["peer"]["uid"], os.geteuid())
        self.assertEqual(hello["peer"]["pid"], os.getpid())
        self.assertEqual(hello["tier"], "admin")
        self.assertEqual(hello["max_frame"], 1 << 20)
        self.assertEqual(hello["listener"]["path"], str(daemon().socket))

    def test_status_says_dev_mode(self) -> None:
        """Pins: a generic call and the typed helper both reach `status` of a dev daemon."""
        status = self.client.status()
        self.assertEqual(status["mode"], "dev")
        self.assertEqual(status["protocol"], 1)
        self.assertEqual(self.client.call("health"), {"status": "ok"})

    def test_a_bad_call_raises_its_stable_kind_and_the_connection_goes_on(self) -> None:
        """Pins: an unknown method is `not_found` (-32601), unknown params `bad_request`
        (-32602), each with a correlation id, and the connection stays usable."""
        with self.assertRaises(WardenError) as caught:
            self.client.call("no.such.method")
        self.assertEqual(caught.exception.kind, "not_found")
        self.assertEqual(caught.exception.code, -32601)
        self.assertRegex(caught.exception.correlation_id or "", r"^[0-9a-f]{16}$")
        with self.assertRaises(WardenError) as caught:
            self.client.call("status", {"verbose": True})
        self.assertEqual(caught.exception.kind, "bad_request")
        self.assertIn("verbose", caught.exception.message)
        with self.assertRaises(WardenError) as caught:
            self.client.get("job_0000000000000000")
        self.assertEqual(caught.exception.kind, "not_found")
        self.assertEqual(self.client.health(), {"status": "ok"})

    def test_demo_progress_is_followed_to_its_end_with_progress_output_and_result(self) -> None:
        """Pins: following a job yields its updates (progress never going back) and output in
        order, then the final record with the job's result."""
        job = self.client.start("demo-progress", {"steps": 2})
        self.assertFalse(job["existing"])
        follow = self.client.follow(job["job_id"], timeout=60)
        progress: list[int] = []
        phases: set[str] = set()
        output = ""
        items = list(follow)
        for item in items:
            if isinstance(item, JobUpdate):
                if item.record["progress"] is not None:
                    progress.append(item.record["progress"])
                if item.record["phase"]:
                    phases.add(item.record["phase"])
            else:
                self.assertIsInstance(item, JobOutput)
                output += item.data
        self.assertIsInstance(items[-1], JobUpdate)
        self.assertTrue(items[-1].final)  # type: ignore[union-attr]
        record = follow.record
        assert record is not None
        self.assertEqual(record["state"], "succeeded")
        self.assertEqual(record["result"], {"steps": 6})
        self.assertEqual(record["progress"], 100)
        self.assertEqual(progress, sorted(progress))
        self.assertGreaterEqual(len(progress), 2)
        self.assertLessEqual({"work", "finish"}, phases | {record["phase"] or ""})
        self.assertIn("prepare: step 1 of 2", output)
        self.assertTrue(output.endswith("finish: step 2 of 2\n"), output)

    def test_logs_are_read_in_pieces_from_an_offset(self) -> None:
        """Pins: job.logs answers a finished job's output from an offset, and from `next` it
        answers nothing more, ended."""
        job = self.client.start("demo-progress", {"steps": 1})
        record = self.client.wait(job["job_id"], timeout=30)
        self.assertEqual(record["state"], "succeeded")
        whole = self.client.logs(job["job_id"])
        self.assertEqual(whole["from"], 0)
        self.assertEqual(
            whole["data"], "prepare: step 1 of 1\nwork: step 1 of 1\nfinish: step 1 of 1\n"
        )
        self.assertEqual(whole["next"], len(whole["data"].encode()))
        self.assertTrue(whole["ended"])
        part = self.client.logs(job["job_id"], start=len("prepare: step 1 of 1\n"))
        self.assertEqual(part["data"], "work: step 1 of 1\nfinish: step 1 of 1\n")
        rest = self.client.logs(job["job_id"], start=whole["next"])
        self.assertEqual(rest["data"], "")
        self.assertTrue(rest["ended"])

    def test_cancelling_demo_commit_before_its_commit_point_cancels_it(self) -> None:
        """Pins: job.cancel before the commit point answers the final `cancelled` record, and
        the file the job would have made is not there."""
        name = f"py-cancel-{os.getpid()}"
        job = self.client.start("demo-commit", {"name": name})
        record = self.client.cancel(job["job_id"])
        self.assertEqual(record["state"], "cancelled")
        self.assertFalse(record["committed"])
        self.assertFalse((daemon().state / "demo" / name).exists())

    def test_cancelling_demo_commit_past_its_commit_point_rolls_it_back(self) -> None:
        """Pins: followed until committed, then cancelled, the job is `rolled_back` and its
        file is removed by the rollback."""
        name = f"py-rollback-{os.getpid()}"
        job = self.client.start("demo-commit", {"name": name})
        follow = self.client.follow(job["job_id"], output=False, timeout=30)
        for item in follow:
            assert isinstance(item, JobUpdate)
            last = item.record
            if last["committed"] or item.final:
                break
        follow.close()
        self.assertTrue(last["committed"], last)
        other = daemon().connect()
        try:
            record = other.cancel(job["job_id"])
        finally:
            other.close()
        self.assertEqual(record["state"], "rolled_back")
        self.assertFalse((daemon().state / "demo" / name).exists())

    def test_waits_and_calls_time_out_and_leave_the_connection_usable(self) -> None:
        """Pins: job.wait answers a running job as it stands when its time is up; a call whose
        own timeout passes raises TimeoutError, and its late answer does not confuse the
        next call."""
        job = self.client.start("demo-progress", {"steps": 3})
        record = self.client.wait(job["job_id"], timeout=0.2)
        self.assertNotIn(record["state"], TERMINAL_STATES)
        with self.assertRaises(TimeoutError):
            self.client.call("job.wait", {"job_id": job["job_id"], "timeout_ms": 1500}, timeout=0.3)
        self.assertEqual(self.client.version()["protocol"], 1)
        time.sleep(1.5)
        self.assertEqual(self.client.whoami()["tier"], "admin")
        self.assertEqual(self.client.wait(job["job_id"], timeout=30)["state"], "succeeded")

    def test_an_event_subscription_sees_a_job_from_another_connection(self) -> None:
        """Pins: subscribe returns once the daemon confirmed it, then yields `job` events of a
        job another connection starts, up to its final state."""
        watcher = daemon().connect()
        try:
            events = watcher.subscribe(["job"])
            job = self.client.start("demo-progress", {"steps": 1})
            states: list[str] = []
            while not states or states[-1] not in TERMINAL_STATES:
                event = events.next(timeout=30)
                self.assertEqual(event.topic, "job")
                if event.event.get("job_id") == job["job_id"]:
                    self.assertEqual(event.event["action"], "demo-progress")
                    states.append(event.event["state"])
            self.assertIn("running", states)
            self.assertEqual(states[-1], "succeeded")
            with self.assertRaises(TimeoutError):
                events.next(timeout=0.2)
        finally:
            watcher.close()

    def test_subscribing_to_an_unknown_topic_raises_bad_request(self) -> None:
        """Pins: a subscription the daemon refuses raises its error from subscribe itself,
        instead of a stream that never yields."""
        with self.assertRaises(WardenError) as caught:
            self.client.subscribe(["no-such-topic"], timeout=10)
        self.assertEqual(caught.exception.kind, "bad_request")
        self.assertIn("no-such-topic", caught.exception.message)

    def test_no_daemon_at_the_path_is_a_connection_error(self) -> None:
        """Pins: connecting where nothing listens raises FileNotFoundError, not a hang."""
        with self.assertRaises(FileNotFoundError):
            Client.connect(daemon().dir / "nothing.sock", timeout=2)


if __name__ == "__main__":
    unittest.main()
