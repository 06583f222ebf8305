"""Who may call what: start-up without keys, the two scopes, the dashboard's login,
constant-time comparison and the response headers."""

from __future__ import annotations

import hmac
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from access_keys import DASHBOARD, DASHBOARD_KEY, SCORING, SCORING_KEY
from fakes import FakeRedis
from fastapi.testclient import TestClient

from api.access import COOKIE, LOGIN_S, Access, AccessError
from api.headers import CONTENT_SECURITY_POLICY
from api.main import create_app
from api.schemas import EXAMPLE_ROW
from api.settings import ApiSettings

ROOT = Path(__file__).resolve().parents[2]

# (method, path, body): every route of each scope.
SCORING_ROUTES = [
    ("POST", "/predict", EXAMPLE_ROW),
    ("POST", "/predict/batch", {"rows": [EXAMPLE_ROW]}),
    ("GET", "/sessions/some-session/score", None),
    ("GET", "/sessions/some-session", None),
    ("GET", "/model", None),
]
DASHBOARD_ROUTES = [
    ("GET", "/dashboard/data", None),
    ("GET", "/dashboard/stream?updates=1", None),
]
OPEN_ROUTES = ["/health", "/ready", "/dashboard/static/dashboard.js"]


def _call(client: TestClient, method: str, path: str, body: object, headers: dict) -> int:
    return client.request(method, path, json=body, headers=headers).status_code


# Start-up


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({}, "no SCORER_API_KEY"),
        ({"api_key": ""}, "no SCORER_API_KEY"),  # an empty key, as compose would pass it
        ({"api_key": "   "}, "no SCORER_API_KEY"),
        ({"dashboard_key": DASHBOARD_KEY}, "no SCORER_API_KEY"),
        ({"api_key": SCORING_KEY, "dashboard_key": SCORING_KEY}, "must differ"),
        ({"api_key": "ключ-для-скоринга"}, "printable ASCII"),
        ({"api_key": SCORING_KEY, "api_insecure_demo": True}, "yet keys are set"),
    ],
)
def test_the_app_is_not_built_without_a_usable_key(model_path, settings, says) -> None:
    with pytest.raises(AccessError, match=says):
        create_app(ApiSettings(model_path=model_path, **settings), redis=FakeRedis())


def _api_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    return env | {f"SCORER_{k.upper()}": v for k, v in settings.items()}


