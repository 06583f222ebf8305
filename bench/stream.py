"""Benchmark of the stream worker on the real local Kafka broker and Redis.

    python -m bench.stream [--data DIR] [--model PATH] [--sessions N] [--rate R]
                           [--latency-seconds S] [--warmup-seconds S] [--full DIR]

1. Latency at a steady rate (default 1,000 events/s): event → score, from the input
   record's timestamp to its score record's timestamp, p50/p95/p99, after a warm-up
   of the fresh topics (--warmup-seconds, 5; its figures are reported on their own).
   It runs first, before the broker has topics of the other phases to delete.
2. Consuming only, two ceilings in the same run: a Faust app that only consumes the
   same pre-loaded input, through the worker's own delivery (each fetch handed whole to
   one coroutine) and through Faust's usual per-event agents.
3. Throughput, one worker process: the input is loaded into fresh topics first; the
   worker starts and the clock runs from its first consumed event to its last score
   published (Kafka timestamps). "Sustained" leaves out the first and last 10 % of the
   scores, so start-up and the group's rebalance do not count. The run reads the scores
   topic until every expected score (session, trigger, hit number) came out, counts a
   score published again once, and fails when one is missing.
4. The same with two worker processes in one consumer group.
5. The rebuild: after the input is scored, the run's Redis keys are deleted and the
   worker started again; it reads the topics again, timed until Redis reflects them all.
6. With --full DIR: a replay of a whole generated history, timed (--full-workers, 2).
7. With --baseline REF: REF's worker and this one, alternately, on the one-worker input.
8. Reasons: one worker with the reasons of Warm and Hot scores and one without
   (``SCORER_REASONS=0``), in ABBA order, on the one-worker input (--reasons-runs, 2 each);
   with the share of scores that were Warm or Hot.

Each phase uses its own topics and Redis keys, removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from redis.cluster import RedisCluster

from bench.api import _prepare
from bench.procs import (
    ROOT,
    WorkerProcess,
    drop_keys,
    drop_run,
    free_port,
    metrics,
    redis_client,
    scan,
    settings_env,
    total,
)
from bench.results import save
from contracts import keys, topics
from stream.replay import build_events, send_events
from stream.settings import StreamSettings

Event = tuple[str, bytes, bytes]

# Paced sending before the latency counts: a run's topics are new, and a new topic's
# partitions answer their first produce requests slowly (up to 250 ms here) for a
# second or two; a worker restarted on warm topics shows no such start.
WARMUP_S = 5.0
# The pause before each run of the reasons phase, for the broker to finish deleting the
# last run's topics.
SETTLE_S = 20.0


def _settings(base: StreamSettings, model: Path, work: Path) -> StreamSettings:
    run = f"bench-{uuid.uuid4().hex[:8]}"
    return base.model_copy(
        update={
            # Absolute: a worker of another checkout (--baseline) runs from there.
            "model_path": model.resolve(),
            "topic_prefix": f"{run}.",
            "app_id": run,
            "redis_key_prefix": run,
            "data_dir": (work / run).resolve(),
            "metrics_port": free_port(),
            "model_reload_s": 0.0,
        }
    )


Identity = tuple[str, str, int | None]  # a score's session, trigger and hit_number


def _identity(e: dict[str, Any]) -> Identity:
    """(session, trigger, hit_number) of a score, or of the input event it answers."""
    if "trigger" in e:
        return (e["session_id"], e["trigger"], e["hit_number"])
    if "hit_number" in e:
        return (e["session_id"], "hit", e["hit_number"])
    return (e["session_id"], "session_start", None)


async def _timestamps(
    settings: StreamSettings,
    topic: str,
    wanted: set[Identity] | None = None,
    timeout_s: float = 0.0,
) -> list[tuple[Any, float]]:
    """Read a whole topic; return (identity, record timestamp in ms) of each record.

    It reads until nothing new came for 3 s; with ``wanted``, first until every identity
    in it was read or ``timeout_s`` passed (the workers may still be publishing).
    """
    consumer = AIOKafkaConsumer(
        topics.topic_name(topic, settings.topic_prefix),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    out: list[tuple[Any, float]] = []
    missing = set(wanted or ())
    deadline = time.monotonic() + timeout_s
    try:
        last_new = time.monotonic()
        while time.monotonic() - last_new < 3.0 or (missing and time.monotonic() < deadline):
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for records in batch.values():
                for rec in records:
                    identity = _identity(orjson.loads(rec.value))
                    out.append((identity, float(rec.timestamp)))
                    missing.discard(identity)
                    last_new = time.monotonic()
    finally:
        await consumer.stop()
    return out


def _poll_first_consumed(
    procs: list[WorkerProcess], stop_at: int, timeout_s: float
) -> tuple[float, float]:
    """Wait until the workers consumed something, then until all input is scored.

    Returns (wall ms of the first consumed event, wall seconds spent waiting). A worker
    that exits meanwhile ends the wait with an error: its counts are gone with it.
    """
    ports = [p.settings.metrics_port for p in procs]
    started = time.monotonic()
    first_ms: float | None = None
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        _check_alive(procs)
        counts = [_counts(port) for port in ports]
        consumed = sum(c for c, _ in counts)
        scored = sum(s for _, s in counts)
        if first_ms is None and consumed > 0:
            first_ms = time.time() * 1000.0
        if scored >= stop_at:
            break
        time.sleep(0.1 if first_ms is None else 2.0)
    else:
        raise RuntimeError(f"workers scored fewer than {stop_at} events in {timeout_s:.0f} s")
    assert first_ms is not None
    return first_ms, time.monotonic() - started


def _check_alive(procs: list[WorkerProcess]) -> None:
    """Fail with the end of its log if a worker has exited."""
    for p in procs:
        if not p.alive():
            tail = p.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker {p.log_path.name} exited during the run:\n{tail}")


class ScoreTally:
    """The scores a set of events should produce, added up as the events are sent.

    One per session row and one per hit of a session that has a row, wherever in the
    stream the row comes; orphan hits wait for a row and get no score.
    """

    def __init__(self) -> None:
        self.session_rows = 0
        self.known: set[bytes] = set()
        self.hits: Counter[bytes] = Counter()

    def add(self, events: Iterable[Event]) -> None:
        for topic, key, _ in events:
            if topic == topics.SESSIONS:
                self.session_rows += 1
                self.known.add(key)
            else:
                self.hits[key] += 1

    @property
    def expected(self) -> int:
        return self.session_rows + sum(n for key, n in self.hits.items() if key in self.known)


def expected_identities(events: Iterable[Event]) -> set[Identity]:
    """The (session, trigger, hit_number) of each score these events should produce: a
    session start per session row, a hit score per hit of a session with a row."""
    rows: set[str] = set()
    hits: list[Identity] = []
    for topic, _, value in events:
        e = orjson.loads(value)
        if topic == topics.SESSIONS:
            rows.add(e["session_id"])
        else:
            hits.append(_identity(e))
    return {(sid, "session_start", None) for sid in rows} | {h for h in hits if h[0] in rows}


def first_scores(
    stamps: list[tuple[Any, float]], wanted: set[Identity]
) -> tuple[dict[Identity, float], set[Identity]]:
    """Return when each wanted score first came out (copies published again do not
    count twice), and the wanted scores that never did."""
    first: dict[Identity, float] = {}
    for identity, ts in stamps:
        if identity in wanted and (identity not in first or ts < first[identity]):
            first[identity] = ts
    return first, wanted - first.keys()


class IncompleteRun(RuntimeError):
    """Expected scores never came out: the run's figures would count what is missing."""


