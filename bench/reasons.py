"""What explaining a score costs, by method, and how far the path attribution agrees
with TreeSHAP.

Times one call of each way of finding the contributions, for batches of the sizes a
worker's batch explains (the Warm and Hot scores of a fetch, a few rows) and larger:

- ``compiled_walk``: the path attribution by the compiled walk of the booster's table
  (``artifact.paths``), what the worker and the API use;
- ``xgboost_path``: the same attribution computed by XGBoost (``approx_contribs``);
- ``treeshap``: XGBoost's exact TreeSHAP.

Then the agreement of the path attribution with TreeSHAP on the highest-scored sessions
(the ones that get reasons): how often the top reason is the same, and the top three.

    python -m bench.reasons [--model PATH] [--data DIR]

Without ``--model`` it uses bench.stream's data set and model (made once if missing).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SIZES = (1, 4, 16, 64)


def _per_call_us(call: Callable[[], Any], seconds: float = 1.0) -> float:
    """The median of five timings of ``call``, each the mean of as many calls as fit in a
    fifth of ``seconds``, in microseconds."""
    call()
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / 5 or count < 3:
        call()
        count += 1
    timings = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(count):
            call()
        timings.append((time.perf_counter() - t) / count * 1e6)
    return round(float(np.median(timings)), 1)


def _top(contributions: np.ndarray, k: int) -> np.ndarray:
    body = np.abs(contributions[:, :-1])
    return np.argsort(-body, axis=1, kind="stable")[:, :k]


def measure(model_path: Path, data: Path, sessions: int, explained: int) -> dict[str, Any]:
    """Time the three ways on the model's two boosters, and compare the attributions."""
    from artifact import load_model
    from artifact.model import contributions_dense
    from artifact.paths import PathTable, path_contributions
    from features.columns import SESSION_COLUMNS
    from features.session import rows_to_columns

    model = load_model(model_path)
    frame = pd.read_csv(data / "ga_sessions.csv", dtype={"client_id": str}, nrows=sessions)
    x = model.session_vectors(rows_to_columns(frame.to_dict("records"), SESSION_COLUMNS))
    booster = model.session_booster
    start = time.perf_counter()
    PathTable(booster)
    built_s = time.perf_counter() - start
    path_contributions(booster, x[:1])  # the cached table, made
    figures: dict[str, Any] = {
        "model": str(model_path),
        "trees": booster.num_boosted_rounds(),
        "table_built_s": round(built_s, 3),
        "per_call_us": {},
    }
    ways: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "compiled_walk": lambda rows: path_contributions(booster, rows),
        "xgboost_path": lambda rows: contributions_dense(booster, rows),
        "treeshap": lambda rows: contributions_dense(booster, rows, exact=True),
    }
    for name, way in ways.items():
        figures["per_call_us"][name] = {
            str(n): _per_call_us(functools.partial(way, x[:n])) for n in SIZES
        }
    # The sessions that get reasons: the highest-scored.
    scores = model.score_session_vectors(x)
    top = x[np.argsort(-scores, kind="stable")[:explained]]
    path, shap = path_contributions(booster, top), contributions_dense(booster, top, exact=True)
    figures["largest_difference_from_xgboost_path"] = float(
        np.max(np.abs(path - contributions_dense(booster, top)))
    )
    first = float(np.mean(_top(path, 1)[:, 0] == _top(shap, 1)[:, 0]))
    pairs = list(zip(_top(path, 3).tolist(), _top(shap, 3).tolist(), strict=True))
    three = float(np.mean([set(a) == set(b) for a, b in pairs]))
    shared = float(np.mean([len(set(a) & set(b)) / 3 for a, b in pairs]))
    figures["agreement_with_treeshap"] = {
        "sessions": int(len(x)),
        "explained": int(len(top)),
        "top_reason": round(first, 3),
        "top_three": round(three, 3),
        "top_three_shared": round(shared, 3),
    }
    return figures


def main(argv: list[str] | None = None) -> int:
    from bench.api import _prepare
    from bench.results import save
    from bench.stream import ensure_data

    parser = argparse.ArgumentParser(prog="python -m bench.reasons", description=__doc__)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=Path("data/bench-stream"))
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--explained", type=int, default=600)
    args = parser.parse_args(argv)
    if args.model is None:
        ensure_data(args.data)
    model = _prepare(args.data, args.model)
    figures = measure(model, args.data, args.sessions, args.explained)
    save("reasons", figures, sys.argv[1:] if argv is None else argv)
    per = figures["per_call_us"]
    print(f"{figures['trees']} trees; table made in {figures['table_built_s']} s")
    print("rows a call  " + "  ".join(f"{name:>13}" for name in per))
    for n in SIZES:
        print(f"{n:>10}  " + "  ".join(f"{per[name][str(n)]:>10} µs" for name in per))
    agree = figures["agreement_with_treeshap"]
    print(
        f"path attribution against TreeSHAP on the {agree['explained']} highest-scored of "
        f"{agree['sessions']:,} sessions: same top reason {agree['top_reason']:.0%}, same "
        f"top three {agree['top_three']:.0%}, {agree['top_three_shared']:.0%} of the top "
        "three shared"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
