"""A Redis master or a Kafka broker killed with SIGKILL mid-replay, on the cluster stack;
a partition's slot moved to another master mid-replay.

Run by ``make test-cluster`` against ``SCORER_STACK=cluster make stack-up``: three Kafka
nodes (replication factor 3, min.insync.replicas 2) and a Redis Cluster of three masters
with a replica each. A paced replay goes through a worker; a few seconds in, a master
(the one holding partition 0's slot) or a broker is killed, and started again after the
replay. Every score must come out, every session's state must be the truth's, each
session must count once on the dashboard, and the worker must never exit. How long no
score came out around the kill is written to ``test-artifacts/cluster-failover.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import Truth, check_exactly_once, read_scores

from bench.procs import ROOT, WorkerProcess, metrics, redis_client, scan
from contracts import keys
from stream.replay import send_events
from stream.settings import StreamSettings
from training.generate import generate

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]

RUN = Path(os.environ.get("SCORER_STACK_DIR", ROOT / ".stack")) / "cluster" / "run"
REPORT = ROOT / "test-artifacts" / "cluster-failover.json"
RATE = 600  # events per second


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Truth:
    out = tmp_path_factory.mktemp("cluster")
    generate(out, 400, seed=41, progress=False)
    return Truth(out)


@pytest.fixture()
def cluster_settings(stream_settings: StreamSettings) -> StreamSettings:
    if not stream_settings.redis_cluster or "," not in stream_settings.kafka_bootstrap:
        pytest.fail(
            "these tests need the cluster stack: make test-cluster "
            "(or SCORER_STACK=cluster make stack-up and its settings)"
        )
    return stream_settings.model_copy(update={"batch_max": 60})


def _stack_up() -> None:
    """Start again whatever of the cluster stack is not running."""
    env = {**os.environ, "SCORER_STACK": "cluster"}
    subprocess.run(["bash", "scripts/stack.sh", "up"], cwd=ROOT, env=env, check=True)


def _kill(name: str) -> None:
    pid = int((RUN / f"{name}.pid").read_text())
    os.kill(pid, signal.SIGKILL)


def _outage_s(scores: list[dict], killed_at: float) -> float:
    """The longest time without a new score from a second before the kill."""
    times = sorted(
        t
        for t in (datetime.fromisoformat(e["scored_at"]).timestamp() for e in scores)
        if t >= killed_at - 1.0
    )
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return max(gaps, default=0.0)


def _record(name: str, figures: dict) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    found = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    found[name] = figures
    REPORT.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")


def _replay_with_a_fault(
    settings: StreamSettings, truth: Truth, tmp_path: Path, fault: Callable[[], object]
) -> tuple[list[dict], float, dict[str, float]]:
    """Replay the truth through a worker, with ``fault`` 4 s in; return the scores, when
    the fault came, and the worker's metrics at the end (it must still run)."""
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    worker.wait_ready()
    sender = threading.Thread(
        target=lambda: asyncio.run(send_events(settings, truth.events, rate=RATE, progress=False))
    )
    sender.start()
    try:
        time.sleep(4.0)
        fault_at = time.time()
        fault()
        sender.join()
        scores = read_scores(settings, truth.expected_scores, timeout_s=300)
        assert worker.alive(), "the worker exited: " + worker.log_path.read_text()[-3000:]
        return scores, fault_at, metrics(settings.metrics_port)
    finally:
        worker.stop()


def _replay_with_a_kill(
    settings: StreamSettings, truth: Truth, tmp_path: Path, victim: str
) -> tuple[list[dict], float]:
    """Replay with a process of the stack killed 4 s in, started again afterwards."""
    try:
        scores, killed_at, _ = _replay_with_a_fault(
            settings, truth, tmp_path, lambda: _kill(victim)
        )
    finally:
        _stack_up()
    return scores, killed_at


def _counted_sessions(settings: StreamSettings) -> int:
    layout = keys.Layout(settings.redis_key_prefix, settings.topic_partitions)
    r = redis_client(settings)
    return sum(int(r.hget(f"{layout.dash(p)}:all", "n") or 0) for p in range(layout.partitions))


