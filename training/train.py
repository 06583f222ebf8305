"""Training: target, time split, features, XGBoost, evaluation, the artifact."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from artifact import ConversionModel, save_model
from features import IN_SESSION_FEATURES, SESSION_FEATURES
from features.columns import SESSION_COLUMNS
from features.hits import (
    hit_feature_matrix,
)
from features.session import MIN_COUNT, SMOOTHING, SessionEncoding, session_matrix
from training.calibration import calibration_figures
from training.config import ERA_FEATURES, TrainConfig, era_constraints
from training.dataset import Dataset, load_dataset
from training.drivers import channel_columns, channel_drivers, sample_rows
from training.evaluate import binary_metrics, write_report
from training.refit import margins, platt_calibration, recent_rows, refit_shipped
from training.resources import stage
from training.snapshots import Snapshots, snapshots
from training.tiers import tiers_for_model, true_probabilities
from training.weeks import week_of, weekly_rates

log = logging.getLogger(__name__)

TEST_SCORES_FILE = "test_scores.csv"


@dataclass
class Split:
    """Row indices of the training, early-stopping and test windows."""

    fit: np.ndarray
    stop: np.ndarray
    test: np.ndarray
    window: dict[str, str]


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("roc_auc", "average_precision", "log_loss", "rows", "positives")}


SEARCH_SPACE: dict[str, list[Any]] = {
    "max_depth": [2, 3, 4, 5, 6],
    "eta": [0.03, 0.05, 0.08, 0.12],
    "min_child_weight": [5, 20, 50, 100],
    "subsample": [0.7, 0.8, 0.9, 1.0],
    "colsample_bytree": [0.5, 0.7, 0.9],
    "lambda": [1.0, 5.0, 20.0],
}


def tune_session_model(
    x: np.ndarray, y: np.ndarray, split: Split, cfg: TrainConfig
) -> tuple[xgb.Booster, dict[str, Any]]:
    """Search XGBoost parameters within a time budget; early stopping on the stop weeks.

    The first trial uses the configured defaults; later ones are drawn at random. The
    trial with the best ROC-AUC on the early-stopping weeks wins (the test weeks are
    never looked at here).
    """
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    trials: list[dict[str, Any]] = []
    best: tuple[float, xgb.Booster, dict[str, Any]] | None = None
    params = dict(cfg.session_params)
    while True:
        t = time.perf_counter()
        booster = _fit_booster(
            params, x[split.fit], y[split.fit], x[split.stop], y[split.stop], SESSION_FEATURES, cfg
        )
        auc = _auc(y[split.stop], booster.inplace_predict(x[split.stop])) or 0.0
        trials.append(
            {
                "params": params,
                "stop_roc_auc": auc,
                "trees": booster.num_boosted_rounds(),
                "seconds": round(time.perf_counter() - t, 2),
            }
        )
        if best is None or auc > best[0]:
            best = (auc, booster, params)
        elapsed = time.perf_counter() - started
        per_trial = elapsed / len(trials)
        if len(trials) >= cfg.tune_max_trials or elapsed + per_trial > cfg.tune_budget_s:
            break
        params = {k: v[int(rng.integers(len(v)))] for k, v in SEARCH_SPACE.items()}
    auc, booster, params = best
    log.info(
        "tuning: %d trials in %.0f s, best early-stopping ROC-AUC %.4f",
        len(trials),
        time.perf_counter() - started,
        auc,
    )
    return booster, {
        "params": params,
        "stop_roc_auc": auc,
        "trials": trials,
        "budget_s": cfg.tune_budget_s,
    }


def _subsample(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def compare_baselines(
    x: np.ndarray, y: np.ndarray, split: Split, cfg: TrainConfig
) -> dict[str, np.ndarray]:
    """Fit logistic regression and a random forest on the same split; test probabilities."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = _subsample(np.concatenate([split.fit, split.stop]), cfg.compare_max_rows, cfg.seed)
    models = {
        "logistic regression": make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True),
            StandardScaler(),
            LogisticRegression(C=0.1, max_iter=1000),
        ),
        "random forest": make_pipeline(
            SimpleImputer(strategy="median"),
            RandomForestClassifier(
                n_estimators=200,
                min_samples_leaf=50,
                max_features="sqrt",
                n_jobs=cfg.threads,
                random_state=cfg.seed,
            ),
        ),
    }
    out = {}
    for name, model in models.items():
        t = time.perf_counter()
        model.fit(x[rows], y[rows])
        out[name] = model.predict_proba(x[split.test])[:, 1]
        log.info("%s: fitted on %d rows in %.1f s", name, len(rows), time.perf_counter() - t)
    return out


