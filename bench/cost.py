"""The worker's processing cost in instructions, counted by valgrind's callgrind.

    python -m bench.cost [--sessions N] [--sample window|file] [--from DAY] [--masters M]
                         [--reasons on|off|compare]

Throughput on this shared 2-core machine moves by a fifth or more from one run to the
next (the same run's CPU seconds too), so a change of a few per cent cannot be seen in
``bench.stream``. Instructions can: callgrind counts the same total for the same code
and input. This runs N sessions (events in event-time order, cut into fetches of 3,000
events) through the processor as the worker does (session batches, their release, the
parked hits, hit batches, the close sweep) against a redis-server of its own, both under
callgrind, and prints instructions per event for the worker's process and for Redis.

The sessions are those a worker sees in a stretch of time: the first N to start on or
after ``--from``, in a data set generated at the real export's size (1.86M sessions,
about 8,000 a day; made once, 73 s). How many share a batch's dashboard buckets follows
from that density. ``--sample file`` takes the first N rows of bench.stream's file
instead (100,000 sessions over the period: four a day in the sample, each alone in its
buckets), as this benchmark did before.

Only the processing is counted: the worker's start (imports, the model, reading the
data) is not, and Redis's counters start at zero when the run begins; Redis's clock-
driven housekeeping runs once a second (``--hz 1``). The worker's side sets the garbage
collector up as the worker does (``stream.worker.settle_gc``): left at Python's default,
a full collection over the model and the libraries lands in the count now and then, and
more often the more objects a change allocates. Kafka is left out: consuming and
publishing cost the same for any change to the processing (the bigger events a change
publishes excepted). ``--reasons compare`` runs twice, with the reasons of the Warm and
Hot scores and without, and reports what they cost. With ``--masters 3``, Redis
is a Redis Cluster of three masters (each under callgrind; no replicas) and the store
runs in cluster mode: the figures add each master's instructions per event and its
share of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.procs import ROOT, free_port
from bench.results import save

FETCH = 3000  # events per fetch, about what the worker's fetches hold under a backlog
BATCH = 500  # the worker's batch_max
GAP_MS = 1800 * 1000.0  # the inactivity gap


SITE_DATA = Path("data/bench-cost")  # generated at the real export's size (seed 11)
WINDOW_FROM = "2021-10-05"  # a Tuesday: the window's sessions start on or after it


def window(data: Path, first_day: str, sessions: int) -> Path:
    """Return a data set of the first ``sessions`` sessions (by start) from ``first_day`` on.

    A worker sees the sessions of a stretch of time, as many to the hour as the site has:
    a batch's sessions share their dashboard buckets. The first rows of a file are spread
    over the whole period instead (four a day at this size), each session alone in its
    buckets. Written once beside the data, with the hits of those sessions.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from features.columns import HIT_COLUMNS, SESSION_COLUMNS
    from stream.replay import _read

    out = data / f"window-{first_day}-{sessions}"
    if (out / "ga_hits.csv").is_file():
        return out
    table = _read(data / "ga_sessions.csv", SESSION_COLUMNS)
    table = table.filter(pc.greater_equal(table["visit_date"], first_day))
    order = pc.sort_indices(table, [("visit_date", "ascending"), ("visit_time", "ascending")])
    chosen = table.take(order[:sessions])
    hits = _read(data / "ga_hits.csv", HIT_COLUMNS)
    hits = hits.filter(pc.is_in(hits["session_id"], value_set=chosen["session_id"]))
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, part in (("ga_sessions.csv", chosen), ("ga_hits.csv", hits)):
        pacsv.write_csv(
            part.cast(pa.schema([(c, pa.string()) for c in part.column_names])),
            tmp / name,
            pacsv.WriteOptions(quoting_style="needed"),
        )
    tmp.rename(out)
    return out


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


async def _process(
    records: list[Any],
    model: Any,
    redis_url: str,
    cluster: bool = False,
    reasons: bool = True,
) -> dict[str, Any]:
    """Run the records through a processor, fetch by fetch; return what it produced
    (with its scores by tier: Cold, Warm, Hot). ``reasons`` False explains no score."""
    from stream.nodes import connect
    from stream.processor import Processor
    from stream.state import RedisStore

    client, lanes = connect(redis_url, cluster=cluster)
    store = RedisStore(
        client, prefix=f"cost-{uuid.uuid4().hex[:8]}", ttl_s=3600, retries=2, lanes=lanes
    )
    proc = Processor(model, store, "cost.hits", reasons=reasons)
    counts: dict[str, Any] = {"events": len(records), "scores": 0, "closed": 0}
    tiers = [0, 0, 0]

    def add(out: Any) -> None:
        counts["scores"] += len(out.scores)
        tiers[:] = [a + b for a, b in zip(tiers, out.tiers, strict=True)]

    for start in range(0, len(records), FETCH):
        fetch = records[start : start + FETCH]
        rows = [r for r in fetch if r.topic == "cost.sessions"]
        hits = [r for r in fetch if r.topic == "cost.hits"]
        released: dict[str, int] = {}
        for i in range(0, len(rows), BATCH):
            out = await proc.sessions(rows[i : i + BATCH])
            add(out)
            released.update(out.released)
        parked = await proc.release(released)
        for batch in [parked[i : i + BATCH] for i in range(0, len(parked), BATCH)] + [
            hits[i : i + BATCH] for i in range(0, len(hits), BATCH)
        ]:
            add(await proc.hits(batch))
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
            add(out)
            counts["closed"] += sum(len(s) for s in out.closed.values())
            await proc.finish_close(out.closed)
    if lanes is not None:
        await lanes.aclose()
    await client.aclose()
    counts["scores_by_tier"] = tiers
    return counts


