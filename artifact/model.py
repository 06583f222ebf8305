"""The model artifact: what ``Pickled_model.pkl`` holds once unpickled."""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xgboost as xgb
from xgboost import core as xgb_core

from artifact.calibration import IDENTITY, Calibration
from artifact.tiers import Tiers
from contracts.calibrations import OFFLINE
from features import HIT_FEATURES, IN_SESSION_FEATURES, SESSION_FEATURES
from features.columns import SESSION_COLUMNS
from features.hits import hit_feature_matrix
from features.session import SessionEncoding, rows_to_columns, session_matrix


def _predict_args(output_type: int) -> bytes:
    """The settings inplace_predict sends with every call: the output type (0 value,
    1 margin), all trees, NaN as missing."""
    return xgb_core.make_jcargs(
        type=output_type,
        training=False,
        iteration_begin=0,
        iteration_end=0,
        missing=np.nan,
        strict_shape=False,
        cache_id=0,
    )


# Built once.
_VALUE_ARGS = _predict_args(0)
_MARGIN_ARGS = _predict_args(1)


def _interface(x: np.ndarray) -> tuple[np.ndarray, bytes]:
    """A dense float32 copy of ``x`` (or ``x`` itself) and its array interface, which
    XGBoost reads in place: keep the array alive until the call returns."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, m = x.shape
    interface = b'{"data": [%d, true], "strides": null, "typestr": "<f4", ' % x.ctypes.data
    interface += b'"shape": [%d, %d], "version": 3}' % (n, m)
    return x, interface


def _output(call: Any, args: tuple[Any, ...], expected: tuple[int, ...], what: str) -> np.ndarray:
    """Make an XGBoost prediction call (``call(*args, shape, dims, out)``) and return its
    output as float64 with shape ``expected``, after checking its size. The buffer belongs
    to the booster until its next call: it is copied out now."""
    shape = ctypes.POINTER(xgb_core.c_bst_ulong)()
    dims = xgb_core.c_bst_ulong()
    preds = ctypes.POINTER(ctypes.c_float)()
    xgb_core._check_call(call(*args, ctypes.byref(shape), ctypes.byref(dims), ctypes.byref(preds)))
    size = 1
    for k in range(dims.value):
        size *= int(shape[k])
    want = int(np.prod(expected))
    if size != want:
        raise ValueError(f"expected {want} {what}, the model returned {size}")
    return np.ctypeslib.as_array(preds, shape=expected).astype(np.float64)


def predict_dense(booster: xgb.Booster, x: np.ndarray, *, margin: bool = False) -> np.ndarray:
    """P(convert) of each row of a dense float matrix (its log-odds with ``margin``), float64.

    The same C call ``Booster.inplace_predict`` makes for a NumPy array, without its
    Python preamble (type dispatch, imports, argument encoding), which costs more than
    the trees themselves for one row.
    """
    x, interface = _interface(x)
    return _output(
        xgb_core._LIB.XGBoosterPredictFromDense,
        (booster.handle, interface, _MARGIN_ARGS if margin else _VALUE_ARGS, ctypes.c_void_p()),
        (len(x),),
        "predictions",
    )


# The settings of a dense matrix built for one call (NaN as missing, one thread), and of
# the contributions asked of it: 3 is the path attribution, 2 TreeSHAP.
_MATRIX_ARGS = xgb_core.make_jcargs(missing=np.nan, nthread=1, data_split_mode=0)
_CONTRIB_ARGS = {
    exact: b'{"type": %d, "training": false, "iteration_begin": 0, "iteration_end": 0, '
    b'"strict_shape": false}' % (2 if exact else 3)
    for exact in (False, True)
}


def contributions_dense(booster: xgb.Booster, x: np.ndarray, *, exact: bool = False) -> np.ndarray:
    """Each row's contributions to the booster's margin, (n, features + 1), the bias last,
    as float64: the path attribution, or TreeSHAP with ``exact``.

    The C calls ``Booster.predict(DMatrix(x), pred_contribs=True)`` makes, without the
    Python around them (matrix dispatch, feature names, argument encoding), which costs
    more than the attribution itself for the few rows a worker's batch explains.
    """
    x, interface = _interface(x)
    n, m = x.shape
    matrix = ctypes.c_void_p()
    xgb_core._check_call(
        xgb_core._LIB.XGDMatrixCreateFromDense(interface, _MATRIX_ARGS, ctypes.byref(matrix))
    )
    try:
        return _output(
            xgb_core._LIB.XGBoosterPredictFromDMatrix,
            (booster.handle, matrix, _CONTRIB_ARGS[exact]),
            (n, m + 1),
            "contributions",
        )
    finally:
        xgb_core._check_call(xgb_core._LIB.XGDMatrixFree(matrix))


class FeatureMismatchError(RuntimeError):
    """The model was trained on other features than the code computes."""


@dataclass
class ConversionModel:
    """Session-start and in-session conversion models over raw ga_sessions rows.

    Behaves like a scikit-learn classifier: ``predict_proba(df)`` takes ga_sessions rows
    as read from the CSV. The worker and the API use the array methods instead, which
    keep pandas off the hot path.

    Each booster's log-odds pass through its calibration (``artifact.calibration``), a
    monotone map fitted on the most recent weeks of the training data; artifacts saved
    before calibrations existed load with the identity.
    """

    version: str
    encoding: SessionEncoding
    session_booster: xgb.Booster
    in_session_booster: xgb.Booster | None
    session_features: tuple[str, ...]
    in_session_features: tuple[str, ...]
    classes_: tuple[int, int] = (0, 1)
    session_calibration: Calibration = IDENTITY
    in_session_calibration: Calibration = IDENTITY
    # The online calibration in use (``stream.recalibration``): its id, and the shift in
    # log-odds it adds to both calibrations above. A pickled artifact holds the offline.
    calibration_id: str = OFFLINE
    calibration_shift: float = 0.0
    # Hot / Warm / Cold thresholds (``artifact.tiers``); an artifact saved before tiers
    # existed has none, and every one of its scores is Cold.
    tiers: Tiers | None = None
    # Per channel value, the features that most separate its converting test-week
    # sessions from its others (``training.drivers``); None in artifacts saved before.
    channel_drivers: dict[str, Any] | None = None

    def with_online_shift(self, shift: float, calibration_id: str) -> ConversionModel:
        """This model with an online shift of its log-odds, from its offline calibration.

        The boosters are shared, not copied; only the level moves, so the order of any
        two sessions' scores stays what it was.
        """
        base = self.offline()
        return dataclasses.replace(
            base,
            session_calibration=dataclasses.replace(
                base.session_calibration, intercept=base.session_calibration.intercept + shift
            ),
            in_session_calibration=dataclasses.replace(
                base.in_session_calibration,
                intercept=base.in_session_calibration.intercept + shift,
            ),
            calibration_id=calibration_id,
            calibration_shift=float(shift),
        )

    def offline(self) -> ConversionModel:
        """This model with its offline calibration only (no online shift)."""
        if self.calibration_id == OFFLINE and self.calibration_shift == 0.0:
            return self
        return dataclasses.replace(
            self,
            session_calibration=dataclasses.replace(
                self.session_calibration,
                intercept=self.session_calibration.intercept - self.calibration_shift,
            ),
            in_session_calibration=dataclasses.replace(
                self.in_session_calibration,
                intercept=self.in_session_calibration.intercept - self.calibration_shift,
            ),
            calibration_id=OFFLINE,
            calibration_shift=0.0,
        )

    def tier_codes(self, probabilities: np.ndarray) -> np.ndarray:
        """The tier code (``artifact.tiers``: 0 cold, 1 warm, 2 hot) of probabilities this
        model made, judged without its online shift."""
        if self.tiers is None:
            return np.zeros(len(probabilities), dtype=np.int8)
        return self.tiers.codes(probabilities, self.calibration_shift)

    def check_features(self) -> None:
        """Fail loudly when the code's feature list differs from the trained one."""
        if tuple(self.session_features) != SESSION_FEATURES:
            raise FeatureMismatchError(
                f"model {self.version} was trained on session features "
                f"{list(self.session_features)}, the code computes {list(SESSION_FEATURES)}"
            )
        if self.in_session_booster is not None and (
            tuple(self.in_session_features) != IN_SESSION_FEATURES
        ):
            raise FeatureMismatchError(
                f"model {self.version} was trained on in-session features "
                f"{list(self.in_session_features)}, the code computes {list(HIT_FEATURES)}"
            )

    def set_threads(self, n: int) -> None:
        """Set how many threads a predict call may use (1 suits small batches)."""
        for booster in (self.session_booster, self.in_session_booster):
            if booster is not None:
                booster.set_param({"nthread": n})

    def session_vectors(self, cols: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Compute session features of rows given as columns."""
        return session_matrix(cols, self.encoding)

    def score_session_vectors(self, x: np.ndarray) -> np.ndarray:
        """Score session-start feature vectors; returns P(convert) per row."""
        if len(x) == 0:
            return np.empty(0, dtype=np.float64)
        # The feature list is checked once, when the artifact is loaded, not per call.
        return self.session_calibration.apply(predict_dense(self.session_booster, x, margin=True))

    def score_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Score ga_sessions rows given as dictionaries (events, API requests)."""
        return self.score_session_vectors(
            self.session_vectors(rows_to_columns(rows, SESSION_COLUMNS))
        )

    def in_session_matrix(self, session_x: np.ndarray, states: np.ndarray) -> np.ndarray:
        """The in-session model's input: session vectors beside their hit features."""
        return np.hstack([session_x, hit_feature_matrix(states)]).astype(np.float32)

    def score_in_session(
        self, session_x: np.ndarray, states: np.ndarray, matrix: np.ndarray | None = None
    ) -> np.ndarray:
        """Score sessions after some hits, from session vectors and hit states (or their
        ``in_session_matrix``, made already)."""
        if self.in_session_booster is None:
            return self.score_session_vectors(session_x)
        if len(session_x) == 0:
            return np.empty(0, dtype=np.float64)
        x = self.in_session_matrix(session_x, states) if matrix is None else matrix
        return self.in_session_calibration.apply(
            predict_dense(self.in_session_booster, x, margin=True)
        )

    def predict_proba(self, df: Any) -> np.ndarray:
        """Return (n, 2) class probabilities for a DataFrame of raw ga_sessions rows."""
        cols = {c: df[c].tolist() if c in df else [None] * len(df) for c in SESSION_COLUMNS}
        p = self.score_session_vectors(self.session_vectors(cols))
        return np.column_stack([1.0 - p, p])

    def predict(self, df: Any, threshold: float = 0.5) -> np.ndarray:
        """Return 0/1 predictions at a probability threshold."""
        return (self.predict_proba(df)[:, 1] >= threshold).astype(int)
