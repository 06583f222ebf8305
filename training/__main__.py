"""Command line of the offline pipeline: generate, check-data, train, split-days,
score-holdout."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write synthetic ga_sessions/ga_hits/truth CSVs")
    size = gen.add_mutually_exclusive_group()
    size.add_argument("--sessions", type=int, default=20_000, help="number of sessions")
    size.add_argument("--full", action="store_true", help="the real size: 1,860,042 sessions")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", type=Path, default=Path("data/sample"))
    gen.add_argument("--no-progress", action="store_true")

    check = sub.add_parser("check-data", help="compare a data set with the published figures")
    check.add_argument("data", type=Path)

    tr = sub.add_parser("train", help="train the models and write the artifact and report")
    tr.add_argument("--data", type=Path, required=True)
    tr.add_argument("--out", type=Path, default=Path("models"))
    tr.add_argument(
        "--tune-budget",
        type=float,
        default=120.0,
        help="seconds for the XGBoost parameter search (default 120)",
    )
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the logistic regression and random forest baselines",
    )
    split = sub.add_parser("split-days", help="hold out the last days of an export")
    split.add_argument("--data", type=Path, required=True)
    split.add_argument("--out", type=Path, required=True, help="gets train/ and holdout/")
    split.add_argument("--fraction", type=float, default=0.2, help="share of the days held out")

    hold = sub.add_parser("score-holdout", help="judge a shipped model on held-out days")
    hold.add_argument("--model", type=Path, default=Path("models/Pickled_model.pkl"))
    hold.add_argument("--data", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command of the offline pipeline."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "generate":
        from training.generate import FULL_SESSIONS, generate

        n = FULL_SESSIONS if args.full else args.sessions
        summary = generate(args.out, n, args.seed, progress=not args.no_progress)
        print(json.dumps(summary.__dict__, default=str))
        return 0
    if args.command == "check-data":
        from training.checkdata import main as check_main

        return check_main(args.data)
    if args.command == "split-days":
        from training.holdout import split_days

        print(json.dumps(split_days(args.data, args.out, args.fraction)))
        return 0
    if args.command == "score-holdout":
        from training.holdout import render, score_holdout

        print(render(score_holdout(args.model, args.data)))
        return 0
    from training.train import TrainConfig, train

    cfg = TrainConfig(
        tune_budget_s=args.tune_budget, threads=args.threads, compare=not args.no_compare
    )
    card = train(args.data, args.out, cfg)
    print(
        json.dumps(
            {"version": card["version"], "metrics": card["metrics"], "stages": card["stages"]},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
