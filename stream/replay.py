"""The replayer: CSV rows as session and hit events, in event-time order."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from aiokafka import AIOKafkaProducer

from contracts import topics
from features.columns import HIT_COLUMNS, SESSION_COLUMNS
from stream.admin import ensure_topics
from stream.kafka import client_options
from stream.settings import StreamSettings

MSK_OFFSET_MS = 3 * 3600 * 1000


@dataclass
class ReplayStats:
    """What a replay sent."""

    sessions: int
    hits: int
    seconds: float

    @property
    def rate(self) -> float:
        return (self.sessions + self.hits) / self.seconds if self.seconds else 0.0


def _read(path: Path, columns: tuple[str, ...]) -> pa.Table:
    # Every column as text; only an empty field is null: "(not set)", "NA" and the like
    # are real values.
    table = pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns},
            include_columns=list(columns),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    return table.select(list(columns))


def event_order(sessions: pd.DataFrame, hits: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Return event times (ms) of sessions and hits that put them in event-time order.

    A session starts at its visit_date and visit_time (Moscow time); a hit happens at its
    session's start plus hit_time. A hit without hit_time keeps its hit_number order:
    it takes the time of the hit before it (or of the session start).
    """
    local = pd.to_datetime(sessions["visit_date"] + " " + sessions["visit_time"], errors="coerce")
    # Whatever resolution pandas picks for the datetimes, count milliseconds explicitly.
    start_ms = (
        (local - pd.Timestamp(0)) // pd.Timedelta(milliseconds=1) - MSK_OFFSET_MS
    ).to_numpy()
    by_id = pd.Series(start_ms, index=sessions["session_id"].to_numpy())
    by_id = by_id[~by_id.index.duplicated()]
    # Orphan hits have no row: their session_id still carries the visit's unix time.
    from_id = pd.to_numeric(hits["session_id"].str.split(".").str[1], errors="coerce")
    hit_start = hits["session_id"].map(by_id).fillna(from_id * 1000).fillna(0).to_numpy()
    offset = pd.to_numeric(hits["hit_time"], errors="coerce")
    raw = hit_start + offset.to_numpy()
    order = pd.DataFrame(
        {
            "sid": hits["session_id"].to_numpy(),
            "n": pd.to_numeric(hits["hit_number"]).to_numpy(),
            "t": raw,
            "start": hit_start,
        }
    )
    order = order.sort_values(["sid", "n"], kind="stable")
    order["t"] = order["t"].fillna(order["start"])
    order["t"] = order.groupby("sid", sort=False)["t"].cummax()
    return start_ms.astype(np.float64), order["t"].reindex(hits.index).to_numpy()


def iter_event_chunks(
    data: Path, limit_sessions: int | None = None, chunk: int = 200_000
) -> Iterator[list[tuple[str, bytes, bytes]]]:
    """Yield (topic, key, value) of a data set's events in event-time order, in chunks.

    The files are held as Arrow tables and only one chunk at a time becomes Python
    objects, so a full history (17.6M events) replays in bounded memory.
    """
    sessions = _read(data / "ga_sessions.csv", SESSION_COLUMNS)
    hits = _read(data / "ga_hits.csv", HIT_COLUMNS)
    if limit_sessions is not None:
        sessions = sessions.slice(0, limit_sessions)
        hits = hits.filter(pc.is_in(hits["session_id"], value_set=sessions["session_id"]))
    s_time, h_time = event_order(
        sessions.select(["session_id", "visit_date", "visit_time"]).to_pandas(),
        hits.select(["session_id", "hit_number", "hit_time"]).to_pandas(),
    )
    n_sessions = sessions.num_rows
    hit_numbers = pc.cast(hits["hit_number"], pa.int64()).to_numpy()
    # Sort key: time, then sessions before hits, then hit_number.
    keys = np.concatenate([s_time, h_time])
    kind = np.r_[np.zeros(n_sessions), np.ones(hits.num_rows)]
    number = np.r_[np.zeros(n_sessions), hit_numbers].astype(np.float64)
    order = np.lexsort((number, kind, keys))
    del keys, kind, number
    for first in range(0, len(order), chunk):
        part = order[first : first + chunk]
        rows_s = iter(sessions.take(part[part < n_sessions]).to_pylist())
        rows_h = iter(hits.take(part[part >= n_sessions] - n_sessions).to_pylist())
        out = []
        for i in part:
            if i < n_sessions:
                row = next(rows_s)
                row["visit_number"] = int(row["visit_number"])
                topic = topics.SESSIONS
            else:
                row = next(rows_h)
                row["hit_number"] = int(row["hit_number"])
                row["hit_time"] = None if row["hit_time"] is None else float(row["hit_time"])
                topic = topics.HITS
            out.append((topic, row["session_id"].encode(), orjson.dumps(row)))
        yield out


def build_events(data: Path, limit_sessions: int | None = None) -> list[tuple[str, bytes, bytes]]:
    """Return (topic, key, value) of every event of a data set, in event-time order."""
    return [e for part in iter_event_chunks(data, limit_sessions) for e in part]


async def send_events(
    settings: StreamSettings,
    events: list[tuple[str, bytes, bytes]],
    *,
    rate: float = 0.0,
    progress: bool = True,
) -> float:
    """Publish events to their (prefixed) topics; returns the seconds it took."""
    await ensure_topics(settings)
    # A paced sender sends each event when it happens, as the website does; a bulk
    # load lets the producer gather records for 10 ms into larger requests.
    producer = AIOKafkaProducer(
        **client_options(settings),
        linger_ms=0 if rate > 0 else 10,
        max_batch_size=256 * 1024,
        acks="all",  # on a replicated cluster, an event sent survives its leader
    )
    await producer.start()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(events), unit="event", desc="replay")
    # Paced, every event must go out on time. A full collection walking a million
    # events in memory stalls the sender for 100-200 ms: what is alive now is left
    # out of collections until the send is done.
    if rate > 0:
        gc.freeze()
    started = time.perf_counter()
    try:
        pending = []
        for k, (topic, key, value) in enumerate(events, start=1):
            name = topics.topic_name(topic, settings.topic_prefix)
            pending.append(await producer.send(name, value, key=key))
            if rate > 0:
                ahead = k / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                if bar is not None:
                    bar.update(len(pending))
                pending = []
        await asyncio.gather(*pending)
        if bar is not None:
            bar.update(len(pending))
    finally:
        if rate > 0:
            gc.unfreeze()
        await producer.stop()
        if bar is not None:
            bar.close()
    return time.perf_counter() - started


def replay(
    settings: StreamSettings,
    data: Path,
    *,
    rate: float = 0.0,
    limit_sessions: int | None = None,
    progress: bool = True,
) -> ReplayStats:
    """Replay a data set's CSVs into Kafka."""
    sessions = hits = 0
    seconds = 0.0
    for events in iter_event_chunks(data, limit_sessions):
        seconds += asyncio.run(send_events(settings, events, rate=rate, progress=progress))
        n = sum(1 for t, _, _ in events if t == topics.SESSIONS)
        sessions, hits = sessions + n, hits + len(events) - n
    return ReplayStats(sessions=sessions, hits=hits, seconds=seconds)
