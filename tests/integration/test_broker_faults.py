"""The Kafka broker killed with SIGKILL mid-stream, on a broker and Redis of the test's own.

The shared stack serves the other tests, so this one starts its own (scripts/stack.sh
with another directory and ports), kills its broker while a paced replay is in
flight, starts it again and checks that every score is there and every session's state
is exactly the truth's. A worker that gives up while the broker is away exits (code 70)
and is started again, as a supervisor would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Truth, check_exactly_once, read_scores, supervise

from bench.procs import ROOT, WorkerProcess, free_port
from stream.replay import send_events
from stream.settings import StreamSettings
from training.generate import generate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class PrivateStack:
    """scripts/stack.sh on a directory and ports of its own."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.kafka_port, self.controller_port, self.redis_port = (free_port() for _ in range(3))
        self.env = {
            **os.environ,
            "SCORER_STACK_DIR": str(root),
            "SCORER_KAFKA_PORT": str(self.kafka_port),
            "SCORER_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "SCORER_REDIS_PORT": str(self.redis_port),
            "SCORER_KAFKA_HEAP": "256m",
        }

    def run(self, command: str) -> None:
        subprocess.run(
            ["bash", str(ROOT / "scripts/stack.sh"), command],
            env=self.env,
            check=True,
            capture_output=True,
        )

    def kill_broker(self) -> None:
        pid = int((self.dir / "run" / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[PrivateStack]:
    s = PrivateStack(tmp_path / "stack")
    s.run("up")
    try:
        yield s
    finally:
        s.run("down")


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Truth:
    out = tmp_path_factory.mktemp("broker")
    generate(out, 300, seed=43, progress=False)
    return Truth(out)


def _send_until_taken(settings: StreamSettings, events: list, chunk: int = 150) -> None:
    """Send events paced, chunk by chunk; a chunk the broker did not take is sent again."""
    for i in range(0, len(events), chunk):
        part = events[i : i + chunk]
        deadline = time.monotonic() + 180
        while True:
            try:
                asyncio.run(send_events(settings, part, rate=600, progress=False))
                break
            except Exception:  # noqa: BLE001 - the broker is away: send the chunk again
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)


def test_a_broker_killed_mid_stream_loses_no_score_and_no_state(
    stack: PrivateStack, truth: Truth, tmp_path: Path, stream_settings: StreamSettings
) -> None:
    settings = stream_settings.model_copy(
        update={
            "kafka_bootstrap": f"127.0.0.1:{stack.kafka_port}",
            "redis_url": f"redis://127.0.0.1:{stack.redis_port}/0",
            "batch_max": 40,
        }
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    worker.wait_ready()
    sender = threading.Thread(target=_send_until_taken, args=(settings, truth.events))
    sender.start()
    try:
        time.sleep(2.5)  # a third of the input is in: the worker is busy with it
        stack.kill_broker()
        time.sleep(3.0)
        stack.run("up")
        restarts = supervise(worker, sender)
        scores = read_scores(settings, truth.expected_scores, timeout_s=240)
    finally:
        worker.stop()
    assert restarts <= 5, (tmp_path / "worker.log").read_text()[-3000:]
    check_exactly_once(truth, settings, scores)
