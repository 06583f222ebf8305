"""In-memory stand-ins for the Redis client the API uses (unit tests only).

Besides the fake client: helpers that store what the stream worker would have stored,
in the key layout of ``contracts.keys.Layout``.
"""

from collections.abc import Callable, Mapping
from typing import Any

from contracts import keys
from features.hits import STATE_NAMES, empty_state

START = "2021-11-24T14:36:32+03:00"
START_MS = 1_637_753_792_000.0
CHANNEL = ("cpc", "src", "(none)", "mobile", "Moscow")


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


class FakeRedis:
    """The Redis calls the API makes, in memory. ``calls`` lists them: (command, key)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.sets: dict[str, set[bytes]] = {}
        self.lists: dict[str, list[bytes]] = {}
        self.zsets: dict[str, dict[bytes, float]] = {}
        self.down = False
        self.calls: list[tuple[str, str]] = []

    # The commands, run at once (by the client) or at execute (by a pipeline).
    def _hget(self, key: str, field: str | bytes) -> bytes | None:
        return self.hashes.get(key, {}).get(_b(field))

    def _hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(key, {}))

    def _hmget(self, key: str, *fields: str | bytes) -> list[bytes | None]:
        h = self.hashes.get(key, {})
        return [h.get(_b(f)) for f in fields]

    def _llen(self, key: str) -> int:
        return len(self.lists.get(key, []))

    def _scard(self, key: str) -> int:
        return len(self.sets.get(key, set()))

    def _zrevrange(self, key: str, start: int, end: int, withscores: bool = False) -> list[Any]:
        # Redis orders equal scores by member, descending, in ZREVRANGE.
        items = sorted(self.zsets.get(key, {}).items(), key=lambda kv: (kv[1], kv[0]))
        items.reverse()
        items = items[start : None if end == -1 else end + 1]
        return items if withscores else [m for m, _ in items]

    def _run(self, name: str, key: str, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise ConnectionError("Connection refused")
        self.calls.append((name, key))
        command: Callable[..., Any] = getattr(self, f"_{name}")
        return command(key, *args, **kwargs)

    async def hget(self, key: str, field: str | bytes) -> bytes | None:
        return self._run("hget", key, field)

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return self._run("hgetall", key)

    async def hmget(self, key: str, *fields: str | bytes) -> list[bytes | None]:
        return self._run("hmget", key, *fields)

    async def llen(self, key: str) -> int:
        return self._run("llen", key)

    async def zrevrange(
        self, key: str, start: int, end: int, withscores: bool = False
    ) -> list[Any]:
        return self._run("zrevrange", key, start, end, withscores=withscores)

    async def get(self, key: str) -> bytes | None:
        if self.down:
            raise ConnectionError("Connection refused")
        return self.data.get(key)

    async def ping(self) -> bool:
        if self.down:
            raise ConnectionError("Connection refused")
        return True

    def pipeline(self, transaction: bool = True) -> "FakePipeline":
        return FakePipeline(self)

    # What the worker would have stored.
    def record_layout(
        self, partitions: int, prefix: str = keys.KEY_PREFIX, version: int | None = None
    ) -> keys.Layout:
        """Record a layout as the worker does; return it."""
        self.hashes[keys.layout_key(prefix)] = {
            b"version": str(keys.LAYOUT_VERSION if version is None else version).encode(),
            b"partitions": str(partitions).encode(),
        }
        return keys.Layout(prefix, partitions)

    def store_session(
        self,
        layout: keys.Layout,
        session_id: str,
        fields: Mapping[str, bytes | str],
        partition: int | None = None,
    ) -> int:
        """Store a session's hash (on its default partition, unless told); return where."""
        p = layout.partition_of(session_id) if partition is None else partition
        self.hashes[layout.session(p, session_id)] = {_b(k): _b(v) for k, v in fields.items()}
        return p


class FakePipeline:
    """Queues commands; ``execute`` runs them in order and returns their replies."""

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.queued: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = []

    def _queue(self, name: str, key: str, *args: Any, **kwargs: Any) -> "FakePipeline":
        self.queued.append((name, key, args, kwargs))
        return self

    def hget(self, key: str, field: str | bytes) -> "FakePipeline":
        return self._queue("hget", key, field)

    def hgetall(self, key: str) -> "FakePipeline":
        return self._queue("hgetall", key)

    def hmget(self, key: str, *fields: str | bytes) -> "FakePipeline":
        return self._queue("hmget", key, *fields)

    def llen(self, key: str) -> "FakePipeline":
        return self._queue("llen", key)

    def scard(self, key: str) -> "FakePipeline":
        return self._queue("scard", key)

    def zrevrange(self, key: str, start: int, end: int, withscores: bool = False) -> "FakePipeline":
        return self._queue("zrevrange", key, start, end, withscores=withscores)

    async def execute(self) -> list[Any]:
        queued, self.queued = self.queued, []
        return [self.redis._run(name, key, *a, **kw) for name, key, a, kw in queued]


def row(
    client_id: str | None = "1.2",
    start: str = START,
    start_ms: float = START_MS,
    channel: tuple[str, ...] = CHANNEL,
) -> bytes:
    """Return a session hash's ``row`` field as the worker packs it."""
    vector = b"\x00" * 8
    return keys.pack_row(keys.StoredRow(start, client_id, vector, start_ms, channel))


def hit_state(**counters: float) -> bytes:
    """Return the ``hs`` field: the empty state with some counters set."""
    values = empty_state().tolist()
    for name, value in counters.items():
        values[STATE_NAMES.index(name)] = value
    return keys.pack_hit_state(values)
