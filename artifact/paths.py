"""The path attribution of a booster's trees, computed by a small compiled walk.

XGBoost's path attribution (``approx_contribs``) walks each tree a row falls through: at
every split the split's feature gets the change of the tree's expected value from the
node to the child the row goes to, and the root's expected value goes to the bias. A
node's expected value is the mean of its leaves' values weighted by their cover (the
sum of the training rows' hessians).

Asked for it, XGBoost recomputes every tree's expected values on every call and zeroes
and adds a whole row of contributions per tree and row: 20 to 30 µs a row for the
project's models, as much as the rest of an event's processing. ``PathTable`` works the
expected values out once per booster, from its JSON model, and keeps each node's step
(its expected value less its parent's); ``paths.c`` walks the rows down the trees and
adds up the steps, a few microseconds a row. The C file is compiled with the machine's
C compiler when first needed and kept, named by a digest of its source
(``python -m artifact.paths`` compiles it ahead, as the image build does).

A table is checked against XGBoost's own attribution when it is made, on rows built to
go down both sides of the trees' splits and their missing-value branches. A booster the
table cannot stand for (another booster kind than trees, several outputs, categorical
splits, or any difference), or a machine without a C compiler, gets XGBoost's
attribution instead, said once in the log.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import xgboost as xgb

from artifact.model import contributions_dense

log = logging.getLogger(__name__)

# The largest difference from XGBoost's own attribution a table may show on its check
# rows: XGBoost adds in float32, about a millionth of a unit per tree at most.
CHECK_TOLERANCE = 1e-4
CHECK_ROWS = 64

SOURCE = Path(__file__).with_name("paths.c")
FLAGS = ("-O2", "-shared", "-fPIC")


class UnsupportedBoosterError(ValueError):
    """A booster whose path attribution a table cannot stand for."""


def _folders() -> list[Path]:
    """Where the compiled walk is kept: beside its source, else in the user's cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [SOURCE.parent / "_build", cache / "sberauto-scorer"]


