"""Features of the hits seen so far in a session.

A session's in-session state is a short vector of counters, each combined by ``sum`` or
``max`` over the hits applied. Both rules are commutative, so the state after a set of
hits does not depend on the order they arrived in: the worker applies each hit's
increment as it comes (and skips hit numbers it has applied already), training takes
cumulative sums and maxima over hits 1..k. The features are then a function of the
state alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from features.session import is_null
from features.target import TARGET_ACTIONS

CARD_VIEW_ACTIONS: frozenset[str] = frozenset({"view_card", "view_new_card", "go_to_car_card"})

# name, combine rule, meaning. The order is the order of the state vector.
STATE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("hits", "sum", "hits applied"),
    ("max_hit_number", "max", "largest hit_number applied"),
    ("max_hit_time_ms", "max", "largest hit_time (ms since session start); -1 when unknown"),
    ("card_views", "sum", "car-card views (view_card, view_new_card, go_to_car_card)"),
    ("photo_views", "sum", "photo or gallery actions"),
    ("landing", "sum", "subscription landing actions (sub_landing*)"),
    ("view_cars", "sum", "catalogue openings (sub_view_cars_click)"),
    ("search", "sum", "search form actions (search_form_*)"),
    ("sub_actions", "sum", "other subscription actions (sub_*) that are not targets"),
    ("target_hits", "sum", "target (conversion) hits"),
)
STATE_NAMES: tuple[str, ...] = tuple(name for name, _, _ in STATE_FIELDS)
STATE_COMBINE: tuple[str, ...] = tuple(rule for _, rule, _ in STATE_FIELDS)
STATE_INDEX: dict[str, int] = {name: i for i, name in enumerate(STATE_NAMES)}

# name, meaning: the documentation table. target_hits is state, never a feature.
HIT_FEATURE_TABLE: tuple[tuple[str, str, str], ...] = (
    ("hits_seen", "hits seen so far", "hit_number"),
    ("log_hits_seen", "log(1 + hits seen)", "hit_number"),
    ("max_hit_number", "largest hit_number seen (gaps show unlogged actions)", "hit_number"),
    (
        "time_on_site_s",
        "seconds from session start to the latest hit (NaN when unknown)",
        "hit_time",
    ),
    ("card_views", "car-card views so far", "event_action"),
    ("photo_views", "photo and gallery actions so far", "event_action"),
    ("landing", "subscription landing actions so far", "event_action"),
    ("view_cars", "catalogue openings so far", "event_action"),
    ("search", "search form actions so far", "event_action"),
    ("sub_actions", "other subscription actions so far", "event_action"),
    ("card_view_share", "car-card views / hits seen", "event_action"),
    ("hits_per_minute", "hits seen / (1 + minutes on site)", "hit_number, hit_time"),
)
HIT_FEATURES: tuple[str, ...] = tuple(name for name, _, _ in HIT_FEATURE_TABLE)


def empty_state() -> np.ndarray:
    """Return the state of a session before any hit."""
    state = np.zeros(len(STATE_FIELDS), dtype=np.float64)
    state[STATE_INDEX["max_hit_time_ms"]] = -1.0
    return state


def _hit_time_ms(value: object) -> float:
    if is_null(value):
        return -1.0
    try:
        t = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -1.0
    return t if t >= 0 and not math.isnan(t) else -1.0


def _action_counts(action: str) -> tuple[float, float, float, float, float, float, float]:
    """Classify one event_action into the counters it bumps (one hit bumps at most one)."""
    card = photo = landing = cars = search = sub = target = 0.0
    if action in TARGET_ACTIONS:
        target = 1.0
    elif action in CARD_VIEW_ACTIONS:
        card = 1.0
    elif "photo" in action or "gallery" in action:
        photo = 1.0
    elif action.startswith("sub_landing"):
        landing = 1.0
    elif action == "sub_view_cars_click":
        cars = 1.0
    elif action.startswith("search_form"):
        search = 1.0
    elif action.startswith("sub_"):
        sub = 1.0
    return (card, photo, landing, cars, search, sub, target)


def action_table(actions: Sequence[str]) -> np.ndarray:
    """Return the counters each distinct event_action bumps; (len(actions), 7)."""
    return np.asarray([_action_counts(a) for a in actions], dtype=np.float64).reshape(-1, 7)


def hit_increments_coded(
    hit_number: np.ndarray, hit_time_ms: np.ndarray, action_codes: np.ndarray, table: np.ndarray
) -> np.ndarray:
    """Compute hit increments from arrays, with actions as codes into ``action_table``.

    ``hit_time_ms`` holds NaN (or a negative value) where the time is unknown.
    """
    n = len(hit_number)
    out = np.empty((n, len(STATE_FIELDS)), dtype=np.float64)
    out[:, 0] = 1.0
    out[:, 1] = hit_number
    times = np.asarray(hit_time_ms, dtype=np.float64)
    out[:, 2] = np.where(np.isfinite(times) & (times >= 0), times, -1.0)
    out[:, 3:] = table[np.asarray(action_codes, dtype=np.intp)]
    return out


def hit_increments(cols: Mapping[str, Sequence[Any]]) -> np.ndarray:
    """Compute what each hit adds to its session's state; (n, len(STATE_FIELDS))."""
    vocab: dict[str, int] = {}
    codes = [
        vocab.setdefault("" if is_null(a) else str(a), len(vocab)) for a in cols["event_action"]
    ]
    times = [_hit_time_ms(t) for t in cols["hit_time"]]
    return hit_increments_coded(
        np.asarray(cols["hit_number"], dtype=np.float64),
        np.asarray(times, dtype=np.float64),
        np.asarray(codes, dtype=np.intp),
        action_table(list(vocab)),
    )


