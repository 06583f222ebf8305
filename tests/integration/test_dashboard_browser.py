"""The dashboard in a real headless Chromium, fed by the real worker, Kafka and Redis.

A generated replay goes through the worker in two halves. After each, the page (served
by a real API process with its keys, opened through its login form, under its
Content-Security-Policy) must show hot sessions and channel rows whose numbers are the
ones the worker published on the score and outcome topics. No key may travel in a URL
or land in the API's log, and the browser must report no policy violation. A
screenshot lands in test-artifacts/dashboard.png.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from helpers import Truth, read_all, read_scores
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from bench.procs import WorkerProcess, free_port, serve, settings_env, stop
from contracts import topics
from stream.dashboard import channel_values
from stream.replay import send_events
from stream.settings import StreamSettings
from training.generate import generate

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SCORING_KEY = "scoring-key-of-the-browser-test"
DASHBOARD_KEY = "dashboard-key-of-the-browser-test"
SESSIONS = 1_500
SHOWN_HOT = 20  # the page's default


@pytest.fixture()
def open_settings(stream_settings: StreamSettings) -> StreamSettings:
    """No session closes for inactivity: every unconverted session stays hot."""
    return stream_settings.model_copy(update={"session_gap_s": 10 * 365 * 86400.0})


@pytest.fixture()
def api_url(open_settings: StreamSettings, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = settings_env(open_settings) | {
        "SCORER_API_KEY": SCORING_KEY,
        "SCORER_DASHBOARD_KEY": DASHBOARD_KEY,
        "SCORER_API_OPERATOR_PORT": str(free_port()),
    }
    proc = serve(
        [sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)],
        env,
        port,
        tmp_path / "api.log",
        timeout_s=60,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture()
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromedriver are missing: make test installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1440,1300"):
        options.add_argument(arg)
    # The console, where Chromium reports what the page's policy refused.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    b = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield b
    finally:
        b.quit()


def _expected(truth: Truth, scores: list[dict], outcomes: list[dict]) -> dict:
    """What the page must show, from what the worker published."""
    medium = {sid: channel_values(row)[0] for sid, row in truth.sessions.items()}
    sessions: dict[str, int] = defaultdict(int)
    expected: dict[str, float] = defaultdict(float)
    latest: dict[str, float] = {}
    tiers: dict[str, str] = {}  # each session's latest score's tier
    for e in scores:  # topic order: a session's scores are in one partition, in order
        if e["trigger"] == "session_start":
            sessions[medium[e["session_id"]]] += 1
            expected[medium[e["session_id"]]] += e["probability"]
        if e["trigger"] in ("session_start", "hit"):
            latest[e["session_id"]] = e["probability"]
            tiers[e["session_id"]] = e["tier"]
    converted = {o["session_id"] for o in outcomes if o["outcome"] == "converted"}
    observed: dict[str, int] = defaultdict(int)
    for sid in converted:
        observed[medium[sid]] += 1
    hot = sorted(
        ((p, sid) for sid, p in latest.items() if sid not in converted),
        reverse=True,
    )
    return {
        "sessions": dict(sessions),
        "expected": dict(expected),
        "observed": dict(observed),
        "hot": hot,
        "converted": converted,
        "models": {e["model_version"] for e in scores},
        "tiers": tiers,
    }


# Read the page in one script call: it re-renders every two seconds, so elements
# looked up one by one could go stale, or belong to different updates, in between.
SNAPSHOT_JS = """
const rows = (sel) => Array.from(document.querySelectorAll(sel + ' tbody tr'),
                                 (tr) => Object.assign({}, tr.dataset));
return {
  channels: rows('#channels'),
  hot: rows('#hot'),
  active: document.getElementById('active').textContent,
  model: document.getElementById('model').textContent,
  sparklines: document.querySelectorAll('#hot tbody tr svg polyline').length,
  chart_lines: document.querySelectorAll('#chart polyline').length,
};
"""


def _snapshot(b: webdriver.Chrome) -> dict[str, Any]:
    page = b.execute_script(SNAPSHOT_JS)
    page["channels"] = {
        r["value"]: {
            "sessions": int(r["sessions"]),
            "observed": int(r["observed"]),
            "expected": float(r["expected"]),
        }
        for r in page["channels"]
    }
    page["why"] = {r["session"]: (r["tier"], int(r["reasons"])) for r in page["hot"]}
    page["hot"] = [(r["session"], float(r["probability"]), int(r["hits"])) for r in page["hot"]]
    return page


def _compare(page: dict[str, Any], want: dict, truth: Truth) -> None:
    rows = page["channels"]
    assert set(rows) == set(want["sessions"])
    for value, row in rows.items():
        assert row["sessions"] == want["sessions"][value], value
        assert row["observed"] == want["observed"].get(value, 0), value
        # Published scores carry six decimals; the aggregate sums the unrounded ones.
        tolerance = 1e-6 * row["sessions"]
        assert row["expected"] == pytest.approx(want["expected"][value], abs=tolerance), value

    hot = page["hot"]
    assert len(hot) == SHOWN_HOT
    ranked = {sid: p for p, sid in want["hot"]}
    cutoff = want["hot"][SHOWN_HOT - 1][0]
    for sid, p, hits in hot:
        assert sid not in want["converted"]
        assert p == pytest.approx(ranked[sid], abs=1e-6), sid  # its latest published score
        assert p >= cutoff - 1e-6  # no unconverted session shown is beaten by one left out
        assert hits == len(truth.hits[sid]), sid
    assert [p for _, p, _ in hot] == sorted((p for _, p, _ in hot), reverse=True)
    # Each one's tier, and the top three reasons of a Warm or Hot latest score.
    for sid, (tier, reasons) in page["why"].items():
        assert tier == want["tiers"][sid], sid
        assert reasons == (0 if tier == "cold" else 3), sid
    assert any(tier != "cold" for tier, _ in page["why"].values())
    assert page["sparklines"] == SHOWN_HOT
    assert page["chart_lines"] == 2

    total = sum(want["sessions"].values())
    # A session is active until it is closed (none is here), converted or not.
    assert int(page["active"].replace(",", "")) == total
    assert set(page["model"].split(", ")) == want["models"]


def _check_page(b: webdriver.Chrome, want: dict, truth: Truth, timeout_s: float = 60) -> None:
    """Wait for the page to show what the worker published; fail with the difference."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _compare(_snapshot(b), want, truth)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _log_in(b: webdriver.Chrome, api_url: str) -> None:
    """Open the page, which shows its login form, and log in with the dashboard key."""
    b.get(f"{api_url}/dashboard")
    form = b.find_element(By.CSS_SELECTOR, "form.login")
    form.find_element(By.NAME, "key").send_keys(DASHBOARD_KEY)
    form.submit()
    deadline = time.monotonic() + 30
    while not b.find_elements(By.ID, "channels"):
        assert time.monotonic() < deadline, b.page_source[:2000]
        time.sleep(0.2)


