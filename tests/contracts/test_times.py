"""The service's clocks as text."""

import random
from datetime import UTC, datetime

import pytest

from contracts.times import MSK, iso_from_ms, utc_iso


def test_iso_from_ms_gives_the_text_datetime_gives() -> None:
    rng = random.Random(5)
    values = [0.0, 1.0, 999.0, 1_000.0, -1.0, 1_640_995_200_000.0, 1_640_995_199_999.5]
    values += [rng.uniform(1.5e12, 1.8e12) for _ in range(2_000)]
    values += [float(rng.randrange(1_500_000_000_000, 1_800_000_000_000)) for _ in range(2_000)]
    for ms in values:
        expected = datetime.fromtimestamp(ms / 1000.0, MSK).isoformat(timespec="milliseconds")
        assert iso_from_ms(ms) == expected, ms


@pytest.mark.parametrize("ms", [0, 999, 1_764_357_116_645, 1_764_357_116_000, 1_764_357_116_001])
def test_utc_iso_is_the_isoformat_of_that_millisecond(ms: int) -> None:
    at = datetime.fromtimestamp(ms / 1000, UTC).replace(microsecond=(ms % 1000) * 1000)
    assert utc_iso(ms) == at.isoformat(timespec="milliseconds")
