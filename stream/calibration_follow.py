"""The worker's side of online calibration: the latest record of the model version in
use is applied as soon as it is read, and mirrored into Redis for the API.

The follower keeps the model as deployed (``base``) and swaps in, for the processor,
that model with the record's shift (``ConversionModel.with_online_shift``): every score
made from then on says the record's id and shift. A model reload swaps in a new base;
the follower applies that version's record (none: the offline calibration).
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from artifact import ConversionModel
from contracts import keys
from contracts.calibrations import OFFLINE
from stream.calibration_topic import CalibrationReader
from stream.metrics import WorkerMetrics
from stream.processor import Processor
from stream.settings import StreamSettings

log = logging.getLogger(__name__)

MIRROR_EVERY_S = 30.0  # the Redis copy is written again this often (Redis can forget)
CATCH_UP_S = 10.0  # at start, reading the topic to its end may take this long at most


class CalibrationFollower:
    """Applies the calibrations topic's records to the processor's model."""

    def __init__(
        self,
        settings: StreamSettings,
        processor: Processor,
        metrics: WorkerMetrics,
        reader: CalibrationReader | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.metrics = metrics
        self.reader = reader or CalibrationReader(settings)
        self.applied: ConversionModel | None = None  # the model this follower swapped in
        self.base = processor.model.offline()
        self.mirrored_at = 0.0
        # Set once the topic has been read to its end at start (or that took too long):
        # the worker scores nothing before, so that no score after a restart misses the
        # calibration in use. Set at once when the worker does not follow calibrations.
        self.ready = asyncio.Event()
        if settings.calibration_follow_s <= 0:
            self.ready.set()

    async def wait_ready(self) -> None:
        """Wait until the topic was read at start; past a bound, go on without it."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout=CATCH_UP_S + 5.0)
        except TimeoutError:
            log.warning("calibrations: not read in %.0f s; scoring goes on", CATCH_UP_S + 5.0)
            self.ready.set()

    def apply(self) -> bool:
        """Swap in the base model with its version's latest record; return whether the
        model changed."""
        model = self.processor.model
        if model is not self.applied:  # first call, or a reload swapped in a new model
            self.base = model.offline()
        record = self.reader.latest.get(self.base.version)
        want = OFFLINE if record is None else record.calibration_id
        if model.calibration_id == want:
            if model is not self.applied:
                self.applied = model
                self.metrics.use_calibration(model.version, want, model.calibration_shift)
            return False
        new = self.base if record is None else self.base.with_online_shift(record.shift, want)
        self.processor.model = self.applied = new
        self.metrics.use_calibration(new.version, want, new.calibration_shift)
        log.info(
            "calibration: %s now scores with %s (shift %+.4f)",
            new.version,
            want,
            new.calibration_shift,
        )
        return True

    async def mirror(self) -> None:
        """Write the latest records into Redis, for the API."""
        if not self.reader.latest:
            return
        mapping = {
            version: orjson.dumps(record.model_dump())
            for version, record in self.reader.latest.items()
        }
        try:
            await self.processor.store.r.hset(
                keys.calibrations_key(self.settings.redis_key_prefix), mapping=mapping
            )
            self.mirrored_at = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - the copy is best effort; the topic is the record
            log.debug("calibrations not mirrored: %s", exc)

    async def run(self) -> None:
        """Follow the topic until cancelled."""
        await self.reader.start()
        try:
            try:
                await self.reader.catch_up(timeout_s=CATCH_UP_S)
            except TimeoutError as exc:
                log.warning("calibrations: %s; scoring with what was read", exc)
            self.apply()
            await self.mirror()
            self.ready.set()
            while True:
                new = await self.reader.poll(
                    timeout_ms=int(self.settings.calibration_follow_s * 1000)
                )
                self.apply()
                if new or time.monotonic() - self.mirrored_at > MIRROR_EVERY_S:
                    await self.mirror()
        finally:
            await self.reader.stop()


async def follow(follower: CalibrationFollower) -> None:
    """Run the follower; a broker error is logged and the follower starts again."""
    while True:
        try:
            await follower.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - scoring goes on with the calibration in use
            log.warning("calibrations: following stopped (%s); again in 5 s", exc)
            follower.ready.set()  # the broker is away: scoring must not wait for it
            await asyncio.sleep(5.0)
