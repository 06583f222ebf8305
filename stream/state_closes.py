"""Closing sessions in Redis: the due ones found, their final scores stored, then taken out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from contracts import keys
from contracts.dashboard import minute
from stream.redis_calls import ScriptCalls, WriteCall
from stream.session_state import CloseWrite


class StateCloses:
    """Finds the sessions due to close, stores their close and takes them out."""

    def __init__(self, client: Any, layout: keys.Layout, calls: ScriptCalls) -> None:
        self.r = client
        self.layout = layout
        self.calls = calls

    async def due(
        self, upto_ms: Mapping[int, float], limit: int
    ) -> dict[int, list[tuple[str, float]]]:
        """Return, by partition, open sessions whose latest event is at or before its time.

        At most ``limit`` sessions in all, the partitions taken in the order given.
        """
        order = list(upto_ms)

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for partition in order:
                pipe.zrangebyscore(
                    self.layout.open_sessions(partition),
                    "-inf",
                    upto_ms[partition],
                    start=0,
                    num=limit,
                    withscores=True,
                )
            return await pipe.execute()

        found = await self.calls.retry("due", run) if order else []
        out: dict[int, list[tuple[str, float]]] = {}
        left = limit
        for partition, rows in zip(order, found, strict=True):
            if rows and left > 0:
                out[partition] = [(sid.decode(), float(ms)) for sid, ms in rows[:left]]
                left -= len(out[partition])
        return out

    async def open_count(self, partitions: Sequence[int]) -> int:
        """Count the open sessions of these partitions."""

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for partition in partitions:
                pipe.zcard(self.layout.open_sessions(partition))
            return await pipe.execute()

        return sum(int(n) for n in await self.calls.retry("open count", run)) if partitions else 0

    async def prepare_close(self, closes: Sequence[CloseWrite]) -> None:
        """Store the final scores and outcomes of sessions about to be closed.

        The sessions are marked closed here, with their final scores, so a hit applied
        from now on is late; they leave their partitions' open sets in ``finish_close``,
        once the scores are published. A crash in between finds them still open, with a
        final score stored, and publishes the very same copies again.
        """
        if not closes:
            return
        batch = WriteCall(self.calls)
        scores: dict[int, int] = {}
        for c in closes:
            ops, d = batch.ops(c.partition)
            entry = c.history if c.history is not None else c.score_json
            fields: list[Any] = [c.history_field, entry, keys.LATEST_FIELD, c.history_field]
            if c.outcome is not None:
                fields += ["outcome", c.outcome]
            ops.add("C", self.layout.session(c.partition, c.session_id), d, c.session_id, *fields)
            scores[c.partition] = scores.get(c.partition, 0) + 1
        now = minute()
        for part, n in scores.items():
            ops, d = batch.ops(part)
            ops.add("R", None, d, now, 0, n)
        await (await batch.send("prepare close"))

    async def finish_close(self, closed: Mapping[int, Sequence[str]]) -> None:
        """Take closed sessions out of their partitions' open sets.

        (The dashboard counted them closed in ``prepare_close``, with their final score.)
        """
        batch = WriteCall(self.calls)
        for partition, sids in closed.items():
            if sids:
                ops, _ = batch.ops(partition)
                ops.add("ZREM", self.layout.open_sessions(partition), *sids)
        await (await batch.send("finish close"))