def test_a_redis_master_killed_mid_replay_loses_nothing(
    cluster_settings: StreamSettings, truth: Truth, tmp_path: Path
) -> None:
    settings = cluster_settings
    r = redis_client(settings)
    layout = keys.Layout(settings.redis_key_prefix, settings.topic_partitions)
    node = r.get_node_from_key(layout.open_sessions(0))
    scores, killed_at = _replay_with_a_kill(settings, truth, tmp_path, f"redis-{node.port}")
    # The replica took over: the slot has another master now.
    r = redis_client(settings)
    assert r.get_node_from_key(layout.open_sessions(0)).port != node.port
    check_exactly_once(truth, settings, scores, strict=False)
    assert _counted_sessions(settings) == len(truth.sessions)
    # The layout is recorded again, for the API.
    assert r.hget(keys.layout_key(settings.redis_key_prefix), "partitions") is not None
    assert [k for k in scan(r, f"{settings.redis_key_prefix}:*") if b"{" not in k] == [
        keys.layout_key(settings.redis_key_prefix).encode()
    ]
    _record("redis_master", {"outage_s": round(_outage_s(scores, killed_at), 2), "rate": RATE})


def test_a_kafka_broker_killed_mid_replay_loses_nothing(
    cluster_settings: StreamSettings, truth: Truth, tmp_path: Path
) -> None:
    settings = cluster_settings
    scores, killed_at = _replay_with_a_kill(settings, truth, tmp_path, "kafka-2")
    check_exactly_once(truth, settings, scores)
    assert _counted_sessions(settings) == len(truth.sessions)
    _record("kafka_broker", {"outage_s": round(_outage_s(scores, killed_at), 2), "rate": RATE})


def test_a_redis_cluster_that_forgot_everything_is_rebuilt_from_the_topics(
    cluster_settings: StreamSettings, truth: Truth, tmp_path: Path
) -> None:
    settings = cluster_settings
    r = redis_client(settings)

    def forget() -> None:
        # Every master loses everything, as masters restarted without persistence
        # would (each at once; one after the other).
        assert list(scan(r, f"{settings.redis_key_prefix}:*"))
        r.flushall(target_nodes=r.PRIMARIES)

    scores, _, m = _replay_with_a_fault(settings, truth, tmp_path, forget)
    # It noticed, and read partitions again from the topics.
    assert m["scorer_worker_rebuilt_partitions_total{}"] > 0
    check_exactly_once(truth, settings, scores, strict=False)
    assert _counted_sessions(settings) == len(truth.sessions)
    # The layout is recorded again, for the API.
    assert r.hget(keys.layout_key(settings.redis_key_prefix), "partitions") is not None


def _move_slot(r: Any, slot: int, target: Any) -> int:
    """Move a slot and its keys to another master, a few keys at a time, as
    ``redis-cli --cluster reshard`` does; return how many keys moved."""
    owner = r.nodes_manager.get_node_from_slot(slot)
    nodes = {n.name: redis.Redis(host=n.host, port=int(n.port)) for n in r.get_primaries()}
    src, dst = nodes[owner.name], nodes[target.name]
    src_id, dst_id = src.cluster("myid"), dst.cluster("myid")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    moved = 0
    while True:
        batch = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 20)
        if not batch:
            break
        src.execute_command("MIGRATE", target.host, int(target.port), "", 0, 5000, "KEYS", *batch)
        moved += len(batch)
        time.sleep(0.2)  # the worker's calls meet the slot half moved
    for node in nodes.values():
        node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        node.close()
    return moved


def test_a_partitions_slot_moved_to_another_master_mid_replay_loses_nothing(
    cluster_settings: StreamSettings, truth: Truth, tmp_path: Path
) -> None:
    """The worker writes a master's partitions in one call; partition 0's slot moves to
    another master while it runs. A call that meets the slot half moved is refused with
    nothing written, and goes again by the new slot map."""
    settings = cluster_settings
    r = redis_client(settings)
    layout = keys.Layout(settings.redis_key_prefix, settings.topic_partitions)
    slot = r.keyslot(layout.open_sessions(0))
    source = r.get_node_from_key(layout.open_sessions(0))
    target = next(n for n in r.get_primaries() if n.name != source.name)
    moved: list[int] = []
    try:
        scores, _, m = _replay_with_a_fault(
            settings, truth, tmp_path, lambda: moved.append(_move_slot(r, slot, target))
        )
        assert moved[0] > 0  # it moved keys the worker was writing
        # Calls met the slot half moved, were refused before writing, and went again.
        assert "Script attempted to access a non local key" in (tmp_path / "worker.log").read_text()
        assert redis_client(settings).get_node_from_key(layout.open_sessions(0)).port == (
            target.port
        )
        check_exactly_once(truth, settings, scores)
        assert _counted_sessions(settings) == len(truth.sessions)
        assert m.get("scorer_worker_rebuilt_partitions_total{}", 0) == 0  # nothing lost
    finally:
        r = redis_client(settings)
        if (
            r.keyslot(layout.open_sessions(0)) == slot
            and r.get_node_from_key(layout.open_sessions(0)).name != source.name
        ):
            _move_slot(r, slot, source)  # as the stack was, for the next test