def expected_scores(events: Iterable[Event]) -> int:
    """The scores these events should produce (see ``ScoreTally``)."""
    tally = ScoreTally()
    tally.add(events)
    return tally.expected


def throughput(
    base: StreamSettings,
    model: Path,
    events: list[Event],
    workers: int,
    work: Path,
    root: Path = ROOT,
    reasons: bool = True,
) -> dict[str, Any]:
    """Pre-load the input, start the workers, time first consumed → last score.

    ``root`` is the checkout whose worker runs (another version's, for ``--baseline``);
    ``reasons`` False runs it without explaining its scores.
    """
    settings = _settings(base, model, work).model_copy(update={"reasons": reasons})
    expected = expected_scores(events)
    wanted = expected_identities(events)
    asyncio.run(send_events(settings, events, progress=False))
    procs = []
    for k in range(workers):
        s = settings if k == 0 else settings.model_copy(update={"metrics_port": free_port()})
        procs.append(WorkerProcess(s, work / f"{settings.app_id}-{k}.log", root))
    store = redis_client(settings)
    redis_before = _redis_use(store)
    try:
        for p in procs:
            p.start()
        ports = [p.settings.metrics_port for p in procs]
        first_ms, _ = _poll_first_consumed(procs, expected, timeout_s=3600)
        parked = sum(_counter(port, "scorer_worker_parked_hits_total{}") for port in ports)
        late = sum(_counter(port, "scorer_worker_late_hits_total{}") for port in ports)
        tiers = {
            t: sum(
                _counter(port, f"scorer_worker_scores_by_tier_total{{tier={t}}}") for port in ports
            )
            for t in ("cold", "warm", "hot")
        }
        worker_cpu = sum(p.cpu_seconds() for p in procs)
        redis_cpu, redis_bytes = np.subtract(_redis_use(store), redis_before)
        # The counters count copies published again too: the topic says whether every
        # expected score came out (the workers run on while it is read).
        stamps = asyncio.run(_timestamps(settings, topics.SCORES, wanted, timeout_s=300))
    finally:
        for p in procs:
            p.stop()
    first, missing = first_scores(stamps, wanted)
    if missing:
        raise IncompleteRun(
            f"{len(missing):,} of {len(wanted):,} expected scores never came out, "
            f"e.g. {sorted(missing, key=str)[:3]}"
        )
    event_scores = np.sort(np.array(list(first.values())))
    last_ms = float(event_scores[-1])
    lo, hi = np.quantile(event_scores, [0.1, 0.9])
    result = {
        "workers": workers,
        "events": len(events),
        "scores": len(stamps),
        "expected_scores": len(wanted),
        "scores_published_again": len(stamps) - len({identity for identity, _ in stamps}),
        "seconds": round((last_ms - first_ms) / 1000.0, 2),
        "events_per_s": round(len(events) / ((last_ms - first_ms) / 1000.0)),
        "sustained_events_per_s": round(0.8 * len(event_scores) / ((hi - lo) / 1000.0)),
        "parked_hits": int(parked),
        "late_hits": int(late),  # applied after their session was closed
        "scores_by_tier": {t: int(n) for t, n in tiers.items()},
        # CPU seconds over the run (the workers' from their start), and what Redis holds
        # at its end beyond what it held before.
        "worker_cpu_s": round(worker_cpu, 1),
        "redis_cpu_s": round(float(redis_cpu), 1),
        "redis_mb": round(float(redis_bytes) / 1e6, 1),
    }
    drop_run(settings)
    return result


