"""In-memory stand-ins for the Redis client the API uses (unit tests only)."""

from typing import Any


class FakeRedis:
    """The Redis calls the API makes, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.sets: dict[str, set[bytes]] = {}
        self.lists: dict[str, list[bytes]] = {}
        self.zsets: dict[str, dict[bytes, float]] = {}
        self.down = False

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(key, {}))

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def ping(self) -> bool:
        if self.down:
            raise ConnectionError("Connection refused")
        return True

    def pipeline(self, transaction: bool = True) -> "FakePipeline":
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.results: list[Any] = []

    def hgetall(self, key: str) -> None:
        self.results.append(dict(self.redis.hashes.get(key, {})))

    def scard(self, key: str) -> None:
        self.results.append(len(self.redis.sets.get(key, set())))

    def llen(self, key: str) -> None:
        self.results.append(len(self.redis.lists.get(key, [])))

    def hmget(self, key: str, *fields: str) -> None:
        h = self.redis.hashes.get(key, {})
        self.results.append([h.get(f.encode()) for f in fields])

    def zrevrange(self, key: str, start: int, end: int, withscores: bool = False) -> None:
        items = sorted(self.redis.zsets.get(key, {}).items(), key=lambda kv: -kv[1])
        items = items[start : end + 1]
        self.results.append(items if withscores else [m for m, _ in items])

    async def execute(self) -> list[Any]:
        return self.results