def random_split_check(
    x: np.ndarray, y: np.ndarray, params: dict[str, Any], cfg: TrainConfig
) -> dict[str, Any]:
    """Evaluate the chosen parameters on a random stratified split, for comparison.

    Encodings of every row in ``x`` are out-of-fold or fitted without that row, so no
    row's own label leaks into its features here either.
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=0.2, stratify=y, random_state=cfg.seed)
    fit_idx, stop_idx = train_test_split(
        train_idx, test_size=0.15, stratify=y[train_idx], random_state=cfg.seed
    )
    booster = _fit_booster(
        params, x[fit_idx], y[fit_idx], x[stop_idx], y[stop_idx], SESSION_FEATURES, cfg
    )
    return binary_metrics(y[test_idx], booster.inplace_predict(x[test_idx]))


def time_split(
    sessions: pd.DataFrame,
    test_days: int,
    early_stop_days: int,
    converted: np.ndarray | None = None,
    min_stop_positives: int = 0,
) -> Split:
    """Hold out the last test_days for testing, and the weeks before them for stopping.

    With ``converted``, the early-stopping window reaches back, a day at a time, until it
    holds ``min_stop_positives`` conversions: on a small data set two weeks hold a dozen,
    and early stopping on so few picks a number of trees by chance.
    """
    dates = pd.to_datetime(sessions["visit_date"], errors="coerce")
    last = dates.max()
    first = dates.min()
    test_from = last - pd.Timedelta(days=test_days - 1)
    stop_from = test_from - pd.Timedelta(days=early_stop_days)
    if converted is not None and min_stop_positives > 0:
        before_test = (dates < test_from).to_numpy()
        while stop_from - pd.Timedelta(days=7) > first:
            in_stop = before_test & (dates >= stop_from).to_numpy()
            if int(converted[in_stop].sum()) >= min_stop_positives:
                break
            stop_from -= pd.Timedelta(days=1)
    idx = np.arange(len(sessions))
    test = idx[(dates >= test_from).to_numpy()]
    stop = idx[((dates >= stop_from) & (dates < test_from)).to_numpy()]
    fit = idx[(dates < stop_from).to_numpy()]
    if min(len(fit), len(stop), len(test)) == 0:
        raise ValueError(
            f"the data spans {first:%Y-%m-%d}..{last:%Y-%m-%d}: too short for "
            f"{early_stop_days} early-stopping and {test_days} test days"
        )
    fmt = "%Y-%m-%d"
    window = {
        "train_from": f"{first:{fmt}}",
        "early_stop_from": f"{stop_from:{fmt}}",
        "test_from": f"{test_from:{fmt}}",
        "test_to": f"{last:{fmt}}",
    }
    return Split(fit=fit, stop=stop, test=test, window=window)


def _columns(sessions: pd.DataFrame, rows: np.ndarray) -> dict[str, list[Any]]:
    part = sessions.iloc[rows]
    return {c: part[c].tolist() for c in SESSION_COLUMNS}


def session_features(
    ds: Dataset, train_rows: np.ndarray, apply_rows: np.ndarray, cfg: TrainConfig
) -> tuple[np.ndarray, SessionEncoding]:
    """Compute session features: out-of-fold encodings for the training rows, and the
    encoding fitted on all of them for ``apply_rows`` (rows no fit may learn from).

    Rows in neither set are left unset.
    """
    y = ds.converted
    x = np.full((len(ds.sessions), len(SESSION_FEATURES)), np.nan, dtype=np.float32)
    rng = np.random.default_rng(cfg.seed)
    fold_of = rng.integers(0, cfg.folds, size=len(train_rows))

    week = week_of(ds.sessions["visit_date"])

    def fit(rows: np.ndarray) -> SessionEncoding:
        baseline = weekly_rates(week[rows], y[rows])
        return SessionEncoding.fit(_columns(ds.sessions, rows), y[rows], baseline=baseline)

    for k in range(cfg.folds):
        held, rest = train_rows[fold_of == k], train_rows[fold_of != k]
        x[held] = session_matrix(_columns(ds.sessions, held), fit(rest))
    encoding = fit(train_rows)
    if len(apply_rows):
        x[apply_rows] = session_matrix(_columns(ds.sessions, apply_rows), encoding)
    return x, encoding


def _fit_booster(
    params: dict[str, Any],
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_stop: np.ndarray,
    y_stop: np.ndarray,
    names: tuple[str, ...],
    cfg: TrainConfig,
) -> xgb.Booster:
    full = {
        "objective": "binary:logistic",
        "eval_metric": "auc",
        "tree_method": "hist",
        "nthread": cfg.threads,
        "seed": cfg.seed,
        **params,
        **era_constraints(names),
    }
    # Quantised matrices: the hist method needs no float copy of millions of rows.
    d_fit = xgb.QuantileDMatrix(x_fit, label=y_fit, feature_names=list(names))
    d_stop = xgb.QuantileDMatrix(x_stop, label=y_stop, feature_names=list(names), ref=d_fit)
    booster = xgb.train(
        full,
        d_fit,
        num_boost_round=cfg.max_rounds,
        evals=[(d_stop, "stop")],
        early_stopping_rounds=cfg.early_stopping_rounds,
        verbose_eval=False,
    )
    # Keep only the trees up to the best round, so every caller predicts the same way.
    return booster[: booster.best_iteration + 1]


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def auc_by_hits_seen(snap: Snapshots, p: np.ndarray, session_p: np.ndarray) -> list[dict[str, Any]]:
    """Compare in-session and session-start AUC on snapshots grouped by hits seen."""
    buckets = [(1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 10_000)]
    out = []
    for lo, hi in buckets:
        m = (snap.hits_seen >= lo) & (snap.hits_seen <= hi)
        if m.sum() == 0:
            continue
        out.append(
            {
                "hits_seen": f"{lo}" if lo == hi else f"{lo}-{hi if hi < 10_000 else ''}",
                "snapshots": int(m.sum()),
                "positives": int(snap.label[m].sum()),
                "in_session_auc": _auc(snap.label[m], p[m]),
                "session_start_auc": _auc(snap.label[m], session_p[m]),
            }
        )
    return out


def _calibration_rows(
    name: str, y: np.ndarray, raw: np.ndarray, cal: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Σpredicted / Σobserved and ECE on the test rows, calibrated and raw."""
    return {
        "calibrated": {"model": name, **calibration_figures(cal, y)},
        "uncalibrated": {"model": name, **calibration_figures(raw, y)},
    }


