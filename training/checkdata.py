"""Compare a data set with the published figures of the real export.

`python -m training check-data DIR` reads ga_sessions.csv and ga_hits.csv (and truth.csv
when present), prints generated against published figures side by side and exits 1 when
one is out of tolerance. The hits file is streamed in blocks, so the real 4.3 GB file
fits in memory as a few arrays of per-session counters.

A rate or share measured on few sessions carries sampling noise of its own: the relative
tolerance of a figure is the published ±10% plus two standard errors of its support
(expected conversions for a rate, expected members for a share), so a group with 400
conversions is allowed ±20% and one with 40,000 ±11%. A figure whose support is under
``MIN_SUPPORT`` is shown as ``n/a``, and so are counts of distinct values below the full
size.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from features.columns import HIT_COLUMNS, SESSION_COLUMNS
from features.target import TARGET_ACTIONS
from training import published as pub
from training.dataset import BLOCK_BYTES, HITS_FILE, SESSIONS_FILE, DataError

MIN_SUPPORT = 100
REL_TOL = 0.10
DISTINCT_TOL = 0.20
COARSE_UNTIL = "2021-11-01"
MSK_OFFSET_S = 3 * 3600


@dataclass
class Check:
    """One figure: what was published, what the data shows, and the verdict."""

    section: str
    name: str
    published: Any
    measured: Any
    tolerance: str
    status: str  # "ok", "FAIL", "n/a" or "info" (reported, nothing to compare with)


@dataclass
class _HitStats:
    n_hits: int
    counts: np.ndarray  # hits per session row
    targets: np.ndarray  # target hits per session row
    orphan_ids: int
    nulls: Counter[str]
    not_event: int
    values: dict[str, Counter[str]]
    hit_time: np.ndarray  # non-empty hit_time values
    min_hit_number: float
    max_hit_number: float
    coarse_timed: int  # hits of coarse sessions that carry a hit_time
    coarse_hits: int


def _read_sessions(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"missing {path}")
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in SESSION_COLUMNS if c != "visit_number"},
            strings_can_be_null=True,
            null_values=[""],
        ),
    )
    return table.to_pandas()


def _header(path: Path) -> list[str]:
    with path.open("r", encoding="utf-8") as fh:
        return fh.readline().strip().replace('"', "").split(",")


def _hit_stats(path: Path, index: pd.Index, coarse: np.ndarray) -> _HitStats:
    if not path.is_file():
        raise DataError(f"missing {path}")
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(
            column_types={
                **{c: pa.string() for c in HIT_COLUMNS},
                "hit_time": pa.float64(),
                "hit_number": pa.float64(),
            },
            strings_can_be_null=True,
            null_values=[""],
        ),
    )
    n = len(index)
    counts = np.zeros(n, dtype=np.int64)
    targets = np.zeros(n, dtype=np.int64)
    orphans: set[str] = set()
    nulls: Counter[str] = Counter()
    values: dict[str, Counter[str]] = {
        c: Counter() for c in ("event_category", "event_action", "hit_referer", "event_label")
    }
    times: list[np.ndarray] = []
    n_hits = not_event = coarse_timed = coarse_hits = 0
    lo, hi = math.inf, -math.inf
    targets_arr = pa.array(sorted(TARGET_ACTIONS))
    for batch in reader:
        n_hits += batch.num_rows
        sid = batch.column("session_id").to_pandas()
        idx = index.get_indexer(sid)
        keep = idx >= 0
        if not keep.all():
            orphans.update(sid[~keep].dropna().tolist())
        counts += np.bincount(idx[keep], minlength=n)
        is_target = pc.is_in(batch.column("event_action"), value_set=targets_arr)
        is_target_np = is_target.fill_null(False).to_numpy(zero_copy_only=False)
        targets += np.bincount(idx[keep & is_target_np], minlength=n)
        for col in ("hit_time", "hit_referer", "event_label", "event_value"):
            nulls[col] += batch.column(col).null_count
        not_event += batch.num_rows - int(
            pc.sum(pc.equal(batch.column("hit_type"), "event").fill_null(False)).as_py() or 0
        )
        for col, counter in values.items():
            for item in pc.value_counts(batch.column(col).drop_null()).to_pylist():
                counter[item["values"]] += item["counts"]
        ht = batch.column("hit_time").to_numpy(zero_copy_only=False)
        times.append(ht[~np.isnan(ht)].astype(np.float32))
        hn = batch.column("hit_number").to_numpy(zero_copy_only=False)
        if len(hn):
            lo, hi = min(lo, float(np.nanmin(hn))), max(hi, float(np.nanmax(hn)))
        in_coarse = np.zeros(len(idx), dtype=bool)
        in_coarse[keep] = coarse[idx[keep]]
        coarse_hits += int(in_coarse.sum())
        coarse_timed += int((in_coarse & ~np.isnan(ht)).sum())
    return _HitStats(
        n_hits=n_hits,
        counts=counts,
        targets=targets,
        orphan_ids=len(orphans),
        nulls=nulls,
        not_event=not_event,
        values=values,
        hit_time=np.concatenate(times) if times else np.empty(0, np.float32),
        min_hit_number=lo,
        max_hit_number=hi,
        coarse_timed=coarse_timed,
        coarse_hits=coarse_hits,
    )


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


class _Checks:
    """Collects checks with the tolerance rules in one place."""

    def __init__(self) -> None:
        self.rows: list[Check] = []
        self.section = ""

    def relative(
        self, name: str, published: float, measured: float, support: float, tol: float = REL_TOL
    ) -> None:
        if support < MIN_SUPPORT or not math.isfinite(measured):
            status = "n/a"
        else:
            tol += 2 / math.sqrt(support)
            status = "ok" if abs(measured / published - 1) <= tol else "FAIL"
        self.rows.append(Check(self.section, name, published, measured, f"±{tol:.0%} rel", status))

    def absolute(
        self, name: str, published: float, measured: float, tol: float, applies: bool = True
    ) -> None:
        if not applies or not math.isfinite(measured):
            status = "n/a"
        else:
            status = "ok" if abs(measured - published) <= tol else "FAIL"
        self.rows.append(Check(self.section, name, published, measured, f"±{tol:g}", status))

    def exact(self, name: str, published: Any, measured: Any) -> None:
        status = "ok" if published == measured else "FAIL"
        self.rows.append(Check(self.section, name, published, measured, "exact", status))

    def at_least(self, name: str, bound: float, measured: float) -> None:
        status = "ok" if measured >= bound else "FAIL"
        self.rows.append(Check(self.section, name, f">= {bound:g}", measured, "bound", status))

    def at_most(self, name: str, bound: float, measured: float) -> None:
        status = "ok" if measured <= bound else "FAIL"
        self.rows.append(Check(self.section, name, f"<= {bound:g}", measured, "bound", status))

    def report(self, name: str, measured: float) -> None:
        """A figure the data is described by, with nothing published to compare it with."""
        self.rows.append(Check(self.section, name, "-", measured, "", "info"))


def _rate(converted: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    k = int(mask.sum())
    return (float(converted[mask].mean()) if k else math.nan), k


def check_data(data_dir: Path) -> list[Check]:
    """Measure a data set's figures and compare each with the published one."""
    s_path, h_path = data_dir / SESSIONS_FILE, data_dir / HITS_FILE
    s = _read_sessions(s_path)
    n = len(s)
    if n == 0:
        raise DataError(f"{s_path} has no rows")
    c = _Checks()
    full = n >= 0.9 * pub.SESSIONS

    c.section = "structure"
    c.exact("ga_sessions.csv columns", list(SESSION_COLUMNS), _header(s_path))
    c.exact("ga_hits.csv columns", list(HIT_COLUMNS), _header(h_path))
    c.exact("visit_number is an integer", True, pd.api.types.is_integer_dtype(s["visit_number"]))
    sid = s["session_id"].astype(str)
    parts = sid.str.split(".", expand=True)
    ok_ids = parts.shape[1] == 3 and bool((parts[1] == parts[2]).all())
    c.exact("session_id is <int>.<ts>.<ts>", True, ok_ids)
    ts = pd.to_numeric(parts[1], errors="coerce") if parts.shape[1] > 1 else pd.Series(np.nan)
    local = pd.to_datetime(ts + MSK_OFFSET_S, unit="s", errors="coerce")
    stamp = s["visit_date"].astype(str) + " " + s["visit_time"].astype(str)
    mismatch = float((local.dt.strftime("%Y-%m-%d %H:%M:%S") != stamp).mean())
    c.exact("visit ts in UTC+3 = visit_date visit_time (share off)", 0.0, mismatch)
    client_ok = s["client_id"].astype(str).str.fullmatch(r"\d+\.\d+").mean()
    c.exact("client_id is <int>.<ts> (share off)", 0.0, float(1 - client_ok))
    c.exact("session_id unique", True, bool(sid.is_unique))
    c.exact("first visit_date", pub.FIRST_DAY, s["visit_date"].min())
    c.exact("last visit_date", pub.LAST_DAY, s["visit_date"].max())
    coarse = (s["visit_date"] < COARSE_UNTIL).to_numpy()
    rounded = s["visit_time"].str.endswith(":00:00").to_numpy()
    c.at_least(f"hour-rounded visit_time before {COARSE_UNTIL}", 0.99, _mean(rounded[coarse]))
    c.at_least(f"empty device_os before {COARSE_UNTIL}", 0.99, _mean(s["device_os"].isna()[coarse]))
    counts = s["visit_time"].value_counts()
    c.exact("most common visit_time", pub.MOST_COMMON_VISIT_TIME, counts.index[0])

    hits = _hit_stats(h_path, pd.Index(sid), coarse)
    c.exact("hit_type always event (rows off)", 0, hits.not_event)
    c.exact("event_value always empty (rows off)", 0, hits.n_hits - hits.nulls["event_value"])
    c.at_least("smallest hit_number", 1, hits.min_hit_number)
    c.at_most("largest hit_number", 500, hits.max_hit_number)
    c.at_least(
        f"hits without hit_time before {COARSE_UNTIL}",
        0.99,
        1 - hits.coarse_timed / max(hits.coarse_hits, 1),
    )

    c.section = "sessions"
    clients = s["client_id"].nunique()
    c.relative("sessions per client", pub.SESSIONS_PER_CLIENT, n / clients, n)
    vn = s["visit_number"].to_numpy()
    c.relative("visit_number mean", pub.VISIT_NUMBER_MEAN, float(vn.mean()), _mean_support(vn))
    c.relative("visit_number = 1", pub.FIRST_VISIT_SHARE, float((vn == 1).mean()), n)
    c.exact("visit_number median", 1.0, float(np.median(vn)))
    for col, share in pub.NULL_SHARE.items():
        if col in s:
            c.relative(f"{col} empty", share, float(s[col].isna().mean()), n * share)
    c.at_most("utm_source empty", 0.0005, float(s["utm_source"].isna().mean()))
    for col, shares in pub.SHARES.items():
        freq = s[col].value_counts(normalize=True)
        for value, share in shares.items():
            c.relative(f"{col} = {value}", share, float(freq.get(value, 0.0)), n * share)
    organic = s["utm_medium"].isin(pub.ORGANIC_MEDIUMS).to_numpy()
    social = s["utm_source"].isin(pub.SOCIAL_SOURCES).to_numpy()
    c.relative("organic traffic", pub.ORGANIC_SHARE, _mean(organic), n * pub.ORGANIC_SHARE)
    c.relative("social sources", pub.SOCIAL_SHARE, _mean(social), n * pub.SOCIAL_SHARE)
    hour = pd.to_numeric(s["visit_time"].str.slice(0, 2), errors="coerce").to_numpy()
    by_hour = np.bincount(hour[~np.isnan(hour)].astype(int), minlength=24)
    c.exact("busiest hour", pub.PEAK_HOUR, int(by_hour.argmax()))
    c.exact("quietest hour", pub.QUIET_HOUR, int(by_hour.argmin()))

    c.section = "hits"
    with_hits = hits.counts > 0
    n_with = int(with_hits.sum())
    c.relative("sessions without hits", pub.NO_HIT_SHARE, 1 - n_with / n, n * pub.NO_HIT_SHARE)
    c.relative(
        "hit session_ids without a session row, per session",
        pub.ORPHAN_SHARE,
        hits.orphan_ids / n,
        n * pub.ORPHAN_SHARE,
    )
    k = hits.counts[with_hits]
    c.relative(
        "hits per session with hits (mean)",
        pub.HITS_PER_SESSION_MEAN,
        float(k.mean()) if n_with else math.nan,
        _mean_support(k),
    )
    for hits_n, share in pub.HITS_PER_SESSION_SHARE.items():
        c.relative(
            f"sessions with {hits_n} hit{'s' if hits_n > 1 else ''}",
            share,
            _mean(k == hits_n),
            n_with * share,
        )
    for col in ("hit_time", "hit_referer", "event_label"):
        share = pub.NULL_SHARE[col]
        c.relative(f"{col} empty", share, hits.nulls[col] / hits.n_hits, hits.n_hits * share)
    c.relative(
        "hit_time median (ms)",
        pub.HIT_TIME_MEDIAN_MS,
        float(np.median(hits.hit_time)) if len(hits.hit_time) else math.nan,
        len(hits.hit_time),
    )
    cats = hits.values["event_category"]
    c.relative(
        "event_category = card_web",
        pub.CARD_WEB_HIT_SHARE,
        cats.get("card_web", 0) / hits.n_hits,
        hits.n_hits,
    )
    _top_share(
        c, "top hit_referer, of non-empty", hits.values["hit_referer"], pub.TOP_REFERER_SHARE
    )
    labels = hits.values["event_label"]
    top_label = labels.most_common(1)[0][1] if labels else 0
    c.relative(
        "top event_label, of all hits",
        pub.TOP_LABEL_SHARE,
        top_label / hits.n_hits,
        hits.n_hits * pub.TOP_LABEL_SHARE,
    )

    c.section = "conversion"
    converted = hits.targets > 0
    n_conv = int(converted.sum())
    c.relative("conversion, all sessions", pub.CONVERSION, n_conv / n, n * pub.CONVERSION)
    c.relative(
        "conversion, sessions with hits",
        pub.CONVERSION_WITH_HITS,
        n_conv / max(n_with, 1),
        n_with * pub.CONVERSION_WITH_HITS,
    )
    c.relative(
        "target hits per converting session",
        pub.TARGET_HITS_PER_CONVERTER,
        float(hits.targets[converted].mean()) if n_conv else math.nan,
        _mean_support(hits.targets[converted]),
    )
    rate = _rate_checker(c, converted)
    medium = s["utm_medium"].to_numpy()
    for value, r in pub.MEDIUM_RATES.items():
        rate(f"utm_medium = {value}", r, medium == value)
    rate("organic traffic", pub.ORGANIC_RATE, organic)
    rate("paid traffic", pub.PAID_RATE, ~organic)
    rate("social sources", pub.SOCIAL_RATE, social)
    rate("other sources", pub.NON_SOCIAL_RATE, ~social)
    source = s["utm_source"].to_numpy()
    for value, r in pub.SOURCE_RATES.items():
        rate(f"utm_source = {value[:5]}…", r, source == value)
    campaign = s["utm_campaign"].to_numpy()
    for value, r in pub.CAMPAIGN_RATES.items():
        rate(f"utm_campaign = {value[:4]}…", r, campaign == value)
    keyword = s["utm_keyword"]
    for value, r in pub.KEYWORD_RATES.items():
        rate(f"utm_keyword = {value[:4]}…", r, (keyword == value).to_numpy())
    rate("utm_keyword empty", pub.KEYWORD_MISSING_RATE, keyword.isna().to_numpy())
    for bucket, r in pub.VISIT_RATES.items():
        lo_v, _, hi_v = bucket.partition("-")
        mask = (vn >= int(lo_v)) & (vn <= int(hi_v or lo_v))
        rate(f"visit_number {bucket}", r, mask)
    device = s["device_category"].to_numpy()
    for value, r in pub.DEVICE_RATES.items():
        rate(f"device {value}", r, device == value)
    rate("organic desktop", pub.ORGANIC_DESKTOP_RATE, (device == "desktop") & organic)
    rate("paid desktop", pub.PAID_DESKTOP_RATE, (device == "desktop") & ~organic)
    for h, r in pub.HOUR_RATES.items():
        rate(f"hour {h:02d}", r, hour == h)
    weekday = pd.to_datetime(s["visit_date"], errors="coerce").dt.day_of_week.to_numpy()
    for d, r in pub.WEEKDAY_RATES.items():
        rate(["Monday", "", "", "", "", "", "Sunday"][d], r, weekday == d)
    rate(f"visits before {COARSE_UNTIL}", pub.COARSE_RATE, coarse)
    rate(f"visits from {COARSE_UNTIL}", pub.FINE_RATE, ~coarse)
    # The level moves over the year (older, coarser records convert more): each month's
    # rate, for the drift a model trained on the earlier months meets in the later ones.
    month = s["visit_date"].astype(str).str.slice(0, 7).to_numpy()
    for m in sorted(set(month)):
        measured, size = _rate(converted, month == m)
        c.report(f"conversion in {m} ({size:,} sessions)", measured)
    rate("outside Russia", pub.ABROAD_RATE, (s["geo_country"] != "Russia").to_numpy())
    city = s["geo_city"].to_numpy()
    for value, r in pub.CITY_RATES.items():
        rate(f"geo_city = {value}", r, city == value)

    truth_path = data_dir / "truth.csv"
    if truth_path.is_file():
        truth = pd.read_csv(truth_path, dtype={"session_id": str})
        pos = pd.Index(truth["session_id"]).get_indexer(sid)
        found = pos >= 0
        p = truth["p_convert"].to_numpy()[pos[found]]
        bayes = _auc(converted[found], p) if 0 < converted[found].sum() < found.sum() else math.nan
        c.absolute(
            "Bayes ROC-AUC of truth.csv",
            pub.BAYES_AUC,
            bayes,
            0.015,
            applies=bool(converted[found].sum() >= 2000),
        )
        c.relative("mean p_convert", pub.CONVERSION, float(p.mean()), n * pub.CONVERSION)

    c.section = "distinct values (full size only)"
    distinct = {col: s[col].nunique() for col in pub.DISTINCT if col in s}
    distinct["hit_session_id"] = n_with + hits.orphan_ids
    distinct["event_category"] = len(hits.values["event_category"])
    distinct["event_action"] = len(hits.values["event_action"])
    for col, count in pub.DISTINCT.items():
        c.relative(col, count, float(distinct[col]), 1e9 if full else 0, tol=DISTINCT_TOL)
    c.relative("sessions", pub.SESSIONS, n, 1e9 if full else 0)
    c.relative("hits", pub.HITS, hits.n_hits, 1e9 if full else 0)
    return c.rows


