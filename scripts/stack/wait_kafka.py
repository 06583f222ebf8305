"""Wait until Kafka answers a metadata request, or give up.

Usage: wait_kafka.py BOOTSTRAP TIMEOUT_S [BROKERS]

With BROKERS (default 1) above 1, for a cluster, every address in BOOTSTRAP must answer
a metadata request itself, listing at least BROKERS brokers. Asking any one node is not
enough: a node killed a moment ago stays in the others' metadata until the controller
fences it (a broker session timeout later), and a node that has just been started
again answers only once it has caught up and been let back in.
"""

import asyncio
import logging
import sys
import time

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient


async def node_lists(address: str, brokers: int) -> bool:
    """Whether the node at ADDRESS answers metadata listing at least BROKERS brokers."""
    client = AIOKafkaClient(bootstrap_servers=address, request_timeout_ms=3000)
    try:
        await client.bootstrap()  # one metadata request, to this address only
        return len(client.cluster.brokers()) >= brokers
    finally:
        await client.close()


async def ready(bootstrap: str, timeout_s: float, brokers: int = 1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            if brokers <= 1:
                return True
            answers = [await node_lists(a.strip(), brokers) for a in bootstrap.split(",")]
            if all(answers):
                return True
            await asyncio.sleep(1.0)
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            await asyncio.sleep(1.0)
        finally:
            await admin.close()
    return False


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)  # connection refusals are expected while it starts
    expected = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    ok = asyncio.run(ready(sys.argv[1], float(sys.argv[2]), expected))
    sys.exit(0 if ok else 1)
