"""Benchmark of the REST API against the usual approach, on loopback.

    python -m bench.api [--model PATH] [--data DIR] [--seconds S]

Starts one uvicorn process of the API (no access log), measures `/predict` at a steady
200 requests/s and at saturation, and `/predict/batch` with 10,000 rows; then does the
same for a scikit-learn pipeline over one-row pandas DataFrames (bench/baseline_api.py)
and prints both with their ratio. The load generator shares the machine's cores with
the server, as a sidecar would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from bench.http import fixed_rate, post, saturate, sequential
from bench.procs import free_port, serve, stop
from bench.results import save
from contracts import topics
from stream.replay import build_events

ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_BATCH = 10_000
BENCH_KEY = "bench-api-scoring-key"


def _prepare(data: Path, model: Path | None) -> Path:
    """Return a model path, training one on generated data when none is given."""
    from training.generate import generate
    from training.train import TrainConfig, train

    if not (data / "ga_sessions.csv").is_file():
        generate(data, 100_000, seed=7, progress=False)
    if model is not None:
        return model
    out = data / "model"
    if not (out / "Pickled_model.pkl").is_file():
        train(data, out, TrainConfig(tune_budget_s=30, compare=False))
    return out / "Pickled_model.pkl"


def _rows(data: Path, count: int) -> list[dict[str, Any]]:
    rows = []
    for t, _, value in build_events(data):
        if t == topics.SESSIONS:
            rows.append(orjson.loads(value))
            if len(rows) == count:
                break
    return rows


async def _measure(port: int, rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    key = {"X-API-Key": BENCH_KEY}  # the API as deployed checks it; the baseline ignores it
    singles = [post("/predict", orjson.dumps(r), headers=key) for r in rows[:2000]]
    batch = post("/predict/batch", orjson.dumps({"rows": rows[:ROWS_PER_BATCH]}), headers=key)
    await saturate(port, singles, 2.0, conns=4)  # warm-up
    steady = await fixed_rate(port, singles, rate=200, seconds=seconds)
    sat = await saturate(port, singles, seconds, conns=16)
    await sequential(port, batch, 2)  # warm-up
    big = await sequential(port, batch, 15)
    return {
        "predict_at_200_rps": steady.summary(),
        "predict_saturated": sat.summary(),
        "batch_10000_rows": big.summary(),
    }


def run(data: Path, model: Path | None, seconds: float) -> dict[str, Any]:
    """Measure both servers; return the figures."""
    model_path = _prepare(data, model)
    rows = _rows(data, ROWS_PER_BATCH)
    env = {
        **os.environ,
        "SCORER_MODEL_PATH": str(model_path),
        "SCORER_MODEL_RELOAD_S": "0",
        "SCORER_API_KEY": BENCH_KEY,
        "SCORER_API_OPERATOR_PORT": "0",
    }
    results: dict[str, Any] = {}
    port = free_port()
    proc = serve(
        [sys.executable, "-m", "api", "--port", str(port), "--no-access-log"],
        env,
        port,
        data / "api.log",
    )
    try:
        results["api"] = asyncio.run(_measure(port, rows, seconds))
    finally:
        stop(proc)
    port = free_port()
    proc = serve(
        [sys.executable, "-m", "bench.baseline_api", "--data", str(data), "--port", str(port)],
        env,
        port,
        data / "baseline.log",
    )
    try:
        results["baseline"] = asyncio.run(_measure(port, rows, seconds))
    finally:
        stop(proc)
    return results


def render(results: dict[str, Any]) -> str:
    """Format the figures as a markdown table."""
    api, base = results["api"], results["baseline"]
    lines = [
        "| measure | this API | sklearn pipeline, one-row DataFrame | ratio |",
        "|---|---|---|---|",
    ]

    def row(label: str, key: str, field: str, unit: str, higher_is_better: bool) -> None:
        a, b = api[key][field], base[key][field]
        ratio = (a / b) if higher_is_better else (b / a)
        lines.append(f"| {label} | {a:,.1f} {unit} | {b:,.1f} {unit} | {ratio:,.1f}x |")

    row("`/predict` p50 at 200 req/s", "predict_at_200_rps", "p50_ms", "ms", False)
    row("`/predict` p99 at 200 req/s", "predict_at_200_rps", "p99_ms", "ms", False)
    row("`/predict` at saturation", "predict_saturated", "rps", "req/s", True)
    row("`/predict` p99 at saturation", "predict_saturated", "p99_ms", "ms", False)
    row("`/predict/batch` 10,000 rows, p50", "batch_10000_rows", "p50_ms", "ms", False)
    row("`/predict/batch` 10,000 rows, p99", "batch_10000_rows", "p99_ms", "ms", False)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/bench-api"))
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    results = run(args.data, args.model, args.seconds)
    (args.data / "result.json").write_text(json.dumps(results, indent=2))
    save("api", results, sys.argv[1:] if argv is None else argv)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
