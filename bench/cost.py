"""The worker's processing cost in instructions, counted by valgrind's callgrind.

    python -m bench.cost [--data DIR] [--model PATH] [--sessions N]

Throughput on this shared 2-core machine moves by a fifth or more from one run to the
next (the same run's CPU seconds too), so a change of a few per cent cannot be seen in
``bench.stream``. Instructions can: callgrind counts the same total for the same code
and input. This runs the first N sessions of the benchmark's data (events in event-time
order, cut into fetches of 3,000 events) through the processor as the worker does
(session batches, their release, the parked hits, hit batches, the close sweep) against
a redis-server of its own, both under callgrind, and prints instructions per event for
the worker's process and for Redis. Only the processing is counted: the worker's start
(imports, the model, reading the data) is not, and Redis's counters start at zero when
the run begins. Kafka is left out: consuming and publishing cost the same for any
change to the processing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.procs import ROOT, free_port

FETCH = 3000  # events per fetch, about what the worker's fetches hold under a backlog
BATCH = 500  # the worker's batch_max
GAP_MS = 1800 * 1000.0  # the inactivity gap


def _records(data: Path, sessions: int) -> list[Any]:
    from contracts import topics
    from stream.processor import Record
    from stream.replay import build_events

    out = []
    for k, (topic, key, value) in enumerate(build_events(data, limit_sessions=sessions)):
        name = "cost.sessions" if topic == topics.SESSIONS else "cost.hits"
        partition = sum(key) % 6  # stable across runs, unlike hash()
        out.append(Record(value, name, partition, k, key, 1000.0 + k))
    return out


async def _process(records: list[Any], model_path: Path, redis_url: str) -> dict[str, int]:
    """Run the records through a processor, fetch by fetch; return what it produced."""
    import redis.asyncio as aioredis

    from artifact import load_model
    from stream.processor import Processor
    from stream.state import RedisStore

    client = aioredis.Redis.from_url(redis_url)
    store = RedisStore(client, prefix=f"cost-{uuid.uuid4().hex[:8]}", ttl_s=3600, retries=2)
    proc = Processor(load_model(model_path), store, "cost.hits")
    counts = {"events": len(records), "scores": 0, "closed": 0}
    for start in range(0, len(records), FETCH):
        fetch = records[start : start + FETCH]
        rows = [r for r in fetch if r.topic == "cost.sessions"]
        hits = [r for r in fetch if r.topic == "cost.hits"]
        released: dict[str, int] = {}
        for i in range(0, len(rows), BATCH):
            out = await proc.sessions(rows[i : i + BATCH])
            counts["scores"] += len(out.scores)
            released.update(out.released)
        parked = await proc.release(released)
        for batch in [parked[i : i + BATCH] for i in range(0, len(parked), BATCH)] + [
            hits[i : i + BATCH] for i in range(0, len(hits), BATCH)
        ]:
            counts["scores"] += len((await proc.hits(batch)).scores)
        # The fetch's input offsets, as the worker stores them with its last write; from
        # then on every write carries the fence (stream/recovery.py).
        await store.write([], [], offsets={("hits", 0): start + len(fetch)})
        if parked:
            await proc.forget_pending({(r.key or b"").decode(): r.partition for r in parked})
        horizon = await proc.close_horizon({p: set() for p in range(6)}, GAP_MS)
        while horizon:
            out = await proc.close_due(horizon, BATCH)
            if not out.closed:
                break
            counts["scores"] += len(out.scores)
            counts["closed"] += sum(len(s) for s in out.closed.values())
            await proc.finish_close(out.closed)
    await client.aclose()
    return counts


def child(args: argparse.Namespace) -> int:
    """The worker's side: prepare, say "ready", process on "go", report, exit on "exit"."""
    records = _records(args.data, args.sessions)
    print("ready", flush=True)
    sys.stdin.readline()
    counts = asyncio.run(_process(records, args.model, args.redis_url))
    print(json.dumps(counts), flush=True)
    sys.stdin.readline()
    return 0


