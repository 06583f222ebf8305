"""A Redis store on the local stack's real Redis, under a key prefix of its own."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

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
