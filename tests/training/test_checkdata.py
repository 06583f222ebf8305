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


def test_each_months_conversion_is_reported_and_the_later_months_convert_less(
    generated: Path,
) -> None:
    """The generator keeps the level shift of the real export (coarser, older records
    convert more), so a model trained on the earlier months meets drift in the later
    ones; check-data says each month's rate."""
    rows = [r for r in check_data(generated) if r.name.startswith("conversion in ")]
    months = [r.name.split()[2] for r in rows]
    assert months == [f"2021-{m:02d}" for m in range(5, 13)]
    assert all(r.status == "info" and r.published == "-" for r in rows)
    sizes = [int(r.name.split("(")[1].split()[0].replace(",", "")) for r in rows]
    overall = next(
        r.measured for r in check_data(generated) if r.name == "conversion, all sessions"
    )
    weighted = sum(r.measured * n for r, n in zip(rows, sizes, strict=True)) / sum(sizes)
    assert weighted == pytest.approx(overall)
    rate = {month: r.measured for month, r in zip(months, rows, strict=True)}
    before = sum(rate[m] * n for m, n in zip(months, sizes, strict=True) if m < "2021-11")
    after = sum(rate[m] * n for m, n in zip(months, sizes, strict=True) if m >= "2021-11")
    n_before = sum(n for m, n in zip(months, sizes, strict=True) if m < "2021-11")
    n_after = sum(n for m, n in zip(months, sizes, strict=True) if m >= "2021-11")
    assert after / n_after < 0.8 * (before / n_before)


def test_main_prints_the_table_and_exits_zero(
    generated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(generated) == 0
    out = capsys.readouterr().out
    assert "published" in out and "this data" in out
    assert "0 out of tolerance" in out
    assert "conversion in 2021-11" in out and " reported" in out


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
