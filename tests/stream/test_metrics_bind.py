"""The worker's and the quality reader's metrics servers listen on 127.0.0.1 unless told."""

from __future__ import annotations

from typing import Any

import pytest

from bench.procs import free_port, listening
from stream import quality
from stream.metrics import WorkerMetrics
from stream.settings import StreamSettings


def test_the_worker_metrics_server_listens_on_loopback_only() -> None:
    port = free_port()
    server = WorkerMetrics().serve(port, StreamSettings().metrics_host)
    try:
        assert listening(port) == {"0100007F"}  # 127.0.0.1, little-endian hex
    finally:
        server.shutdown()
        server.server_close()


def test_the_worker_metrics_server_listens_where_configured() -> None:
    port = free_port()
    server = WorkerMetrics().serve(port, "0.0.0.0")
    try:
        assert listening(port) == {"00000000"}
    finally:
        server.shutdown()
        server.server_close()


def test_no_port_no_server() -> None:
    assert WorkerMetrics().serve(0) is None


@pytest.mark.parametrize(
    ("configured", "bound"), [({}, "127.0.0.1"), ({"metrics_host": "0.0.0.0"}, "0.0.0.0")]
)
def test_the_quality_reader_binds_the_configured_host(
    monkeypatch: pytest.MonkeyPatch, configured: dict[str, str], bound: str
) -> None:
    calls: list[dict[str, Any]] = []

    def start(port: int, addr: str = "0.0.0.0", **kwargs: Any) -> None:
        calls.append({"port": port, "addr": addr})

    async def consume(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(quality, "start_http_server", start)
    monkeypatch.setattr(quality, "consume", consume)
    settings = StreamSettings(quality_metrics_port=9999, **configured)
    assert quality.run_quality(settings) == 0
    assert calls == [{"port": 9999, "addr": bound}]
