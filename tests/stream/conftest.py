"""A Redis store on the local stack's real Redis, under a key prefix of its own."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from stream.lane import ScriptLane
from stream.state import RedisStore


@pytest.fixture()
async def store() -> AsyncIterator[RedisStore]:
    """A store whose keys are deleted after the test."""
    url = os.environ.get("SCORER_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        await client.ping()
    except OSError as exc:  # pragma: no cover - the stack is down
        pytest.fail(f"Redis is not reachable at {url}: {exc}")
    prefix = f"store-test-{uuid.uuid4().hex[:8]}"
    yield RedisStore(client, prefix=prefix, ttl_s=600, retries=2)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


class Masters:
    """Stands in for ``stream.nodes.NodeLanes`` on one Redis server: the partitions are
    spread over ``count`` lanes as if over that many Redis Cluster masters (partition p
    on master p % count, or as ``where`` says), so the store runs as on Redis Cluster:
    the cluster's apply script, one call per master, a part per partition."""

    def __init__(self, client: aioredis.Redis, layout: Any, count: int = 2) -> None:
        self.layout = layout
        self.lanes = [ScriptLane(client) for _ in range(count)]
        self.where = {p: p % count for p in range(layout.partitions)}
        self.ready = True
        self.refreshes = 0

    def __call__(self, key: str) -> ScriptLane:
        for p in range(self.layout.partitions):
            if key.startswith(self.layout.base(p)):
                return self.lanes[self.where[p]]
        raise AssertionError(f"no partition's key: {key}")

    async def refresh(self) -> None:
        self.refreshes += 1


def as_on_a_cluster(store: RedisStore, masters: int = 2) -> tuple[RedisStore, Masters]:
    """A store on the same Redis and prefix, run as on a Redis Cluster of ``masters``."""
    lanes = Masters(store.r, store.layout, masters)
    clustered = RedisStore(
        store.r,
        prefix=store.prefix,
        ttl_s=store.ttl,
        retries=2,
        lanes=lanes,  # type: ignore[arg-type]
    )
    return clustered, lanes
