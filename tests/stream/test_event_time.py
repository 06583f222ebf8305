"""The partition event time that decides when sessions close, with a fake store."""

import asyncio
import time

from stream.processor import IDLE_MS, Processor

HOUR = 3_600_000.0


class MarkStore:
    def __init__(self, marks: dict[str, tuple[float, float]]) -> None:
        self.marks = marks

    async def watermarks(self, partitions: list[int]) -> dict[int, dict[str, tuple[float, float]]]:
        return {p: dict(self.marks) for p in partitions}


def _event_time(marks: dict[str, tuple[float, float]]) -> float | None:
    p = Processor(model=None, store=MarkStore(marks))  # type: ignore[arg-type]
    return asyncio.run(p.event_time(0))


def test_no_event_time_until_both_topics_have_a_mark() -> None:
    now = time.time() * 1000
    assert _event_time({"sessions": (10 * HOUR, now)}) is None


def test_a_backlog_read_faster_on_sessions_is_held_back_by_the_hits() -> None:
    now = time.time() * 1000
    t = _event_time({"sessions": (50 * HOUR, now), "hits": (2 * HOUR, now)})
    assert t is not None and 2 * HOUR <= t < 2 * HOUR + 1000


def test_a_quiet_topic_no_longer_holds_the_other_back() -> None:
    now = time.time() * 1000
    quiet = now - IDLE_MS - 1000
    t = _event_time({"sessions": (1 * HOUR, quiet), "hits": (3 * HOUR, now)})
    assert t is not None and 3 * HOUR <= t < 3 * HOUR + 1000


def test_when_both_are_quiet_the_wall_clock_moves_event_time_on() -> None:
    now = time.time() * 1000
    t = _event_time({"sessions": (1 * HOUR, now - 60_000), "hits": (2 * HOUR, now - 30_000)})
    assert t is not None and 2 * HOUR + 30_000 <= t < 2 * HOUR + 31_000


def _event_time_behind(marks: dict[str, tuple[float, float]], behind: set[str]) -> float | None:
    p = Processor(model=None, store=MarkStore(marks))  # type: ignore[arg-type]
    return asyncio.run(p.event_time(0, behind))


def test_a_topic_with_records_still_to_read_holds_the_other_back_however_long_quiet() -> None:
    # Under a backlog the worker may not reach a partition's hits for a while: their
    # mark is old, but the hits are there, and their sessions must stay open.
    now = time.time() * 1000
    quiet = now - IDLE_MS - 60_000
    marks = {"sessions": (30 * HOUR, now), "hits": (2 * HOUR, quiet)}
    assert _event_time_behind(marks, set()) >= 30 * HOUR  # type: ignore[operator]
    assert _event_time_behind(marks, {"hits"}) == 2 * HOUR
    # Both behind: the lower mark, not moved on by the wall clock.
    marks = {"sessions": (5 * HOUR, quiet), "hits": (4 * HOUR, quiet)}
    assert _event_time_behind(marks, {"sessions", "hits"}) == 4 * HOUR
