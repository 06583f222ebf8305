"""``python -m api`` as it is deployed: its access log holds no key, and its operator
port (metrics, docs) listens on 127.0.0.1 only."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from api.schemas import EXAMPLE_ROW
from bench.procs import free_port, listening, serve, stop

ROOT = Path(__file__).resolve().parents[2]
# Keys with characters a URL encodes, to catch them in either form.
SCORING_KEY = "scoring+key/of=the-serving-test"
DASHBOARD_KEY = "dashboard+key/of=the-serving-test"


class Served:
    def __init__(self, url: str, operator_port: int, log: Path) -> None:
        self.url = url
        self.operator_port = operator_port
        self.log = log


@pytest.fixture(scope="module")
def served(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port, operator_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("serving") / "api.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")} | {
        "SCORER_MODEL_PATH": str(model_path),
        "SCORER_REDIS_URL": "redis://127.0.0.1:9/0",  # nothing there; not needed here
        "SCORER_API_KEY": SCORING_KEY,
        "SCORER_DASHBOARD_KEY": DASHBOARD_KEY,
        "SCORER_API_OPERATOR_PORT": str(operator_port),
        "SCORER_MODEL_RELOAD_S": "0",
    }
    proc = serve(
        [sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)],
        env,
        port,
        log,
        timeout_s=90,
    )
    try:
        yield Served(f"http://127.0.0.1:{port}", operator_port, log)
    finally:
        stop(proc)


def test_the_access_log_never_holds_a_key(served: Served) -> None:
    url = served.url
    scoring = {"X-API-Key": SCORING_KEY}
    assert httpx.post(f"{url}/predict", json=EXAMPLE_ROW, headers=scoring).status_code == 200
    # Keys where they do not belong: pasted into a URL's query and path.
    assert httpx.get(f"{url}/dashboard", params={"key": DASHBOARD_KEY}).status_code == 401
    r = httpx.get(f"{url}/dashboard/data", params={"window": "all", "api_key": SCORING_KEY})
    assert r.status_code == 401
    assert httpx.get(f"{url}/dashboard/static/{quote(SCORING_KEY, safe='')}").status_code == 404
    assert httpx.get(f"{url}/dashboard/static/{DASHBOARD_KEY}").status_code == 404
    login = httpx.post(f"{url}/dashboard/login", data={"key": DASHBOARD_KEY})
    assert login.status_code == 303
    time.sleep(0.5)  # the access log is written as the response ends

    text = served.log.read_text()
    # The requests were logged...
    assert '"POST /predict HTTP/1.1" 200' in text
    assert '"GET /dashboard?key=*** HTTP/1.1" 401' in text
    assert '"GET /dashboard/data?window=all&api_key=*** HTTP/1.1" 401' in text
    assert '"POST /dashboard/login HTTP/1.1" 303' in text
    assert text.count('"GET /dashboard/static/*** HTTP/1.1" 404') == 2
    # ...and no key, in any form, is in the log.
    for key in (SCORING_KEY, DASHBOARD_KEY):
        for form in (key, quote(key), quote(key, safe=""), quote(key, safe="").lower()):
            assert form not in text, form
    assert "keys required" in text  # the start-up line says which mode it runs in


def test_the_operator_port_serves_metrics_and_docs_on_loopback_only(served: Served) -> None:
    assert listening(served.operator_port) == {"0100007F"}  # 127.0.0.1, little-endian hex
    operator = f"http://127.0.0.1:{served.operator_port}"
    metrics = httpx.get(f"{operator}/metrics")
    assert metrics.status_code == 200 and "scorer_api_model_info" in metrics.text
    assert httpx.get(f"{operator}/docs").status_code == 200
    assert "/predict" in httpx.get(f"{operator}/openapi.json").json()["paths"]
    for path in ("/metrics", "/docs", "/openapi.json"):
        assert httpx.get(f"{served.url}{path}").status_code == 404, path
