"""In-session training rows: point-in-time snapshots of sessions after each hit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.hits import action_table, cumulative_states, hit_increments_coded
from training.config import TrainConfig
from training.dataset import Dataset


@dataclass
class Snapshots:
    """In-session training rows: a session after its hit k, before any target hit."""

    session: np.ndarray
    hits_seen: np.ndarray
    states: np.ndarray
    label: np.ndarray


def snapshots(
    ds: Dataset, rows: np.ndarray, cfg: TrainConfig, limit: int | None = None
) -> Snapshots:
    """Build point-in-time snapshots of the given sessions after each of their hits.

    A snapshot after hit k sees hits 1..k only; sessions are cut at their first target
    hit, so no snapshot sees the conversion or anything after it. The hits kept (the
    chosen sessions' first ``max_snapshot_hits`` hits before any target) are a prefix of
    each session, so the running states are computed on those hits alone.
    """
    h = ds.hits
    n = len(h.session)
    starts = np.flatnonzero(np.r_[True, h.session[1:] != h.session[:-1]]) if n else np.zeros(0)
    position = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n])) + 1
    first_target = ds.first_target_hit[h.session]
    before_target = (first_target == 0) | (h.hit_number < first_target)
    chosen = np.zeros(len(ds.sessions), dtype=bool)
    chosen[rows] = True
    keep = np.flatnonzero(chosen[h.session] & before_target & (position <= cfg.max_snapshot_hits))
    increments = hit_increments_coded(
        h.hit_number[keep], h.hit_time_ms[keep], h.action[keep], action_table(h.actions)
    )
    states = cumulative_states(h.session[keep], increments)
    del increments
    limit = cfg.max_snapshots if limit is None else limit
    pick = np.arange(len(keep))
    if len(pick) > limit:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(pick, size=limit, replace=False))
    sessions = h.session[keep[pick]]
    return Snapshots(
        session=sessions,
        hits_seen=position[keep[pick]].astype(np.int32),
        states=states[pick],
        label=ds.converted[sessions].astype(np.int8),
    )
