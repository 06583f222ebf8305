"""Fuzz every route from the OpenAPI schema: no input may cause a server error.

Schemathesis turns each operation of the app's OpenAPI schema into Hypothesis
strategies: requests that fit the schema and requests that break it (wrong types,
missing fields, odd strings, unexpected fields). Each must get a 2xx or 4xx answer,
never a 5xx.
"""

from pathlib import Path

import pytest
import schemathesis
from fakes import FakeRedis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from api.main import create_app
from api.settings import ApiSettings

EXAMPLES_PER_MODE = 50


@pytest.fixture(scope="module")
def fuzzed_app(model_path: Path):
    # An open local demo: the fuzzing is of the inputs, not of the keys.
    app = create_app(
        ApiSettings(
            model_path=model_path, model_reload_s=0, max_batch_rows=50, api_insecure_demo=True
        ),
        redis=FakeRedis(),
    )
    with TestClient(app):  # runs the lifespan: model and Redis in app.state
        yield app


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(fuzzed_app, mode: GenerationMode) -> None:
    # The schema is served on the operator's port; the calls go to the API's.
    schema = schemathesis.openapi.from_dict(fuzzed_app.openapi())
    schema.app = fuzzed_app
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {op.path for op in operations}
    assert {"/predict", "/predict/batch", "/sessions/{session_id}", "/ready"} <= paths
    assert {"/dashboard", "/dashboard/data"} <= paths
    calls: dict[str, int] = {}
    for op in operations:
        raw = op.definition.raw
        if mode == GenerationMode.NEGATIVE and not (
            raw.get("parameters") or raw.get("requestBody")
        ):
            continue  # nothing to break in a request without inputs

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_MODE,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def call(case) -> None:
            response = case.call()
            key = f"{case.method} {case.path}"
            calls[key] = calls.get(key, 0) + 1
            assert response.status_code < 500, (key, case.body, response.text[:300])

        call()
    # Every operation with inputs was exercised (in the positive mode, every operation).
    with_inputs = [
        op
        for op in operations
        if op.definition.raw.get("parameters") or op.definition.raw.get("requestBody")
    ]
    expected = operations if mode == GenerationMode.POSITIVE else with_inputs
    assert len(calls) == len(expected) and len(with_inputs) == 5
