"""Closing idle sessions: a final score, and the not-converted outcome if none came.

A close round takes the open sessions whose last event is before the close horizon,
holds them in the gate, stores their final scores and outcomes (marking them closed),
and hands back the events to publish; once they are on Kafka ``finish`` takes the
sessions out of the open sets. A crash in between finds them open with a final score
stored, and the next round publishes the very same copies again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import cast

import numpy as np
import orjson

from contracts.history import history_entry, history_field
from contracts.scores import TIER_NAMES, score_event
from contracts.times import iso_from_ms, now_ms, utc_iso
from stream.leads import explained_in_session
from stream.logic import outcome_event
from stream.parking import Parking
from stream.records import Context, Output
from stream.state import CloseWrite, SessionState

END_FIELD = history_field("session_end", None)


class Closer:
    """Closes idle sessions with their final scores and outcomes."""

    def __init__(self, ctx: Context, parking: Parking) -> None:
        self.ctx = ctx
        self.parking = parking

    async def close_due(self, upto: Mapping[int, float], limit: int = 1000) -> Output:
        """Close sessions whose last event is before ``upto`` of their partition.

        At most ``limit`` sessions are closed per call; each is marked closed as its
        final score is stored, so a hit read after that is late. The caller publishes
        the output, then calls ``finish`` with ``out.closed``.
        """
        async with self.closing(upto, limit) as out:
            return out

    @contextlib.asynccontextmanager
    async def closing(self, upto: Mapping[int, float], limit: int = 1000) -> AsyncIterator[Output]:
        """``close_due``, its sessions held in the gate until the block ends.

        The worker publishes the output inside the block, so a late hit for one of
        these sessions is applied after the close's events are out. A session a hits
        batch holds now is left for the next sweep.
        """
        gate = self.ctx.gate
        out = Output()
        due_by_partition = await self.ctx.store.due(upto, limit)
        due = [row for rows in due_by_partition.values() for row in rows]
        free = set(gate.hold_free(sid for sid, _ in due))
        try:
            await self._close(out, due_by_partition, [row for row in due if row[0] in free])
            # Hold on only to the sessions being closed.
            closing = {sid for sids in out.closed.values() for sid in sids}
            gate.let_go(free - closing)
            free = closing
            yield out
        finally:
            gate.let_go(free)

    async def finish(self, closed: Mapping[int, list[str]]) -> None:
        """Take closed sessions out of the open sets once their final events are on Kafka."""
        await self.ctx.store.finish_close(closed)
        for sids in closed.values():
            self.ctx.cache.drop(sids)

    async def _read(
        self, due: list[tuple[str, float]], where: Mapping[str, int]
    ) -> tuple[dict[str, SessionState], dict[str, bytes | None]]:
        """Due sessions' states, and their final scores if a crash came between storing
        and publishing them; read together. A session the cache knows open has no final
        score stored: it is not read."""
        states: dict[str, SessionState] = {}
        for sid, _ in due:
            cached = self.ctx.cache.get(sid, where[sid])
            if cached is not None and not cached.state.closed:
                states[sid] = dataclasses.replace(cached.state)
        unknown = [sid for sid, _ in due if sid not in states]
        store = self.ctx.store
        (read, _), copies = await asyncio.gather(
            store.read({sid: where[sid] for sid in unknown}),
            store.stored_scores([(sid, where[sid], END_FIELD) for sid in unknown]),
        )
        states.update(read)
        stored: dict[str, bytes | None] = dict.fromkeys(states)
        stored.update(zip(unknown, copies, strict=True))
        return states, stored

    async def _close(
        self,
        out: Output,
        due_by_partition: Mapping[int, list[tuple[str, float]]],
        due: list[tuple[str, float]],
    ) -> None:
        if not due:
            return
        where = {sid: p for p, rows in due_by_partition.items() for sid, _ in rows}
        states, stored = await self._read(due, where)
        # A session whose start score is not out yet, or which is being released, is not
        # closed: the hits parked for it are applied at its release and move its last
        # event on. (Under a backlog its hits may have been read long before it, and the
        # event time is far past its start.) It is looked at again by the next sweep.
        releasing = self.parking.releasing
        due = [
            (sid, ms)
            for sid, ms in due
            if sid not in releasing and (states[sid].ready or not states[sid].known)
        ]
        if not due:
            return
        closing = {sid for sid, _ in due}
        for partition, rows in due_by_partition.items():
            sids_here = [sid for sid, _ in rows if sid in closing]
            if sids_here:
                out.closed[partition] = sids_here
        fresh: list[tuple[str, float]] = []
        for sid, last_ms in due:
            st, copy = states[sid], stored[sid]
            if not st.known or st.vector is None:
                continue  # its state expired: nothing left to close
            if copy is not None:  # closed before a crash: the same copies again
                out.score(sid, copy, "session_end")
                if st.outcome is not None and b'"not_converted"' in st.outcome:
                    out.outcomes.append((sid, st.outcome))
                continue
            fresh.append((sid, last_ms))
        if fresh:
            await self._final(out, fresh, states, where)

    async def _final(
        self,
        out: Output,
        fresh: list[tuple[str, float]],
        states: dict[str, SessionState],
        where: Mapping[str, int],
    ) -> None:
        """Score sessions closed for the first time, store their close, add its events."""
        model = self.ctx.model
        vecs = np.vstack([cast(np.ndarray, states[sid].vector) for sid, _ in fresh])
        hit_states = np.vstack([states[sid].state for sid, _ in fresh])
        probs = model.score_in_session(vecs, hit_states)
        tiers = explained_in_session(model, probs, vecs, hit_states, self.ctx.reasons)
        out.unexplained += tiers.failed
        tiers.count(out.tiers)
        stamp_ms = now_ms()
        stamp = utc_iso(stamp_ms)
        online = (model.calibration_id, model.calibration_shift)
        closes: list[CloseWrite] = []
        for k, ((sid, last_ms), p) in enumerate(zip(fresh, probs, strict=True)):
            st = states[sid]
            event_time = iso_from_ms(last_ms)
            tier, reasons, packed = tiers.why(k)
            payload = orjson.dumps(
                score_event(
                    session_id=sid,
                    client_id=st.client_id,
                    probability=float(p),
                    model_version=model.version,
                    trigger="session_end",
                    hit_number=None,
                    event_time=event_time,
                    scored_at=stamp,
                    calibration=online,
                    tier=TIER_NAMES[tier],
                    reasons=reasons,
                )
            )
            outcome = None
            if st.outcome is None:
                outcome = orjson.dumps(
                    outcome_event(
                        session_id=sid,
                        client_id=st.client_id,
                        outcome="not_converted",
                        hit_number=None,
                        event_time=event_time,
                        last_score=st.latest,
                    )
                )
                out.outcomes.append((sid, outcome))
            entry = history_entry(p, model.version, last_ms, stamp_ms, online, tier, packed)
            closes.append(CloseWrite(sid, payload, END_FIELD, outcome, entry, where[sid]))
            out.score(sid, payload, "session_end")
        await self.ctx.store.prepare_close(closes)
        cache = self.ctx.cache
        for c in closes:
            st = states[c.session_id]
            st.closed, st.latest, st.has_latest = True, c.score_json, True
            if c.outcome is not None:
                st.outcome = c.outcome
            known = cache.get(c.session_id, c.partition)
            if known is not None:  # a state read from Redis is not cached (_RunSession)
                cache.put(c.session_id, st, known.applied)
