"""The ceiling: a Faust app that only consumes the input topics, in micro-batches.

    SCORER_TOPIC_PREFIX=... python -m bench.faust_bare --expect N

Two agents take micro-batches exactly as the worker's do (``stream.batching``, the same
lean monitor), count them and do nothing else; the app prints how fast it consumed N
events and exits. It measures what Faust's own per-event delivery costs on this
machine, before any work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import faust

from contracts import topics
from stream.batching import batches
from stream.kafka import LeanMonitor
from stream.settings import StreamSettings


def main(argv: list[str] | None = None) -> int:
    """Consume until N events arrived; print the rate as JSON and exit."""
    parser = argparse.ArgumentParser(prog="python -m bench.faust_bare", description=__doc__)
    parser.add_argument("--expect", type=int, required=True)
    args = parser.parse_args(argv)
    settings = StreamSettings()
    name = settings.app_id  # the benchmark's run id: its cleanup deletes Faust's topic too
    (settings.data_dir / name).mkdir(parents=True, exist_ok=True)
    app = faust.App(
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

    async def consume(stream: Any) -> None:
        async for events in batches(stream, settings.batch_max):
            if state["t0"] is None:
                state["t0"] = time.perf_counter()
            state["n"] += len(events)
            if state["n"] >= args.expect:
                seconds = time.perf_counter() - state["t0"]
                print(f'{{"events": {state["n"]}, "seconds": {seconds:.2f}}}', flush=True)
                os._exit(0)

    for base in (topics.SESSIONS, topics.HITS):
        topic = app.topic(topics.topic_name(base, settings.topic_prefix), value_type=bytes)
        app.agent(topic, name=f"bare-{base}")(consume)
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
