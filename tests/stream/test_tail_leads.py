"""`python -m stream tail --topic conversion.leads`: the latest leads, one line each."""

from __future__ import annotations

import pytest

from stream.tail import _leads


def _lead(sid: str, tier: str, n: int) -> dict:
    return {
        "lead_id": f"{sid}-{tier}",
        "session_id": sid,
        "tier": tier,
        "probability": 0.2,
        "hits": n,
        "utm_medium": "cpc",
        "utm_source": "src",
        "device_category": "mobile",
        "geo_city": "Moscow",
        "reasons": {"top": [{"feature": "card_views", "value": 4.0, "contribution": 0.91}]},
    }


def test_the_latest_leads_are_printed_with_their_reasons_and_counted_by_tier(
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = [_lead("a", "warm", 1), _lead("a", "hot", 5), _lead("b", "warm", 0)]
    events.append(dict(events[1]))  # a copy published again
    assert _leads("conversion.leads", events, show=2) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert out[0].startswith("warm p=0.2 session b after 0 hits, cpc / src, mobile, Moscow")
    assert "card_views = 4.0 (+0.91)" in out[1]
    assert out[2] == "4 leads on conversion.leads (3 distinct), by tier: {'warm': 2, 'hot': 2}"
