"""Wall time and peak memory of the stages of a run.

Linux keeps a process's peak resident set size in /proc/self/status (VmHWM); writing 5
to /proc/self/clear_refs resets it, so each stage's own peak can be read at its end.
Elsewhere the peak is reported as unknown.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak() -> None:
    with suppress(OSError):
        _CLEAR_REFS.write_text("5")


def peak_rss_mb() -> float | None:
    """The process's peak resident memory since the last reset, in MB."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


@contextmanager
def stage(name: str, record: dict[str, dict[str, Any]]) -> Iterator[None]:
    """Time a stage and record its peak memory under record[name]."""
    _reset_peak()
    started = time.perf_counter()
    try:
        yield
    finally:
        record[name] = {
            "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mb": peak_rss_mb(),
        }