def reasons_cost(
    base: StreamSettings, model: Path, events: list[Event], work: Path, runs: int
) -> dict[str, Any]:
    """One worker with reasons and one without, alternately: what explaining the Warm and
    Hot scores costs in throughput (the medians' ratio) and in the worker's CPU time.

    Each run waits for the broker to settle first: it deletes the last run's topics in
    the background, and a run during that goes about a third slower. The pairs run in
    ABBA order.
    """
    on: list[int] = []
    off: list[int] = []
    cpu: dict[bool, list[float]] = {True: [], False: []}
    by_tier: dict[str, int] = {}
    for run in range(runs):
        # ABBA: each setting runs first in every other pair, so that a drift of the
        # machine over the phase weighs on both alike.
        pair = ((True, on), (False, off))
        for flag, into in pair if run % 2 == 0 else pair[::-1]:
            time.sleep(SETTLE_S)
            r = throughput(base, model, events, 1, work, reasons=flag)
            into.append(r["events_per_s"])
            cpu[flag].append(r["worker_cpu_s"])
            by_tier = r["scores_by_tier"]
            print("reasons" if flag else "no reasons", r, flush=True)
    scored = sum(by_tier.values())
    return {
        "with_reasons_events_per_s": on,
        "without_reasons_events_per_s": off,
        "with_reasons_worker_cpu_s": cpu[True],
        "without_reasons_worker_cpu_s": cpu[False],
        "cost": round(1.0 - float(np.median(on)) / float(np.median(off)), 3),
        "cpu_cost": round(float(np.median(cpu[True])) / float(np.median(cpu[False])) - 1.0, 3),
        "warm_or_hot_share": round((by_tier["warm"] + by_tier["hot"]) / scored, 4)
        if scored
        else None,
    }


