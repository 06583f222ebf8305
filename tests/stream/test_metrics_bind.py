"""The worker's and the quality reader's metrics servers listen on 127.0.0.1 unless told."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from stream import quality
from stream.metrics import WorkerMetrics
from stream.settings import StreamSettings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> set[str]:
    """The local addresses listening on a TCP port, from the kernel's own table."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_the_worker_metrics_server_listens_on_loopback_only() -> None:
    port = _free_port()
    server = WorkerMetrics().serve(port, StreamSettings().metrics_host)
    try:
        assert _listening(port) == {"0100007F"}  # 127.0.0.1, little-endian hex
    finally:
        server.shutdown()
        server.server_close()


def test_the_worker_metrics_server_listens_where_configured() -> None:
    port = _free_port()
    server = WorkerMetrics().serve(port, "0.0.0.0")
    try:
        assert _listening(port) == {"00000000"}
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
