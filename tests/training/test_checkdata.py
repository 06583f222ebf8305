from pathlib import Path

import pandas as pd
import pytest

from training.checkdata import check_data, main
from training.generate import generate


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("checked")
    generate(out, 60_000, seed=5, progress=False)
    return out


def _status(rows: list, name: str) -> str:
    return next(r.status for r in rows if r.name == name)


def test_generated_data_matches_the_published_figures(generated: Path) -> None:
    rows = check_data(generated)
    failed = [(r.name, r.published, r.measured) for r in rows if r.status == "FAIL"]
    assert failed == []
    for name in (
        "conversion, all sessions",
        "hits per session with hits (mean)",
        "sessions with 1 hit",
        "sessions per client",
        "device_category = desktop",
        "utm_medium = referral",
        "organic traffic",
        "most common visit_time",
    ):
        assert _status(rows, name) == "ok", name


def test_main_prints_the_table_and_exits_zero(
    generated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(generated) == 0
    out = capsys.readouterr().out
    assert "published" in out and "this data" in out
    assert "0 out of tolerance" in out


def test_a_figure_out_of_tolerance_fails(generated: Path, tmp_path: Path) -> None:
    s = pd.read_csv(generated / "ga_sessions.csv", dtype=str, keep_default_na=False)
    s["device_category"] = "mobile"
    s.to_csv(tmp_path / "ga_sessions.csv", index=False)
    (tmp_path / "ga_hits.csv").write_bytes((generated / "ga_hits.csv").read_bytes())
    rows = check_data(tmp_path)
    assert _status(rows, "device_category = desktop") == "FAIL"
    assert main(tmp_path) == 1


def test_hits_that_are_not_events_fail_the_structure_check(generated: Path, tmp_path: Path) -> None:
    (tmp_path / "ga_sessions.csv").write_bytes((generated / "ga_sessions.csv").read_bytes())
    h = pd.read_csv(generated / "ga_hits.csv", dtype=str, keep_default_na=False, nrows=50_000)
    h.loc[:9, "hit_type"] = "pageview"
    h.to_csv(tmp_path / "ga_hits.csv", index=False)
    rows = check_data(tmp_path)
    row = next(r for r in rows if r.name == "hit_type always event (rows off)")
    assert (row.status, row.measured) == ("FAIL", 10)


def test_missing_files_exit_two(tmp_path: Path) -> None:
    assert main(tmp_path) == 2