def checkout(ref: str, work: Path) -> Path:
    """Return a worktree of the repository at ``ref`` (made once, under ``work``)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tree = (work / f"baseline-{sha[:12]}").resolve()
    if not (tree / "stream").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, check=True)
    return tree


def rebuild(base: StreamSettings, model: Path, events: list[Event], work: Path) -> dict[str, Any]:
    """Time a worker rebuilding Redis from the topics after Redis forgot everything.

    The input is pre-loaded and scored by one worker; the worker stops, the run's Redis
    keys are deleted (a restart without persistence, or a FLUSHALL), and the worker is
    started again on the same consumer group. Every record is within the session TTL,
    so it reads all of them again; the clock runs from its start until Redis's applied
    offsets reach the end of every input partition.
    """
    settings = _settings(base, model, work)
    asyncio.run(send_events(settings, events, progress=False))
    worker = WorkerProcess(settings, work / f"{settings.app_id}-rebuild.log")
    store = redis_client(settings)
    try:
        worker.start()
        _poll_first_consumed([worker], expected_scores(events), timeout_s=3600)
        worker.stop()
        ends = asyncio.run(_end_offsets(settings))
        drop_keys(settings)
        started = time.perf_counter()
        worker.start()
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            _check_alive([worker])
            held: dict[tuple[str, int], int] = {}
            layout = keys.Layout(settings.redis_key_prefix, settings.topic_partitions)
            for p in range(settings.topic_partitions):
                found = store.hgetall(layout.applied(p))
                for kind, v in cast(dict[bytes, bytes], found).items():
                    held[(kind.decode(), p)] = int(v)
            if all(held.get(key, -1) >= end for key, end in ends.items()):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("the rebuild did not finish in an hour")
        seconds = time.perf_counter() - started
        reread = _counter(settings.metrics_port, "scorer_worker_reread_records_total")
        sessions = sum(1 for _ in scan(store, f"{settings.redis_key_prefix}:{{*}}:s:*"))
    finally:
        worker.stop()
    drop_run(settings)
    return {
        "events": len(events),
        "seconds": round(seconds, 1),
        "events_per_s": round(len(events) / seconds),
        "seconds_per_million": round(seconds / len(events) * 1e6, 1),
        "reread_records": int(reread),
        "sessions_rebuilt": sessions,
    }


async def _end_offsets(settings: StreamSettings) -> dict[tuple[str, int], int]:
    """Return the end offset of every input partition, by (input kind, partition)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        tps = {
            (kind, p): TopicPartition(topics.topic_name(topic, settings.topic_prefix), p)
            for kind, topic in (("sessions", topics.SESSIONS), ("hits", topics.HITS))
            for p in range(settings.topic_partitions)
        }
        ends = await consumer.end_offsets(list(tps.values()))
    finally:
        await consumer.stop()
    return {key: ends[tp] for key, tp in tps.items()}


