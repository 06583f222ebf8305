"""The API's side of online calibration: the worker's copy in Redis, applied.

The worker follows ``conversion.calibrations`` and keeps the latest record of each
model version in Redis (``contracts.keys.calibrations_key``). The API looks there every
``SCORER_CALIBRATION_FOLLOW_S`` and serves its model with the record of its version, as
the worker scores with it, so ``POST /predict`` and the stream agree. When Redis has no
record (it forgot, or none was made), the API keeps what it serves: the worker writes
the copy again within half a minute.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI

from artifact import ConversionModel
from contracts import keys
from contracts.calibrations import parse_record

log = logging.getLogger(__name__)


async def apply_calibration(app: FastAPI) -> bool:
    """Serve the model with its version's record from Redis; return whether it changed."""
    model: ConversionModel = app.state.model
    prefix = app.state.settings.redis_key_prefix
    raw: Any = await app.state.redis.hget(keys.calibrations_key(prefix), model.version)
    if raw is None:
        return False
    try:
        record = parse_record(raw)
    except ValueError as exc:
        log.warning("calibration of %s in Redis not applied: %s", model.version, exc)
        return False
    if record.model_version != model.version or record.calibration_id == model.calibration_id:
        return False
    app.state.model = model.with_online_shift(record.shift, record.calibration_id)
    log.info(
        "calibration: %s now serves with %s (shift %+.4f)",
        model.version,
        record.calibration_id,
        record.shift,
    )
    return True


async def watch_calibration(app: FastAPI, interval_s: float) -> None:
    """Apply the latest calibration every interval_s; Redis errors only delay it."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await apply_calibration(app)
        except Exception as exc:  # noqa: BLE001 - scoring goes on with the calibration in use
            log.debug("calibration not read: %s", exc)
