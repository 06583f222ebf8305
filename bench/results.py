"""Each benchmark run's figures, kept as a small JSON file under ``bench/results/``.

A file holds what the run measured and what it ran on: the command, the commit (and
whether the tree had changes), the machine (CPU model and count, memory), the versions
of Python, the key packages, Redis and Kafka, and the figures as the benchmark returned
them. Commit the files of the runs the README quotes, so that every figure there can be
traced to its run: ``python -m bench.results`` lists them.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]
PACKAGES = ("faust-streaming", "aiokafka", "redis", "xgboost", "numpy", "pandas", "fastapi")


def _run(*cmd: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return found.group(1).strip() if found else platform.processor()


def _memory_gb() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemTotal:\s+(\d+) kB", text, re.M)
    return round(int(found.group(1)) / 1024**2, 1) if found else None


def _redis_version() -> str:
    found = re.search(r"v=(\S+)", _run("redis-server", "--version"))
    return found.group(1) if found else ""


def _kafka_version() -> str:
    found = re.search(r"KAFKA_VERSION=\$\{KAFKA_VERSION:-([0-9.]+)\}", _stack_script())
    return found.group(1) if found else ""


def _stack_script() -> str:
    try:
        return (ROOT / "scripts" / "stack.sh").read_text()
    except OSError:
        return ""


def environment() -> dict[str, Any]:
    """What a run ran on: machine, versions, commit."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "commit": _run("git", "rev-parse", "--short=12", "HEAD"),
        "tree_changed": bool(_run("git", "status", "--porcelain", "--untracked-files=no")),
        "machine": {
            "cpu": _cpu(),
            "cpus": os.cpu_count(),
            "memory_gb": _memory_gb(),
            "system": f"{platform.system()} {platform.release()}",
        },
        "python": platform.python_version(),
        "packages": versions,
        "redis_server": _redis_version(),
        "kafka": _kafka_version(),
    }


def save(bench: str, figures: dict[str, Any], argv: list[str] | None = None) -> Path:
    """Write a run's figures with its environment; return the file."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    env = environment()
    record = {
        "bench": bench,
        "at": stamp,
        "command": " ".join(["python", "-m", f"bench.{bench}", *(argv or sys.argv[1:])]),
        **env,
        "figures": figures,
    }
    path = RESULTS / f"{stamp}-{bench}-{env['commit'] or 'nocommit'}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=False, default=str) + "\n")
    print(f"figures kept in {path}", flush=True)
    return path


# The README's table of current figures sits between these lines; ``python -m
# bench.results readme`` writes it from the newest kept run of each benchmark (and, for
# bench.cost, of each Redis: one server, or a cluster of so many masters).
BEGIN = "<!-- bench/results: the newest kept runs; python -m bench.results readme writes this -->"
END = "<!-- bench/results: end -->"
README = ROOT / "README.md"


def records(folder: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Every kept run, oldest first, with its file name."""
    return [
        (path.name, json.loads(path.read_text()))
        for path in sorted((folder or RESULTS).glob("*.json"))
    ]


def _variant(record: dict[str, Any]) -> tuple[str, int]:
    figures = record.get("figures", {})
    if record["bench"] == "cost":
        return record["bench"], int(figures.get("masters", 1))
    if record["bench"] == "train":  # with held-out days, or not
        return record["bench"], int(bool(figures.get("holdout")))
    return record["bench"], 0


