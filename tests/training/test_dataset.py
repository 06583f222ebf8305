from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.columns import HIT_COLUMNS, SESSION_COLUMNS
from training.dataset import DataError, load_dataset, read_sessions

SESSIONS = """session_id,client_id,visit_date,visit_time,visit_number,utm_source,utm_medium,utm_campaign,utm_adcontent,utm_keyword,device_category,device_os,device_brand,device_model,device_screen_resolution,device_browser,geo_country,geo_city
1.1629000000.1629000000,5.1629000000,2021-08-15,07:00:00,1,ZpYIoDJMcFzVoPFsHGJL,banner,,,,mobile,,Samsung,,0x0,Chrome,Russia,(not set)
2.1637753792.1637753792,6.1637753791,2021-11-24,14:36:32,3,fDLlAcSmythWSCVMvqvL,(none),LTuZkdKfxRGVceoWkVyg,,,desktop,Windows,,,(not set),YaBrowser,Russia,Moscow
3.1637753800.1637753800,7.1637753800,2021-11-24,14:36:40,1,,organic,,,,mobile,Android,Xiaomi,,393x851,Chrome,Russia,Kazan
"""
HITS = """session_id,hit_date,hit_time,hit_number,hit_type,hit_referer,hit_page_path,event_category,event_action,event_label,event_value
1.1629000000.1629000000,2021-08-15,,1,event,,podpiska.sberauto.com/,sub_page_view,sub_landing,,
2.1637753792.1637753792,2021-11-24,0.0,1,event,HbolMJUevblAbkHClEQa,sberauto.com/cars?city=1,card_web,view_card,KclpemfoHstknWHFiLit,
2.1637753792.1637753792,2021-11-24,40321.0,5,event,,sberauto.com/cars?city=1,sub_submit,sub_car_claim_click,,
2.1637753792.1637753792,2021-11-24,12000.0,3,event,,sberauto.com/cars?city=1,card_web,photos_view,,
2.1637753792.1637753792,2021-11-24,50000.0,7,event,,sberauto.com/cars?city=1,sub_submit,sub_submit_success,,
99.1637753792.1637753792,2021-11-24,,1,event,,podpiska.sberauto.com/,sub_page_view,sub_landing,,
"""


@pytest.fixture()
def quirky_dir(tmp_path: Path) -> Path:
    (tmp_path / "ga_sessions.csv").write_text(SESSIONS)
    (tmp_path / "ga_hits.csv").write_text(HITS)
    return tmp_path


def test_sessions_are_read_as_strings_with_nan_for_empty(quirky_dir: Path) -> None:
    df = read_sessions(quirky_dir / "ga_sessions.csv")
    assert list(df.columns) == list(SESSION_COLUMNS)
    assert df.loc[0, "device_screen_resolution"] == "0x0"
    assert df.loc[1, "device_screen_resolution"] == "(not set)"
    assert pd.isna(df.loc[0, "device_os"])
    assert pd.isna(df.loc[2, "utm_source"])
    assert df.loc[0, "visit_number"] == "1"


def test_target_orphans_and_sessions_without_hits(quirky_dir: Path) -> None:
    ds = load_dataset(quirky_dir)
    assert ds.converted.tolist() == [0, 1, 0]
    assert ds.first_target_hit.tolist() == [0, 5, 0]
    assert ds.hits.orphans == 1
    assert len(ds.hits) == 5
    # Hits come out sorted by session, then hit_number, whatever the file order.
    assert ds.hits.session.tolist() == [0, 1, 1, 1, 1]
    assert ds.hits.hit_number.tolist() == [1, 1, 3, 5, 7]
    assert np.isnan(ds.hits.hit_time_ms[0])


def test_hits_are_streamed_in_small_blocks_with_the_same_result(quirky_dir: Path) -> None:
    from training.dataset import read_hits

    ids = pd.Index(read_sessions(quirky_dir / "ga_sessions.csv")["session_id"])
    small = read_hits(quirky_dir / "ga_hits.csv", ids, block_bytes=200)
    big = read_hits(quirky_dir / "ga_hits.csv", ids)
    assert small.hit_number.tolist() == big.hit_number.tolist()
    assert [small.actions[a] for a in small.action] == [big.actions[a] for a in big.action]


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="python -m training generate"):
        load_dataset(tmp_path)


def test_a_file_without_the_expected_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ga_sessions.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="lacks the columns"):
        read_sessions(tmp_path / "ga_sessions.csv")


def test_columns_constants_match_the_spec() -> None:
    assert len(SESSION_COLUMNS) == 18
    assert len(HIT_COLUMNS) == 11


def test_quoted_fields_crlf_and_an_index_column_are_accepted(tmp_path: Path) -> None:
    # Exports written by other tools quote fields, end lines with CRLF and may carry an
    # unnamed index column first; the loader reads the named columns and ignores the rest.
    def requote(text: str) -> str:
        rows = []
        for i, line in enumerate(text.strip().split("\n")):
            fields = [f'"{f}"' if f else "" for f in line.split(",")]
            rows.append(",".join(['""' if i == 0 else str(i - 1), *fields]))
        return "\r\n".join(rows) + "\r\n"

    (tmp_path / "ga_sessions.csv").write_text(requote(SESSIONS))
    (tmp_path / "ga_hits.csv").write_text(requote(HITS))
    ds = load_dataset(tmp_path)
    assert ds.converted.tolist() == [0, 1, 0]
    assert ds.hits.orphans == 1
    assert ds.sessions.loc[1, "device_screen_resolution"] == "(not set)"
    assert pd.isna(ds.sessions.loc[0, "device_os"])
    assert np.isnan(ds.hits.hit_time_ms[0])


def test_duplicate_session_rows_are_kept_once(tmp_path: Path) -> None:
    lines = SESSIONS.strip().split("\n")
    (tmp_path / "ga_sessions.csv").write_text("\n".join([*lines, lines[2]]) + "\n")
    (tmp_path / "ga_hits.csv").write_text(HITS)
    ds = load_dataset(tmp_path)
    assert len(ds.sessions) == 3
    assert ds.converted.tolist() == [0, 1, 0]
