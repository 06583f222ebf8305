"""The raw columns of the two Google Analytics exports, in file order."""

SESSION_COLUMNS: tuple[str, ...] = (
    "session_id",
    "client_id",
    "visit_date",
    "visit_time",
    "visit_number",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_adcontent",
    "utm_keyword",
    "device_category",
    "device_os",
    "device_brand",
    "device_model",
    "device_screen_resolution",
    "device_browser",
    "geo_country",
    "geo_city",
)

HIT_COLUMNS: tuple[str, ...] = (
    "session_id",
    "hit_date",
    "hit_time",
    "hit_number",
    "hit_type",
    "hit_referer",
    "hit_page_path",
    "event_category",
    "event_action",
    "event_label",
    "event_value",
)
