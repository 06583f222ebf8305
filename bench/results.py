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


def main() -> int:
    """List the kept runs: when, which benchmark, commit and command."""
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text())
        changed = " (changed tree)" if record.get("tree_changed") else ""
        print(f"{record['at']}  {record['commit']}{changed}  {record['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
