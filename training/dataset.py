"""Reading the two CSV exports, as generated or as the real files come.

The real ga_hits.csv is 4.3 GB: it is streamed in blocks with pyarrow, only the columns
needed are read, and each hit is kept as a few small numbers (its session's row index,
hit_number, hit_time and a code for its event_action), about 20 bytes a hit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from features.columns import HIT_COLUMNS, SESSION_COLUMNS
from features.target import TARGET_ACTIONS

SESSIONS_FILE = "ga_sessions.csv"
HITS_FILE = "ga_hits.csv"
BLOCK_BYTES = 64 << 20


class DataError(ValueError):
    """An input file is missing or not of the expected shape."""


@dataclass
class Hits:
    """The hits of the loaded sessions, one array entry a hit.

    ``session`` is the row index of the hit's session in the sessions frame; orphan hits
    (whose session has no row) are counted and dropped.
    """

    session: np.ndarray  # int32
    hit_number: np.ndarray  # int32
    hit_time_ms: np.ndarray  # float32, NaN when unknown
    action: np.ndarray  # int32 codes into actions
    actions: list[str]
    orphans: int

    def __len__(self) -> int:
        return len(self.session)


@dataclass
class Dataset:
    """Sessions with their target and their hits."""

    sessions: pd.DataFrame
    hits: Hits
    converted: np.ndarray  # 1 when any hit of the session is a target action
    first_target_hit: np.ndarray  # hit_number of the first target hit; 0 when none
    fingerprint: str  # identifies the input files (size and head/tail bytes)


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"missing {path}: generate data with `python -m training generate`")
    return path


def _check_header(path: Path, expected: tuple[str, ...]) -> None:
    with path.open("r", encoding="utf-8") as fh:
        header = fh.readline().strip().replace('"', "").split(",")
    missing = [c for c in expected if c not in header]
    if missing:
        raise DataError(f"{path} lacks the columns {missing}; its header is {header}")


def read_sessions(path: Path) -> pd.DataFrame:
    """Read ga_sessions.csv as it is: every column a string (NaN when empty)."""
    _check_header(_require(path), SESSION_COLUMNS)
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in SESSION_COLUMNS},
            include_columns=list(SESSION_COLUMNS),
            strings_can_be_null=True,
            null_values=[""],
            quoted_strings_can_be_null=True,
        ),
    )
    df = table.to_pandas()
    return df.astype(object).where(df.notna(), np.nan)


def read_hits(path: Path, session_ids: pd.Index, *, block_bytes: int = BLOCK_BYTES) -> Hits:
    """Stream ga_hits.csv and keep the few numbers training needs per hit."""
    _check_header(_require(path), HIT_COLUMNS)
    columns = ["session_id", "hit_number", "hit_time", "event_action"]
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=block_bytes),
        convert_options=pacsv.ConvertOptions(
            include_columns=columns,
            column_types={
                "session_id": pa.string(),
                "hit_number": pa.float64(),
                "hit_time": pa.float64(),
                "event_action": pa.string(),
            },
            strings_can_be_null=True,
        ),
    )
    vocab: dict[str, int] = {}
    parts: list[tuple[np.ndarray, ...]] = []
    orphans = 0
    for batch in reader:
        sid = batch.column("session_id").to_pandas()
        idx = session_ids.get_indexer(sid)
        keep = idx >= 0
        orphans += int((~keep).sum())
        enc = batch.column("event_action").dictionary_encode()
        local = [
            vocab.setdefault(a if a is not None else "", len(vocab))
            for a in enc.dictionary.to_pylist()
        ]
        codes = np.asarray(local, dtype=np.int32)[
            enc.indices.fill_null(0).to_numpy(zero_copy_only=False)
        ]
        parts.append(
            (
                idx[keep].astype(np.int32),
                np.nan_to_num(
                    batch.column("hit_number").to_numpy(zero_copy_only=False), nan=0
                ).astype(np.int32)[keep],
                batch.column("hit_time").to_numpy(zero_copy_only=False).astype(np.float32)[keep],
                codes[keep],
            )
        )
    if parts:
        session, hit_number, hit_time, action = (
            np.concatenate(p) for p in zip(*parts, strict=True)
        )
    else:
        session = hit_number = action = np.empty(0, dtype=np.int32)
        hit_time = np.empty(0, dtype=np.float32)
    order = np.lexsort((hit_number, session))
    return Hits(
        session=session[order],
        hit_number=hit_number[order],
        hit_time_ms=hit_time[order],
        action=action[order],
        actions=list(vocab),
        orphans=orphans,
    )


def _fingerprint(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as fh:
            digest.update(fh.read(1 << 20))
            fh.seek(max(size - (1 << 20), 0))
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()


def load_dataset(data_dir: Path) -> Dataset:
    """Load both files and build the target from the hits."""
    sessions_path, hits_path = data_dir / SESSIONS_FILE, data_dir / HITS_FILE
    sessions = read_sessions(sessions_path)
    duplicated = sessions["session_id"].duplicated()
    if duplicated.any():
        sessions = sessions.loc[~duplicated].reset_index(drop=True)
    hits = read_hits(hits_path, pd.Index(sessions["session_id"]))
    is_target = (
        np.isin(np.asarray(hits.actions, dtype=object), list(TARGET_ACTIONS))[hits.action]
        if hits.actions
        else np.zeros(0, bool)
    )
    n = len(sessions)
    converted = np.zeros(n, dtype=np.int8)
    converted[hits.session[is_target]] = 1
    first_target = np.zeros(n, dtype=np.int32)
    # Hits are sorted by (session, hit_number): the first target row of a session wins.
    t_sessions = hits.session[is_target]
    t_numbers = hits.hit_number[is_target]
    first_rows = np.r_[True, t_sessions[1:] != t_sessions[:-1]] if len(t_sessions) else []
    first_target[t_sessions[first_rows]] = t_numbers[first_rows]
    return Dataset(
        sessions=sessions,
        hits=hits,
        converted=converted,
        first_target_hit=first_target,
        fingerprint=_fingerprint(sessions_path, hits_path),
    )