def _check_no_key_travelled(b: webdriver.Chrome, api_url: str, api_log: Path) -> None:
    """The page ran under its policy, its login is an HttpOnly cookie, and no key is in a
    URL it loaded or in the API's log."""
    page = httpx.get(f"{api_url}/dashboard", headers={"X-API-Key": DASHBOARD_KEY})
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    refused = [
        entry["message"]
        for entry in b.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
    ]
    assert refused == []
    cookies = {c["name"]: c for c in b.get_cookies()}
    login = cookies["scorer_dashboard"]
    assert login["httpOnly"] is True and login["sameSite"] == "Strict"
    assert DASHBOARD_KEY not in login["value"]
    assert b.execute_script("return document.cookie") == ""  # out of the script's reach
    # The page, its files, and its event stream (open: not yet among the resources).
    urls = b.execute_script(
        "return [location.href, source.url,"
        " ...performance.getEntriesByType('resource').map(e => e.name)]"
    )
    assert "/dashboard/stream?window=all" in urls[1], urls
    for url in urls:
        assert "key" not in url.split("?", 1)[-1] and DASHBOARD_KEY not in url, url
    log = api_log.read_text()
    assert "GET /dashboard/stream?window=all" in log  # the log holds the page's requests
    assert DASHBOARD_KEY not in log and SCORING_KEY not in log


def test_the_dashboard_shows_what_the_worker_published(
    open_settings: StreamSettings,
    api_url: str,
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    generate(tmp_path / "data", SESSIONS, seed=31, progress=False)
    truth = Truth(tmp_path / "data")
    order = list(truth.sessions)
    first = set(order[: len(order) // 2])
    halves = [
        [e for e in truth.events if orjson.loads(e[2])["session_id"] in first],
        [e for e in truth.events if orjson.loads(e[2])["session_id"] not in first],
    ]

    worker = WorkerProcess(open_settings, tmp_path / "worker.log")
    worker.start()
    try:
        worker.wait_ready()

        # Without the dashboard's key, neither the page's data nor its stream is served;
        # the scoring key does not open them either.
        scoring = {"X-API-Key": SCORING_KEY}
        assert httpx.get(f"{api_url}/dashboard/data").status_code == 401
        assert httpx.get(f"{api_url}/dashboard/stream?updates=1").status_code == 401
        assert httpx.get(f"{api_url}/dashboard/data", headers=scoring).status_code == 403

        sent = 0
        expected_scores = 0
        shown: list[list[tuple[str, float, int]]] = []
        for i, half in enumerate(halves):
            asyncio.run(send_events(open_settings, half, progress=False))
            sent += len(half)
            sids = {orjson.loads(v)["session_id"] for _, _, v in half}
            expected_scores += len(sids) + sum(len(truth.hits[s]) for s in sids)
            scores = read_scores(open_settings, until=expected_scores)
            outcomes = read_all(open_settings, topics.OUTCOMES)
            want = _expected(truth, scores, outcomes)
            assert sum(want["sessions"].values()) == sum(
                len({orjson.loads(v)["session_id"] for _, _, v in h}) for h in halves[: i + 1]
            )
            if i == 0:
                _log_in(browser, api_url)
            _check_page(browser, want, truth)
            shown.append(_snapshot(browser)["hot"])

            data = httpx.get(
                f"{api_url}/dashboard/data",
                params={"window": "all"},
                headers={"X-API-Key": DASHBOARD_KEY},
            ).json()
            assert data["totals"]["sessions"] == sum(want["sessions"].values())
            assert data["totals"]["observed"] == len(want["converted"])
            assert sum(data["now"]["events_per_minute"]) == sent
            assert sum(data["now"]["scores_per_minute"]) == expected_scores

        # The second half changed what the page shows, not only the totals.
        assert shown[0] != shown[1]
        _check_no_key_travelled(browser, api_url, tmp_path / "api.log")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    finally:
        worker.stop()
