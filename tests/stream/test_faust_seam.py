"""The Faust seam (stream/faust_seam.py): the private parts of faust-streaming and aiokafka
it relies on are there, in the releases it was checked against; what it overrides does
what the worker needs (what may be committed, seeking back, shielding, pausing); and how
a fetch is cut into batches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.types import TP

from stream.app import create_app
from stream.faust_seam import BatchConsumer
from stream.fetches import interleave
from stream.processor import Record
from stream.settings import StreamSettings


class Rec:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def bare_consumer() -> Any:
    """The consumer's own bookkeeping, without Faust's machinery around it."""
    c = BatchConsumer.__new__(BatchConsumer)
    c.done = {}
    c.in_flight = None
    return c


A, B = TP("t.ga.hits", 0), TP("t.ga.hits", 1)


async def test_a_fetch_is_committable_only_once_its_handler_returned() -> None:
    c = bare_consumer()
    release = asyncio.Event()
    seen: list[Any] = []

    async def handler(fetch: Any) -> None:
        seen.append(fetch)
        await release.wait()

    task = asyncio.ensure_future(c._handle(handler, {A: [Rec(7), Rec(8)], B: [Rec(3)]}))
    await asyncio.sleep(0.01)
    assert seen and c._new_offset(A) is None and list(c._filter_tps_with_pending_acks()) == []
    release.set()
    await task
    assert (c._new_offset(A), c._new_offset(B)) == (9, 4)
    assert set(c._filter_tps_with_pending_acks()) == {A, B}
    assert list(c._filter_tps_with_pending_acks({B})) == [B]
    assert list(c._filter_tps_with_pending_acks({"t.ga.hits"})) == [A, B]


async def test_a_failed_fetch_moves_no_offset() -> None:
    c = bare_consumer()
    c.done[A] = 5

    async def handler(fetch: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await c._handle(handler, {A: [Rec(5), Rec(6)]})
    assert c._new_offset(A) == 5


async def test_revoked_partitions_are_forgotten() -> None:
    c = bare_consumer()
    c.done.update({A: 3, B: 4})
    c.forget({A})
    assert c._new_offset(A) is None and c._new_offset(B) == 4


async def test_wait_empty_lets_the_batch_in_hand_finish_first(monkeypatch: Any) -> None:
    c = bare_consumer()
    order: list[str] = []

    async def handler(fetch: Any) -> None:
        await asyncio.sleep(0.05)
        order.append("handled")

    async def faust_wait_empty(self: Any) -> None:
        order.append("committed")

    monkeypatch.setattr("faust.transport.consumer.Consumer.wait_empty", faust_wait_empty)
    c.in_flight = asyncio.ensure_future(c._handle(handler, {A: [Rec(1)]}))
    await c.wait_empty()
    assert order == ["handled", "committed"] and c._new_offset(A) == 2


def recs(partition: int, offsets: range) -> list[Record]:
    return [Record(b"", "t.ga.hits", partition, o) for o in offsets]


def test_batches_take_every_partition_in_turn_and_keep_each_in_order() -> None:
    runs = [recs(0, range(0, 700)), recs(1, range(0, 30)), recs(2, range(0, 400))]
    batches = list(interleave(runs, 500))
    assert all(len(b) <= 500 for b in batches)
    assert sum(len(b) for b in batches) == 1130
    first = {r.partition for r in batches[0]}
    assert first == {0, 1, 2}  # no partition waits for another's whole buffer
    for p in range(3):
        offsets = [r.offset for b in batches for r in b if r.partition == p]
        assert offsets == sorted(offsets) and len(offsets) == len(set(offsets))
    assert len(batches[0]) == 500  # the batches are full while there is enough


def test_one_partition_fills_whole_batches() -> None:
    batches = list(interleave([recs(0, range(1200))], 500))
    assert [len(b) for b in batches] == [500, 500, 200]


async def test_the_kafka_client_fetches_with_the_settings_wait_and_size(tmp_path: Any) -> None:
    settings = StreamSettings(
        data_dir=tmp_path, kafka_fetch_wait_ms=7, kafka_fetch_min_bytes=12_345, metrics_port=0
    )
    consumer = create_app(settings).consumer
    client = consumer._thread._create_worker_consumer(consumer.transport)
    try:
        assert (client._fetch_max_wait_ms, client._fetch_min_bytes) == (7, 12_345)
    finally:
        await client.stop()


async def test_a_rewind_seeks_the_fetch_back_and_commits_nothing_of_it() -> None:
    from stream.faust_seam import Rewind

    c = bare_consumer()
    seeks: list[dict] = []

    class Thread:
        async def seek_wait(self, offsets: dict) -> None:
            seeks.append(offsets)

    c._thread = Thread()

    async def handler(fetch: Any) -> None:
        raise Rewind({A: 3})  # Redis holds A up to 3: read it again from there

    await c._handle(handler, {A: [Rec(10), Rec(11)], B: [Rec(7)]})
    assert seeks == [{A: 3, B: 7}]  # B is read again from the fetch's first record
    assert c.done == {}


# What stream/faust_seam.py overrides or calls, with the parameters it passes or takes,
# as in the releases it was checked against (CHECKED).
RELIED_ON = [
    ("faust.app.base", "App", "_new_transport", ["self"]),
    ("faust.transport.consumer", "Consumer", "_drain_messages", ["self", "fetcher"]),
    ("faust.transport.consumer", "Consumer", "_wait_next_records", ["self", "timeout"]),
    ("faust.transport.consumer", "Consumer", "_filter_tps_with_pending_acks", ["self", "topics"]),
    ("faust.transport.consumer", "Consumer", "_new_offset", ["self", "tp"]),
    ("faust.transport.consumer", "Consumer", "wait_empty", ["self"]),
    ("faust.transport.consumer", "Consumer", "perform_seek", ["self"]),
    ("faust.transport.drivers.aiokafka", "Consumer", "_new_consumer_thread", ["self"]),
    (
        "faust.transport.drivers.aiokafka",
        "AIOKafkaConsumerThread",
        "_create_worker_consumer",
        ["self", "transport"],
    ),
    ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread", "seek_wait", None),
    ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread", "_ensure_consumer", ["self"]),
    ("faust.transport.consumer", "ConsumerThread", "call_thread", None),
    ("faust.transport.drivers.aiokafka", "Producer", "_ensure_producer", ["self"]),
    ("faust.sensors.monitor", "Monitor", "on_message_in", ["self", "tp", "offset", "message"]),
    (
        "faust.sensors.monitor",
        "Monitor",
        "on_stream_event_in",
        ["self", "tp", "offset", "stream", "event"],
    ),
    (
        "faust.sensors.monitor",
        "Monitor",
        "on_stream_event_out",
        ["self", "tp", "offset", "stream", "event", "state"],
    ),
    ("faust.sensors.monitor", "Monitor", "on_message_out", ["self", "tp", "offset", "message"]),
]


def _changed(what: str) -> str:
    from stream.faust_seam import CHECKED

    return (
        f"{what}: stream/faust_seam.py relies on it as in faust-streaming "
        f"{CHECKED['faust-streaming']} / aiokafka {CHECKED['aiokafka']}; "
        "check the seam against the installed release"
    )


def test_the_installed_releases_are_the_ones_the_seam_was_checked_against() -> None:
    from importlib.metadata import version

    from stream.faust_seam import CHECKED

    for package, checked in CHECKED.items():
        assert version(package) == checked, _changed(
            f"{package} {version(package)} is installed, not {checked}"
        )


@pytest.mark.parametrize(("module", "owner", "name", "parameters"), RELIED_ON)
def test_every_private_part_the_seam_relies_on_is_there(
    module: str, owner: str, name: str, parameters: list[str] | None
) -> None:
    import importlib
    import inspect

    cls = getattr(importlib.import_module(module), owner)
    found = getattr(cls, name, None)
    assert callable(found), _changed(f"{module}.{owner}.{name} is gone")
    if parameters is not None:
        got = list(inspect.signature(found).parameters)
        assert got == parameters, _changed(f"{owner}.{name} now takes {got}, not {parameters}")


async def test_the_attributes_the_seam_reads_and_sets_are_there() -> None:
    from aiokafka import AIOKafkaConsumer
    from faust.sensors.monitor import Monitor
    from faust.transport.consumer import Consumer

    assert "_read_offset" in Consumer.__annotations__, _changed("Consumer._read_offset is gone")
    assert "stream_inbound_time" in Monitor.__annotations__, _changed(
        "Monitor.stream_inbound_time is gone"
    )
    client = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # not started: no traffic
    for name in ("_fetch_max_wait_ms", "_fetch_min_bytes"):
        assert hasattr(client, name), _changed(f"AIOKafkaConsumer.{name} is gone")


async def test_faust_commits_what_the_offset_hooks_say(monkeypatch: Any) -> None:
    """Faust's commit takes the partitions from ``_filter_tps_with_pending_acks`` and
    their offsets from ``_new_offset``: the fetches handled, nothing else."""
    import inspect

    from faust.transport.consumer import Consumer

    assert "self._filter_tps_with_pending_acks(" in inspect.getsource(Consumer.force_commit), (
        _changed("Consumer.force_commit no longer asks _filter_tps_with_pending_acks")
    )
    c = bare_consumer()
    c.done.update({A: 12, B: 4})
    c._committed_offset = {A: 5, B: 4}  # B: nothing new since the last commit
    committed: list[dict] = []

    async def attached(offsets: Any) -> None:
        return None

    async def commit_offsets(offsets: Any, start_new_transaction: bool = True) -> bool:
        committed.append(dict(offsets))
        return True

    monkeypatch.setattr(c, "_handle_attached", attached, raising=False)
    monkeypatch.setattr(c, "_commit_offsets", commit_offsets, raising=False)
    tps = list(c._filter_tps_with_pending_acks(None))
    assert await Consumer._commit_tps(c, tps, start_new_transaction=False)
    assert committed == [{A: 12}], _changed("Consumer._commit_tps commits otherwise")


class _Fetcher:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


def _looping(c: Any, fetches: list[Any], handler: Any) -> Any:
    """Set a bare consumer up to run its fetch loop over ``fetches``, then stop."""
    import collections

    from stream.faust_seam import LeanMonitor

    fetcher = _Fetcher()
    c._stopped, c._crashed = asyncio.Event(), asyncio.Event()  # mode's should_stop
    c._read_offset = collections.defaultdict(lambda: None)
    c.app = type("App", (), {"batch_handler": staticmethod(handler), "monitor": LeanMonitor()})()
    left = list(fetches)

    async def wait_next_records(timeout: float) -> Any:
        if not left:
            fetcher._stopped.set()
            return {}, None
        return left.pop(0), None

    c._wait_next_records = wait_next_records
    return fetcher


async def test_the_fetch_loop_seeks_back_instead_of_handing_out_once_a_rebalance_began() -> None:
    c = bare_consumer()
    handed: list[Any] = []
    seeks: list[str] = []

    async def handler(fetch: Any) -> None:
        handed.append(fetch)

    fetcher = _looping(c, [{A: [Rec(3), Rec(4)]}, {B: [Rec(8)]}], handler)

    async def perform_seek() -> None:
        seeks.append("seek")
        c.flow_active = True  # the assignment is done: the next fetch is handed out

    c.perform_seek = perform_seek
    c.flow_active = False  # Faust stopped the flow: a rebalance began
    await c._drain_messages(fetcher)
    assert seeks == ["seek"]
    assert [{tp: [r.offset for r in rs] for tp, rs in f.items()} for f in handed] == [{B: [8]}]
    assert c.done == {B: 9} and c._read_offset[A] is None


async def test_a_batch_in_hand_finishes_when_the_fetch_loop_is_cancelled() -> None:
    c = bare_consumer()
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(fetch: Any) -> None:
        started.set()
        await release.wait()

    fetcher = _looping(c, [{A: [Rec(1), Rec(2)]}], handler)
    c.flow_active = True
    loop = asyncio.ensure_future(c._drain_messages(fetcher))
    await started.wait()
    loop.cancel()  # Faust cancels its fetcher on a stop or a rebalance
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert c.in_flight is not None and not c.in_flight.done()
    release.set()
    await asyncio.wait({c.in_flight})
    assert c.done == {A: 3}  # the batch ran to its end and counts as handled


async def test_pause_and_resume_run_in_the_consumer_thread_on_its_kafka_client(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """``fetching`` reaches the aiokafka client Faust runs in its consumer thread and
    pauses and resumes it there, where the client's rebalances run (on the real broker)."""
    import threading
    import uuid

    from aiokafka.structs import TopicPartition

    from stream import faust_seam

    settings = StreamSettings(
        data_dir=tmp_path, metrics_port=0, app_id=f"seam-{uuid.uuid4().hex[:8]}"
    )
    app = create_app(settings)
    thread = app.consumer._thread
    await thread.start()  # Faust's consumer thread, with its aiokafka client, connected
    try:
        client = thread._ensure_consumer()
        topic = f"seam-{uuid.uuid4().hex[:8]}"
        await thread.call_thread(client.assign, [TopicPartition(topic, 0)])
        ran: list[tuple[int, bool]] = []  # (thread, on the consumer thread's loop)
        real = faust_seam.set_fetching

        def recorded(c: Any, parts: list[Any], on: bool) -> set[Any]:
            ran.append((threading.get_ident(), asyncio.get_running_loop() is thread.thread_loop))
            return real(c, parts, on)

        monkeypatch.setattr(faust_seam, "set_fetching", recorded)
        mine, other = TP(topic, 0), TP(topic, 1)
        paused = await faust_seam.fetching(app, [mine, other], False)
        assert paused == [mine], _changed("fetching no longer reports what it paused")
        assert client.paused() == {TopicPartition(topic, 0)}, _changed(
            "pausing through the consumer thread did not pause Faust's aiokafka client"
        )
        assert await faust_seam.fetching(app, [mine], True) == [mine]
        assert client.paused() == set(), _changed("resuming did not resume the client")
        assert len(ran) == 2 and all(on_loop for _, on_loop in ran), _changed(
            "set_fetching did not run on the consumer thread's loop (call_thread)"
        )
        assert all(ident != threading.get_ident() for ident, _ in ran)
    finally:
        await thread.stop()