def _compile(source: bytes, target: Path) -> None:
    """Compile ``source`` into the shared library ``target`` (replaced whole)."""
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        raise OSError("no C compiler (cc) on the PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        c_file, built = Path(work) / "paths.c", Path(work) / target.name
        c_file.write_bytes(source)
        done = subprocess.run(
            [compiler, *FLAGS, "-o", str(built), str(c_file)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise OSError(f"{compiler} failed: {done.stderr.strip()[:500]}")
        os.replace(built, target)
    for older in target.parent.glob("paths-*.so"):  # of earlier sources
        if older != target:
            older.unlink(missing_ok=True)


@functools.cache
def kernel() -> Any:
    """The compiled walk (``path_contributions`` of ``paths.c``), compiled if needed;
    None where it cannot be had (said once in the log)."""
    try:
        source = SOURCE.read_bytes()
    except OSError as exc:
        log.warning("path attribution by XGBoost: %s", exc)
        return None
    built_for = f"{' '.join(FLAGS)} {sys.platform} {platform.machine()}".encode()
    digest = hashlib.sha256(source + built_for)
    name = f"paths-{digest.hexdigest()[:16]}.so"
    problems = []
    for folder in _folders():
        library = folder / name
        try:
            if not library.is_file():
                _compile(source, library)
            walk = ctypes.CDLL(str(library)).path_contributions
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(f"{library}: {exc}")
            continue
        walk.restype = None
        walk.argtypes = [
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int64,
            *[ctypes.c_void_p] * 5,
        ]
        return walk
    log.warning("path attribution by XGBoost, no compiled walk: %s", "; ".join(problems))
    return None


def _laid_out(tree: dict, m: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One tree's nodes as the walk reads them (numbered from its root), the step each
    node adds, and the tree's depth; refuses what the walk cannot follow safely."""
    if tree.get("categories_nodes"):
        raise UnsupportedBoosterError("a booster with categorical splits")
    lo, hi = tree["left_children"], tree["right_children"]
    feature, value = tree["split_indices"], tree["split_conditions"]  # a leaf's: its value
    cover, size = tree["sum_hessian"], len(lo)
    # Breadth first from the root: a node's children get two numbers side by side.
    order, depth_of, seen, at = [0], [0], {0}, 0
    while at < len(order):
        node = order[at]
        at += 1
        if lo[node] == -1:
            continue
        if not 0 <= feature[node] < m:
            raise UnsupportedBoosterError(f"a split on feature {feature[node]} of {m}")
        for child in (lo[node], hi[node]):
            if not 0 < child < size or child in seen:
                raise UnsupportedBoosterError(f"a tree with a bad child {child} of {size}")
            seen.add(child)
            order.append(child)
            depth_of.append(depth_of[at - 1] + 1)
    mean = [0.0] * size  # the expected values, leaves up
    for node in reversed(order):
        if lo[node] == -1:
            mean[node] = float(value[node])
        else:
            a, b = lo[node], hi[node]
            if not cover[node] > 0:
                raise UnsupportedBoosterError(f"a node of cover {cover[node]}")
            mean[node] = (mean[a] * cover[a] + mean[b] * cover[b]) / cover[node]
    number = {node: k for k, node in enumerate(order)}
    nodes = np.zeros(len(order), dtype=NODE)
    step = np.zeros(len(order))
    for k, node in enumerate(order):
        if lo[node] == -1:
            nodes[k] = (0.0, 0, k, 1, 1, (0, 0))
        else:
            first = number[lo[node]]
            if number[hi[node]] != first + 1:
                raise UnsupportedBoosterError("children not side by side")  # cannot happen
            nodes[k] = (value[node], feature[node], first, tree["default_left"][node], 0, (0, 0))
            for child in (lo[node], hi[node]):
                step[number[child]] = mean[child] - mean[node]
    return nodes, step, max(depth_of)


# One node as paths.c reads it (its node_t).
NODE = np.dtype(
    [
        ("threshold", "<f4"),
        ("feature", "<i4"),
        ("left", "<i4"),
        ("default_left", "u1"),
        ("leaf", "u1"),
        ("unused", "u1", (2,)),
    ]
)


class PathTable:
    """A booster's trees laid out for the compiled walk: each tree's nodes in breadth-first
    order, a node's two children side by side, every node with its step of the
    expected value from its parent; ``bias`` is every row's bias (the roots' expected
    values and the base score)."""

    def __init__(self, booster: xgb.Booster) -> None:
        model = orjson.loads(booster.save_raw("json"))["learner"]
        kind = model["gradient_booster"]
        if kind.get("name") != "gbtree":
            raise UnsupportedBoosterError(f"a {kind.get('name')} booster")
        trees = kind["model"]["trees"]
        if any(int(group) != 0 for group in kind["model"].get("tree_info", [])):
            raise UnsupportedBoosterError("a booster with several outputs")
        self.n_features = m = int(model["learner_model_param"]["num_feature"])
        if m < 1:
            raise UnsupportedBoosterError("a booster without features")
        parts = [_laid_out(tree, m) for tree in trees]
        sizes = [len(nodes) for nodes, _, _ in parts]
        self.roots = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
        self.depths = np.asarray([depth for _, _, depth in parts], dtype=np.int32)
        self.nodes = (
            np.concatenate([nodes for nodes, _, _ in parts]) if parts else np.zeros(0, dtype=NODE)
        )
        self.nodes["left"] += np.repeat(self.roots, sizes)  # numbers in the whole forest
        self.step = np.concatenate([step for _, step, _ in parts]) if parts else np.zeros(0)
        # Every row's bias is the same: the roots' expected values and the base score's
        # log-odds, taken from XGBoost (which reads the base score as its objective says).
        empty = np.full((1, m), np.nan, dtype=np.float32)
        self.bias = float(contributions_dense(booster, empty)[0, m])
        self.walk = kernel()
        if self.walk is None:
            raise UnsupportedBoosterError("no compiled walk")
        self._check(booster, value_rows(trees, m))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Each row's contributions to the booster's margin, (n, features + 1) float64
        with the bias last."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, m = x.shape if x.ndim == 2 else (-1, -1)
        if m != self.n_features:
            raise ValueError(f"rows of {m} features, the booster has {self.n_features}")
        out = np.zeros((n, m + 1))
        self.walk(
            n,
            m,
            x.ctypes.data,
            len(self.roots),
            self.roots.ctypes.data,
            self.depths.ctypes.data,
            self.nodes.ctypes.data,
            self.step.ctypes.data,
            out.ctypes.data,
        )
        out[:, m] += self.bias
        return out

    def _check(self, booster: xgb.Booster, rows: np.ndarray) -> None:
        """Refuse to stand for XGBoost where the table's attribution differs from it."""
        worst = float(np.max(np.abs(self.contributions(rows) - contributions_dense(booster, rows))))
        if not worst <= CHECK_TOLERANCE:
            raise UnsupportedBoosterError(f"differs from XGBoost's attribution by {worst:.3g}")


def value_rows(trees: list[dict], m: int, n: int = CHECK_ROWS, seed: int = 0) -> np.ndarray:
    """Rows that go down both sides of the trees' splits: each feature, independently,
    missing, just below one of its thresholds or at one (float32)."""
    thresholds: list[list[float]] = [[] for _ in range(m)]
    for tree in trees:
        left = tree["left_children"]
        for node, f in enumerate(tree["split_indices"]):
            if left[node] != -1 and 0 <= f < m:
                thresholds[f].append(tree["split_conditions"][node])
    rng = np.random.default_rng(seed)
    rows = np.full((n, m), np.nan, dtype=np.float32)
    for j, found in enumerate(thresholds):
        if not found:
            continue
        cuts = np.asarray(found, dtype=np.float32)[rng.integers(len(found), size=n)]
        below = np.nextafter(cuts, np.float32(-np.inf))
        pick = rng.integers(3, size=n)
        rows[:, j] = np.where(pick == 0, np.nan, np.where(pick == 1, below, cuts))
    return rows


# The tables of the boosters explained so far, by the booster's identity, with the
# booster kept so that its id is not reused while its table lives. None: no table.
_TABLES: dict[int, tuple[xgb.Booster, PathTable | None]] = {}


def path_table(booster: xgb.Booster) -> PathTable | None:
    """The ``PathTable`` of a booster, made once per booster; None where a table cannot
    stand for its attribution (said once in the log)."""
    held = _TABLES.get(id(booster))
    if held is None or held[0] is not booster:
        while len(_TABLES) >= 8:  # a long-lived process that loaded many models:
            del _TABLES[next(iter(_TABLES))]  # the oldest go, not the other booster's
        try:
            table: PathTable | None = PathTable(booster)
        except UnsupportedBoosterError as exc:
            log.warning("path attribution by XGBoost for this booster: %s", exc)
            table = None
        held = _TABLES[id(booster)] = (booster, table)
    return held[1]


def path_contributions(booster: xgb.Booster, x: np.ndarray) -> np.ndarray:
    """The path attribution of each row of ``x`` to ``booster``'s margin, (n, features +
    1) float64 with the bias last: from the booster's table, or from XGBoost where it
    has none."""
    table = path_table(booster)
    if table is None:
        return contributions_dense(booster, x)
    return table.contributions(x)


def main() -> int:
    """Compile the walk ahead of its first use; say where it is kept."""
    logging.basicConfig(level=logging.INFO)
    walk = kernel()
    print("compiled walk ready" if walk is not None else "no compiled walk: XGBoost's attribution")
    return 0 if walk is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
