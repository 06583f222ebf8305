"""The usual approach, for comparison: a scikit-learn pipeline over a one-row DataFrame.

    python -m bench.baseline_api --data DIR --port P

Fits, at start-up, a pipeline of the kind such services are often built from: pandas
feature engineering in a FunctionTransformer, one-hot encoding of the categories and
an XGBoost classifier; each request becomes a one-row DataFrame passed through it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import uvicorn
from fastapi import FastAPI
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder
from xgboost import XGBClassifier

from api.schemas import BatchRequest, PredictResponse, SessionRow
from features.columns import SESSION_COLUMNS
from training.dataset import load_dataset

CATEGORIES = [
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_adcontent",
    "device_category",
    "device_os",
    "device_brand",
    "device_browser",
    "geo_city",
]
NUMBERS = ["visit_number", "screen_w", "screen_h", "hour", "weekday", "month", "is_organic"]


def engineer(df: pd.DataFrame) -> pd.DataFrame:
    """Derive the usual columns with pandas."""
    out = pd.DataFrame(index=df.index)
    size = df["device_screen_resolution"].fillna("0x0").str.split("x", n=1, expand=True)
    out["screen_w"] = pd.to_numeric(size[0], errors="coerce")
    out["screen_h"] = pd.to_numeric(size[1], errors="coerce") if size.shape[1] > 1 else np.nan
    when = pd.to_datetime(df["visit_date"] + " " + df["visit_time"], errors="coerce")
    out["hour"] = when.dt.hour
    out["weekday"] = when.dt.day_of_week
    out["month"] = when.dt.month
    out["visit_number"] = pd.to_numeric(df["visit_number"], errors="coerce")
    out["is_organic"] = df["utm_medium"].isin(["organic", "referral", "(none)"]).astype(int)
    for column in CATEGORIES:
        out[column] = df[column].fillna("missing").astype(str)
    return out


def fit_pipeline(data_dir: Path) -> Pipeline:
    """Fit the pipeline on a generated data set."""
    ds = load_dataset(data_dir)
    pipe = Pipeline(
        [
            ("features", FunctionTransformer(engineer)),
            (
                "encode",
                ColumnTransformer(
                    [
                        (
                            "categories",
                            OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=30),
                            CATEGORIES,
                        ),
                        ("numbers", "passthrough", NUMBERS),
                    ]
                ),
            ),
            ("model", XGBClassifier(n_estimators=200, max_depth=5, n_jobs=1)),
        ]
    )
    pipe.fit(ds.sessions, ds.converted)
    return pipe


def create_app(data_dir: Path) -> FastAPI:
    """Build the comparison app around a freshly fitted pipeline."""
    pipe = fit_pipeline(data_dir)
    app = FastAPI(title="baseline")

    @app.post("/predict", response_model=PredictResponse)
    def predict(row: SessionRow) -> PredictResponse:
        df = pd.DataFrame([row.model_dump()])
        p = float(pipe.predict_proba(df)[0, 1])
        return PredictResponse(session_id=row.session_id, probability=p, model_version="baseline")

    @app.post("/predict/batch")
    def predict_batch(body: BatchRequest) -> dict[str, object]:
        df = pd.DataFrame([{c: r.get(c) for c in SESSION_COLUMNS} for r in body.rows])
        probs = pipe.predict_proba(df)[:, 1]
        return {
            "model_version": "baseline",
            "predictions": [
                {"session_id": r["session_id"], "probability": float(p)}
                for r, p in zip(body.rows, probs, strict=True)
            ],
        }

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> int:
    """Serve the comparison app."""
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_api", description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.data), host="127.0.0.1", port=args.port, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
