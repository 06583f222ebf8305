"""A benchmark run's figures kept with what it ran on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import results


def test_a_run_is_kept_with_its_command_commit_machine_and_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "RESULTS", tmp_path / "results")
    path = results.save("cost", {"redis_per_event": 59233}, ["--masters", "3"])
    assert path.parent == tmp_path / "results" and path.name.endswith(".json")
    record = json.loads(path.read_text())
    assert record["bench"] == "cost"
    assert record["command"] == "python -m bench.cost --masters 3"
    assert record["figures"] == {"redis_per_event": 59233}
    assert len(record["commit"]) == 12 and record["commit"] in path.name
    assert record["machine"]["cpus"] >= 1 and record["machine"]["cpu"]
    assert record["packages"]["faust-streaming"] == "0.15.3"
    assert record["redis_server"].count(".") == 2 and record["kafka"].count(".") == 2
