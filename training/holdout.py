"""Held-out days: split an export by date, then judge a shipped model on the later part.

    python -m training split-days --data DIR --fraction 0.2 --out DIR
    python -m training score-holdout --model models/Pickled_model.pkl --data DIR

The split writes ``train/`` (the earlier days) and ``holdout/`` (the last fraction of the
days), each with both CSVs and, if the source has one, ``truth.csv``; a hit goes where
its session goes. Training on ``train/`` and scoring ``holdout/`` is what a deployment
lives through: the model meets days after its data, at whatever level conversion has
then. ``score_holdout`` reports ranking (ROC-AUC, and the Bayes AUC of truth.csv on
generated data) and calibration (Σpredicted / Σobserved, ECE; against truth.csv too),
for the shipped model and for the same boosters without their calibration.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sklearn.metrics import roc_auc_score

from artifact import load_model
from artifact.calibration import IDENTITY
from training.calibration import calibration_figures
from training.dataset import BLOCK_BYTES, HITS_FILE, SESSIONS_FILE, load_dataset

TRUTH_FILE = "truth.csv"
_WRITE = pacsv.WriteOptions(quoting_style="needed")


def _all_strings(path: Path) -> pacsv.ConvertOptions:
    with path.open("r", encoding="utf-8") as fh:
        header = [c.strip('"') for c in fh.readline().strip().split(",")]
    return pacsv.ConvertOptions(column_types={c: pa.string() for c in header})


def split_days(data: Path, out: Path, fraction: float) -> dict[str, Any]:
    """Write out/train and out/holdout: the holdout holds the last ``fraction`` of the days."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be between 0 and 1, not {fraction}")
    sessions_path = data / SESSIONS_FILE
    sessions = pacsv.read_csv(sessions_path, convert_options=_all_strings(sessions_path))
    dates = pd.to_datetime(sessions.column("visit_date").to_pandas(), errors="coerce")
    first, last = dates.min().normalize(), dates.max().normalize()
    days = (last - first).days + 1
    cut = last - pd.Timedelta(days=max(1, math.floor(days * fraction)) - 1)
    later = (dates >= cut).to_numpy()
    parts = {"train": out / "train", "holdout": out / "holdout"}
    for folder in parts.values():
        folder.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(sessions.filter(pa.array(~later)), parts["train"] / SESSIONS_FILE, _WRITE)
    pacsv.write_csv(sessions.filter(pa.array(later)), parts["holdout"] / SESSIONS_FILE, _WRITE)
    held_ids = sessions.column("session_id").filter(pa.array(later))
    counts = {"train_hits": 0, "holdout_hits": 0}
    for name in (HITS_FILE, TRUTH_FILE):
        path = data / name
        if not path.is_file():
            continue
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
            convert_options=_all_strings(path),
        )
        with (
            pacsv.CSVWriter(parts["train"] / name, reader.schema, write_options=_WRITE) as early,
            pacsv.CSVWriter(parts["holdout"] / name, reader.schema, write_options=_WRITE) as late,
        ):
            for batch in reader:
                mask = pc.is_in(batch.column("session_id"), value_set=held_ids)
                mask = pc.fill_null(mask, False)
                late.write_batch(batch.filter(mask))
                early.write_batch(batch.filter(pc.invert(mask)))
                if name == HITS_FILE:
                    held = int(pc.sum(mask).as_py() or 0)
                    counts["holdout_hits"] += held
                    counts["train_hits"] += batch.num_rows - held
    return {
        "days": days,
        "holdout_from": f"{cut:%Y-%m-%d}",
        "train_sessions": int((~later).sum()),
        "holdout_sessions": int(later.sum()),
        **counts,
    }


def score_holdout(model_path: Path, data: Path) -> dict[str, Any]:
    """Score the held-out sessions' rows with the shipped model; ranking and calibration."""
    model = load_model(model_path, threads=None)
    ds = load_dataset(data)
    y = ds.converted.astype(int)
    p = model.predict_proba(ds.sessions)[:, 1]
    raw = dataclasses.replace(model, session_calibration=IDENTITY).predict_proba(ds.sessions)[:, 1]
    out: dict[str, Any] = {
        "model_version": model.version,
        "sessions": int(len(y)),
        "conversions": int(y.sum()),
        "observed_rate": float(y.mean()),
        "roc_auc": float(roc_auc_score(y, p)),
        "calibrated": calibration_figures(p, y),
        "uncalibrated": calibration_figures(raw, y),
        "mean_predicted": float(p.mean()),
    }
    truth_path = data / TRUTH_FILE
    if truth_path.is_file():
        truth = pd.read_csv(truth_path, dtype={"session_id": str})
        pos = pd.Index(truth["session_id"]).get_indexer(ds.sessions["session_id"])
        found = pos >= 0
        t = truth["p_convert"].to_numpy()[pos[found]]
        out["truth"] = {
            "sessions": int(found.sum()),
            "bayes_auc": float(roc_auc_score(y[found], t)),
            "true_rate": float(t.mean()),
            "calibrated": calibration_figures(p[found], t),
            "uncalibrated": calibration_figures(raw[found], t),
        }
    return out


def render(result: dict[str, Any]) -> str:
    """The figures as a short markdown table."""
    lines = [
        f"{result['sessions']:,} held-out sessions, {result['conversions']:,} conversions "
        f"({result['observed_rate']:.2%}); model {result['model_version']}",
        "",
        "| figure | shipped (calibrated) | same boosters, uncalibrated |",
        "|---|---|---|",
        f"| ROC-AUC | {result['roc_auc']:.4f} | (the same: calibration keeps the order) |",
    ]
    figures = [("Σpredicted / Σobserved", result, "sum_predicted_over_target")]
    figures.append(("ECE", result, "ece"))
    truth = result.get("truth")
    if truth:
        lines.append(f"| Bayes AUC of truth.csv | {truth['bayes_auc']:.4f} | |")
        figures.append(("Σpredicted / Σtrue", truth, "sum_predicted_over_target"))
        figures.append(("ECE against truth.csv", truth, "ece"))
    for label, part, key in figures:
        lines.append(
            f"| {label} | {part['calibrated'][key]:.4f} | {part['uncalibrated'][key]:.4f} |"
        )
    return "\n".join(lines)
