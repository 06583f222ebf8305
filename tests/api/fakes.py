"""In-memory stand-ins for the Redis client the API uses (unit tests only)."""

from typing import Any


class FakeRedis:
    """The Redis calls the API makes, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.sets: dict[str, set[bytes]] = {}
        self.lists: dict[str, list[bytes]] = {}
        self.down = False

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

    async def execute(self) -> list[Any]:
        return self.results
