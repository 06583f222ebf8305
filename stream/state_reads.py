"""Reading sessions' state, their stored scores, and each partition's offsets and marks."""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Sequence
from typing import Any

import msgpack
import numpy as np
from redis.commands.core import AsyncScript

from contracts import keys
from contracts.history import copies_from_history, latest_from_hash
from features.hits import empty_state
from stream.redis_calls import ScriptCalls
from stream.scripts import READ_SCRIPT, STORED_SCRIPT
from stream.session_state import Sessions, SessionState

# The hash fields a batch reads of each session; the packed counters come last.
READ_FIELDS = [keys.ROW_FIELD, "ready", "closed", "outcome", keys.LEAD_FIELD, keys.HIT_STATE_FIELD]
_READ_LATEST = [*READ_FIELDS, keys.LATEST_FIELD]
_LATEST_AT = len(_READ_LATEST)  # its place (from 1) in READ_SCRIPT's fields
_N_META = 5
_EMPTY_STATE: list[float] = empty_state().tolist()  # what a counter is before any hit
_STATE_BYTES = len(keys.pack_hit_state(_EMPTY_STATE))


def _lead_tier(raw: bytes | None) -> int:
    """The lead tier a session hash holds (0: none, or not a tier this code knows)."""
    try:
        return int(raw) if raw else 0
    except ValueError:
        return 0


