"""Who may call what: the scoring key, the dashboard key and the dashboard's login.

Two scopes. The scoring key (``SCORER_API_KEY``) opens ``/predict``, ``/predict/batch``,
``/sessions/...`` and ``/model``; the dashboard key (``SCORER_DASHBOARD_KEY``) opens the
dashboard and its data, read-only, and nothing else. A key travels in the ``X-API-Key``
header, never in a URL. A browser logs in to the dashboard once with a form and gets an
HttpOnly, SameSite cookie that carries a signed expiry, not the key.

Without a scoring key the API does not start, unless it is explicitly run as a local
demo (``SCORER_API_INSECURE_DEMO=1``), where every route is open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from fastapi import HTTPException

from api.settings import ApiSettings

COOKIE = "scorer_dashboard"
COOKIE_PATH = "/dashboard"
LOGIN_S = 12 * 3600  # how long a dashboard login lasts
# Query parameters the access log shows as sent; any other value is hidden.
LOGGED_PARAMETERS = frozenset({"window", "hot", "every", "updates"})
REDACTED = "***"


class Scope(StrEnum):
    """What a key opens."""

    scoring = "scoring"
    dashboard = "dashboard"


class AccessError(RuntimeError):
    """The key settings are missing, contradictory or unusable: the API does not start."""


def _key(value: str | None, name: str) -> bytes | None:
    """A configured key as bytes; unset or empty is None (an empty key opens nothing)."""
    if value is None or not value.strip():
        return None
    key = value.strip()
    if not key.isascii() or not key.isprintable() or " " in key:
        raise AccessError(f"{name} must be printable ASCII without spaces (it goes in a header)")
    return key.encode()


@dataclass(frozen=True)
class Access:
    """The keys of the two scopes, or a local demo with every route open."""

    scoring: bytes | None
    dashboard: bytes | None
    demo: bool = False

    @classmethod
    def from_settings(cls, cfg: ApiSettings) -> Access:
        """Check the key settings; raise AccessError when the API must not start."""
        scoring = _key(cfg.api_key, "SCORER_API_KEY")
        dashboard = _key(cfg.dashboard_key, "SCORER_DASHBOARD_KEY")
        if cfg.api_insecure_demo:
            if scoring is not None or dashboard is not None:
                raise AccessError(
                    "SCORER_API_INSECURE_DEMO opens every route, yet keys are set: "
                    "unset one or the other"
                )
            return cls(None, None, demo=True)
        if scoring is None:
            raise AccessError(
                "no SCORER_API_KEY is set: set a scoring key (and SCORER_DASHBOARD_KEY for "
                "the dashboard), or SCORER_API_INSECURE_DEMO=1 for a local demo with every "
                "route open"
            )
        if dashboard is not None and hmac.compare_digest(scoring, dashboard):
            raise AccessError("SCORER_API_KEY and SCORER_DASHBOARD_KEY must differ")
        return cls(scoring, dashboard)

    def describe(self) -> str:
        """Say what mode the API runs in, for the start-up log."""
        if self.demo:
            return (
                "INSECURE DEMO MODE (SCORER_API_INSECURE_DEMO=1): no keys, every route is "
                "open; for a local demo only, never on a shared network"
            )
        dashboard = (
            "the dashboard key or its login opens /dashboard"
            if self.dashboard is not None
            else "the dashboard is off (no SCORER_DASHBOARD_KEY)"
        )
        return f"keys required: the scoring key opens /predict and /sessions; {dashboard}"

    def scope_of(self, given: bytes | None) -> Scope | None:
        """Return the scope a presented key opens, if any."""
        if not given:
            return None
        # Both keys are compared every time, in constant time: how long the check takes
        # says nothing about how close the key came, or to which.
        scoring = hmac.compare_digest(given, self.scoring or b"")
        dashboard = hmac.compare_digest(given, self.dashboard or b"")
        if scoring and self.scoring is not None:
            return Scope.scoring
        if dashboard and self.dashboard is not None:
            return Scope.dashboard
        return None

    def require_scoring(self, given: bytes | None) -> None:
        """Raise 401 (no or an unknown key) or 403 (the dashboard's key) unless it scores."""
        if self.demo:
            return
        scope = self.scope_of(given)
        if scope is Scope.scoring:
            return
        if scope is Scope.dashboard:
            raise HTTPException(
                status_code=403,
                detail="the dashboard key does not open scoring: send the scoring key",
            )
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")

    def dashboard_denial(self, given: bytes | None, cookie: str | None) -> HTTPException | None:
        """Return why the dashboard is refused (401 or 403), or None when it may be read."""
        if self.demo:
            return None
        if self.dashboard is None:
            return HTTPException(
                status_code=403,
                detail="the dashboard is off: no SCORER_DASHBOARD_KEY is set",
            )
        if self.login_valid(cookie):
            return None
        scope = self.scope_of(given)
        if scope is Scope.dashboard:
            return None
        if scope is Scope.scoring:
            return HTTPException(
                status_code=403,
                detail="the scoring key does not open the dashboard: use the dashboard key",
            )
        return HTTPException(
            status_code=401,
            detail="log in at /dashboard, or send the dashboard key in the X-API-Key header",
        )

    def login_token(self, now: float | None = None) -> str:
        """Return a dashboard login's cookie value: its expiry, signed with the key."""
        assert self.dashboard is not None
        expires = int(now if now is not None else time.time()) + LOGIN_S
        return f"{expires}.{self._sign(expires)}"

    def login_valid(self, token: str | None, now: float | None = None) -> bool:
        """Whether a cookie value is an unexpired login signed with the dashboard key."""
        if not token or self.dashboard is None or len(token) > 100:
            return False
        expires_text, _, mac = token.partition(".")
        if not expires_text.isdigit():
            return False
        expires = int(expires_text)
        moment = now if now is not None else time.time()
        if not moment < expires <= moment + LOGIN_S + 60:
            return False
        return hmac.compare_digest(mac.encode("latin-1", "replace"), self._sign(expires).encode())

    def _sign(self, expires: int) -> str:
        assert self.dashboard is not None
        message = f"dashboard-login:{expires}".encode()
        return hmac.new(self.dashboard, message, hashlib.sha256).hexdigest()

    def secrets(self) -> list[bytes]:
        """The configured keys, for the log filter."""
        return [k for k in (self.scoring, self.dashboard) if k is not None]


def header_bytes(value: str | None) -> bytes | None:
    """A header value as the bytes that were sent (Starlette decodes headers as latin-1)."""
    return None if value is None else value.encode("latin-1")


class RedactKeys(logging.Filter):
    """Keep keys out of log lines: the access log's query values and any configured key.

    uvicorn's access log line carries the request's path and query string. Values of
    query parameters the API does not take are hidden (a key pasted into a URL), and
    any configured key, as it is or URL-encoded, is replaced wherever it appears.
    """

    def __init__(self, secrets: Iterable[bytes]) -> None:
        super().__init__()
        words = []
        for secret in secrets:
            text = secret.decode()
            words += [text, quote(text), quote(text, safe="")]
        # Longest first, so a key that contains another is replaced whole.
        self.words = sorted(set(words), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self._clean(record.msg)
        return True

    def _clean(self, text: str) -> str:
        if text.startswith("/") and "?" in text:
            path, _, query = text.partition("?")
            text = path + "?" + "&".join(_shown(p) for p in query.split("&"))
        for word in self.words:
            text = text.replace(word, REDACTED)
        return text


def _shown(parameter: str) -> str:
    name, sep, _ = parameter.partition("=")
    return parameter if name in LOGGED_PARAMETERS or not sep else f"{name}={REDACTED}"


def install_log_filter(access: Access, loggers: Iterable[str]) -> list[tuple[Any, RedactKeys]]:
    """Add the key filter to loggers; return what to remove when the app stops."""
    added = []
    for name in loggers:
        logger = logging.getLogger(name)
        f = RedactKeys(access.secrets())
        logger.addFilter(f)
        added.append((logger, f))
    return added
