"""A test or benchmark run leaves nothing behind on the shared broker and Redis."""

from __future__ import annotations

import asyncio
import uuid

import redis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.procs import drop_run
from stream.settings import StreamSettings


async def _topics(bootstrap: str, create: list[str] | None = None) -> set[str]:
    """List the broker's topics, after creating ``create`` and waiting until they are listed.

    The broker answers a create before its metadata lists the new topics everywhere.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if create:
            await admin.create_topics([NewTopic(n, 1, 1) for n in create])
            for _ in range(50):
                if set(create) <= set(await admin.list_topics()):
                    break
                await asyncio.sleep(0.2)
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_drop_run_deletes_the_runs_topics_faust_leader_topic_and_keys(
    kafka_bootstrap: str, redis_url: str
) -> None:
    run = f"it-{uuid.uuid4().hex[:10]}"
    other = f"it-{uuid.uuid4().hex[:10]}"
    settings = StreamSettings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        topic_prefix=f"{run}.",
        app_id=run,
        redis_key_prefix=run,
        model_path="/nonexistent/model.pkl",
    )
    mine = [f"{run}.ga.hits", f"{run}.conversion.scores", f"{run}-__assignor-__leader"]
    theirs = [f"{other}.ga.hits", f"{other}-__assignor-__leader"]
    assert set(mine + theirs) <= asyncio.run(_topics(kafka_bootstrap, mine + theirs))
    r = redis.Redis.from_url(redis_url)
    r.set(f"{run}:s:1", b"x")
    r.set(f"{other}:s:1", b"x")
    try:
        drop_run(settings)
        left = asyncio.run(_topics(kafka_bootstrap))
        assert not set(mine) & left
        assert set(theirs) <= left
        assert r.get(f"{run}:s:1") is None
        assert r.get(f"{other}:s:1") == b"x"
    finally:
        drop_run(
            settings.model_copy(
                update={"topic_prefix": f"{other}.", "app_id": other, "redis_key_prefix": other}
            )
        )
        r.close()
