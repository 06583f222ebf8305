"""The real Kafka broker and Redis server (make stack-up), and a worker process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stream.settings import StreamSettings

ROOT = Path(__file__).resolve().parents[2]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("SCORER_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    host, port = bootstrap.split(":")
    if not _reachable(host, int(port)):
        pytest.fail(f"Kafka is not reachable at {bootstrap}: run `make stack-up` first")
    return bootstrap


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("SCORER_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"Redis is not reachable at {url}: run `make stack-up` first")
    return url


@pytest.fixture()
def run_id() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def stream_settings(
    kafka_bootstrap: str, redis_url: str, model_path: Path, run_id: str, tmp_path: Path
) -> StreamSettings:
    """Settings that isolate one test: its own topics, consumer group and Redis keys."""
    return StreamSettings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model_path=model_path,
        topic_prefix=f"{run_id}.",
        app_id=run_id,
        redis_key_prefix=run_id,
        data_dir=tmp_path / "faust",
    )


def settings_env(settings: StreamSettings) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        env[f"SCORER_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """A `python -m stream worker` subprocess with its log file."""

    def __init__(self, settings: StreamSettings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker"],
            cwd=ROOT,
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            if "Worker ready" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise AssertionError(f"worker not ready: {self.log_path.read_text()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture()
def worker(stream_settings: StreamSettings, tmp_path: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(stream_settings, tmp_path / "worker.log")
    w.start()
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


def run(coro):  # noqa: ANN001, ANN201 - a tiny helper for sync tests
    return asyncio.run(coro)
