"""The published figures of the real export (../shared/data-spec.md), in one place.

The generator calibrates its conversion effects to these rates and `check-data` compares
a data set with them. Rates and shares are fractions (0.0538 is 5.38%).
"""

from __future__ import annotations

SESSIONS = 1_860_042
HITS = 15_726_470
CONVERSION = 0.02705  # of all sessions
CONVERSION_WITH_HITS = 0.02905  # of sessions that have hits
SESSIONS_PER_CLIENT = 1.34
VISIT_NUMBER_MEAN = 2.71
FIRST_VISIT_SHARE = 0.74
HITS_PER_SESSION_MEAN = 9.1  # of sessions that have hits
NO_HIT_SHARE = 0.069  # sessions without hits
ORPHAN_SHARE = 2_344 / SESSIONS  # hit session_ids without a session row, per session
TARGET_HITS_PER_CONVERTER = 2.07
HIT_TIME_MEDIAN_MS = 90_000
BAYES_AUC = 0.74
FIRST_DAY = "2021-05-19"
LAST_DAY = "2021-12-31"
MOST_COMMON_VISIT_TIME = "12:00:00"
PEAK_HOUR = 14
QUIET_HOUR = 4

SOCIAL_SOURCES = (
    "QxAxdyPLuQMEcrdZWdWb",
    "MvfHsxITijuriZxsqZqt",
    "ISrKoXQCxqqYvAZICvjs",
    "IZEXUFLARCUMynmHNBGo",
    "PlbkrSYoHuZBWfYjYnfw",
    "gVRrcxiDQubJiljoTbGm",
)
ORGANIC_MEDIUMS = ("organic", "referral", "(none)")

# Share of empty values per column.
NULL_SHARE = {
    "utm_campaign": 0.118,
    "utm_adcontent": 0.180,
    "utm_keyword": 0.582,
    "device_os": 0.575,
    "device_brand": 0.197,
    "device_model": 0.991,
    "hit_time": 0.583,
    "hit_referer": 0.399,
    "event_label": 0.239,
}

# column -> value -> share of sessions
SHARES = {
    "device_category": {"mobile": 0.793, "desktop": 0.197, "tablet": 0.010},
    "device_browser": {
        "Chrome": 0.545,
        "Safari": 0.257,
        "YaBrowser": 0.072,
        "Safari (in-app)": 0.038,
    },
    "geo_country": {"Russia": 0.968},
    "geo_city": {"Moscow": 0.433, "Saint Petersburg": 0.160, "(not set)": 0.042},
    "utm_source": {
        "ZpYIoDJMcFzVoPFsHGJL": 0.31,
        "fDLlAcSmythWSCVMvqvL": 0.16,
        "kjsLglQLzykiRbcDiGcD": 0.14,
        "MvfHsxITijuriZxsqZqt": 0.10,
        "BHcvLfOaCWvWTykYqHVe": 0.06,
        "bByPQxmDaMXgpHeypKSM": 0.055,
    },
}
ORGANIC_SHARE = 0.277
SOCIAL_SHARE = 0.147

# Share of sessions (among those with hits) by number of hits.
HITS_PER_SESSION_SHARE = {1: 0.31, 2: 0.137, 3: 0.049, 4: 0.037, 5: 0.022, 6: 0.051}
CARD_WEB_HIT_SHARE = 0.47  # event_category card_web
TOP_REFERER_SHARE = 0.94  # of non-empty hit_referer values
TOP_LABEL_SHARE = 0.41  # of all hits

# Conversion rate by group: (column or derived group, value) -> rate.
MEDIUM_RATES = {
    "referral": 0.0538,
    "(none)": 0.0350,
    "organic": 0.0333,
    "push": 0.0300,
    "banner": 0.0274,
    "cpc": 0.0219,
    "email": 0.0138,
    "cpm": 0.0104,
}
SOURCE_RATES = {
    "ZpYIoDJMcFzVoPFsHGJL": 0.0277,
    "fDLlAcSmythWSCVMvqvL": 0.0350,
    "kjsLglQLzykiRbcDiGcD": 0.0236,
    "MvfHsxITijuriZxsqZqt": 0.0121,
    "BHcvLfOaCWvWTykYqHVe": 0.0334,
    "bByPQxmDaMXgpHeypKSM": 0.0543,
}
ORGANIC_RATE, PAID_RATE = 0.0404, 0.0219
SOCIAL_RATE, NON_SOCIAL_RATE = 0.0147, 0.0292
CAMPAIGN_RATES = {"LTuZkdKfxRGVceoWkVyg": 0.0410, "FTjNLDyTrXaWYgZymFkV": 0.0099}
KEYWORD_RATES = {"aXQzDWsJuGXeBXexNHjc": 0.0030}
KEYWORD_MISSING_RATE = 0.0320
# visit_number bucket -> rate; "6-10" covers 6 to 10.
VISIT_RATES = {"1": 0.0235, "2": 0.0323, "3": 0.0376, "4": 0.0439, "6-10": 0.0470}
DEVICE_RATES = {"desktop": 0.0314, "mobile": 0.0260, "tablet": 0.0231}
ORGANIC_DESKTOP_RATE, PAID_DESKTOP_RATE = 0.0476, 0.0170
HOUR_RATES = {6: 0.0198, 13: 0.0315}
WEEKDAY_RATES = {0: 0.0315, 6: 0.0245}  # Monday, Sunday
COARSE_RATE, FINE_RATE = 0.0320, 0.0201
ABROAD_RATE = 0.0195
CITY_RATES = {"Kazan": 0.0386, "Krasnodar": 0.0335, "Saint Petersburg": 0.0240}

# Distinct values per column in the full export; only comparable at full scale.
DISTINCT = {
    "client_id": 1_391_719,
    "visit_date": 226,
    "visit_time": 85_318,
    "visit_number": 537,
    "utm_source": 293,
    "utm_medium": 56,
    "utm_campaign": 412,
    "utm_adcontent": 286,
    "utm_keyword": 1_219,
    "device_os": 13,
    "device_brand": 205,
    "device_model": 104,
    "device_screen_resolution": 5_039,
    "device_browser": 57,
    "geo_country": 166,
    "geo_city": 2_548,
    "hit_session_id": 1_734_610,
    "event_category": 52,
    "event_action": 230,
}