def train(data_dir: Path, out_dir: Path, cfg: TrainConfig | None = None) -> dict[str, Any]:
    """Train both models on the CSVs in data_dir and write the artifact into out_dir.

    Two passes. The evaluated models are fitted on the weeks before the early-stopping
    and test windows, chosen on the early-stopping weeks and measured on the test weeks,
    which nothing else looks at. The shipped models refit the chosen configuration on
    all the data and are calibrated on its most recent days (``training.refit``).
    """
    cfg = cfg or TrainConfig()
    stages: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    with stage("load", stages):
        ds = load_dataset(data_dir)
    log.info(
        "loaded %d sessions, %d hits (%d orphan hits dropped), conversion %.4f",
        len(ds.sessions),
        len(ds.hits),
        ds.hits.orphans,
        ds.converted.mean(),
    )
    y = ds.converted
    every = np.arange(len(y))

    split = time_split(ds.sessions, cfg.test_days, cfg.early_stop_days, y, cfg.min_stop_positives)
    recent, recent_from = recent_rows(
        ds.sessions["visit_date"], y, cfg.calibration_days, cfg.min_level_positives
    )
    with stage("session_features", stages):
        x, _ = session_features(ds, np.concatenate([split.fit, split.stop]), split.test, cfg)
        x_all, encoding = session_features(ds, every, every[:0], cfg)
        # From here on only the ids and days are needed, and the channels of the
        # test-week sessions whose drivers the card lists: drop the raw columns (most of
        # the memory).
        dates = pd.to_datetime(ds.sessions["visit_date"], errors="coerce")
        driver_rows = sample_rows(split.test, seed=cfg.seed)
        driver_channels = channel_columns(ds.sessions, driver_rows)
        ds.sessions = ds.sessions[["session_id"]].copy()
        gc.collect()

    with stage("session_model", stages):
        session_booster, tuning = tune_session_model(x, y, split, cfg)
        session_eval_cal = platt_calibration(
            margins(session_booster, x[split.stop]),
            y[split.stop],
            {"window": "early-stopping weeks", "from": split.window["early_stop_from"]},
        )
    raw_test = np.asarray(session_booster.inplace_predict(x[split.test]), dtype=np.float64)
    p_test = session_eval_cal.apply(margins(session_booster, x[split.test]))
    session_auc = _auc(y[split.test], p_test)
    log.info(
        "session-start model: %d trees, test ROC-AUC %.4f",
        session_booster.num_boosted_rounds(),
        session_auc or float("nan"),
    )
    with stage("comparison", stages):
        curves = {"xgboost (chosen)": p_test}
        comparison = [
            dict(
                model="xgboost (chosen)",
                split="time",
                **_summary(binary_metrics(y[split.test], p_test)),
            )
        ]
        if cfg.compare:
            for name, p in compare_baselines(x, y, split, cfg).items():
                curves[name] = p
                comparison.append(
                    dict(model=name, split="time", **_summary(binary_metrics(y[split.test], p)))
                )
            comparison.append(
                dict(
                    model="xgboost (chosen params)",
                    split="random stratified",
                    **_summary(random_split_check(x, y, tuning["params"], cfg)),
                )
            )

    def in_x(s: Snapshots, xs: np.ndarray) -> np.ndarray:
        out = np.empty((len(s.session), len(IN_SESSION_FEATURES)), dtype=np.float32)
        out[:, : xs.shape[1]] = xs[s.session]
        out[:, xs.shape[1] :] = hit_feature_matrix(s.states)
        return out

    with stage("in_session_model", stages):
        snap_fit = snapshots(ds, split.fit, cfg)
        snap_stop = snapshots(ds, split.stop, cfg, limit=cfg.max_eval_snapshots)
        snap_test = snapshots(ds, split.test, cfg, limit=cfg.max_eval_snapshots)
        in_session_booster = _fit_booster(
            cfg.in_session_params,
            in_x(snap_fit, x),
            snap_fit.label,
            in_x(snap_stop, x),
            snap_stop.label,
            IN_SESSION_FEATURES,
            cfg,
        )
        fit_snapshots = len(snap_fit.label)
        del snap_fit
        in_eval_cal = platt_calibration(
            margins(in_session_booster, in_x(snap_stop, x)),
            snap_stop.label,
            {"window": "early-stopping weeks", "from": split.window["early_stop_from"]},
        )
        del snap_stop
        x_test = in_x(snap_test, x)
        raw_snap = np.asarray(in_session_booster.inplace_predict(x_test), dtype=np.float64)
        p_snap = in_eval_cal.apply(margins(in_session_booster, x_test))
        del x_test
    p_snap_start = session_eval_cal.apply(margins(session_booster, x[snap_test.session]))
    in_session_auc = _auc(snap_test.label, p_snap)
    log.info(
        "in-session model: %d trees, test ROC-AUC %.4f over %d snapshots",
        in_session_booster.num_boosted_rounds(),
        in_session_auc or float("nan"),
        len(snap_test.label),
    )

    with stage("refit", stages):
        shipped_session, shipped_in_session, shipped = refit_shipped(
            ds,
            x_all,
            (recent, recent_from),
            cfg,
            session=(session_booster, tuning["params"], len(split.fit), session_eval_cal),
            in_session=(in_session_booster, fit_snapshots, in_eval_cal),
            in_x=in_x,
        )
    session_calibration, in_session_calibration = shipped.pop("calibrations")

    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + ds.fingerprint[:8]
    model = ConversionModel(
        version=version,
        encoding=encoding,
        session_booster=shipped_session,
        in_session_booster=shipped_in_session,
        session_features=SESSION_FEATURES,
        in_session_features=IN_SESSION_FEATURES,
        session_calibration=session_calibration,
        in_session_calibration=in_session_calibration,
    )
    # Hot / Warm / Cold at the shipped model's quantiles of the test weeks, judged with
    # the evaluated model's scores there.
    test_ids = ds.sessions["session_id"].to_numpy()[split.test]
    tiers = tiers_for_model(
        model.score_session_vectors,
        x_all,
        dates,
        split.test,
        (p_test, y[split.test], true_probabilities(data_dir, test_ids)),
        (cfg.hot_share, cfg.warm_share),
    )
    model.tiers = tiers
    # Per channel value, the features that most separate its converting test-week
    # sessions from the others, in the shipped session-start model's terms.
    with stage("channel_drivers", stages):
        model.channel_drivers = channel_drivers(
            model,
            x_all[driver_rows],
            y[driver_rows],
            driver_channels,
            f"{split.window['test_from']}..{split.window['test_to']}",
        )
    metrics: dict[str, Any] = {
        "comparison": comparison,
        "tuning": tuning,
        "session_start": {
            "test_roc_auc": session_auc,
            "test": binary_metrics(y[split.test], p_test),
            "test_sessions": int(len(split.test)),
            "test_conversion_rate": float(y[split.test].mean()),
            "trees": int(session_booster.num_boosted_rounds()),
            "calibration": session_eval_cal.as_dict(),
            "test_calibration": _calibration_rows("session-start", y[split.test], raw_test, p_test),
        },
        "in_session": {
            "test_roc_auc": in_session_auc,
            "session_start_auc_on_same_snapshots": _auc(snap_test.label, p_snap_start),
            "test_snapshots": int(len(snap_test.label)),
            "trees": int(in_session_booster.num_boosted_rounds()),
            "by_hits_seen": auc_by_hits_seen(snap_test, p_snap, p_snap_start),
            "calibration": in_eval_cal.as_dict(),
            "test_calibration": _calibration_rows("in-session", snap_test.label, raw_snap, p_snap),
        },
    }
    card = {
        "model": "xgboost",
        "xgboost_version": xgb.__version__,
        "session_features": list(SESSION_FEATURES),
        "in_session_features": list(IN_SESSION_FEATURES),
        "training_data": {
            "directory": str(data_dir),
            "fingerprint": ds.fingerprint,
            "sessions": int(len(ds.sessions)),
            "hits": int(len(ds.hits)),
            "orphan_hits": int(ds.hits.orphans),
            "conversion_rate": float(y.mean()),
            "window": split.window,
        },
        "models": {
            "evaluated": (
                "fitted before the early-stopping weeks, calibrated on them; every figure "
                "in metrics is this model's on the test weeks"
            ),
            "shipped": shipped,
        },
        "tiers": tiers.as_dict(),
        "channel_drivers": model.channel_drivers,
        "metrics": metrics,
        "params": {
            "session": tuning["params"],
            "in_session": cfg.in_session_params,
            # Both models: these features grow trees of their own (``era_constraints``).
            "era_features": list(ERA_FEATURES),
            "encoding": {
                "min_count": MIN_COUNT,
                "smoothing": SMOOTHING,
                "baseline": "each training row's weekly conversion rate (weekly_rates)",
            },
        },
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with stage("artifact_and_report", stages):
        card = save_model(model, out_dir, card)
        importance = {
            k: float(v)  # type: ignore[arg-type]
            for k, v in session_booster.get_score(importance_type="total_gain").items()
        }
        write_report(
            out_dir,
            y[split.test],
            curves,
            importance,
            metrics,
            metrics["in_session"]["by_hits_seen"],
            uncalibrated=raw_test,
            tiers=tiers.as_dict(),
            channel_drivers=model.channel_drivers,
        )
        # The test rows' scores, for comparisons that need the rows (the benchmark's
        # Bayes AUC on the same sessions, the online-quality check).
        pd.DataFrame(
            {
                "session_id": test_ids,
                "converted": y[split.test],
                "p_session_start": np.round(p_test, 7),
            }
        ).to_csv(out_dir / "report" / TEST_SCORES_FILE, index=False)
    card["stages"] = {**stages, "total": {"seconds": round(time.perf_counter() - t0, 2)}}
    return card