def _redis_use(store: Any) -> tuple[float, float]:
    """Return Redis's CPU seconds so far (user and system) and its memory in bytes.

    On a Redis Cluster, of all its masters together.
    """
    if isinstance(store, RedisCluster):
        nodes = store.get_primaries()
        cpus = [store.info("cpu", target_nodes=n) for n in nodes]
        memories = [store.info("memory", target_nodes=n) for n in nodes]
    else:
        cpus, memories = [store.info("cpu")], [store.info("memory")]
    cpu = sum(c["used_cpu_user"] + c["used_cpu_sys"] for c in cpus)
    return cpu, float(sum(m["used_memory"] for m in memories))


def faust_ceiling(
    base: StreamSettings, model: Path, events: list[Event], work: Path, agents: bool = False
) -> dict[str, Any]:
    """Pre-load the input and time a Faust app that only consumes it (bench/faust_bare):
    through the project's batch consumer, or with ``agents`` through Faust's per-event
    agents."""
    settings = _settings(base, model, work)
    asyncio.run(send_events(settings, events, progress=False))
    env = settings_env(settings)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.faust_bare",
            "--expect",
            str(len(events)),
            *(["--agents"] if agents else []),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    # Faust sends stdout through its logging: find the figures in either stream.
    found = re.search(r'\{"events": \d+, "seconds": [0-9.]+\}', done.stdout + done.stderr)
    if found is None:
        raise RuntimeError(f"bench.faust_bare failed: {done.stderr[-2000:]}")
    figures = json.loads(found.group(0))
    drop_run(settings)
    return {
        "events": figures["events"],
        "seconds": figures["seconds"],
        "events_per_s": round(figures["events"] / figures["seconds"]),
    }


def latency(
    base: StreamSettings,
    model: Path,
    events: list[Event],
    rate: float,
    seconds: float,
    work: Path,
    warmup_s: float = WARMUP_S,
) -> dict[str, Any]:
    """Send at a steady rate to a running worker; event → score latency percentiles.

    The first ``warmup_s`` of sending warm the run's fresh topics up and are left out
    of the percentiles (their own are reported beside them): a newly created topic's
    partitions answer their first produce requests slowly for a second or two.
    """
    settings = _settings(base, model, work)
    chosen = events[: int(rate * (warmup_s + seconds))]
    worker = WorkerProcess(settings, work / f"{settings.app_id}.log")
    asyncio.run(send_events(settings, [], progress=False))  # topics exist before the worker
    worker.start()
    try:
        worker.wait_ready()
        time.sleep(3)  # the first assignment settles
        asyncio.run(send_events(settings, chosen, rate=rate, progress=False))
        _poll_first_consumed([worker], expected_scores(chosen), timeout_s=600)
    finally:
        worker.stop()
    sent: dict[Any, float] = {}
    for topic in (topics.SESSIONS, topics.HITS):
        for ident, ts in asyncio.run(_timestamps(settings, topic)):
            sent[ident] = ts
    pairs = [
        (sent[ident], ts - sent[ident])
        for ident, ts in asyncio.run(_timestamps(settings, topics.SCORES))
        if ident in sent
    ]
    drop_run(settings)
    warm, measured = split_warmup(pairs, warmup_s)
    return {
        "rate": rate,
        "events": len(chosen),
        "warmup_s": warmup_s,
        "scores_matched": len(measured),
        **percentiles(measured),
        "warmup": {"scores_matched": len(warm), **percentiles(warm)},
    }


def split_warmup(
    pairs: list[tuple[float, float]], warmup_s: float
) -> tuple[list[float], list[float]]:
    """Split (sent at ms, latency ms) pairs into those of the warm-up and the rest.

    The warm-up is the first ``warmup_s`` after the earliest event sent.
    """
    if not pairs:
        return [], []
    end = min(at for at, _ in pairs) + warmup_s * 1000.0
    warm = [lat for at, lat in pairs if at < end]
    measured = [lat for at, lat in pairs if at >= end]
    return warm, measured


