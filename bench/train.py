"""Benchmark of the offline pipeline at full scale: generate, check, train.

    python -m bench.train [--sessions N] [--out DIR] [--tune-budget S] [--holdout F]

Prints the wall time and peak memory of every stage, the ROC-AUC of the chosen
session-start model next to the Bayes AUC of truth.csv on the same held-out sessions,
its calibration against the outcomes and against truth.csv, and the in-session model's
ROC-AUC by hits seen. Each stage runs in this process; its peak memory is the process's
peak resident set during the stage (VmHWM, reset between stages).

With ``--holdout F`` the last fraction F of the generated days is split off before
training (``training.holdout``) and the shipped model is judged on them: the days after
its data, where the generated export's conversion level has dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import roc_auc_score

from artifact.store import MODEL_FILE
from bench.results import save
from training.calibration import calibration_figures
from training.checkdata import check_data
from training.generate import FULL_SESSIONS, generate
from training.holdout import render as render_holdout
from training.holdout import score_holdout, split_days
from training.resources import stage
from training.train import TEST_SCORES_FILE, TrainConfig, train


def _row(name: str, rec: dict[str, Any]) -> str:
    peak = rec.get("peak_rss_mb")
    peak_text = f"{peak / 1024:.2f} GB" if peak else "-"
    return f"| {name} | {rec['seconds']:,.0f} s | {peak_text} |"


def run(
    sessions: int, out: Path, seed: int, tune_budget_s: float, holdout: float = 0.0
) -> dict[str, Any]:
    """Run the stages; return everything the tables show."""
    data, models = out / "data", out / "model"
    stages: dict[str, dict[str, Any]] = {}
    with stage("generate", stages):
        summary = generate(data, sessions, seed, progress=False)
    with stage("check-data", stages):
        checks = check_data(data)
    train_data = data
    split: dict[str, Any] | None = None
    if holdout:
        with stage("split-days", stages):
            split = split_days(data, out / "split", holdout)
        train_data = out / "split" / "train"
    card = train(train_data, models, TrainConfig(tune_budget_s=tune_budget_s))
    for name, rec in card["stages"].items():
        if name != "total":
            stages[f"train: {name}"] = rec
    stages["train: total"] = {
        "seconds": card["stages"]["total"]["seconds"],
        "peak_rss_mb": max(
            (r.get("peak_rss_mb") or 0) for k, r in card["stages"].items() if k != "total"
        ),
    }

    scores = pd.read_csv(models / "report" / TEST_SCORES_FILE, dtype={"session_id": str})
    truth = pd.read_csv(data / "truth.csv", dtype={"session_id": str})
    joined = scores.merge(truth, on="session_id", how="inner")
    metrics = card["metrics"]
    held: dict[str, Any] | None = None
    if split is not None:
        with stage("score-holdout", stages):
            held = {**split, **score_holdout(models / MODEL_FILE, out / "split" / "holdout")}
    return {
        "holdout": held,
        "test_calibration": {
            "outcomes": calibration_figures(joined["p_session_start"], joined["converted"]),
            "truth": calibration_figures(joined["p_session_start"], joined["p_convert"]),
        },
        "shipped": {
            k: card["models"]["shipped"]["session_start"][k]
            for k in ("trees", "rows", "early_stopped_trees", "early_stopped_rows")
        },
        "sessions": summary.n_sessions,
        "hits": summary.n_hits,
        "stages": stages,
        "checks_failed": [c.name for c in checks if c.status == "FAIL"],
        "checks_ok": sum(c.status == "ok" for c in checks),
        "test_sessions": len(joined),
        "session_start_auc": float(roc_auc_score(joined["converted"], joined["p_session_start"])),
        "bayes_auc": float(roc_auc_score(joined["converted"], joined["p_convert"])),
        "in_session_auc": metrics["in_session"]["test_roc_auc"],
        "by_hits_seen": metrics["in_session"]["by_hits_seen"],
        "comparison": metrics["comparison"],
        "tuning_trials": len(metrics["tuning"]["trials"]),
    }


def render(result: dict[str, Any]) -> str:
    """Format the benchmark's result as markdown tables."""
    lines = [
        f"{result['sessions']:,} sessions, {result['hits']:,} hits; "
        f"check-data: {result['checks_ok']} figures ok, "
        f"{len(result['checks_failed'])} out of tolerance {result['checks_failed'] or ''}",
        "",
        "| stage | wall time | peak memory |",
        "|---|---|---|",
        *[_row(name, rec) for name, rec in result["stages"].items()],
        "",
        f"Held-out sessions (last four weeks): {result['test_sessions']:,}",
        "",
        "| model | ROC-AUC |",
        "|---|---|",
        f"| Bayes AUC of truth.csv (the ceiling) | {result['bayes_auc']:.4f} |",
        f"| session-start XGBoost (chosen) | {result['session_start_auc']:.4f} |",
        *[
            f"| {row['model']} ({row['split']} split) | {row['roc_auc']:.4f} |"
            for row in result["comparison"][1:]
        ],
        "",
        "| test weeks, session start | Σpredicted / Σ | ECE |",
        "|---|---|---|",
        *[
            f"| against {k} | {v['sum_predicted_over_target']:.4f} | {v['ece']:.4f} |"
            for k, v in result["test_calibration"].items()
        ],
        "",
        "| hits seen | snapshots | in-session ROC-AUC | session-start ROC-AUC |",
        "|---|---|---|---|",
        *[
            f"| {r['hits_seen']} | {r['snapshots']:,} | {_f(r['in_session_auc'])} | "
            f"{_f(r['session_start_auc'])} |"
            for r in result["by_hits_seen"]
        ],
    ]
    held = result.get("holdout")
    if held:
        lines += [
            "",
            f"Held-out days from {held['holdout_from']} on ({held['holdout_sessions']:,} "
            f"sessions), scored with the shipped model trained on the "
            f"{held['train_sessions']:,} sessions before them:",
            "",
            render_holdout(held),
        ]
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__)
    parser.add_argument("--sessions", type=int, default=FULL_SESSIONS)
    parser.add_argument("--out", type=Path, default=Path("data/bench-train"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tune-budget", type=float, default=120.0)
    parser.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="hold out this last fraction of the days and score them (default: none)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run(args.sessions, args.out, args.seed, args.tune_budget, args.holdout)
    (args.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    save("train", result, sys.argv[1:] if argv is None else argv)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
