"""Evaluation of a trained model: metrics, charts and a short report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from training.calibration import calibration_figures  # noqa: E402


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Predicted against observed conversion by score decile (equal-count bins)."""
    order = np.argsort(p, kind="stable")
    out = []
    for part in np.array_split(order, bins):
        if len(part) == 0:
            continue
        out.append(
            {
                "rows": int(len(part)),
                "mean_predicted": float(p[part].mean()),
                "observed": float(y[part].mean()),
            }
        )
    return out


def lift_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Conversion of each score decile, best first, relative to the base rate."""
    base = float(y.mean()) or 1.0
    order = np.argsort(-p, kind="stable")
    out = []
    seen = 0
    caught = 0.0
    for k, part in enumerate(np.array_split(order, bins), start=1):
        seen += len(part)
        caught += float(y[part].sum())
        out.append(
            {
                "decile": k,
                "conversion": float(y[part].mean()),
                "lift": float(y[part].mean() / base),
                "cumulative_capture": caught / max(float(y.sum()), 1.0),
                "share_of_sessions": seen / len(y),
            }
        )
    return out


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """ROC-AUC, average precision, log loss, Brier score and the calibration table."""
    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    both = 0 < y.sum() < len(y)
    return {
        "rows": int(len(y)),
        "positives": int(y.sum()),
        "roc_auc": float(roc_auc_score(y, p)) if both else None,
        "average_precision": float(average_precision_score(y, p)) if both else None,
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "mean_predicted": float(p.mean()),
        "observed_rate": float(y.mean()),
        "calibration": calibration_table(y, p),
        "lift": lift_table(y, p),
    }


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def write_report(
    out_dir: Path,
    y: np.ndarray,
    curves: dict[str, np.ndarray],
    importance: dict[str, float],
    metrics: dict[str, Any],
    by_hits: list[dict[str, Any]],
    uncalibrated: np.ndarray | None = None,
    tiers: dict[str, Any] | None = None,
    channel_drivers: dict[str, Any] | None = None,
) -> Path:
    """Write the charts, metrics.json and report.md into out_dir/report; return it.

    ``curves`` maps a model's name to its test-set probabilities; the first one is the
    chosen model. ``uncalibrated`` is the chosen booster's raw probabilities on the same
    rows, drawn beside the calibrated ones in the reliability chart. ``tiers`` is the
    card's Hot / Warm / Cold block (``Tiers.as_dict``), written under ``tiers`` in
    metrics.json and as a table in report.md. ``channel_drivers`` is the card's block of
    the same name (``training.drivers``), written likewise, with a table for utm_medium.
    """
    report = out_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y).astype(int)
    figures: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, p in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test weeks")
    ax.legend(loc="lower right", fontsize=8)
    figures["roc"] = _save(fig, report / "roc.png")

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, p in curves.items():
        prec, rec, _ = precision_recall_curve(y, p)
        ax.plot(rec, prec, label=f"{name} (AP {average_precision_score(y, p):.3f})")
    ax.axhline(y.mean(), color="k", ls=":", lw=1)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, test weeks")
    ax.legend(loc="upper right", fontsize=8)
    figures["precision_recall"] = _save(fig, report / "precision_recall.png")

    chosen_name, chosen_p = next(iter(curves.items()))
    reliability = {f"{chosen_name}, calibrated": chosen_p}
    if uncalibrated is not None:
        reliability[f"{chosen_name}, uncalibrated"] = np.asarray(uncalibrated)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = 0.0
    for (name, p), marker in zip(reliability.items(), ("o-", "s--"), strict=False):
        table = calibration_table(y, p)
        pred = [r["mean_predicted"] for r in table]
        obs = [r["observed"] for r in table]
        top = max(top, *pred, *obs)
        figures_ = calibration_figures(p, y)
        ax.plot(
            pred,
            obs,
            marker,
            label=(
                f"{name}: Σpred/Σobs {figures_['sum_predicted_over_target']:.2f}, "
                f"ECE {figures_['ece']:.4f}"
            ),
        )
    ax.plot([0, top * 1.1], [0, top * 1.1], "k:", lw=1)
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed conversion",
        title="Reliability by score decile, test weeks",
    )
    ax.legend(loc="upper left", fontsize=7)
    figures["calibration"] = _save(fig, report / "calibration.png")

    lift = lift_table(y, chosen_p)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar([r["decile"] for r in lift], [r["lift"] for r in lift])
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set(
        xlabel="score decile (1 = highest)",
        ylabel="lift over base rate",
        title=f"Lift, {chosen_name}",
    )
    figures["lift"] = _save(fig, report / "lift.png")

    top_features = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:20]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.barh([k for k, _ in reversed(top_features)], [v for _, v in reversed(top_features)])
    ax.set(xlabel="total gain", title="Feature importance, session-start model")
    ax.tick_params(axis="y", labelsize=8)
    figures["feature_importance"] = _save(fig, report / "feature_importance.png")

    if by_hits:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [r["hits_seen"] for r in by_hits]
        xs = np.arange(len(labels))
        ax.plot(xs, [r["in_session_auc"] or np.nan for r in by_hits], "o-", label="in-session")
        ax.plot(
            xs, [r["session_start_auc"] or np.nan for r in by_hits], "s--", label="session-start"
        )
        ax.set_xticks(xs, labels)
        ax.set(xlabel="hits seen", ylabel="ROC-AUC", title="Scoring after each hit")
        ax.legend(fontsize=8)
        figures["auc_by_hits_seen"] = _save(fig, report / "auc_by_hits_seen.png")

    written = {**metrics, "tiers": tiers} if tiers else dict(metrics)
    if channel_drivers:
        written["channel_drivers"] = channel_drivers
    (report / "metrics.json").write_text(json.dumps(written, indent=2) + "\n")
    lines = ["# Training report", ""]
    lines += _summary_lines(metrics)
    lines += _tier_lines(tiers or {})
    lines += _driver_lines(channel_drivers or {})
    lines += ["", "## Figures", ""]
    lines += [f"- [{name.replace('_', ' ')}]({file})" for name, file in figures.items()]
    lines += [
        "",
        "All figures use the held-out test weeks. Full numbers: [metrics.json](metrics.json).",
        "",
    ]
    (report / "report.md").write_text("\n".join(lines))
    return report


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _summary_lines(metrics: dict[str, Any]) -> list[str]:
    lines = ["| model | split | ROC-AUC | average precision | log loss |", "|---|---|---|---|---|"]
    for row in metrics.get("comparison", []):
        lines.append(
            f"| {row['model']} | {row['split']} | {_fmt(row['roc_auc'])} | "
            f"{_fmt(row['average_precision'])} | {_fmt(row['log_loss'])} |"
        )
    calibration = [
        row
        for part in ("session_start", "in_session")
        for kind, row in metrics.get(part, {}).get("test_calibration", {}).items()
        if isinstance(row, dict)
        for row in [{**row, "kind": kind}]
    ]
    if calibration:
        lines += [
            "",
            "## Calibration on the test weeks",
            "",
            "Calibrated: the evaluated booster with the map fitted on the early-stopping weeks",
            "before the test weeks; uncalibrated: its raw probabilities. ECE is the mean gap",
            "between predicted and observed conversion over score deciles.",
            "",
            "| model | probabilities | Σpredicted / Σobserved | ECE |",
            "|---|---|---|---|",
        ]
        for r in calibration:
            lines.append(
                f"| {r['model']} | {r['kind']} | {_fmt(r['sum_predicted_over_target'])} | "
                f"{_fmt(r['ece'])} |"
            )
    hits = metrics.get("in_session", {}).get("by_hits_seen", [])
    if hits:
        lines += [
            "",
            "## In-session model by hits seen",
            "",
            "| hits seen | snapshots | in-session AUC | session-start AUC |",
            "|---|---|---|---|",
        ]
        for r in hits:
            lines.append(
                f"| {r['hits_seen']} | {r['snapshots']} | {_fmt(r['in_session_auc'])}"
                f" | {_fmt(r['session_start_auc'])} |"
            )
    return lines


def _tier_lines(tiers: dict[str, Any]) -> list[str]:
    """The Hot / Warm / Cold table: the shipped thresholds, and what the evaluated model's
    tiers held on the test weeks (``training.tiers``)."""
    if "hot" not in tiers:
        return []
    lines = [
        "",
        "## Tiers",
        "",
        f"Hot is the top {tiers['hot_share']:.1%} of session-start scores, Warm the next "
        f"{tiers['warm_share']:.1%}: Hot at or above {tiers['hot']:.4f}, Warm at or above "
        f"{tiers['warm']:.4f}, the quantiles of the {tiers['chosen_on']}.",
    ]
    figures = tiers.get("test_weeks")
    if not figures:
        return [*lines, f"Measured on {tiers.get('measured_on', 'nothing')}."]
    truth = any("mean_true_probability" in row for row in figures.values())
    lines += [
        f"The figures are those of the {tiers['measured_on']}: capture is the share of all "
        "test-week conversions in the tier, lift its conversion rate over the overall one.",
        "",
        "| tier | threshold (shipped) | threshold (evaluated) | share of test-week sessions"
        " | conversion rate | capture | lift |" + (" mean true probability |" if truth else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if truth else ""),
    ]
    for name, row in figures.items():
        # Cold is everything below Warm: its "threshold" is Warm's, as an upper bound.
        above = name if name != "cold" else "warm"
        sign = "< " if name == "cold" else "≥ "
        evaluated = figures[above].get("threshold")
        cells = [
            name,
            sign + _fmt(float(tiers[above])),
            sign + _fmt(evaluated) if evaluated is not None else "—",
            _fmt(row["share"]),
            _fmt(row["conversion_rate"]),
            _fmt(row["capture"]),
            _fmt(row["lift"]),
        ]
        if truth:
            cells.append(_fmt(row.get("mean_true_probability")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _driver_cell(top: list[dict[str, Any]]) -> str:
    return ", ".join(f"{d['feature']} ({d['gap']:+.2f})" for d in top) or "—"


def _driver_lines(drivers: dict[str, Any], dimension: str = "utm_medium") -> list[str]:
    """The features that most separate converting sessions, overall and per value of
    ``dimension`` (``training.drivers``)."""
    if "all" not in drivers:
        return []
    values = drivers.get("by_dimension", {}).get(dimension, {})
    lines = [
        "",
        "## What separates converting sessions, by channel",
        "",
        f"Measured on the {drivers['measured_on']}: per {dimension} value with at least "
        f"{drivers['min_conversions']} converting sessions, the three features whose mean "
        "contribution to the log-odds is highest over its converting sessions relative to "
        "its others (the gap in brackets). The card's `channel_drivers` has utm_source and "
        "utm_campaign too.",
        "",
        f"| {dimension} | top features (gap in log-odds) |",
        "|---|---|",
        f"| (all) | {_driver_cell(drivers['all'])} |",
    ]
    lines += [f"| {value} | {_driver_cell(top)} |" for value, top in values.items()]
    return lines
