"""The replayer: CSV rows as session and hit events, in event-time order."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from aiokafka import AIOKafkaProducer

from contracts import topics
from features.columns import HIT_COLUMNS, SESSION_COLUMNS
from stream.admin import ensure_topics
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


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    # Only an empty field is null: "(not set)", "NA" and the like are real values.
    return pd.read_csv(
        path, dtype=str, keep_default_na=False, na_values=[""], usecols=list(columns)
    )[list(columns)]


def _records(df: pd.DataFrame) -> list[dict[str, object]]:
    return df.astype(object).where(df.notna(), None).to_dict("records")


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


def build_events(data: Path, limit_sessions: int | None = None) -> list[tuple[str, bytes, bytes]]:
    """Return (topic, key, value) of every event of a data set, in event-time order."""
    sessions = _read(data / "ga_sessions.csv", SESSION_COLUMNS)
    hits = _read(data / "ga_hits.csv", HIT_COLUMNS)
    if limit_sessions is not None:
        sessions = sessions.head(limit_sessions)
        hits = hits[hits["session_id"].isin(sessions["session_id"])]
    hits = hits.reset_index(drop=True)
    s_time, h_time = event_order(sessions, hits)
    session_rows = _records(sessions)
    for row in session_rows:
        row["visit_number"] = int(str(row["visit_number"]))
    hit_rows = _records(hits)
    for row in hit_rows:
        row["hit_number"] = int(str(row["hit_number"]))
        row["hit_time"] = None if row["hit_time"] is None else float(str(row["hit_time"]))
    # Sort key: time, then sessions before hits, then hit_number.
    keys = np.concatenate([s_time, h_time])
    kind = np.r_[np.zeros(len(session_rows)), np.ones(len(hit_rows))]
    number = np.r_[np.zeros(len(session_rows)), [r["hit_number"] for r in hit_rows]].astype(
        np.float64
    )
    order = np.lexsort((number, kind, keys))
    rows = session_rows + hit_rows
    out = []
    for i in order:
        row = rows[i]
        topic = topics.SESSIONS if i < len(session_rows) else topics.HITS
        out.append((topic, str(row["session_id"]).encode(), orjson.dumps(row)))
    return out


async def send_events(
    settings: StreamSettings,
    events: list[tuple[str, bytes, bytes]],
    *,
    rate: float = 0.0,
    progress: bool = True,
) -> float:
    """Publish events to their (prefixed) topics; returns the seconds it took."""
    await ensure_topics(settings.kafka_bootstrap, settings.topic_prefix, settings.topic_partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=10, max_batch_size=256 * 1024, acks=1
    )
    await producer.start()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(events), unit="event", desc="replay")
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
    events = build_events(data, limit_sessions)
    seconds = asyncio.run(send_events(settings, events, rate=rate, progress=progress))
    n_sessions = sum(1 for t, _, _ in events if t == topics.SESSIONS)
    return ReplayStats(sessions=n_sessions, hits=len(events) - n_sessions, seconds=seconds)
