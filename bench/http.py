"""A small HTTP/1.1 load generator on asyncio streams, cheap enough to share two cores.

Requests are pre-encoded bytes sent over keep-alive connections; a response is read by
its Content-Length. At a fixed rate, each request's latency counts from the moment it
was due, not from when a connection was free, so a slow server cannot hide its queue.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np


def post(
    path: str, body: bytes, host: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> bytes:
    """Encode a keep-alive JSON POST request, with any extra headers."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Result:
    """Latencies (seconds) of completed requests and the wall time they took."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        """Requests per second and latency percentiles in milliseconds."""
        lat = np.asarray(self.latencies) * 1000
        if len(lat) == 0:
            return {"requests": 0, "rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan")}
        return {
            "requests": len(lat),
            "rps": round(len(lat) / self.seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "max_ms": round(float(lat.max()), 2),
            "errors": self.errors,
        }


class Connection:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


async def fixed_rate(
    port: int, raws: list[bytes], rate: float, seconds: float, conns: int = 8
) -> Result:
    """Send requests (cycling through raws) at a steady rate; latency counts from each
    request's due time."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await Connection.open(port))
    result = Result()
    n = int(rate * seconds)
    start = time.perf_counter()
    tasks = []

    async def one(due: float, raw: bytes) -> None:
        conn = await pool.get()
        try:
            status, _ = await conn.request(raw)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status != 200:
                result.errors += 1
            result.latencies.append(time.perf_counter() - due)
        finally:
            pool.put_nowait(conn)

    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due, raws[i % len(raws)])))
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().close()
    return result


async def saturate(port: int, raws: list[bytes], seconds: float, conns: int = 16) -> Result:
    """Keep conns connections busy back to back for the given time."""
    result = Result()
    stop = time.perf_counter() + seconds

    async def loop(k: int) -> None:
        conn = await Connection.open(port)
        i = k
        try:
            while time.perf_counter() < stop:
                raw = raws[i % len(raws)]
                i += conns
                t = time.perf_counter()
                status, _ = await conn.request(raw)
                result.latencies.append(time.perf_counter() - t)
                if status != 200:
                    result.errors += 1
        finally:
            conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(loop(k) for k in range(conns)))
    result.seconds = time.perf_counter() - start
    return result


async def sequential(port: int, raw: bytes, count: int) -> Result:
    """Send count requests one after another on one connection."""
    result = Result()
    conn = await Connection.open(port)
    start = time.perf_counter()
    try:
        for _ in range(count):
            t = time.perf_counter()
            status, _ = await conn.request(raw)
            result.latencies.append(time.perf_counter() - t)
            if status != 200:
                result.errors += 1
    finally:
        conn.close()
    result.seconds = time.perf_counter() - start
    return result
