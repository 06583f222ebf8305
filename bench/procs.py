"""Worker processes and their metrics, for the benchmarks and the integration tests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import redis
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families
from redis.cluster import RedisCluster

from stream.settings import StreamSettings

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(
    cmd: list[str], env: dict[str, str], port: int, log: Path, timeout_s: float = 180
) -> subprocess.Popen[bytes]:
    """Start an HTTP server (``python -m api ...``) with its output in ``log``; return it
    once ``/health`` on ``port`` answers 200. Raises with the log's end if it exits or
    does not come up within ``timeout_s``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"server did not become healthy in {timeout_s:g} s:\n{_tail(log)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server started by ``serve``: terminate, kill after 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def listening(port: int) -> set[str]:
    """The local addresses listening on a TCP port, from the kernel's own table
    (``/proc/net/tcp``, ``tcp6``): hex as the kernel writes them, 127.0.0.1 as 0100007F."""
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


def drop_run(settings: StreamSettings) -> None:
    """Delete a run's topics (by its topic prefix) and Redis keys (by its key prefix)."""

    async def drop() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","))
        await admin.start()
        try:
            # Faust adds a topic of its own per app, named after the app id.
            leader = f"{settings.app_id}-__assignor-__leader"
            names = [
                n
                for n in await admin.list_topics()
                if n.startswith(settings.topic_prefix) or n == leader
            ]
            if names:
                await admin.delete_topics(names)
        finally:
            await admin.close()

    if settings.topic_prefix:  # never every topic of the broker
        asyncio.run(drop())
    drop_keys(settings)


def redis_client(settings: StreamSettings, **options: Any) -> Any:
    """A Redis client for these settings: one server, or a Redis Cluster."""
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **options)
    return redis.Redis.from_url(settings.redis_url, **options)


def scan(r: Any, match: str, count: int = 10_000) -> Iterator[bytes]:
    """Every key matching a pattern, on every master of a Redis Cluster."""
    if isinstance(r, RedisCluster):
        return cast(Iterator[bytes], r.scan_iter(match, count=count, target_nodes=r.PRIMARIES))
    return cast(Iterator[bytes], r.scan_iter(match, count=count))


def drop_keys(settings: StreamSettings) -> None:
    """Delete a run's Redis keys (by its key prefix): what a Redis that forgot has."""
    r = redis_client(settings)
    try:
        batch: list[bytes] = []
        for key in scan(r, f"{settings.redis_key_prefix}:*"):
            batch.append(key)
            if len(batch) >= 10_000:
                r.unlink(*batch)
                batch.clear()
        if batch:
            r.unlink(*batch)
    finally:
        r.close()


def settings_env(settings: StreamSettings) -> dict[str, str]:
    """The environment that hands these settings to a child process."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:  # unset: "None" would be read as a value
            env.pop(f"SCORER_{name.upper()}", None)
        else:
            env[f"SCORER_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """A `python -m stream worker` subprocess with its log file."""

    def __init__(self, settings: StreamSettings, log_path: Path, root: Path = ROOT) -> None:
        self.settings = settings
        self.log_path = log_path
        self.root = root  # the checkout whose packages the worker runs (its working dir)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker"],
            cwd=self.root,
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

    def cpu_seconds(self) -> float:
        """Return the CPU time (user and system) the worker has used so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def metrics(port: int) -> dict[str, float]:
    """Scrape a worker's metrics: sample name with labels -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def total(samples: dict[str, float], name: str) -> float:
    """Sum a metric over its labels."""
    return sum(v for k, v in samples.items() if k.startswith(name + "{"))
