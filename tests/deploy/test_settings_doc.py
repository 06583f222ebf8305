"""The README's settings table says what the settings classes say."""

from __future__ import annotations

import re
from pathlib import Path

from api.settings import ApiSettings
from stream.settings import StreamSettings

ROOT = Path(__file__).resolve().parents[2]
STACK_ONLY = {"SCORER_KAFKA_PORT", "SCORER_KAFKA_CONTROLLER_PORT", "SCORER_REDIS_PORT"}


def documented() -> dict[str, str]:
    """Variable -> default as the README's settings table gives them."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Settings") :]
    section = section[: section.index("\n### ", 5)]
    out: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`SCORER_"):
            continue
        names = re.findall(r"`(SCORER_[A-Z0-9_]+)`", cells[0])
        defaults = [d.strip().strip("`") for d in cells[1].split(",")]
        if len(defaults) != len(names):
            defaults = [cells[1].strip("`")] * len(names)
        out.update(zip(names, defaults, strict=True))
    return out


def actual() -> dict[str, str]:
    out: dict[str, str] = {}
    for cls in (StreamSettings, ApiSettings):
        for name, field in cls.model_fields.items():
            value = field.default
            out[f"SCORER_{name.upper()}"] = "unset" if value is None else str(value)
    return out


def _same(doc: str, value: str) -> bool:
    if doc in ("empty", "") and value == "":
        return True
    try:
        return float(doc) == float(value)
    except ValueError:
        return doc == value


def test_every_setting_is_in_the_table_with_its_default() -> None:
    doc, real = documented(), actual()
    assert set(real) - set(doc) == set(), "settings missing from the README"
    assert set(doc) - set(real) - STACK_ONLY == set(), "the README names settings that do not exist"
    wrong = {k: (doc[k], v) for k, v in real.items() if not _same(doc[k], v)}
    assert wrong == {}


def test_a_changed_default_would_be_caught() -> None:
    doc = documented()
    assert not _same(doc["SCORER_BATCH_MAX"], "501")
