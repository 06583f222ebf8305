from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings


class FakeRedis:
    """The two Redis calls the API makes, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def ping(self) -> bool:
        return True


@pytest.fixture()
def fake_redis() -> FakeRedis:
    return FakeRedis()


@pytest.fixture()
def client(model_path: Path, fake_redis: FakeRedis):
    app = create_app(ApiSettings(model_path=model_path), redis=fake_redis)
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def keyed_client(model_path: Path, fake_redis: FakeRedis):
    app = create_app(ApiSettings(model_path=model_path, api_key="s3cret"), redis=fake_redis)
    with TestClient(app) as c:
        yield c
