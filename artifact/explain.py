"""Why a score is what it is: each feature's signed share of the score's log-odds.

A booster's output margin m splits into one contribution per feature plus a bias,
summing to m exactly. Two ways are offered: exact TreeSHAP (XGBoost's ``pred_contribs``),
and the path attribution (each split's feature gets the change in the tree's expected
value along the row's path, what XGBoost computes with ``approx_contribs``). Both sum
to m. Serving uses the path attribution, computed by ``artifact.paths`` (a compiled walk
of the trees, checked against XGBoost's own when a model loads). On the full-scale
model (441 trees) it takes about 6 µs a row, against 30 µs a row and 300 µs a call
asked of XGBoost, and 1.5 ms a row for TreeSHAP; on the 600 highest-scored of 20,000
sessions the path attribution and TreeSHAP agree on the top reason for 96 % of them
(``python -m bench.reasons``).

A score's log-odds is ``slope * m + intercept`` (its calibration, the online shift
included in the intercept), so each contribution is scaled by the slope and the bias
takes the intercept: contributions plus bias add up to the score's log-odds.

Each feature is named as ``docs/features.md`` names it and shown with the value the
visitor had: the feature's own value for numeric features; for the encoded categorical
features (``te_*``, ``freq_*``), the category the encoding found, read back from the
encoded pair (a value too rare to have its own code shows as ``(rare value)``, an empty
one as ``(empty)``). Read back from the features, not from the raw row, the value is the
same wherever the score is explained: the API from a request's row, the worker from
the features it keeps in Redis.

The API answers with the reasons as dicts (``explain_rows``). The worker publishes them
as JSON and keeps them so in a score's history entry (``explain_rows_json``): the same
figures, written without the dicts, byte for byte what ``orjson`` makes of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import xgboost as xgb

from artifact.calibration import Calibration
from artifact.model import contributions_dense
from artifact.paths import path_contributions, path_table
from contracts.history import BIAS, CONTRIBUTION, FEATURE, LOG_ODDS, PACKED, REST, TOP, VALUE
from features import HIT_FEATURES, SESSION_FEATURES
from features.session import (
    CATEGORICAL_COLUMNS,
    NULL_CATEGORY,
    OTHER_CATEGORY,
    SessionEncoding,
)

# How many reasons a score event carries (the API can ask for more).
EVENT_REASONS = 5
RARE_VALUE = "(rare value)"
EMPTY_VALUE = "(empty)"
# A category shown as a reason is cut to this many characters.
VALUE_MAX_CHARS = 80
# Contributions and values in events and answers are rounded to this many decimals.
DECIMALS = 6

Value = float | str | None
# A score's reasons as events and answers carry them: ``log_odds``, ``bias``, ``top`` (the
# largest contributions in absolute value, each ``{feature, value, contribution}``) and
# ``rest`` (the other features' sum): bias + top + rest = log_odds.
Reasons = dict[str, Any]


def _pair_key(te: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """One integer for each encoded pair (float32 arrays of the same shape): the bits of
    its two values, a zero of either sign taken as +0 (as the pair's equality has it)."""
    te_bits = (np.asarray(te, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    freq_bits = (np.asarray(freq, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    return (te_bits.astype(np.uint64) << np.uint64(32)) | freq_bits.astype(np.uint64)


def _category_names(encoding: SessionEncoding) -> dict[str, dict[int, str]]:
    """For each categorical column, its categories by the key of their encoded pair as
    the feature vector holds it (float32; ``_pair_key``). Categories with the same pair
    share it: ``a / b``."""
    names: dict[str, dict[int, str]] = {}
    for col in CATEGORICAL_COLUMNS:
        codes = encoding.columns.get(col)
        by_pair: dict[int, list[str]] = {}
        if codes is not None:
            keys = list(codes.log_odds)
            pairs = _pair_key(
                np.array([codes.log_odds[key] for key in keys], dtype=np.float32),
                np.array([codes.log_share[key] for key in keys], dtype=np.float32),
            ).tolist()
            for key, pair in zip(keys, pairs, strict=True):
                if key == OTHER_CATEGORY:
                    shown = RARE_VALUE
                elif key == NULL_CATEGORY:
                    shown = EMPTY_VALUE
                else:
                    shown = key[:VALUE_MAX_CHARS]
                by_pair.setdefault(pair, []).append(shown)
        names[col] = {pair: " / ".join(sorted(v)) for pair, v in by_pair.items()}
    return names


class _Categories:
    """An encoding's category names (``_category_names``), and the same as JSON."""

    def __init__(self, encoding: SessionEncoding) -> None:
        self.encoding = encoding  # kept, so that its id is not reused while this lives
        self.names = _category_names(encoding)
        self.json = {
            col: {pair: orjson.dumps(name) for pair, name in by_pair.items()}
            for col, by_pair in self.names.items()
        }


# The categories of the encodings explained so far, by the encoding's identity.
_CATEGORIES: dict[int, _Categories] = {}


def _categories(encoding: SessionEncoding) -> _Categories:
    """The ``_Categories`` of an encoding, made once per encoding."""
    held = _CATEGORIES.get(id(encoding))
    if held is None or held.encoding is not encoding:
        if len(_CATEGORIES) >= 8:  # a long-lived process that loaded many models
            _CATEGORIES.clear()
        held = _CATEGORIES[id(encoding)] = _Categories(encoding)
    return held


_INDEX = {name: j for j, name in enumerate(SESSION_FEATURES)}
# For each encoded feature, its column and the positions of its te_ and freq_ pair.
_ENCODED: dict[str, tuple[str, int, int]] = {}
for _col in CATEGORICAL_COLUMNS:
    for _prefix in ("te_", "freq_"):
        _ENCODED[f"{_prefix}{_col}"] = (_col, _INDEX[f"te_{_col}"], _INDEX[f"freq_{_col}"])


class _Layout:
    """What explaining needs to know of a feature list: the names, and for each feature
    the categorical column it encodes (None for a feature whose value is its own) and
    the positions of that column's encoded pair (0 for others)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.columns: list[str | None] = []
        self.te = np.zeros(len(names), dtype=np.intp)
        self.freq = np.zeros(len(names), dtype=np.intp)
        for j, name in enumerate(names):
            encoded = _ENCODED.get(name)
            self.columns.append(None if encoded is None else encoded[0])
            if encoded is not None:
                self.te[j], self.freq[j] = encoded[1], encoded[2]
        self.encoded = np.array([c is not None for c in self.columns], dtype=bool)
        # Each entry's reasons JSON up to its value, in each form (JSON, packed): the
        # first entry's after the list's start, the others' after the entry before.
        self.heads = {form: _heads(names, form) for form in (False, True)}

    def lookups(self, by_column: dict[str, Any]) -> list[Any]:
        """For each feature, its column's entry of ``by_column`` (None: not encoded)."""
        return [None if col is None else by_column[col] for col in self.columns]


_LAYOUTS: dict[tuple[str, ...], _Layout] = {}


def _layout(names: Sequence[str]) -> _Layout:
    """The ``_Layout`` of a feature list, made once per list."""
    key = names if isinstance(names, tuple) else tuple(names)
    found = _LAYOUTS.get(key)
    if found is None:
        if len(_LAYOUTS) >= 8:
            _LAYOUTS.clear()
        found = _LAYOUTS[key] = _Layout(key)
    return found


def contributions(booster: xgb.Booster, x: np.ndarray, *, exact: bool = False) -> np.ndarray:
    """Each row's contributions to the booster's margin, (n, features + 1) with the bias
    last: the path attribution (``artifact.paths``), or TreeSHAP with ``exact``
    (``contributions_dense``); the names were checked against the code's when the
    artifact was loaded."""
    if exact:
        return contributions_dense(booster, x, exact=True)
    return path_contributions(booster, x)


class _Top:
    """The figures of each row's reasons, for the rows at once.

    ``numbers`` holds, rounded, the log-odds, the bias and the rest, then the ``width``
    largest contributions in absolute value, then the values of those features (NaN
    where not finite); ``order`` the features' positions; ``encoded`` where they are
    encoded categorical features, and ``keys`` (only there) the keys of their pairs.
    """

    def __init__(
        self,
        booster: xgb.Booster,
        calibration: Calibration,
        x: np.ndarray,
        layout: _Layout,
        k: int | None,
        exact: bool,
    ) -> None:
        x = np.asarray(x, dtype=np.float32)
        phi = contributions(booster, x, exact=exact)
        n, m = len(x), phi.shape[1] - 1
        scaled = phi[:, :m] * calibration.slope
        self.width = width = m if k is None else max(0, min(k, m))
        self.order = order = _largest(np.abs(scaled), width)
        flat = order + (np.arange(n) * m)[:, None]  # positions in the rows laid end to end
        top = scaled.ravel()[flat]
        total = scaled.sum(axis=1)
        bias = phi[:, m] * calibration.slope + calibration.intercept
        numbers = np.empty((n, 3 + 2 * width))
        numbers[:, 0] = bias + total
        numbers[:, 1] = bias
        numbers[:, 2] = total - top.sum(axis=1)
        numbers[:, 3 : 3 + width] = top
        numbers[:, 3 + width :] = x.ravel()[flat]
        numbers[~np.isfinite(numbers)] = np.nan
        # Rounded for the rows at once (NumPy rounds half to even, as ``round`` does).
        self.numbers = np.round(numbers, DECIMALS, out=numbers)
        self.encoded = layout.encoded[order]
        self.rows, self.places = np.nonzero(self.encoded)
        self.keys: list[int] = []
        if len(self.rows):
            at = self.rows * m  # where each of these rows starts in x laid end to end
            features = order[self.rows, self.places]
            self.keys = _pair_key(
                x.ravel()[at + layout.te[features]], x.ravel()[at + layout.freq[features]]
            ).tolist()


def explain_rows(
    booster: xgb.Booster,
    calibration: Calibration,
    names: Sequence[str],
    x: np.ndarray,
    encoding: SessionEncoding,
    *,
    k: int | None = EVENT_REASONS,
    exact: bool = False,
) -> list[Reasons]:
    """The reasons of each row of a feature matrix scored by ``booster`` under
    ``calibration``, with its ``k`` largest contributions (all with None).

    Computed for the rows at once; only the listed features' values are looked up, so a
    row costs a few microseconds beyond XGBoost's own work. Ties go to the feature
    listed first.
    """
    if len(x) == 0:
        return []
    layout = _layout(names)
    top = _Top(booster, calibration, x, layout, k, exact)
    width = top.width
    numbers = top.numbers.tolist()
    values: list[list[Value]] = [row[3 + width :] for row in numbers]
    for i, t in zip(*np.nonzero(np.isnan(top.numbers[:, 3 + width :])), strict=True):
        values[i][t] = None
    if top.keys:
        lookups = layout.lookups(_categories(encoding).names)
        order = top.order
        for i, t, key in zip(top.rows.tolist(), top.places.tolist(), top.keys, strict=True):
            values[i][t] = lookups[order[i, t]].get(key, RARE_VALUE)
    listed = layout.names
    return [
        {
            "log_odds": row[0],
            "bias": row[1],
            "top": [
                {"feature": listed[j], "value": v, "contribution": c}
                for j, c, v in zip(row_order, row[3 : 3 + width], row_values, strict=True)
            ],
            "rest": row[2],
        }
        for row, row_order, row_values in zip(numbers, top.order.tolist(), values, strict=True)
    ]


_RARE_JSON = orjson.dumps(RARE_VALUE)


def _piece(piece: bytes, packed: bool) -> bytes:
    """A fixed piece of a reasons' JSON as written in JSON, or packed."""
    return PACKED[piece] if packed else piece


def _heads(names: tuple[str, ...], packed: bool) -> tuple[np.ndarray, np.ndarray]:
    """For each feature, its entry's start as the first of the list and as a later one."""
    first, later = _piece(TOP, packed), b"},"
    starts = [
        _piece(FEATURE, packed) + orjson.dumps(name) + _piece(VALUE, packed) for name in names
    ]
    return (
        np.array([first + start for start in starts], dtype=object),
        np.array([later + start for start in starts], dtype=object),
    )


def explain_rows_json(
    booster: xgb.Booster,
    calibration: Calibration,
    names: Sequence[str],
    x: np.ndarray,
    encoding: SessionEncoding,
    *,
    k: int | None = EVENT_REASONS,
) -> list[bytes]:
    """``explain_rows`` as JSON: each row's reasons as ``orjson.dumps`` makes them of its
    ``explain_rows`` reasons, byte for byte (the path attribution only)."""
    return _written(booster, calibration, names, x, encoding, k, packed=False)[0]


def _written(
    booster: xgb.Booster,
    calibration: Calibration,
    names: Sequence[str],
    x: np.ndarray,
    encoding: SessionEncoding,
    k: int | None,
    packed: bool,
) -> tuple[list[bytes], list[bytes]]:
    """Each row's reasons as JSON and, with ``packed``, as a history entry keeps them
    (``contracts.history.pack_reasons``; else no rows).

    The worker publishes its reasons as JSON and keeps them packed: both written here
    from the figures of the rows at once and a few pieces made once (the names, the
    categories), without the dicts, which cost several times more.
    """
    n = len(x)
    if n == 0:
        return [], []
    layout = _layout(names)
    top = _Top(booster, calibration, x, layout, k, False)
    w = top.width
    # Each number as orjson writes it (NaN as null), in the rows' order.
    written = np.empty(n * (3 + 2 * w), dtype=object)
    written[:] = orjson.dumps(top.numbers.ravel(), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(
        b","
    )
    numbers = written.reshape(n, 3 + 2 * w)
    # Every row in pieces, a row to a line: log-odds and bias, each with its piece; four
    # an entry (its start up to the value, the value, contribution, its number); the
    # list's end with the rest's piece, the rest and the end.
    pieces = np.empty((n, 7 + 4 * w), dtype=object)
    pieces[:, 1], pieces[:, 3] = numbers[:, 0], numbers[:, 1]
    pieces[:, 5 : 4 * w + 4 : 4] = numbers[:, 3 + w :]
    pieces[:, 7 : 4 * w + 4 : 4] = numbers[:, 3 : 3 + w]
    pieces[:, 4 * w + 5], pieces[:, 4 * w + 6] = numbers[:, 2], b"}"
    if top.keys:
        lookups = layout.lookups(_categories(encoding).json)
        features = top.order[top.rows, top.places].tolist()
        pieces[top.rows, 5 + 4 * top.places] = [
            lookups[j].get(key, _RARE_JSON) for j, key in zip(features, top.keys, strict=True)
        ]
    forms = []
    for form in (False, True) if packed else (False,):
        first, later = layout.heads[form]
        pieces[:, 0], pieces[:, 2] = _piece(LOG_ODDS, form), _piece(BIAS, form)
        if w:
            pieces[:, 4] = first[top.order[:, 0]]
            pieces[:, 8 : 4 * w + 4 : 4] = later[top.order[:, 1:]]
            pieces[:, 6 : 4 * w + 4 : 4] = _piece(CONTRIBUTION, form)
        end = b"}]" if w else _piece(TOP, form) + b"]"
        pieces[:, 4 * w + 4] = end + _piece(REST, form)
        forms.append([b"".join(row) for row in pieces.tolist()])
    return forms[0], forms[1] if packed else []


def _largest(magnitude: np.ndarray, k: int) -> np.ndarray:
    """The column indexes of each row's ``k`` largest values, largest first, ties to the
    lower index: a stable sort's order, found by ``k`` passes of argmax when ``k`` is
    small (the values are not negative)."""
    if k > 8:
        return np.argsort(-magnitude, axis=1, kind="stable")[:, :k]
    left = magnitude.copy()
    rows = np.arange(len(left))
    order = np.empty((len(left), k), dtype=np.intp)
    for t in range(k):
        order[:, t] = j = left.argmax(axis=1)  # the first of equal values
        left[rows, j] = -1.0
    return order


def _in_session(
    model: Any, session_x: np.ndarray, states: np.ndarray, matrix: np.ndarray | None
) -> tuple[xgb.Booster, Calibration, tuple[str, ...], np.ndarray]:
    """What explains in-session scores of ``model``: the booster, its calibration, its
    features and its input (``matrix`` if made already); the session-start model's where
    the artifact has no in-session model."""
    if model.in_session_booster is None:
        return model.session_booster, model.session_calibration, SESSION_FEATURES, session_x
    if matrix is None:
        matrix = model.in_session_matrix(session_x, states)
    return model.in_session_booster, model.in_session_calibration, _IN_SESSION, matrix


_IN_SESSION = (*SESSION_FEATURES, *HIT_FEATURES)


def explain_session(
    model: Any, x: np.ndarray, k: int | None = EVENT_REASONS, *, exact: bool = False
) -> list[Reasons]:
    """The reasons of session-start scores of ``model`` (a ConversionModel), from session
    vectors."""
    return explain_rows(
        model.session_booster,
        model.session_calibration,
        SESSION_FEATURES,
        x,
        model.encoding,
        k=k,
        exact=exact,
    )


def explain_in_session(
    model: Any,
    session_x: np.ndarray,
    states: np.ndarray,
    k: int | None = EVENT_REASONS,
    *,
    exact: bool = False,
    matrix: np.ndarray | None = None,
) -> list[Reasons]:
    """The reasons of in-session scores of ``model`` from session vectors and hit states,
    or their ``in_session_matrix`` made already."""
    if len(session_x) == 0:
        return []
    booster, calibration, names, x = _in_session(model, session_x, states, matrix)
    return explain_rows(booster, calibration, names, x, model.encoding, k=k, exact=exact)


# A score's reasons as the worker publishes them (JSON) and keeps them (packed).
Written = tuple[bytes, bytes]


def session_reasons_written(model: Any, x: np.ndarray) -> list[Written]:
    """``explain_session`` as the worker publishes and keeps it."""
    forms = _written(
        model.session_booster,
        model.session_calibration,
        SESSION_FEATURES,
        x,
        model.encoding,
        EVENT_REASONS,
        packed=True,
    )
    return list(zip(*forms, strict=True))


def in_session_reasons_written(
    model: Any, session_x: np.ndarray, states: np.ndarray, matrix: np.ndarray | None = None
) -> list[Written]:
    """``explain_in_session`` as the worker publishes and keeps it."""
    if len(session_x) == 0:
        return []
    booster, calibration, names, x = _in_session(model, session_x, states, matrix)
    forms = _written(booster, calibration, names, x, model.encoding, EVENT_REASONS, packed=True)
    return list(zip(*forms, strict=True))


def prepare(model: Any) -> None:
    """Make what explaining ``model``'s scores needs ahead of its first score (each
    booster's table for the compiled walk, checked against XGBoost's, and the category
    names): a worker or the API calls it as it loads a model, so that no score waits."""
    for booster in (model.session_booster, model.in_session_booster):
        if booster is not None:
            path_table(booster)
    _categories(model.encoding)
