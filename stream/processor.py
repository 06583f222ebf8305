"""Processing of micro-batches of session and hit events.

The agents hand over batches of raw Kafka records; this module parses them, keeps the
state in Redis, scores with the model and returns what to publish. A bad record becomes
a dead letter with its reason; it never stops the batch. Order of effects per batch:
Redis first (one transaction), then Kafka, then the agent acks. After a crash the
batch is delivered again: sessions and hits already applied are recognised and their
stored scores published again as identical copies.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import orjson

from artifact import ConversionModel
from features.columns import SESSION_COLUMNS
from features.hits import combine, hit_increments
from features.session import rows_to_columns
from stream.logic import (
    BadEvent,
    history_field,
    hit_time,
    parse_hit,
    parse_session,
    score_event,
    start_time,
)
from stream.state import HitWrite, RedisStore, SessionWrite

log = logging.getLogger(__name__)


@dataclass
class Record:
    """One consumed Kafka record."""

    value: bytes | None
    topic: str
    partition: int
    offset: int
    key: bytes | None = None


@dataclass
class Output:
    """What a batch produced: score events, hits to send back, dead letters."""

    scores: list[tuple[str, bytes]] = field(default_factory=list)  # (session_id, JSON)
    released: list[str] = field(default_factory=list)  # sessions to release after publishing
    dead_letters: list[bytes] = field(default_factory=list)
    duplicates: int = 0
    parked: int = 0


def dead_letter(record: Record, stage: str, error: str) -> bytes:
    """Describe a record that could not be processed, with its original bytes."""
    raw = record.value or b""
    return orjson.dumps(
        {
            "source_topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": None if record.key is None else record.key.decode("utf-8", "replace"),
            "stage": stage,
            "error": error,
            "original_base64": base64.b64encode(raw).decode(),
            "original_text": raw.decode("utf-8", "replace"),
            "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
    )


class Processor:
    """Turns batches of records into state, scores and dead letters."""

    def __init__(self, model: ConversionModel, store: RedisStore) -> None:
        self.model = model
        self.store = store

    def _dead(self, out: Output, record: Record, stage: str, error: str) -> None:
        log.warning(
            "dead letter from %s[%d]@%d at %s: %s",
            record.topic,
            record.partition,
            record.offset,
            stage,
            error,
        )
        out.dead_letters.append(dead_letter(record, stage, error))

    async def sessions(self, records: list[Record]) -> Output:
        """Process session-start records."""
        out = Output()
        parsed: list[tuple[Record, dict[str, Any]]] = []
        for rec in records:
            try:
                parsed.append((rec, parse_session(rec.value)))
            except BadEvent as exc:
                self._dead(out, rec, "parse", str(exc))
        if not parsed:
            return out
        rows = [row for _, row in parsed]
        try:
            vectors = self.model.session_vectors(rows_to_columns(rows, SESSION_COLUMNS))
            probs = self.model.score_session_vectors(vectors)
        except Exception as exc:  # noqa: BLE001 - a feature or model failure is per batch data
            for rec, _ in parsed:
                self._dead(out, rec, "score", f"{type(exc).__name__}: {exc}")
            return out
        sids = [row["session_id"] for row in rows]
        known = await self.store.read(sids)
        version = self.model.version
        hfield = history_field("session_start", None)
        stored = dict(
            zip(
                [s for s in dict.fromkeys(sids) if known[s].known],
                await self.store.stored_scores(
                    [(s, hfield) for s in dict.fromkeys(sids) if known[s].known]
                ),
                strict=True,
            )
        )
        writes: dict[str, SessionWrite] = {}
        for i, row in enumerate(rows):
            sid = row["session_id"]
            if sid in writes or known[sid].known:
                out.duplicates += 1
                copy = writes[sid].score_json if sid in writes else stored.get(sid)
                if copy is not None:
                    out.scores.append((sid, copy))
                continue
            start = start_time(row).isoformat()
            event = score_event(
                session_id=sid,
                client_id=row.get("client_id"),
                probability=float(probs[i]),
                model_version=version,
                trigger="session_start",
                hit_number=None,
                event_time=start,
            )
            payload = orjson.dumps(event)
            writes[sid] = SessionWrite(
                session_id=sid,
                client_id=row.get("client_id"),
                start=start,
                vector=vectors[i],
                score_json=payload,
                history_field=hfield,
            )
            out.scores.append((sid, payload))
        await self.store.write(list(writes.values()), [])
        out.released = list(dict.fromkeys(sids))
        return out

    async def release(self, sids: list[str]) -> list[tuple[str, bytes]]:
        """Let hits through for sessions whose start score is on Kafka; return parked hits.

        Parked hits go back through the hits topic, so one agent alone ever changes a
        session's hit state.
        """
        return await self.store.release(sids)

    async def forget_pending(self, sids: list[str]) -> None:
        """Drop parked hits that are back on the hits topic."""
        await self.store.forget_pending(sids)

    async def hits(self, records: list[Record]) -> Output:
        """Process hit records."""
        out = Output()
        parsed: list[tuple[Record, dict[str, Any]]] = []
        for rec in records:
            try:
                parsed.append((rec, parse_hit(rec.value)))
            except BadEvent as exc:
                self._dead(out, rec, "parse", str(exc))
        if not parsed:
            return out
        states = await self.store.read([h["session_id"] for _, h in parsed])
        applied = await self.store.applied([(h["session_id"], h["hit_number"]) for _, h in parsed])
        try:
            increments = hit_increments(
                {
                    c: [h.get(c) for _, h in parsed]
                    for c in ("hit_number", "hit_time", "event_action")
                }
            )
        except Exception as exc:  # noqa: BLE001 - a feature failure is per batch data
            for rec, _ in parsed:
                self._dead(out, rec, "features", f"{type(exc).__name__}: {exc}")
            return out

        seen: dict[str, set[int]] = {}
        to_score: list[tuple[int, str, np.ndarray]] = []  # (parsed index, sid, state)
        duplicates: list[tuple[str, int]] = []
        for i, (rec, hit) in enumerate(parsed):
            sid, number = hit["session_id"], hit["hit_number"]
            st = states[sid]
            if not st.ready:
                if await self.store.park(sid, rec.value or b""):
                    out.parked += 1
                    continue
                # The row arrived while this batch ran: read it and go on.
                states.update(await self.store.read([sid]))
                st = states[sid]
            mine = seen.setdefault(sid, set())
            if applied[i] or number in mine:
                out.duplicates += 1
                duplicates.append((sid, number))
                continue
            mine.add(number)
            st.state = combine(st.state, increments[i])
            to_score.append((i, sid, st.state.copy()))

        writes: dict[str, HitWrite] = {}
        if to_score:
            vecs = np.vstack([cast(np.ndarray, states[sid].vector) for _, sid, _ in to_score])
            try:
                probs = self.model.score_in_session(vecs, np.vstack([s for _, _, s in to_score]))
            except Exception as exc:  # noqa: BLE001 - a model failure is per batch data
                for i, _, _ in to_score:
                    self._dead(out, parsed[i][0], "score", f"{type(exc).__name__}: {exc}")
                return out
            for (i, sid, state), p in zip(to_score, probs, strict=True):
                hit = parsed[i][1]
                st = states[sid]
                event = score_event(
                    session_id=sid,
                    client_id=st.client_id,
                    probability=float(p),
                    model_version=self.model.version,
                    trigger="hit",
                    hit_number=hit["hit_number"],
                    event_time=hit_time(st.start or "", hit.get("hit_time")) if st.start else None,
                )
                payload = orjson.dumps(event)
                w = writes.setdefault(
                    sid, HitWrite(session_id=sid, state=state, applied=[], scores=[])
                )
                w.state = state
                w.applied.append(hit["hit_number"])
                w.scores.append((history_field("hit", hit["hit_number"]), payload))
                out.scores.append((sid, payload))
        await self.store.write([], list(writes.values()))
        if duplicates:
            copies = await self.store.stored_scores(
                [(sid, history_field("hit", n)) for sid, n in duplicates]
            )
            for (sid, _), copy in zip(duplicates, copies, strict=True):
                if copy is not None:
                    out.scores.append((sid, copy))
        return out