_MAX_FIELDS: tuple[int, ...] = tuple(i for i, rule in enumerate(STATE_COMBINE) if rule == "max")


def combine_values(state: Sequence[float], increment: Sequence[float]) -> list[float]:
    """Apply one hit's increment to a state, as plain floats (the worker's hot loop)."""
    out = [a + b for a, b in zip(state, increment, strict=True)]
    for i in _MAX_FIELDS:
        out[i] = max(state[i], increment[i])
    return out


def combine(state: np.ndarray, increment: np.ndarray) -> np.ndarray:
    """Apply one hit's increment to a state vector."""
    return np.asarray(combine_values(state.tolist(), increment.tolist()), dtype=np.float64)


def hit_feature_matrix(states: np.ndarray) -> np.ndarray:
    """Compute the in-session features from state vectors; (n, len(HIT_FEATURES))."""
    states = np.atleast_2d(states)
    s = {name: states[:, i] for i, name in enumerate(STATE_NAMES)}
    hits = s["hits"]
    time_s = np.where(s["max_hit_time_ms"] >= 0, s["max_hit_time_ms"] / 1000.0, np.nan)
    safe_hits = np.maximum(hits, 1.0)
    minutes = np.nan_to_num(time_s, nan=0.0) / 60.0
    out = np.column_stack(
        [
            hits,
            np.log1p(hits),
            s["max_hit_number"],
            time_s,
            s["card_views"],
            s["photo_views"],
            s["landing"],
            s["view_cars"],
            s["search"],
            s["sub_actions"],
            s["card_views"] / safe_hits,
            hits / (1.0 + minutes),
        ]
    )
    return out.astype(np.float32)


def cumulative_states(session_codes: np.ndarray, increments: np.ndarray) -> np.ndarray:
    """Compute each session's state after each of its hits, for hits sorted by session.

    ``session_codes`` labels each row's session, rows of a session are contiguous and in
    hit_number order; row k of a session gets the state after its hits 1..k.
    """
    codes = np.asarray(session_codes)
    n = len(codes)
    out = np.empty_like(increments, dtype=np.float64)
    if n == 0:
        return out
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    for i, rule in enumerate(STATE_COMBINE):
        col = increments[:, i].astype(np.float64)
        if rule == "sum":
            total = np.cumsum(col)
            before_group = np.r_[0.0, total][starts][group]
            out[:, i] = total - before_group
        else:
            # Offset every group above the previous ones so one running maximum restarts
            # at each group boundary.
            span = float(np.max(col) - np.min(col) + 1.0)
            lifted = col - np.min(col) + group * span
            out[:, i] = np.maximum.accumulate(lifted) - group * span + np.min(col)
    return out
