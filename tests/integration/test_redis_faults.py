"""Redis killed with SIGKILL mid-replay and started again with less than it had.

Kafka is the record; Redis a cache that can forget. Each test runs a redis-server of
its own (the shared one serves the other tests) under a paced replay on the real
broker, kills it, and starts it again: empty (no persistence), or from a snapshot
taken a second before the kill (what AOF's ``everysec`` or a replica that was behind
would keep). The worker must notice, read the input again from where Redis's state
ends, and finish with every score present, every session's state exactly the truth's,
no two copies of a score that disagree, and each session counted once on the dashboard.
A worker that gives up while Redis is away exits (code 70) and is started again.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import Truth, check_exactly_once, check_leads, read_all, read_scores, supervise

from bench.procs import WorkerProcess, free_port, metrics, total
from contracts import keys, topics
from stream.replay import send_events
from stream.settings import StreamSettings
from training.generate import generate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class OwnRedis:
    """A redis-server on a free port, with its data in a directory of its own."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        redis_server = shutil.which("redis-server")
        assert redis_server, "redis-server is missing: make stack-up installs it"
        self.proc = subprocess.Popen(
            [
                redis_server,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--hash-max-listpack-value",
                "1024",
                "--hash-max-listpack-entries",
                "64",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping():
                    return
            except redis.exceptions.RedisError:
                time.sleep(0.1)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def snapshot(self) -> None:
        """Write dump.rdb now: a later start loads it, and whatever came after is lost."""
        redis.Redis.from_url(self.url).save()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    r = OwnRedis(tmp_path / "redis")
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Truth:
    out = tmp_path_factory.mktemp("redis-faults")
    generate(out, 300, seed=47, progress=False)
    return Truth(out)


def _replay_with_a_redis_fault(
    settings: StreamSettings, truth: Truth, own: OwnRedis, log: Path, keep_snapshot: bool
) -> tuple[list[dict], dict[str, float], int]:
    """Replay paced; kill Redis mid-way and start it again; return scores, metrics, restarts."""
    worker = WorkerProcess(settings, log)
    worker.start()
    worker.wait_ready()
    sender = threading.Thread(
        target=lambda: asyncio.run(send_events(settings, truth.events, rate=700, progress=False))
    )
    sender.start()
    try:
        time.sleep(2.0)  # part of the input is in, and the worker is busy with more
        if keep_snapshot:
            own.snapshot()
            time.sleep(1.0)  # a second of writes that the restarted Redis will not have
        else:
            (own.dir / "dump.rdb").unlink(missing_ok=True)
        own.kill()
        time.sleep(1.5)
        own.start()
        restarts = supervise(worker, sender)
        scores = read_scores(settings, truth.expected_scores, timeout_s=240)
        m = _wait_metric(settings, "scorer_worker_rebuilt_partitions_total")
    finally:
        worker.stop()
    return scores, m, restarts


def _wait_metric(settings: StreamSettings, name: str, timeout_s: float = 30) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        m = metrics(settings.metrics_port)
        if total(m, name) > 0 or m.get(name + "{}", 0) > 0 or time.monotonic() > deadline:
            return m
        time.sleep(0.5)


def _check_rebuilt(truth: Truth, settings: StreamSettings, scores: list[dict]) -> None:
    check_exactly_once(truth, settings, scores, strict=False)
    # The leads too: one per session and tier, though Redis forgot which it had made.
    by_key = {(e["session_id"], e["trigger"], e["hit_number"]): e for e in scores}
    assert check_leads(truth, by_key, read_all(settings, topics.LEADS, idle_s=2), strict=False)
    r = redis.Redis.from_url(settings.redis_url)
    # Every session counted once on the dashboard, though many were applied twice.
    layout = keys.Layout(settings.redis_key_prefix, settings.topic_partitions)
    parts = range(settings.topic_partitions)
    counted = sum(int(r.hget(f"{layout.dash(p)}:all", "n") or 0) for p in parts)
    assert counted == len(truth.sessions)
    # Redis says which input it reflects: all of it.
    for partition in parts:
        held = r.hgetall(layout.applied(partition))
        assert held, partition


@pytest.mark.parametrize(
    "keep_snapshot",
    [False, True],
    ids=["restarted-empty", "lost-its-last-second"],
)
def test_redis_that_lost_writes_is_rebuilt_from_the_topics(
    stream_settings: StreamSettings,
    truth: Truth,
    own_redis: OwnRedis,
    tmp_path: Path,
    keep_snapshot: bool,
) -> None:
    settings = stream_settings.model_copy(update={"redis_url": own_redis.url, "batch_max": 60})
    scores, m, restarts = _replay_with_a_redis_fault(
        settings, truth, own_redis, tmp_path / "worker.log", keep_snapshot
    )
    assert restarts <= 3, (tmp_path / "worker.log").read_text()[-3000:]
    assert m["scorer_worker_rebuilt_partitions_total{}"] > 0
    _check_rebuilt(truth, settings, scores)
