"""When the worker gives up: exit so that what was in hand is done again after a restart."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from aiokafka.errors import KafkaError

from stream.metrics import ExitLog
from stream.state import InfrastructureError, RedisLost

log = logging.getLogger(__name__)

# Exit code when Redis or Kafka stay unreachable: the batch is not acked, a supervisor
# restarts the worker and the batch is delivered again.
EXIT_INFRASTRUCTURE = 70
EXIT_BUG = 71


@contextlib.contextmanager
def fatal(exits: ExitLog, what: str) -> Iterator[None]:
    """Exit the process on a failure; what was in hand is done again after a restart.

    Nothing of a fetch in hand is committed, so it is delivered again; a close in
    hand stays open in Redis and the next sweep takes it up. That happens after a
    restart if Redis or Kafka stayed away, or once the bug is fixed. Bad data never
    gets here: every failure of one record is a dead letter. The reason is recorded
    in ``exits`` for the next start to count. ``RedisLost`` goes through: the caller
    reads the input again (stream/recovery.py).
    """
    try:
        yield
    except RedisLost:
        raise
    except (InfrastructureError, KafkaError) as exc:
        reason = "redis" if isinstance(exc, InfrastructureError) else "kafka"
        log.critical("giving up on %s: %r; exiting so it is delivered again", what, exc)
        exits.record(reason, f"{what}: {exc!r}")
        os._exit(EXIT_INFRASTRUCTURE)
    except Exception as exc:
        log.critical("unexpected failure on %s; exiting uncommitted", what, exc_info=True)
        exits.record("bug", f"{what}: {exc!r}")
        os._exit(EXIT_BUG)
