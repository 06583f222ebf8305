from pathlib import Path

import orjson

from contracts import topics
from stream.replay import build_events

SESSIONS = """session_id,client_id,visit_date,visit_time,visit_number,utm_source,utm_medium,utm_campaign,utm_adcontent,utm_keyword,device_category,device_os,device_brand,device_model,device_screen_resolution,device_browser,geo_country,geo_city
2.1637753792.1637753792,6.1637753791,2021-11-24,14:36:32,3,NA,(none),,,,desktop,Windows,,,(not set),YaBrowser,Russia,Moscow
1.1629000000.1629000000,5.1629000000,2021-08-15,07:00:00,1,ZpYIoDJMcFzVoPFsHGJL,banner,,,,mobile,,Samsung,,0x0,Chrome,Russia,(not set)
"""
HITS = """session_id,hit_date,hit_time,hit_number,hit_type,hit_referer,hit_page_path,event_category,event_action,event_label,event_value
2.1637753792.1637753792,2021-11-24,40000.0,5,event,,p,card_web,view_card,,
2.1637753792.1637753792,2021-11-24,0.0,1,event,,p,card_web,view_card,,
1.1629000000.1629000000,2021-08-15,,7,event,,p,sub_page_view,sub_landing,,
1.1629000000.1629000000,2021-08-15,,2,event,,p,sub_page_view,sub_landing,,
9.1629000001.1629000001,2021-08-15,,1,event,,p,sub_page_view,sub_landing,,
"""


def test_events_come_in_event_time_order(tmp_path: Path) -> None:
    (tmp_path / "ga_sessions.csv").write_text(SESSIONS)
    (tmp_path / "ga_hits.csv").write_text(HITS)
    events = [(t, orjson.loads(v)) for t, _, v in build_events(tmp_path)]
    order = [(t, e["session_id"].split(".")[0], e.get("hit_number")) for t, e in events]
    assert order == [
        (topics.SESSIONS, "1", None),
        # hits without hit_time keep hit_number order, right after their session starts
        (topics.HITS, "1", 2),
        (topics.HITS, "1", 7),
        # an orphan hit still goes out, at its session_id's time
        (topics.HITS, "9", 1),
        (topics.SESSIONS, "2", None),
        (topics.HITS, "2", 1),
        (topics.HITS, "2", 5),
    ]


def test_values_keep_csv_names_types_and_quirks(tmp_path: Path) -> None:
    (tmp_path / "ga_sessions.csv").write_text(SESSIONS)
    (tmp_path / "ga_hits.csv").write_text(HITS)
    events = {
        (t, orjson.loads(v)["session_id"]): orjson.loads(v)
        for t, _, v in build_events(tmp_path)
        if t == topics.SESSIONS
    }
    row = events[(topics.SESSIONS, "2.1637753792.1637753792")]
    assert row["visit_number"] == 3
    assert row["utm_source"] == "NA"  # a real value, not a null
    assert row["utm_campaign"] is None
    assert row["device_screen_resolution"] == "(not set)"