def _totals(path: Path) -> int:
    """The instruction total of a callgrind output file."""
    text = path.read_text(errors="replace")
    found = re.findall(r"^(?:totals|summary): (\d+)", text, re.M)  # summary may say 0
    if not found:
        raise RuntimeError(f"no totals in {path}")
    return max(int(n) for n in found)


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def measure(data: Path, model: Path, sessions: int, work: Path) -> dict[str, Any]:
    """Count the instructions of one run; return the figures."""
    port = free_port()
    redis_out = work / "redis.callgrind"
    valgrind = ["valgrind", "--tool=callgrind", "--dump-instr=no"]
    redis_proc = subprocess.Popen(
        [
            *valgrind,
            f"--callgrind-out-file={redis_out}",
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
            "--hash-max-listpack-value",
            "1024",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker_out = work / "worker.callgrind"
    worker = subprocess.Popen(
        [
            *valgrind,
            "--instr-atstart=no",
            f"--callgrind-out-file={worker_out}",
            sys.executable,
            "-m",
            "bench.cost",
            "--child",
            "--data",
            str(data),
            "--model",
            str(model),
            "--sessions",
            str(sessions),
            "--redis-url",
            f"redis://127.0.0.1:{port}/0",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(work / "worker.log").open("w"),
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict orders every run
    )
    assert worker.stdin is not None and worker.stdout is not None
    try:
        _wait_for_redis(port)
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError("the worker's side did not start")
        _control("-z", str(redis_proc.pid))  # Redis counts from here
        _control("-i", "on", str(worker.pid))
        worker.stdin.write("go\n")
        worker.stdin.flush()
        counts = json.loads(worker.stdout.readline())
        _control("-i", "off", str(worker.pid))
        _control("-d", str(redis_proc.pid))
        worker.stdin.write("exit\n")
        worker.stdin.flush()
        if worker.wait(timeout=600) != 0:
            raise RuntimeError("the worker's side failed")
    finally:
        if worker.poll() is None:
            worker.kill()
        _shutdown_redis(port)
        redis_proc.wait(timeout=120)
    worker_ir = _totals(worker_out)
    # The dump asked for (part 1) has the run; the one at exit, only the shutdown.
    redis_ir = _totals(work / "redis.callgrind.1")
    events = counts["events"]
    return {
        "sessions": sessions,
        **counts,
        "worker_instructions": worker_ir,
        "redis_instructions": redis_ir,
        "worker_per_event": round(worker_ir / events),
        "redis_per_event": round(redis_ir / events),
        "total_per_event": round((worker_ir + redis_ir) / events),
    }


def _wait_for_redis(port: int) -> None:
    import redis

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_timeout=2).ping():
                return
        except redis.exceptions.ConnectionError:
            time.sleep(0.5)
    raise RuntimeError(f"redis-server under callgrind did not answer on port {port}")


def _shutdown_redis(port: int) -> None:
    import redis

    with contextlib.suppress(redis.exceptions.ConnectionError):  # gone, as asked
        redis.Redis(port=port, socket_timeout=30).shutdown(nosave=True)


def main(argv: list[str] | None = None) -> int:
    """Count the processing's instructions and print them per event."""
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/bench-stream"))
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep callgrind's output files in this folder (for callgrind_annotate)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if shutil.which(tool) is None:
            print(f"bench.cost needs {tool} (Debian: apt-get install valgrind redis-server)")
            return 2
    from bench.api import _prepare
    from bench.stream import ensure_data

    ensure_data(args.data)  # bench.stream's data set
    model = _prepare(args.data, args.model).resolve()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = measure(args.data.resolve(), model, args.sessions, args.keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
            result = measure(args.data.resolve(), model, args.sessions, Path(tmp))
    print(json.dumps(result))
    print(
        f"{result['events']:,} events ({result['sessions']:,} sessions), "
        f"{result['scores']:,} scores: worker {result['worker_per_event']:,} instructions "
        f"an event, Redis {result['redis_per_event']:,}, together "
        f"{result['total_per_event']:,}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