def percentiles(latencies: list[float]) -> dict[str, float | None]:
    """p50, p95, p99 and the maximum of latencies in ms (None when there are none)."""
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.array(latencies)
    p50, p95, p99 = np.quantile(arr, [0.5, 0.95, 0.99])
    return {
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(float(arr.max()), 1),
    }


SESSIONS = 100_000  # the benchmark's data set: generated sessions, seed 11


def ensure_data(data: Path, sessions: int = SESSIONS) -> None:
    """Generate the benchmark's data set into ``data`` unless it is there already."""
    if not (data / "ga_sessions.csv").is_file():
        from training.generate import generate

        generate(data, sessions, seed=11, progress=False)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every phase; return the figures."""
    base = StreamSettings()
    work = args.data / "work"
    work.mkdir(parents=True, exist_ok=True)
    ensure_data(args.data, args.sessions)
    model = _prepare(args.data, args.model)
    events = build_events(args.data, args.limit)
    results: dict[str, Any] = {"data": str(args.data)}
    print(f"events: {len(events):,}", flush=True)
    phases = (
        set(args.only.split(","))
        if args.only
        else {"bare", "one", "two", "latency", "rebuild", "reasons"}
    )
    # The latency first: after a throughput phase the broker deletes its gigabyte of
    # topics in the background, and that run's latency would include the disk churn.
    if "latency" in phases:
        results["latency"] = latency(
            base, model, events, args.rate, args.latency_seconds, work, args.warmup_seconds
        )
        print(results["latency"], flush=True)
    if "bare" in phases:
        # Two consumers that do nothing else: the worker's own delivery (each fetch whole)
        # and Faust's usual one (one event at a time through agents).
        results["consume_only"] = {
            "batch": faust_ceiling(base, model, events, work),
            "agents": faust_ceiling(base, model, events, work, agents=True),
        }
        print(results["consume_only"], flush=True)
    if "one" in phases:
        results["one_worker"] = throughput(base, model, events, 1, work)
        print(results["one_worker"], flush=True)
    if args.baseline:
        # Another version's worker on the same input, alternating with this one's, so
        # that a difference is the code's and not the machine's mood.
        root = checkout(args.baseline, work)
        results["baseline"] = {"ref": args.baseline, "runs": [], "this_version_runs": []}
        for _ in range(args.baseline_runs):
            for key, at in (("runs", root), ("this_version_runs", ROOT)):
                r = throughput(base, model, events, 1, work, at)
                results["baseline"][key].append(r["events_per_s"])
                print(key, r, flush=True)
    if "reasons" in phases:
        results["reasons"] = reasons_cost(base, model, events, work, args.reasons_runs)
        print(results["reasons"], flush=True)
    if "two" in phases:
        results["two_workers"] = throughput(base, model, events, 2, work)
        print(results["two_workers"], flush=True)
    if "rebuild" in phases:
        results["rebuild"] = rebuild(base, model, events, work)
        print(results["rebuild"], flush=True)
    if args.full is not None:
        results["full_replay"] = full_replay(base, model, args.full, work, args.full_workers)
        print(results["full_replay"], flush=True)
    return results


def full_replay(
    base: StreamSettings, model: Path, data: Path, work: Path, workers: int
) -> dict[str, Any]:
    """Pre-load a whole data set, then time the workers from first event to last score.

    The input waits on Kafka as a backlog would after an outage, so the figure is the
    workers' own pace, not the replayer's. Such a backlog is read far faster on
    ga.sessions than on ga.hits; the workers hold the sessions back (align_lead_s) so
    that sessions are stored only shortly before their hits.
    """
    settings = _settings(base, model, work)
    store = redis_client(settings)
    load_started = time.perf_counter()
    # Loaded in a child process: the 17.6M events' tables and objects (over 10 GB) go
    # back to the system before the workers start.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        sent, expected = pool.apply(_preload, (settings, data))
    load_s = time.perf_counter() - load_started
    procs = []
    for k in range(workers):
        s = settings if k == 0 else settings.model_copy(update={"metrics_port": free_port()})
        procs.append(WorkerProcess(s, work / f"{settings.app_id}-{k}.log"))
    ports = [p.settings.metrics_port for p in procs]
    peak_redis = 0
    try:
        for p in procs:
            p.start()
        first_ms: float | None = None
        deadline = time.monotonic() + 4 * 3600
        scored, progress_at, said = 0.0, time.monotonic(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(2.0)
            _check_alive(procs)
            counts = [_counts(port) for port in ports]
            if first_ms is None and sum(c for c, _ in counts) > 0:
                first_ms = time.time() * 1000.0
            peak_redis = max(peak_redis, int(store.info("memory")["used_memory"]))
            now_scored = sum(s for _, s in counts)
            if now_scored > scored:
                scored, progress_at = now_scored, time.monotonic()
            if scored >= expected:
                break
            if time.monotonic() - said > 60:
                said = time.monotonic()
                print(f"full replay: {scored:,.0f} of {expected:,} scores", flush=True)
            if first_ms is not None and time.monotonic() - progress_at > STALL_S:
                break  # nothing scored for minutes: what is missing stays missing
        else:
            raise RuntimeError("the full replay did not finish in 4 hours")
        done_ms = time.time() * 1000.0 if scored >= expected else _wall_ms(progress_at)
        parked = sum(_counter(port, "scorer_worker_parked_hits_total{}") for port in ports)
    finally:
        for p in procs:
            p.stop()
    assert first_ms is not None
    seconds = (done_ms - first_ms) / 1000.0
    drop_run(settings)
    return {
        "workers": workers,
        "events": sent,
        "scores_expected": expected,
        "load_seconds": round(load_s, 1),
        "seconds": round(seconds, 1),
        "events_per_s": round(sent / seconds),
        "redis_peak_gb": round(peak_redis / 1e9, 2),
        "scores": int(scored),
        "complete": scored >= expected,
        "parked_hits": int(parked),
    }


STALL_S = 600.0  # a full replay with no new score for this long has finished short


def _wall_ms(monotonic: float) -> float:
    """The wall time in ms of a past ``time.monotonic()`` reading."""
    return time.time() * 1000.0 - (time.monotonic() - monotonic) * 1000.0


def _counter(port: int, name: str) -> float:
    """One sample of a worker's metrics; zero while it does not answer."""
    try:
        return metrics(port).get(name, 0.0)
    except OSError:
        return 0.0


