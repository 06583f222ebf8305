"""Command line of the stream package: the worker and the replayer."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="consume ga.sessions and ga.hits, publish scores")
    rep = sub.add_parser("replay", help="publish CSV rows as events in event-time order")
    rep.add_argument("--data", type=Path, required=True)
    rep.add_argument(
        "--rate", type=float, default=0.0, help="events per second (0: as fast as possible)"
    )
    rep.add_argument("--limit-sessions", type=int, default=None)
    rep.add_argument("--no-progress", action="store_true")
    dead = sub.add_parser("dead-letters", help="list dead letters, or replay them after a fix")
    dead.add_argument("action", choices=["list", "replay"])
    dead.add_argument("--stage", default=None, help="only dead letters of this stage")
    dead.add_argument("--source-topic", default=None, help="only those from this topic")
    dead.add_argument("--dry-run", action="store_true", help="replay: count, send nothing")
    sub.add_parser("topics", help="create the topics with SCORER_TOPIC_PARTITIONS partitions")
    quality = sub.add_parser(
        "quality", help="serve online model quality: scores joined with outcomes"
    )
    quality.add_argument(
        "--from-beginning", action="store_true", help="read the topics' retained history first"
    )
    cal = sub.add_parser("calibration", help="show, pause, resume or roll back online calibration")
    cal.add_argument("action", choices=["show", "pause", "resume", "rollback"])
    cal.add_argument("--model-version", default=None, help="default: the deployed artifact's")
    cal.add_argument("--to", default=None, help="rollback: a record's seq, or offline")
    tail = sub.add_parser(
        "tail", help="print score events (or leads) and wait until all have arrived"
    )
    tail.add_argument("--topic", default="conversion.scores")
    tail.add_argument(
        "--expect-from-data",
        type=Path,
        default=None,
        help="wait for one score per session and per hit of this data set",
    )
    tail.add_argument("--show", type=int, default=5)
    tail.add_argument("--timeout", type=float, default=120.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command of the stream package."""
    args = _parser().parse_args(argv)
    from stream.settings import StreamSettings

    settings = StreamSettings()
    if args.command == "worker":
        from stream.worker import run_worker

        return run_worker(settings)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "replay":
        from stream.replay import replay

        stats = replay(
            settings,
            args.data,
            rate=args.rate,
            limit_sessions=args.limit_sessions,
            progress=not args.no_progress,
        )
        print(
            f"replayed {stats.sessions} sessions and {stats.hits} hits in "
            f"{stats.seconds:.1f} s ({stats.rate:.0f} events/s)"
        )
        return 0
    if args.command == "topics":
        import asyncio

        from stream.admin import ensure_topics

        asyncio.run(ensure_topics(settings))
        print("topics ready")
        return 0
    if args.command == "quality":
        from stream.quality import run_quality

        return run_quality(settings, from_beginning=args.from_beginning)
    if args.command == "dead-letters":
        import asyncio

        from stream.deadletters import report, run_dead_letters

        replaying = args.action == "replay"
        run = asyncio.run(
            run_dead_letters(
                settings,
                replay=replaying,
                stage=args.stage,
                source_topic=args.source_topic,
                dry_run=args.dry_run,
            )
        )
        print(report(run, replaying, args.dry_run))
        return 0
    if args.command == "calibration":
        from stream.calibration_ops import CalibrationCommandError, run_calibration

        try:
            print(run_calibration(settings, args.action, args.model_version, args.to))
        except CalibrationCommandError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    from stream.tail import tail

    return tail(settings, args.topic, args.expect_from_data, args.show, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
