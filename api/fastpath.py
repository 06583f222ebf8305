"""The lean path of ``POST /predict``: a valid row scored without the framework's layers.

One-row scoring is the API's busiest call, and for it FastAPI's route matching,
dependency solving and request objects cost about as much as the features and the
model together. This ASGI middleware answers a ``POST /predict`` that carries the
scoring key (unless the API runs as an open local demo) and whose body is a valid
``SessionRow``: it validates with the same model, scores with the same model code
and writes the same JSON (``api.reasons.prediction``). Anything else (a missing or
wrong key, a body that is not JSON, an invalid row) goes on to the FastAPI route with
the body it read, so every error is the route's own, word for word. A request with a
query string (``explain=true``, ``reasons=``) goes to the route unread: the default
answer stays lean, and the route checks the query.
"""

from __future__ import annotations

import email.message
from functools import lru_cache
from typing import Any

import orjson
from pydantic import ValidationError

from api.access import Access, Scope
from api.reasons import prediction, tier_of
from api.schemas import SessionRow

PATH = "/predict"


class _Route:
    """What the metrics middleware reads of a matched route: its template."""

    path = PATH


_ROUTE = _Route()
_HEADERS = [(b"content-type", b"application/json")]


class PredictFastPath:
    """Serve valid ``POST /predict`` requests directly; pass everything else on."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        self.state = state  # the FastAPI app's state: settings, model, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "POST"
            or scope.get("query_string")
        ):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content = self._score(scope, body)
        if content is None:
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = _ROUTE
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_HEADERS, (b"content-length", b"%d" % len(content))],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def _score(self, scope: dict[str, Any], body: bytes) -> bytes | None:
        """The response body for a request the lean path can answer, else None."""
        state = self.state
        access: Access = state.access
        if not access.demo:
            given = None
            for name, value in scope["headers"]:
                if name == b"x-api-key":
                    given = value
                    break
            if access.scope_of(given) is not Scope.scoring:
                return None  # the route answers 401 or 403
        content_type = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
                break
        if content_type is None or not _is_json(content_type):
            return None
        try:
            row = SessionRow.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            return None
        model = state.model
        p = float(model.score_rows([row.__dict__])[0])
        state.metrics.rows_scored.inc()
        return orjson.dumps(prediction(row.session_id, p, model, tier_of(model, p)))


@lru_cache(maxsize=64)
def _is_json(content_type: bytes) -> bool:
    """Whether FastAPI reads a body of this type as JSON: application/json or */*+json."""
    message = email.message.Message()
    message["content-type"] = content_type.decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _replay(body: bytes, receive: Any) -> Any:
    """A receive callable that hands over the body already read, then defers."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        message: dict[str, Any] = await receive()
        return message

    return replay
