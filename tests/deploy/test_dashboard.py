"""The provisioned Grafana dashboard asks only for series the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from api.metrics import ApiMetrics
from stream.calibration_topic import CalibrationCollector
from stream.metrics import WorkerMetrics
from stream.quality import QualityCollector, QualityTracker
from stream.recalibration import Recalibrator, make_record

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "scorer.json"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def exported_series() -> set[str]:
    """Every series name the worker, the API and the quality reader can expose."""
    families = [
        *WorkerMetrics().registry.collect(),
        *ApiMetrics().registry.collect(),
        *QualityCollector(QualityTracker()).collect(),
        *CalibrationCollector(_recalibrating()).collect(),
    ]
    names = set()
    for family in families:
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def _recalibrating() -> Recalibrator:
    """A recalibrator with one version, so that every one of its series is exported."""
    recal = Recalibrator()
    recal.on_record(make_record("v1", 1, -0.1, "active", "estimate"))
    recal.versions["v1"].target = -0.1
    return recal


def dashboard_series(dashboard: dict) -> set[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(r"\bscorer_[a-z0-9_]+", e)}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_every_series_on_the_dashboard_is_exported(dashboard: dict) -> None:
    missing = dashboard_series(dashboard) - exported_series()
    assert missing == set()


def test_a_misspelt_series_would_be_caught() -> None:
    broken = {"panels": [{"targets": [{"expr": "rate(scorer_worker_event_in_total[1m])"}]}]}
    assert dashboard_series(broken) - exported_series() == {"scorer_worker_event_in_total"}


def test_the_dashboard_shows_what_operators_watch(dashboard: dict) -> None:
    series = dashboard_series(dashboard)
    for needed in (
        "scorer_worker_events_in_total",  # throughput
        "scorer_worker_consumer_lag",
        "scorer_worker_event_to_score_seconds_bucket",
        "scorer_worker_dead_letters_total",
        "scorer_worker_refused_total",  # hostile input, by kind
        "scorer_worker_exits_total",  # a crash loop
        "scorer_worker_rebuilt_partitions_total",  # Redis forgot, the worker rebuilt it
        "scorer_api_request_seconds_bucket",
        "scorer_quality_roc_auc",
        "scorer_quality_predicted",
        "scorer_quality_observed",
        "scorer_calibration_shift",  # online recalibration
        "scorer_worker_leads_total",  # leads per minute by tier
    ):
        assert needed in series, needed


def test_panels_are_well_formed(dashboard: dict) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        assert p["datasource"]["uid"] == "prometheus"
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"])
    provisioning = (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    assert "uid: prometheus" in provisioning
