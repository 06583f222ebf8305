from pathlib import Path

import pytest
from access_keys import DASHBOARD_KEY, SCORING_KEY
from fakes import FakeRedis
from fastapi.testclient import TestClient

from api.main import create_app
from api.operator import create_operator_app
from api.settings import ApiSettings


@pytest.fixture()
def fake_redis() -> FakeRedis:
    return FakeRedis()


@pytest.fixture()
def client(model_path: Path, fake_redis: FakeRedis):
    """The API run as an open local demo: these tests are about what it answers."""
    app = create_app(ApiSettings(model_path=model_path, api_insecure_demo=True), redis=fake_redis)
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def keyed_client(model_path: Path, fake_redis: FakeRedis):
    """The API as deployed: a scoring key and a dashboard key, none sent by default."""
    settings = ApiSettings(model_path=model_path, api_key=SCORING_KEY, dashboard_key=DASHBOARD_KEY)
    app = create_app(settings, redis=fake_redis)
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def operator(client: TestClient) -> TestClient:
    """The operator's port of the ``client`` app: /metrics, /docs, /openapi.json."""
    return TestClient(create_operator_app(client.app))
