"""Serve the API: ``python -m api [--host H] [--port P]``."""

from __future__ import annotations

import argparse
import gc
import sys

import uvicorn


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--no-access-log", action="store_true", help="do not log every request (saves CPU)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run uvicorn with the app factory."""
    args = _parser().parse_args(argv)
    # A 10,000-row batch allocates ~10^6 short-lived objects; with the default threshold
    # (700) the collector runs over a thousand times per request. Young objects die
    # young here: collect far less often.
    gc.set_threshold(50_000, 10, 10)
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=not args.no_access_log,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
