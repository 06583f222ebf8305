from pathlib import Path

import pytest
from fakes import FakeRedis
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings


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
