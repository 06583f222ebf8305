"""The operator's port: metrics and the API's documentation, apart from its clients' port.

``/metrics`` (Prometheus), ``/docs`` and ``/openapi.json`` say how the service runs and
what it offers; none of it is for the site or for marketing. They are served on
``SCORER_API_OPERATOR_PORT`` of ``SCORER_METRICS_HOST``, which is 127.0.0.1 unless
configured otherwise (docker-compose opens it to the Prometheus container).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route


def create_operator_app(app: FastAPI) -> Starlette:
    """Build the operator's app for an API app: its metrics, its schema, its docs."""

    async def metrics(request: Request) -> Response:
        registry = app.state.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        schema: dict[str, Any] = app.openapi()
        return JSONResponse(schema)

    async def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title}: docs")

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/openapi.json", openapi),
            Route("/docs", docs),
        ]
    )
