"""Leads on the real Kafka broker and Redis: exactly one per session and tier, through
``kill -9`` of the worker while events are in flight; none for converted or closed
sessions; every Warm and Hot score explained, its reasons adding up to its log-odds."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers import Truth, check_leads, kill_9_while_sending, read_all, read_scores

from artifact import load_model, read_card, save_model
from artifact.tiers import Tiers
from bench.procs import WorkerProcess, metrics, total
from contracts import topics
from contracts.leads import lead_id
from contracts.scores import ScoreEvent
from stream.replay import send_events
from stream.settings import StreamSettings
from training.generate import generate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Truth:
    out = tmp_path_factory.mktemp("leads")
    generate(out, 400, seed=43, progress=False)
    return Truth(out)


@pytest.fixture()
def tiered_settings(
    stream_settings: StreamSettings, model_path: Path, truth: Truth, tmp_path: Path
) -> StreamSettings:
    """The test model with Warm at the 75th and Hot at the 93rd percentile of these
    sessions' start scores, so that many sessions cross each; a small batch size, so a
    kill finds work in flight."""
    model = load_model(model_path)
    start = model.score_rows(list(truth.sessions.values()))
    warm, hot = np.quantile(start, [0.75, 0.93])
    tiered = dataclasses.replace(model, tiers=Tiers(warm=float(warm), hot=float(hot)))
    save_model(tiered, tmp_path / "model", read_card(model_path))
    return stream_settings.model_copy(
        update={"model_path": tmp_path / "model" / "Pickled_model.pkl", "batch_max": 40}
    )


def _late_hits(truth: Truth, sids: list[str]) -> list[tuple[str, bytes, bytes]]:
    """Ten car-card views after each session's last hit, an hour of event time later."""
    out = []
    for sid in sids:
        last = max((h["hit_number"] for h in truth.hits[sid]), default=0)
        for k in range(1, 11):
            hit = {
                "session_id": sid,
                "hit_number": last + k,
                "hit_time": 3_600_000 + 1000 * k,
                "event_action": "view_card",
                "hit_type": "event",
            }
            out.append((topics.HITS, sid.encode(), orjson.dumps(hit)))
    return out


def test_leads_exactly_once_through_kill_9_and_none_after_close_or_conversion(
    tiered_settings: StreamSettings, truth: Truth, tmp_path: Path
) -> None:
    settings = tiered_settings
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    worker.wait_ready()
    try:
        kills = kill_9_while_sending(worker, settings, truth.events, seed=17)
        read_scores(settings, truth.expected_scores, timeout_s=240)
        # Late hits for sessions closed by then, which the worker scores but which
        # may make no lead.
        outcomes = read_all(settings, topics.OUTCOMES, idle_s=2)
        closed = sorted({o["session_id"] for o in outcomes if o["outcome"] == "not_converted"})[:40]
        assert len(closed) >= 10
        late = _late_hits(truth, closed)
        asyncio.run(send_events(settings, late, progress=False))
        read_scores(settings, truth.expected_scores + len(late), timeout_s=120)
        scores = read_all(settings, topics.SCORES, idle_s=2)
        leads_raw = read_all(settings, topics.LEADS, idle_s=2)
        m = metrics(settings.metrics_port)
    finally:
        worker.stop()
    assert kills >= 3
    by_key: dict[tuple[str, str, int | None], dict] = {}
    for e in scores:
        ScoreEvent.model_validate(e)
        by_key[(e["session_id"], e["trigger"], e["hit_number"])] = e
        if e["tier"] == "cold":
            assert "reasons" not in e
            continue
        r = e["reasons"]
        summed = r["bias"] + sum(x["contribution"] for x in r["top"]) + r["rest"]
        assert summed == pytest.approx(r["log_odds"], abs=1e-5)
        p = e["probability"]
        assert r["log_odds"] == pytest.approx(np.log(p / (1 - p)), abs=2e-3)

    # Exactly one lead per session and tier, as the tier rule says, copies identical.
    leads = check_leads(truth, by_key, leads_raw, strict=True)
    got = {(x.session_id, x.tier, x.score_id) for x in leads}
    assert len(got) >= 20 and {x.tier for x in leads} == {"warm", "hot"}
    for x in leads:
        assert x.lead_id == lead_id(x.session_id, x.tier, x.model_version)
        assert x.trigger != "session_end"
    # None for a closed session: the late hits were scored, some of them Warm or Hot,
    # and made no lead.
    late_scores = [
        by_key[(sid, "hit", n)]
        for sid in closed
        for n in range(1, 1000)
        if (sid, "hit", n) in by_key
        and n > max((h["hit_number"] for h in truth.hits[sid]), default=0)
    ]
    assert len(late_scores) == 10 * len(closed)
    assert any(e["tier"] != "cold" for e in late_scores)
    late_ids = {e["score_id"] for e in late_scores}
    assert not any(x.score_id in late_ids for x in leads)
    # The last worker's counter: the leads it made, not the copies it published again.
    assert "scorer_worker_leads_total{tier=hot}" in m
    assert total(m, "scorer_worker_leads_total") <= len(got)
