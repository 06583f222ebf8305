"""The ceiling: a Faust app that only consumes the input topics.

    SCORER_TOPIC_PREFIX=... python -m bench.faust_bare --expect N [--agents]

By default the app consumes as the worker does: Faust's consumer hands each fetch whole
to one coroutine (``stream.faust_seam``), which counts its records and does nothing else.
With ``--agents`` two Faust agents take the events one at a time from their streams,
Faust's usual delivery, and count them. Either way the app prints how fast it consumed
N events and exits: what delivery alone costs on this machine, before any work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, cast

import faust

from contracts import topics
from stream.faust_seam import BatchApp, Fetch, LeanMonitor
from stream.settings import StreamSettings


def main(argv: list[str] | None = None) -> int:
    """Consume until N events arrived; print the rate as JSON and exit."""
    parser = argparse.ArgumentParser(prog="python -m bench.faust_bare", description=__doc__)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--agents", action="store_true", help="Faust's per-event agents")
    args = parser.parse_args(argv)
    settings = StreamSettings()
    name = settings.app_id  # the benchmark's run id: its cleanup deletes Faust's topic too
    (settings.data_dir / name).mkdir(parents=True, exist_ok=True)
    app = (faust.App if args.agents else BatchApp)(
        name,
        broker=f"kafka://{settings.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        store="memory://",
        datadir=str(settings.data_dir / name),
        topic_partitions=settings.topic_partitions,
        monitor=LeanMonitor(),  # as the worker's
    )
    state: dict[str, Any] = {"n": 0, "t0": None}

    def tally(n: int) -> None:
        if state["t0"] is None:
            state["t0"] = time.perf_counter()
        state["n"] += n
        if state["n"] >= args.expect:
            seconds = time.perf_counter() - state["t0"]
            print(f'{{"events": {state["n"]}, "seconds": {seconds:.2f}}}', flush=True)
            os._exit(0)

    async def consume(stream: Any) -> None:
        async for _ in stream.noack().events():
            tally(1)

    async def on_fetch(fetch: Fetch) -> None:
        tally(sum(len(records) for records in fetch.values()))

    for base in (topics.SESSIONS, topics.HITS):
        topic = app.topic(topics.topic_name(base, settings.topic_prefix), value_type=bytes)
        if args.agents:
            app.agent(topic, name=f"bare-{base}")(consume)
        else:
            app.topics.add(topic)
    if not args.agents:
        batch_app = cast(BatchApp, app)
        batch_app.batch_handler = on_fetch
        batch_app.fetch_max_wait_ms = settings.kafka_fetch_wait_ms  # as the worker fetches
        batch_app.fetch_min_bytes = settings.kafka_fetch_min_bytes
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