def _preload(settings: StreamSettings, data: Path) -> tuple[int, int]:
    """Send a data set's events to the topics; return (events sent, scores expected)."""
    from stream.replay import iter_event_chunks

    tally = ScoreTally()
    sent = 0
    for chunk in iter_event_chunks(data, chunk=500_000):
        asyncio.run(send_events(settings, chunk, progress=False))
        sent += len(chunk)
        tally.add(chunk)
        print(f"full replay: {sent:,} events loaded", flush=True)
    return sent, tally.expected


def _counts(port: int) -> tuple[float, float]:
    """(events consumed, events scored) of one worker; zeros while it does not answer."""
    try:
        m = metrics(port)
    except OSError:
        return 0.0, 0.0
    scored = m.get("scorer_worker_scores_out_total{trigger=session_start}", 0.0) + m.get(
        "scorer_worker_scores_out_total{trigger=hit}", 0.0
    )
    return total(m, "scorer_worker_events_in_total"), scored


def render(results: dict[str, Any]) -> str:
    """Format the figures as a markdown table."""
    lines = ["| measure | result | target |", "|---|---|---|"]
    if "consume_only" in results:
        bare = results["consume_only"]
        lines.append(
            f"| consuming only, the worker's delivery: Faust's consumer hands each fetch "
            f"whole to one coroutine that counts it (`bench/faust_bare.py`, "
            f"{bare['batch']['events']:,} events) | {bare['batch']['events_per_s']:,} "
            f"events/s | the ceiling of this worker's design |"
        )
        lines.append(
            f"| consuming only, Faust's usual delivery: two agents take the events one at a "
            f"time (`bench/faust_bare.py --agents`, {bare['agents']['events']:,} events) | "
            f"{bare['agents']['events_per_s']:,} events/s | the ceiling of a per-event "
            f"Faust agent |"
        )
    for key, label, target in (
        ("one_worker", "one worker, input pre-loaded", "≥ 15,000"),
        ("two_workers", "two workers, one consumer group, input pre-loaded", "≥ 25,000"),
    ):
        if key in results:
            r = results[key]
            lines.append(
                f"| {label} ({r['events']:,} events) | {r['events_per_s']:,} events/s "
                f"first consumed → last score, {r['sustained_events_per_s']:,} sustained; "
                f"CPU: workers {r['worker_cpu_s']} s, Redis {r['redis_cpu_s']} s; "
                f"Redis holds {r['redis_mb']:,} MB more; all {r['expected_scores']:,} expected "
                f"scores came out ({r['scores_published_again']:,} copies published again) "
                f"| {target} |"
            )
    if "latency" in results:
        lat = results["latency"]
        warm = lat["warmup"]
        lines.append(
            f"| event → score at {lat['rate']:,.0f} events/s | p50 {lat['p50_ms']} ms, "
            f"p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms "
            f"(the first {lat['warmup_s']:g} s, on fresh topics: p99 {warm['p99_ms']} ms, "
            f"max {warm['max_ms']} ms) | p99 ≤ 25 ms |"
        )
    if "baseline" in results:
        b = results["baseline"]
        lines.append(
            f"| one worker: this version against `{b['ref']}`, alternating runs | "
            f"{', '.join(f'{x:,}' for x in b['this_version_runs'])} against "
            f"{', '.join(f'{x:,}' for x in b['runs'])} events/s | — |"
        )
    if "reasons" in results:
        r = results["reasons"]
        lines.append(
            f"| one worker with the reasons of its Warm and Hot scores "
            f"({r['warm_or_hot_share']:.1%} of scores), and without, alternating runs | "
            f"{', '.join(f'{x:,}' for x in r['with_reasons_events_per_s'])} against "
            f"{', '.join(f'{x:,}' for x in r['without_reasons_events_per_s'])} events/s: "
            f"{r['cost']:.1%} slower; worker CPU {r.get('cpu_cost', 0):+.1%} | ≤ 10 % |"
        )
    if "rebuild" in results:
        r = results["rebuild"]
        lines.append(
            f"| Redis rebuilt from the topics after it forgot everything ({r['events']:,} "
            f"events, all within the TTL) | {r['seconds']} s, {r['events_per_s']:,} events/s "
            f"({r['seconds_per_million']} s per million); {r['sessions_rebuilt']:,} session "
            f"states back | — |"
        )
    if "full_replay" in results:
        f = results["full_replay"]
        lines.append(
            f"| full history replay ({f['events']:,} events), {f['workers']} worker(s) | "
            f"{f['seconds'] / 60:.1f} min ({f['events_per_s']:,} events/s); "
            f"{f['scores']:,} of {f['scores_expected']:,} scores; {f['parked_hits']:,} hits "
            f"parked; Redis peak {f['redis_peak_gb']} GB | every score |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/bench-stream"))
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--sessions", type=int, default=SESSIONS)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=WARMUP_S,
        help="paced sending before the latency is measured (reported on its own)",
    )
    parser.add_argument("--full", type=Path, default=None, help="a full generated data set")
    parser.add_argument("--full-workers", type=int, default=2)
    parser.add_argument(
        "--only", default="", help="comma-separated phases: bare,one,two,latency,rebuild,reasons"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only this many sessions")
    parser.add_argument(
        "--baseline",
        default="",
        help="a git ref: also time its worker on the same input, alternating with this one",
    )
    parser.add_argument("--baseline-runs", type=int, default=3)
    parser.add_argument("--reasons-runs", type=int, default=2)
    args = parser.parse_args(argv)
    results = run(args)
    (args.data / "result.json").write_text(json.dumps(results, indent=2))
    save("stream", results, sys.argv[1:] if argv is None else argv)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
