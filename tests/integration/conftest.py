"""The real Kafka broker and Redis server (make stack-up), and a worker process."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench.procs import WorkerProcess, drop_run, free_port, redis_client
from stream.settings import StreamSettings


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("SCORER_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    if not _reachable(host, int(port)):
        pytest.fail(f"Kafka is not reachable at {bootstrap}: run `make stack-up` first")
    return bootstrap


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("SCORER_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis_client(StreamSettings(redis_url=url), socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"Redis is not reachable at {url}: run `make stack-up` first")
    return url


@pytest.fixture()
def run_id() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def stream_settings(
    kafka_bootstrap: str, redis_url: str, model_path: Path, run_id: str, tmp_path: Path
) -> Iterator[StreamSettings]:
    """Settings that isolate one test: its own topics, consumer group and Redis keys.

    The test's topics and keys are deleted after it.
    """
    settings = StreamSettings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model_path=model_path,
        topic_prefix=f"{run_id}.",
        app_id=run_id,
        redis_key_prefix=run_id,
        data_dir=tmp_path / "faust",
        metrics_port=free_port(),
    )
    yield settings
    drop_run(settings)


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
