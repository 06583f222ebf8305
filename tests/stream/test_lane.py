"""The store's script lane, on the real Redis of the local stack."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from stream.lane import ScriptLane, pack
from stream.state import RedisStore

pytestmark = pytest.mark.redis

ECHO = "redis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('LRANGE', KEYS[1], 0, -1)"


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    args = [b"EVALSHA", "abc", 2, "k:1", "k:\u00e9", b"\x00\xff", 1.5, 7]
    assert pack(args) == b"".join(Connection().pack_command(*args))


async def test_calls_sent_ahead_run_in_order_and_reply_in_order(store: RedisStore) -> None:
    lane = ScriptLane(store.r)
    script = store.r.register_script(ECHO)
    key = f"{store.prefix}:lane"
    sent = [await lane.send(script, [key], [str(i)]) for i in range(5)]
    replies = [await lane.reply(script, s, [key], [str(i)]) for i, s in enumerate(sent)]
    assert replies == [[str(j).encode() for j in range(i + 1)] for i in range(5)]


async def test_a_script_redis_forgot_is_loaded_and_run(store: RedisStore) -> None:
    lane = ScriptLane(store.r)
    script = store.r.register_script(ECHO)
    key = f"{store.prefix}:lane"
    await lane.call(script, [key], ["a"])
    await store.r.script_flush()
    assert await lane.call(script, [key], ["b"]) == [b"a", b"b"]


async def test_a_broken_connection_fails_the_waiting_call_and_the_next_reconnects(
    store: RedisStore,
) -> None:
    lane = ScriptLane(store.r)
    script = store.r.register_script(ECHO)
    key = f"{store.prefix}:lane"
    await lane.call(script, [key], ["a"])
    # Redis drops the lane's connection (a restart, a network cut).
    ids = [c["id"] for c in await store.r.client_list() if c["cmd"] == "evalsha"]
    assert len(ids) == 1
    await store.r.client_kill_filter(_id=ids[0])
    with pytest.raises((RedisConnectionError, ConnectionError)):
        # It fails as it is sent, or as its reply is read: either way, not silently.
        sent = await lane.send(script, [key], ["lost"])
        await lane.reply(script, sent, [key], ["lost"])
    # The next call opens a new connection.
    assert await lane.call(script, [key], ["b"]) == [b"a", b"b"]