@pytest.mark.parametrize(
    ("settings", "args", "says"),
    [
        ({}, [], "no SCORER_API_KEY is set"),
        ({"api_key": ""}, [], "no SCORER_API_KEY is set"),
        ({"api_insecure_demo": "1"}, ["--host", "0.0.0.0"], "listens on 127.0.0.1 only"),
    ],
)
def test_python_m_api_refuses_to_start(model_path, settings, args, says) -> None:
    env = _api_env(model_path=str(model_path), redis_url="redis://127.0.0.1:9/0", **settings)
    done = subprocess.run(
        [sys.executable, "-m", "api", "--port", "9", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert says in done.stderr
    assert "Uvicorn running" not in done.stderr


def test_the_start_up_log_says_which_mode(model_path, caplog) -> None:
    keyed = ApiSettings(model_path=model_path, api_key=SCORING_KEY)
    demo = ApiSettings(model_path=model_path, api_insecure_demo=True)
    with caplog.at_level(logging.INFO, logger="api.main"):
        with TestClient(create_app(keyed, redis=FakeRedis())):
            pass
        assert "keys required" in caplog.text
        assert "the dashboard is off (no SCORER_DASHBOARD_KEY)" in caplog.text
        assert "no digest pinned" in caplog.text
        caplog.clear()
        with TestClient(create_app(demo, redis=FakeRedis())):
            pass
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("INSECURE DEMO MODE" in r.getMessage() for r in warning)


# Scopes


@pytest.mark.parametrize(("method", "path", "body"), SCORING_ROUTES)
def test_scoring_routes_want_the_scoring_key(keyed_client, method, path, body) -> None:
    assert _call(keyed_client, method, path, body, {}) == 401
    assert _call(keyed_client, method, path, body, {"X-API-Key": "wrong"}) == 401
    assert _call(keyed_client, method, path, body, {"X-API-Key": SCORING_KEY[:-1]}) == 401
    # The dashboard's key is known but opens the dashboard only.
    assert _call(keyed_client, method, path, body, DASHBOARD) == 403
    assert _call(keyed_client, method, path, body, SCORING) in (200, 404)  # 404: no session


@pytest.mark.parametrize(("method", "path", "body"), DASHBOARD_ROUTES)
def test_dashboard_routes_want_the_dashboard_key_or_its_login(
    keyed_client, fake_redis, method, path, body
) -> None:
    fake_redis.record_layout(2)
    assert _call(keyed_client, method, path, body, {}) == 401
    assert _call(keyed_client, method, path, body, {"X-API-Key": "wrong"}) == 401
    assert _call(keyed_client, method, path, body, SCORING) == 403
    assert _call(keyed_client, method, path, body, DASHBOARD) == 200
    # A key in the URL opens nothing.
    sep = "&" if "?" in path else "?"
    assert _call(keyed_client, method, f"{path}{sep}key={DASHBOARD_KEY}", body, {}) == 401
    _login(keyed_client)
    assert _call(keyed_client, method, path, body, {}) == 200


def test_open_routes_need_no_key(keyed_client) -> None:
    for path in OPEN_ROUTES:
        assert keyed_client.get(path).status_code == 200, path


def test_the_page_without_a_login_is_the_login_form(keyed_client) -> None:
    r = keyed_client.get("/dashboard")
    assert r.status_code == 401
    assert '<form class="login" method="post" action="/dashboard/login">' in r.text
    assert 'name="key" type="password"' in r.text
    with_scoring_key = keyed_client.get("/dashboard", headers=SCORING)
    assert with_scoring_key.status_code == 403
    assert "does not open the dashboard" in with_scoring_key.text
    assert keyed_client.get("/dashboard", headers=DASHBOARD).status_code == 200


def test_without_a_dashboard_key_the_dashboard_is_off(model_path, fake_redis) -> None:
    settings = ApiSettings(model_path=model_path, api_key=SCORING_KEY)
    with TestClient(create_app(settings, redis=fake_redis)) as c:
        for path in ("/dashboard", "/dashboard/data"):
            r = c.get(path, headers=SCORING)
            assert r.status_code == 403 and "dashboard is off" in r.text
        assert c.post("/dashboard/login", data={"key": SCORING_KEY}).status_code == 403
        assert c.post("/predict", json=EXAMPLE_ROW, headers=SCORING).status_code == 200


# The dashboard's login


def _login(client: TestClient, key: str = DASHBOARD_KEY):
    return client.post("/dashboard/login", data={"key": key}, follow_redirects=False)


def test_logging_in_sets_an_httponly_samesite_cookie_without_the_key(keyed_client) -> None:
    r = _login(keyed_client)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/dashboard" in cookie.lower()
    assert DASHBOARD_KEY not in cookie and SCORING_KEY not in cookie
    page = keyed_client.get("/dashboard")
    assert page.status_code == 200 and "dashboard.js" in page.text
    # The login opens the dashboard only.
    assert keyed_client.post("/predict", json=EXAMPLE_ROW).status_code == 401


def test_a_wrong_key_at_the_login_sets_no_cookie(keyed_client) -> None:
    for key, status, says in [
        ("wrong", 401, "log in"),
        ("", 401, "log in"),
        (SCORING_KEY, 403, "does not open the dashboard"),
    ]:
        r = _login(keyed_client, key)
        assert r.status_code == status and says in r.text
        assert "set-cookie" not in r.headers
    assert keyed_client.get("/dashboard/data").status_code == 401


def test_a_forged_or_expired_login_is_refused(keyed_client) -> None:
    token = _login(keyed_client).cookies[COOKIE]
    expires, mac = token.split(".")
    keyed_client.cookies.clear()
    access: Access = keyed_client.app.state.access
    for forged in [
        f"{int(expires) + 60}.{mac}",  # a later expiry under the old signature
        f"{expires}.{'0' * len(mac)}",
        f"{expires}.",
        "not-a-login",
        DASHBOARD_KEY,
    ]:
        assert not access.login_valid(forged)
        keyed_client.cookies.set(COOKIE, forged, path="/dashboard")
        assert keyed_client.get("/dashboard/data").status_code == 401, forged
        keyed_client.cookies.clear()
    keyed_client.cookies.set(COOKIE, token, path="/dashboard")  # the genuine one, set the same way
    assert keyed_client.get("/dashboard/data").status_code == 200
    assert access.login_valid(token)
    assert not access.login_valid(token, now=int(expires) + 1)  # expired
    assert not access.login_valid(access.login_token(now=1e10), now=1e10 - LOGIN_S)  # too far out


def test_a_login_signed_with_another_key_is_refused(model_path) -> None:
    other = Access.from_settings(
        ApiSettings(model_path=model_path, api_key=SCORING_KEY, dashboard_key="rotated-key")
    )
    ours = Access.from_settings(
        ApiSettings(model_path=model_path, api_key=SCORING_KEY, dashboard_key=DASHBOARD_KEY)
    )
    assert other.login_valid(other.login_token())
    assert not ours.login_valid(other.login_token())


def test_logging_out_forgets_the_login(keyed_client) -> None:
    _login(keyed_client)
    assert keyed_client.get("/dashboard/data").status_code == 200
    r = keyed_client.post("/dashboard/logout", follow_redirects=False)
    assert r.status_code == 303 and COOKIE in r.headers["set-cookie"]
    assert keyed_client.get("/dashboard/data").status_code == 401


def test_an_oversized_login_form_is_refused(keyed_client) -> None:
    r = keyed_client.post("/dashboard/login", data={"key": "k" * 10_000})
    assert r.status_code == 413 and "set-cookie" not in r.headers


# Constant-time comparison


def test_every_key_check_goes_through_compare_digest(keyed_client, monkeypatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    checks = [
        (SCORING_KEY, lambda: keyed_client.post("/predict", json=EXAMPLE_ROW, headers=SCORING)),
        (SCORING_KEY, lambda: keyed_client.get("/model", headers=SCORING)),
        (DASHBOARD_KEY, lambda: keyed_client.get("/dashboard", headers=DASHBOARD)),
        (DASHBOARD_KEY, lambda: keyed_client.get("/dashboard/data", headers=DASHBOARD)),
        (DASHBOARD_KEY, lambda: _login(keyed_client)),
    ]
    for key, call in checks:
        compared.clear()
        assert call().status_code in (200, 303)
        assert any(a == key.encode() for a, _ in compared), key
    # The login cookie's signature, too.
    compared.clear()
    assert keyed_client.get("/dashboard/data").status_code == 200
    assert compared

    # compare_digest decides: when it never matches, the right keys open nothing.
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)
    assert keyed_client.post("/predict", json=EXAMPLE_ROW, headers=SCORING).status_code == 401
    assert keyed_client.get("/model", headers=SCORING).status_code == 401
    assert keyed_client.get("/dashboard/data", headers=DASHBOARD).status_code == 401
    assert keyed_client.get("/dashboard/data").status_code == 401  # the cookie from the login


# Headers


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/dashboard", DASHBOARD, 200),
        ("/dashboard", {}, 401),
        ("/dashboard/data", DASHBOARD, 200),
        ("/dashboard/stream?updates=1", DASHBOARD, 200),
        ("/sessions/x/score", SCORING, 404),
        ("/model", SCORING, 200),
        ("/model", {}, 401),
        ("/health", {}, 200),
        ("/ready", {}, 200),
    ],
)
def test_answers_carry_the_security_headers_and_are_not_stored(
    keyed_client, fake_redis, path, headers, status
) -> None:
    fake_redis.record_layout(2)
    r = keyed_client.get(path, headers=headers)
    assert r.status_code == status
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"


def test_the_lean_predict_path_carries_the_headers_too(keyed_client) -> None:
    r = keyed_client.post("/predict", json=EXAMPLE_ROW, headers=SCORING)
    assert r.status_code == 200
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_the_pages_own_files_may_be_cached_but_are_checked(keyed_client) -> None:
    r = keyed_client.get("/dashboard/static/dashboard.js")
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"


# The operator's routes


def test_metrics_and_docs_are_not_on_the_api_port(keyed_client, operator) -> None:
    for path in ("/metrics", "/docs", "/openapi.json", "/redoc"):
        assert keyed_client.get(path, headers=SCORING).status_code == 404, path
    assert operator.get("/metrics").status_code == 200
    assert "scorer_api_requests_total" in operator.get("/metrics").text
    assert operator.get("/docs").status_code == 200
    assert "/predict" in operator.get("/openapi.json").json()["paths"]
