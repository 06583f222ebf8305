"""Wait until a Kafka broker answers a metadata request, or give up."""

import asyncio
import logging
import sys
import time

from aiokafka.admin import AIOKafkaAdminClient


async def ready(bootstrap: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            await asyncio.sleep(1.0)
        finally:
            await admin.close()
    return False


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)  # connection refusals are expected while it starts
    ok = asyncio.run(ready(sys.argv[1], float(sys.argv[2])))
    sys.exit(0 if ok else 1)
