"""Serve the API: ``python -m api [--host H] [--port P]``.

Two ports: the API's own (``--port``), for its clients, and the operator's
(``SCORER_API_OPERATOR_PORT`` on ``SCORER_METRICS_HOST``, 127.0.0.1 unless configured
otherwise) with ``/metrics``, ``/docs`` and ``/openapi.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import socket
import sys
from collections.abc import Iterator

import uvicorn

from api.access import AccessError
from api.main import create_app
from api.operator import create_operator_app
from api.settings import ApiSettings

EXIT_REFUSED = 2  # the settings are unsafe or incomplete: nothing was started


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--no-access-log", action="store_true", help="do not log every request (saves CPU)"
    )
    return parser


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _OperatorServer(uvicorn.Server):
    """The operator port's server: the API's server handles the signals and stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _ApiServer(uvicorn.Server):
    """The API's server, which runs the operator port's server beside it."""

    def __init__(self, config: uvicorn.Config, operator: uvicorn.Server | None) -> None:
        super().__init__(config)
        self.operator = operator

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if self.operator is None:
            await super().serve(sockets)
            return
        # A port that cannot be bound ends the process (uvicorn exits), so the API never
        # runs without its metrics.
        operator_task = asyncio.create_task(self.operator.serve())
        try:
            await super().serve(sockets)
        finally:
            self.operator.should_exit = True
            await operator_task


def main(argv: list[str] | None = None) -> int:
    """Check the settings, build the app and serve it and its operator port."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    settings = ApiSettings()
    try:
        app = create_app(settings)
    except AccessError as exc:
        print(f"api: not starting: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if settings.api_insecure_demo and not _loopback(args.host):
        print(
            f"api: not starting: an open demo (SCORER_API_INSECURE_DEMO) listens on "
            f"127.0.0.1 only, not {args.host}; set keys to serve other hosts",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    # A 10,000-row batch allocates ~10^6 short-lived objects; with the default threshold
    # (700) the collector runs over a thousand times per request. Young objects die
    # young here: collect far less often.
    gc.set_threshold(50_000, 10, 10)
    # uvicorn's access log is one logger for both servers: the operator's requests are
    # logged as the API's are (or not, with --no-access-log).
    operator = None
    if settings.api_operator_port:
        operator = _OperatorServer(
            uvicorn.Config(
                create_operator_app(app),
                host=settings.metrics_host,
                port=settings.api_operator_port,
                log_level=args.log_level,
                lifespan="off",
            )
        )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=not args.no_access_log,
    )
    _ApiServer(config, operator).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
