"""Tiers, reasons and leads as the processor makes them, on the local stack's real Redis.

The test model's tiers are replaced by thresholds at quantiles of the scores these
sessions get, so that many of them cross Warm and Hot: the leads are then compared with
what the tier rule says, score by score.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest

from artifact import ConversionModel, load_model
from artifact.tiers import Tiers
from contracts import topics
from contracts.leads import LeadEvent, lead_id
from contracts.scores import TIER_NAMES, ScoreEvent
from features.target import is_target_action
from stream.processor import Output, Processor, Record
from stream.replay import build_events
from stream.state import RedisStore

pytestmark = pytest.mark.redis
PARTITION = 1


@pytest.fixture(scope="module")
def events(data_dir: Path) -> tuple[list[bytes], list[bytes]]:
    """Sessions with at least three hits, and their hits in event order."""
    found = build_events(data_dir, limit_sessions=400)
    count: dict[bytes, int] = defaultdict(int)
    for topic, key, _ in found:
        if topic == topics.HITS:
            count[key] += 1
    keep = {key for key, n in count.items() if n >= 3}
    rows = [v for t, k, v in found if t == topics.SESSIONS and k in keep][:40]
    chosen = {orjson.loads(r)["session_id"].encode() for r in rows}
    return rows, [v for t, k, v in found if t == topics.HITS and k in chosen]


def _records(topic: str, values: list[bytes], first: int) -> list[Record]:
    return [
        Record(v, topic, PARTITION, first + i, timestamp_ms=1.0 + i) for i, v in enumerate(values)
    ]


async def _run(processor: Processor, rows: list[bytes], hits: list[bytes]) -> list[Output]:
    """Sessions, then their hits in batches of 25; the outputs in order."""
    outs = [await processor.sessions(_records("t.sessions", rows, 0))]
    await processor.release(outs[0].released)
    for at in range(0, len(hits), 25):
        async with processor.hits_batch(_records("t.hits", hits[at : at + 25], 1000 + at)) as out:
            outs.append(out)
    return outs


@pytest.fixture()
async def tiered(
    store: RedisStore, model_path: Path, events: tuple[list[bytes], list[bytes]]
) -> ConversionModel:
    """The test model with thresholds at the 50th and 85th percentiles of these scores."""
    base = load_model(model_path)
    untiered = dataclasses.replace(base, tiers=None)
    side = RedisStore(store.r, prefix=store.prefix + ":side", ttl_s=600, retries=2)
    outs = await _run(Processor(untiered, side), *events)
    probs = [orjson.loads(p)["probability"] for o in outs for _, p in o.scores]
    assert all(o.leads == [] for o in outs)  # no tiers, no leads
    warm, hot = np.quantile(probs, [0.5, 0.85])
    return dataclasses.replace(base, tiers=Tiers(warm=float(warm), hot=float(hot)))


def _expected_leads(outs: list[Output], hits: list[bytes]) -> dict[str, list[tuple[str, str]]]:
    """By session, its (tier, score_id) leads as the rule says: a score whose tier is above
    the highest one the session made a lead of, before the first of its target hits to be
    applied."""
    targets = set()
    for raw in hits:
        h = orjson.loads(raw)
        if is_target_action(h.get("event_action")):
            targets.add((h["session_id"], int(h["hit_number"])))
    made: dict[str, int] = defaultdict(int)
    converted: set[str] = set()
    want: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for out in outs:
        for sid, payload in out.scores:
            e = orjson.loads(payload)
            if (sid, e["hit_number"]) in targets:
                converted.add(sid)
            code = TIER_NAMES.index(e["tier"])
            if sid not in converted and code > made[sid]:
                made[sid] = code
                want[sid].append((e["tier"], e["score_id"]))
    return want


def _near(p: float, tiers: Tiers) -> bool:
    """A published probability (rounded to 6 places) too close to a threshold to tell."""
    return min(abs(p - tiers.warm), abs(p - tiers.hot)) < 1e-6


async def test_leads_follow_the_tier_rule_and_reasons_add_up(
    store: RedisStore, tiered: ConversionModel, events: tuple[list[bytes], list[bytes]]
) -> None:
    rows, hits = events
    tiers = tiered.tiers
    assert tiers is not None
    outs = await _run(Processor(tiered, store), rows, hits)
    scores = [ScoreEvent.model_validate_json(p) for o in outs for _, p in o.scores]
    assert {s.tier for s in scores} == {"cold", "warm", "hot"}
    for s in scores:
        # Every score carries its tier; Warm and Hot ones their reasons, adding up.
        assert s.tier == tiers.of(s.probability) or _near(s.probability, tiers)
        if s.tier == "cold":
            assert s.reasons is None
            continue
        assert s.reasons is not None and len(s.reasons.top) == 5
        total = s.reasons.bias + sum(r.contribution for r in s.reasons.top) + s.reasons.rest
        logit = float(np.log(s.probability / (1 - s.probability)))
        assert total == pytest.approx(s.reasons.log_odds, abs=1e-5)
        assert s.reasons.log_odds == pytest.approx(logit, abs=2e-3)
    leads = [LeadEvent.model_validate_json(p) for o in outs for _, p in o.leads]
    got: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for lead in leads:
        got[lead.session_id].append((lead.tier, lead.score_id))
        assert lead.lead_id == lead_id(lead.session_id, lead.tier, tiered.version)
    want = _expected_leads(outs, hits)
    assert got == want and sum(len(v) for v in want.values()) >= 10
    # At most one lead per session and tier; the counts say what was made.
    assert len({(x.session_id, x.tier) for x in leads}) == len(leads)
    assert sum((o.new_leads for o in outs), Counter()) == Counter(x.tier for x in leads)
    # A lead carries its score's reasons and the session's channel.
    by_score = {s.score_id: s for s in scores}
    row_of = {orjson.loads(r)["session_id"]: orjson.loads(r) for r in rows}
    for lead in leads:
        score = by_score[lead.score_id]
        assert lead.reasons == score.reasons and lead.probability == score.probability
        row = row_of[lead.session_id]
        assert lead.utm_medium == (row["utm_medium"] or "(none)")
        assert lead.geo_city == (row["geo_city"] or "(none)")
        if lead.trigger == "session_start":
            assert lead.hits == 0 and lead.hit_number is None
        else:
            assert lead.hits >= 1 and lead.hit_number == score.hit_number


async def test_a_redelivery_publishes_the_same_leads_and_makes_none(
    store: RedisStore, tiered: ConversionModel, events: tuple[list[bytes], list[bytes]]
) -> None:
    rows, hits = events
    first = await _run(Processor(tiered, store), rows, hits)
    # A restarted worker (nothing in memory) reads everything again.
    again = await _run(Processor(tiered, store), rows, hits)
    before = sorted(p for o in first for _, p in o.leads)
    after = sorted(p for o in again for _, p in o.leads)
    assert before and after == before  # the very same bytes
    assert all(not o.new_leads for o in again)


async def test_without_reasons_the_tiers_and_leads_stay(
    store: RedisStore, tiered: ConversionModel, events: tuple[list[bytes], list[bytes]]
) -> None:
    rows, hits = events
    outs = await _run(Processor(tiered, store, reasons=False), rows, hits)
    scores = [orjson.loads(p) for o in outs for _, p in o.scores]
    assert {s["tier"] for s in scores} == {"cold", "warm", "hot"}
    assert all("reasons" not in s for s in scores)
    leads = [orjson.loads(p) for o in outs for _, p in o.leads]
    assert leads and all(x["reasons"] is None for x in leads)