def newest(kept: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The newest run of each benchmark and variant made from a clean tree."""
    found: dict[tuple[str, int], tuple[str, dict[str, Any]]] = {}
    for name, record in kept:
        if not record.get("tree_changed"):
            found[_variant(record)] = (name, record)  # files sort by time
    return [found[key] for key in sorted(found)]


def _n(x: float) -> str:
    return f"{x:,}"


def _cost(f: dict[str, Any]) -> tuple[str, str]:
    masters = int(f.get("masters", 1))
    where = "one Redis" if masters == 1 else f"Redis Cluster, {masters} masters"
    redis = _n(f["redis_per_event"])
    if masters > 1:
        each = ", ".join(_n(n) for n in f["redis_per_event_by_master"])
        shares = ", ".join(f"{100 * s:.1f} %" for s in f["redis_share_by_master"])
        redis += f" in all ({each} a master: {shares})"
    what = (
        f"instructions an event: worker {_n(f['worker_per_event'])}, Redis {redis} "
        f"({_n(f['events'])} events, {_n(f['scores'])} scores)"
    )
    if "reasons_cost" in f:
        c = f["reasons_cost"]
        what += (
            f"; without the reasons of Warm and Hot scores "
            f"({c['warm_or_hot_share']:.1%} of scores) the worker's "
            f"{_n(c['worker_per_event_without'])}: reasons {c['worker']:+.1%}"
        )
    return where, what


def _stream(f: dict[str, Any]) -> tuple[str, str]:
    parts = []
    if "one_worker" in f:
        parts.append(f"one worker {_n(f['one_worker']['events_per_s'])} events/s")
    if "two_workers" in f:
        parts.append(f"two workers {_n(f['two_workers']['events_per_s'])} events/s")
    if "consume_only" in f:
        ceiling = f["consume_only"]
        parts.append(
            f"consume-only ceilings: whole fetches {_n(ceiling['batch']['events_per_s'])}, "
            f"Faust agents {_n(ceiling['agents']['events_per_s'])} events/s"
        )
    if "latency" in f:
        lat = f["latency"]
        parts.append(f"latency p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms")
    if "baseline" in f:
        base = f["baseline"]
        mine = ", ".join(_n(x) for x in base["this_version_runs"])
        theirs = ", ".join(_n(x) for x in base["runs"])
        parts.append(
            f"one worker, alternating runs: {mine} events/s against {theirs} for {base['ref']}"
        )
    if "reasons" in f:
        r = f["reasons"]
        on = ", ".join(_n(x) for x in r["with_reasons_events_per_s"])
        off = ", ".join(_n(x) for x in r["without_reasons_events_per_s"])
        parts.append(
            f"one worker with reasons {on} events/s, without {off} (cost {r['cost']:.1%}, "
            f"worker CPU {r.get('cpu_cost', 0):+.1%}; "
            f"{r['warm_or_hot_share']:.1%} of scores Warm or Hot)"
        )
    return "one broker and Redis", "; ".join(parts) or "(no figures)"


def _api(f: dict[str, Any]) -> tuple[str, str]:
    api, base = f["api"], f["baseline"]
    at200, full, batch = (
        api["predict_at_200_rps"],
        api["predict_saturated"],
        api["batch_10000_rows"],
    )
    what = (
        f"`/predict` p99 {at200['p99_ms']} ms at 200 requests/s; {_n(round(full['rps']))} "
        f"requests/s at saturation (the baseline's {_n(round(base['predict_saturated']['rps']))}); "
        f"`/predict/batch` of 10,000 rows p50 {batch['p50_ms']} ms "
        f"(the baseline's {base['batch_10000_rows']['p50_ms']} ms)"
    )
    return "one uvicorn process", what


def _train(f: dict[str, Any]) -> tuple[str, str]:
    stages = f["stages"]
    train = stages["train: total"]
    total = stages["generate"]["seconds"] + stages["check-data"]["seconds"] + train["seconds"]
    peak = max((rec.get("peak_rss_mb") or 0) for rec in stages.values())
    what = (
        f"{_n(f['sessions'])} sessions, {_n(f['hits'])} hits: training "
        f"{train['seconds']:,.0f} s at a peak of {peak / 1024:.2f} GB (with generating and "
        f"checking the data {total:,.0f} s); held-out ROC-AUC {f['session_start_auc']:.4f} "
        f"at session start against the Bayes AUC {f['bayes_auc']:.4f}"
    )
    calibration = f.get("test_calibration")
    if calibration:
        what += (
            f"; on the test weeks Σpredicted / Σtrue "
            f"{calibration['truth']['sum_predicted_over_target']:.3f}, ECE against the truth "
            f"{calibration['truth']['ece']:.4f}"
        )
    held = f.get("holdout")
    if held:
        truth = held["truth"]
        what += (
            f"; on the {_n(held['holdout_sessions'])} sessions of the held-out days from "
            f"{held['holdout_from']}, scored by the shipped model: ROC-AUC "
            f"{held['roc_auc']:.4f} (Bayes AUC {truth['bayes_auc']:.4f}), Σpredicted / Σtrue "
            f"{truth['calibrated']['sum_predicted_over_target']:.3f} (uncalibrated "
            f"{truth['uncalibrated']['sum_predicted_over_target']:.3f}), ECE against the "
            f"truth {truth['calibrated']['ece']:.4f}"
        )
    by_hits = [r for r in f["by_hits_seen"] if r.get("in_session_auc") is not None]
    if by_hits:
        first, last = by_hits[0], by_hits[-1]
        what += (
            f"; in session {first['in_session_auc']:.4f} after {first['hits_seen']} hit(s), "
            f"{last['in_session_auc']:.4f} after {last['hits_seen']}"
        )
    return "one process", what


def _reasons(f: dict[str, Any]) -> tuple[str, str]:
    per = f["per_call_us"]
    agree = f["agreement_with_treeshap"]
    calls = "; ".join(
        f"{rows} row{'s' if rows != '1' else ''} a call: "
        + ", ".join(f"{name.replace('_', ' ')} {per[name][rows]:,} µs" for name in per)
        for rows in ("1", "64")
        if all(rows in per[name] for name in per)
    )
    what = (
        f"{f['trees']} trees; {calls}; against TreeSHAP on the {agree['explained']} "
        f"highest-scored of {_n(agree['sessions'])} sessions: the same top reason "
        f"{agree['top_reason']:.0%}"
    )
    if "top_three_shared" in agree:
        what += f", {agree['top_three_shared']:.0%} of the top three shared"
    return "one process", what


FORMATS = {"api": _api, "cost": _cost, "reasons": _reasons, "stream": _stream, "train": _train}


def table(kept: list[tuple[str, dict[str, Any]]]) -> str:
    """The markdown table of the newest runs: what each measured, on what, from where."""
    lines = [
        "| benchmark | on | figures | commit, day | kept in |",
        "|---|---|---|---|---|",
    ]
    for name, record in newest(kept):
        fmt = FORMATS.get(record["bench"])
        if fmt is None:
            where, what = "", json.dumps(record["figures"], sort_keys=True)[:200]
        else:
            where, what = fmt(record["figures"])
        day = f"{record['at'][:4]}-{record['at'][4:6]}-{record['at'][6:8]}"
        lines.append(
            f"| `{record['command']}` | {where} | {what} | {record['commit']}, {day} "
            f"| `bench/results/{name}` |"
        )
    return "\n".join(lines)


def readme_block(text: str, kept: list[tuple[str, dict[str, Any]]]) -> str:
    """``text`` (the README) with its block of current figures written from ``kept``."""
    start, end = text.index(BEGIN), text.index(END)
    return text[: start + len(BEGIN)] + "\n\n" + table(kept) + "\n\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    """List the kept runs (when, benchmark, commit, command); ``readme``: write the
    README's table of the newest ones; ``table``: print it."""
    args = sys.argv[1:] if argv is None else argv
    kept = records()
    if args[:1] == ["readme"]:
        README.write_text(readme_block(README.read_text(), kept))
        print(f"wrote the figures of {len(newest(kept))} runs into {README}")
        return 0
    if args[:1] == ["table"]:
        print(table(kept))
        return 0
    for _, record in kept:
        changed = " (changed tree)" if record.get("tree_changed") else ""
        print(f"{record['at']}  {record['commit']}{changed}  {record['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