class StateReads:
    """Reads what the store holds: sessions, stored scores, applied offsets, marks."""

    def __init__(self, client: Any, layout: keys.Layout, calls: ScriptCalls) -> None:
        self.r = client
        self.layout = layout
        self.calls = calls
        self._stored = AsyncScript(client, STORED_SCRIPT)
        self._read = AsyncScript(client, READ_SCRIPT)

    async def send_read(
        self,
        sessions: Sessions,
        hits: Sequence[tuple[str, int]] = (),
        *,
        latest: bool | Collection[str] = True,
    ) -> Awaitable[tuple[dict[str, SessionState], list[bool]]]:
        """Send the read of sessions' state, and of which (session, hit_number) pairs are
        applied; return what to await for what it read.

        ``sessions`` maps each session, those of ``hits`` too, to its partition. One call
        per group of partitions: HMGET of each session's hash. ``latest`` says whose latest
        score to read: all, none, or the sessions named; the others' states say
        ``has_latest=False`` (``RedisStore.latest_scores`` reads them).

        Redis runs a lane's calls in the order sent, so the read sees the writes sent
        before it and none sent after it.
        """
        numbers: dict[str, list[int]] = {}
        for sid, n in hits:
            numbers.setdefault(sid, []).append(n)
        groups: dict[int, list[str]] = {}
        for sid, partition in sessions.items():
            groups.setdefault(self.calls.group(partition), []).append(sid)
        session = self.layout.session
        sent = []
        for sids in groups.values():
            fields, at = [], []
            for sid in sids:
                wanted = latest if isinstance(latest, bool) else sid in latest
                these = _READ_LATEST if wanted else READ_FIELDS
                at.append(_LATEST_AT if wanted else 0)
                if sid in numbers:
                    these = [*these, *(f"hit:{n}" for n in numbers[sid])]
                fields.append(these)
            names = [session(sessions[sid], sid) for sid in sids]
            args = [msgpack.packb(fields, use_bin_type=False), msgpack.packb(at)]
            sent.append((sids, await self.calls.send("read", self._read, names, args)))

        async def decoded() -> tuple[dict[str, SessionState], list[bool]]:
            out: dict[str, SessionState] = {}
            flags: dict[tuple[str, int], bool] = {}
            for sids, replied in sent:
                rows = msgpack.unpackb(await replied, raw=True)
                self._decode_read(sids, sessions, numbers, rows, latest, out, flags)
            return out, [flags[pair] for pair in hits]

        return decoded()

    @staticmethod
    def _decode_read(
        sids: list[str],
        sessions: Sessions,
        numbers: dict[str, list[int]],
        rows: list[Any],
        latest: bool | Collection[str],
        out: dict[str, SessionState],
        flags: dict[tuple[str, int], bool],
    ) -> None:
        empty = _EMPTY_STATE
        n_fields = len(READ_FIELDS)
        for sid, row in zip(sids, rows, strict=True):
            raw, ready, closed, outcome, lead = (x or None for x in row[:_N_META])
            stored = None if raw is None else keys.unpack_row(raw)
            packed = row[_N_META]
            if packed and len(packed) == _STATE_BYTES:
                state = np.frombuffer(packed, dtype="<f8")  # read-only: states are replaced
            elif packed:
                state = np.array(keys.unpack_hit_state(packed, empty), dtype=np.float64)
            else:
                state = np.array(empty, dtype=np.float64)
            has_latest = latest if isinstance(latest, bool) else sid in latest
            at = n_fields + 2 if has_latest else n_fields
            out[sid] = SessionState(
                known=stored is not None,
                ready=ready is not None,
                client_id=None if stored is None else stored.client_id,
                start=None if stored is None else stored.start,
                vector=None if stored is None else np.frombuffer(stored.vector, dtype=np.float32),
                state=state,
                partition=sessions[sid],
                closed=closed is not None,
                latest=(
                    latest_from_hash(sid, row[n_fields] or None, row[n_fields + 1] or None, raw)
                    if has_latest
                    else None
                ),
                has_latest=has_latest,
                outcome=outcome,
                lead_tier=_lead_tier(lead),
                channel=None if stored is None else stored.channel,
            )
            for n, f in zip(numbers.get(sid, []), row[at:], strict=True):
                flags[(sid, n)] = f is not False  # its score is stored

    async def stored_scores(self, items: Sequence[tuple[str, int, str]]) -> list[bytes | None]:
        """Return the stored score JSON for (session, partition, score field) triples."""
        return [score for score, _ in await self.stored_copies(items)]

    async def stored_copies(
        self, items: Sequence[tuple[str, int, str]]
    ) -> list[tuple[bytes | None, bytes | None]]:
        """Return the stored score JSON for (session, partition, score field) triples,
        each with the JSON of the lead it made (None: none; both None: no such score).

        The JSON is made again from the stored entry and the session's row (client id,
        start, channel), the very bytes published the first time. One script call per
        group of partitions, on its lane, after the writes sent before it.
        """
        if not items:
            return []
        groups: dict[int, list[int]] = {}
        for k, (_, partition, _) in enumerate(items):
            groups.setdefault(self.calls.group(partition), []).append(k)
        found: list[Any] = [None] * len(items)
        sent = []
        for ks in groups.values():
            names = [self.layout.session(items[k][1], items[k][0]) for k in ks]
            packed = msgpack.packb([items[k][2] for k in ks], use_bin_type=False)
            sent.append((ks, await self.calls.send("stored scores", self._stored, names, [packed])))
        for ks, replied in sent:
            for k, row in zip(ks, msgpack.unpackb(await replied, raw=True), strict=True):
                found[k] = row
        out: list[tuple[bytes | None, bytes | None]] = []
        for (sid, _, name), row in zip(items, found, strict=True):
            if not row:
                out.append((None, None))
                continue
            entry, raw = row
            out.append(copies_from_history(sid, keys.unpack_row(raw) if raw else None, name, entry))
        return out

    async def applied(self, partitions: Collection[int]) -> dict[tuple[str, int], int | None]:
        """Return the applied offsets Redis holds for input partitions (None: none)."""
        order = sorted(partitions)

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for partition in order:
                pipe.hmget(self.layout.applied(partition), ["sessions", "hits"])
            return await pipe.execute()

        found = await self.calls.retry("applied offsets", run) if order else []
        out: dict[tuple[str, int], int | None] = {}
        for partition, (sessions, hits) in zip(order, found, strict=True):
            out[("sessions", partition)] = None if sessions is None else int(sessions)
            out[("hits", partition)] = None if hits is None else int(hits)
        return out

    async def watermarks(
        self, partitions: Sequence[int]
    ) -> dict[int, dict[str, tuple[float, float]]]:
        """Return partitions' stored (event time, wall time) marks in ms, by input kind."""

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for partition in partitions:
                pipe.hgetall(self.layout.watermark(partition))
            return await pipe.execute()

        found = await self.calls.retry("watermarks", run) if partitions else []
        out: dict[int, dict[str, tuple[float, float]]] = {}
        for partition, h in zip(partitions, found, strict=True):
            marks = out[partition] = {}
            for kind in ("sessions", "hits"):
                event = h.get(f"{kind}_event_ms".encode())
                wall = h.get(f"{kind}_wall_ms".encode())
                if event is not None and wall is not None:
                    marks[kind] = (float(event), float(wall))
        return out