def child(args: argparse.Namespace) -> int:
    """The worker's side: prepare as the worker starts (the model loaded, its reasons'
    tables made, the garbage collector set up as the worker sets it), say "ready",
    process on "go", report, exit on "exit"."""
    from artifact import load_model
    from artifact.explain import prepare as prepare_reasons
    from stream.worker import settle_gc

    records = _records(args.data, args.sessions)
    model = load_model(args.model)
    if not args.no_reasons:
        prepare_reasons(model)  # as the worker does when it loads the model
    settle_gc()
    print("ready", flush=True)
    sys.stdin.readline()
    counts = asyncio.run(
        _process(records, model, args.redis_url, args.cluster, not args.no_reasons)
    )
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


def _redis_server(work: Path, port: int, cluster: bool) -> subprocess.Popen[bytes]:
    """A redis-server under callgrind (a Redis Cluster node when ``cluster``)."""
    options = [
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
        "--hash-max-listpack-entries",
        "64",
        # Redis's timer work (statistics, expiry sampling) runs by the clock, not per
        # event: once a second instead of ten times, a busy machine's slower run does not
        # count more of it.
        "--hz",
        "1",
        "--dynamic-hz",
        "no",
    ]
    if cluster:
        options += [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"nodes-{port}.conf",
            "--cluster-node-timeout",
            "60000",  # callgrind slows the node: no failover meanwhile
        ]
    return subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--dump-instr=no",
            f"--callgrind-out-file={work / f'redis-{port}.callgrind'}",
            shutil.which("redis-server") or "redis-server",
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _cluster_port() -> int:
    """A free port for a Redis Cluster node, whose bus port (10,000 above) is free too."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 45000)
        if all(_free(p) for p in (port, port + 10000)):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _make_cluster(ports: list[int]) -> None:
    """Join the nodes into a Redis Cluster, the slots in equal ranges, no replicas."""
    subprocess.run(
        [
            "redis-cli",
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-yes",
        ],
        check=True,
        capture_output=True,
        timeout=600,
        env={**os.environ, "TERM": "dumb"},
    )
    import redis

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        states = [
            redis.Redis(port=p, socket_timeout=30).cluster("info").get("cluster_state")
            for p in ports
        ]
        if all(state == "ok" for state in states):
            return
        time.sleep(1.0)
    raise RuntimeError("the cluster under callgrind did not become ready")


def measure(
    data: Path, model: Path, sessions: int, work: Path, masters: int = 1, reasons: bool = True
) -> dict[str, Any]:
    """Count the instructions of one run; return the figures.

    With ``masters`` > 1, Redis is a Redis Cluster of that many masters, each under
    callgrind, and the worker's side runs in cluster mode. ``reasons`` False runs the
    worker's side without explaining its Warm and Hot scores.
    """
    cluster = masters > 1
    ports = [_cluster_port() if cluster else free_port() for _ in range(masters)]
    servers = [_redis_server(work, port, cluster) for port in ports]
    worker_out = work / "worker.callgrind"
    worker: subprocess.Popen[str] | None = None
    try:
        for port in ports:
            _wait_for_redis(port)
        if cluster:
            _make_cluster(ports)
        worker = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--dump-instr=no",
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
                f"redis://127.0.0.1:{ports[0]}/0",
                *(["--cluster"] if cluster else []),
                *([] if reasons else ["--no-reasons"]),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(work / "worker.log").open("w"),
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict orders every run
        )
        assert worker.stdin is not None and worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError("the worker's side did not start")
        for server in servers:
            _control("-z", str(server.pid))  # Redis counts from here
        _control("-i", "on", str(worker.pid))
        worker.stdin.write("go\n")
        worker.stdin.flush()
        counts = json.loads(worker.stdout.readline())
        _control("-i", "off", str(worker.pid))
        for server in servers:
            _control("-d", str(server.pid))
        worker.stdin.write("exit\n")
        worker.stdin.flush()
        if worker.wait(timeout=600) != 0:
            raise RuntimeError("the worker's side failed")
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        for port, server in zip(ports, servers, strict=True):
            _shutdown_redis(port)
            server.wait(timeout=120)
    worker_ir = _totals(worker_out)
    # The dump asked for (part 1) has the run; the one at exit, only the shutdown.
    nodes = [_totals(work / f"redis-{port}.callgrind.1") for port in ports]
    redis_ir = sum(nodes)
    events = counts["events"]
    return {
        "sessions": sessions,
        **counts,
        "masters": masters,
        "worker_instructions": worker_ir,
        "redis_instructions": redis_ir,
        "worker_per_event": round(worker_ir / events),
        "redis_per_event": round(redis_ir / events),
        "total_per_event": round((worker_ir + redis_ir) / events),
        "redis_per_event_by_master": [round(n / events) for n in nodes],
        "redis_share_by_master": [round(n / redis_ir, 4) for n in nodes],
    }


def reasons_cost(on: dict[str, Any], off: dict[str, Any]) -> dict[str, Any]:
    """What the reasons cost: the same run with them (``on``) and without (``off``)."""
    by_tier = on["scores_by_tier"]
    return {
        "worker_per_event_without": off["worker_per_event"],
        "redis_per_event_without": off["redis_per_event"],
        "total_per_event_without": off["total_per_event"],
        "worker": round(on["worker_per_event"] / off["worker_per_event"] - 1.0, 4),
        "total": round(on["total_per_event"] / off["total_per_event"] - 1.0, 4),
        "warm_or_hot_share": round((by_tier[1] + by_tier[2]) / max(1, sum(by_tier)), 4),
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
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument(
        "--sample",
        choices=("window", "file"),
        default="window",
        help="window: the first sessions from --from on, of a data set of the site's size "
        "(default); file: the first sessions of bench.stream's file, spread over the period",
    )
    parser.add_argument("--from", dest="first_day", default=WINDOW_FROM)
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep callgrind's output files in this folder (for callgrind_annotate)",
    )
    parser.add_argument(
        "--masters",
        type=int,
        default=1,
        help="Redis: one server (1), or a Redis Cluster of this many masters",
    )
    parser.add_argument(
        "--reasons",
        choices=("on", "off", "compare"),
        default="on",
        help="explain the Warm and Hot scores (on, as the worker does by default), not "
        "(off), or run both and report what the reasons cost (compare)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-reasons", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cluster", action="store_true", help=argparse.SUPPRESS)
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
    from training.generate import FULL_SESSIONS, generate

    stream_data = Path("data/bench-stream")
    ensure_data(stream_data)  # bench.stream's data set, and its model
    model = _prepare(stream_data, args.model).resolve()
    if args.sample == "file":
        data = args.data or stream_data
    else:
        full = args.data or SITE_DATA
        if not (full / "ga_hits.csv").is_file():
            print(f"generating {FULL_SESSIONS:,} sessions into {full} (once)", flush=True)
            generate(full, FULL_SESSIONS, seed=11, progress=False)
        data = window(full, args.first_day, args.sessions)
    args.data = data
    runs = [True, False] if args.reasons == "compare" else [args.reasons == "on"]
    figures = []
    for flag in runs:
        with contextlib.ExitStack() as temporary:
            if args.keep is None:
                work = Path(
                    temporary.enter_context(tempfile.TemporaryDirectory(prefix="bench-cost-"))
                )
            else:  # a compared run's two counts in two folders
                work = (
                    args.keep / ("reasons" if flag else "no-reasons")
                    if len(runs) > 1
                    else args.keep
                )
                work.mkdir(parents=True, exist_ok=True)
            figures.append(
                measure(
                    args.data.resolve(), model, args.sessions, work.resolve(), args.masters, flag
                )
            )
    result = figures[0]
    result["reasons"] = runs[0]
    if len(figures) == 2:
        result["reasons_cost"] = reasons_cost(figures[0], figures[1])
    result["sample"] = args.sample
    result["first_day"] = args.first_day if args.sample == "window" else None
    print(json.dumps(result))
    save("cost", result, sys.argv[1:] if argv is None else argv)
    print(
        f"{result['events']:,} events ({result['sessions']:,} sessions), "
        f"{result['scores']:,} scores: worker {result['worker_per_event']:,} instructions "
        f"an event, Redis {result['redis_per_event']:,}, together "
        f"{result['total_per_event']:,}"
    )
    if "reasons_cost" in result:
        c = result["reasons_cost"]
        print(
            f"reasons of the Warm and Hot scores ({c['warm_or_hot_share']:.1%} of scores): "
            f"worker {c['worker_per_event_without']:,} → {result['worker_per_event']:,} "
            f"instructions an event ({c['worker']:+.1%}), with Redis {c['total']:+.1%}"
        )
    if args.masters > 1:
        shares = ", ".join(
            f"{n:,} ({share:.1%})"
            for n, share in zip(
                result["redis_per_event_by_master"], result["redis_share_by_master"], strict=True
            )
        )
        print(f"Redis Cluster of {args.masters} masters, instructions an event each: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
