"""The loop that runs the close sweep: a steady period, never two runs at once."""

from __future__ import annotations

import asyncio

import pytest

from stream.app import every


class Done(Exception):
    pass


def _run(period_s: float, durations: list[float]) -> list[float]:
    """Run jobs of the given durations on a fake clock; return the sleeps asked for."""
    now = [0.0]
    sleeps: list[float] = []
    left = list(durations)
    running = [0]

    async def sleep(s: float) -> None:
        sleeps.append(round(s, 6))
        now[0] += s

    async def job() -> None:
        running[0] += 1
        assert running[0] == 1
        if not left:
            raise Done
        now[0] += left.pop(0)
        running[0] -= 1

    with pytest.raises(Done):
        asyncio.run(every(period_s, job, clock=lambda: now[0], sleep=sleep))
    return sleeps


def test_a_quick_job_keeps_the_period() -> None:
    assert _run(1.0, [0.25, 0.5]) == [1.0, 0.75, 0.5]


def test_a_slow_job_is_followed_at_once_by_the_next() -> None:
    assert _run(1.0, [2.5, 0.25]) == [1.0, 0.0, 0.75]