def _mean_support(values: np.ndarray) -> float:
    """The support of a mean: n * mean**2 / variance, so 1/sqrt of it is its relative error."""
    if len(values) < 2 or values.std() == 0:
        return float(len(values))
    return float(len(values) * values.mean() ** 2 / values.var())


def _mean(mask: Any) -> float:
    arr = np.asarray(mask)
    return float(arr.mean()) if arr.size else math.nan


def _top_share(c: _Checks, name: str, counter: Counter[str], published: float) -> None:
    total = sum(counter.values())
    top = counter.most_common(1)[0][1] if counter else 0
    c.relative(name, published, top / total if total else math.nan, total * published)


def _rate_checker(c: _Checks, converted: np.ndarray) -> Callable[[str, float, np.ndarray], None]:
    def check(name: str, published: float, mask: np.ndarray) -> None:
        measured, size = _rate(converted, np.asarray(mask, dtype=bool))
        c.relative(name, published, measured, size * published)

    return check


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "-"
        if v == int(v) and abs(v) >= 1:
            return f"{int(v):,}"
        if abs(v) < 1:
            return f"{v:.4f}"
        return f"{v:,.2f}"
    if isinstance(value, list):
        return f"[{len(value)} columns]"
    return str(value)


def format_table(rows: list[Check]) -> str:
    """Render the checks as a text table, one section after another."""
    lines: list[str] = []
    width = max(len(r.name) for r in rows)
    section = None
    for r in rows:
        if r.section != section:
            section = r.section
            lines.append("")
            lines.append(f"== {section}")
            header = f"{'figure':<{width}}  {'published':>14}  {'this data':>14}  {'tolerance':<11}"
            lines.append(header + "  status")
        lines.append(
            f"{r.name:<{width}}  {_fmt(r.published):>14}  {_fmt(r.measured):>14}  "
            f"{r.tolerance:<11}  {r.status}"
        )
    failed = [r for r in rows if r.status == "FAIL"]
    reported = sum(r.status == "info" for r in rows)
    checked = sum(r.status not in ("n/a", "info") for r in rows)
    lines.append("")
    lines.append(
        f"{checked} figures checked, {len(failed)} out of tolerance, "
        f"{len(rows) - checked - reported} not comparable at this size, {reported} reported"
    )
    return "\n".join(lines)


def main(data_dir: Path) -> int:
    """Print the comparison; return 1 when a figure is out of tolerance."""
    try:
        rows = check_data(data_dir)
    except DataError as exc:
        print(f"check-data: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    return 1 if any(r.status == "FAIL" for r in rows) else 0
