"""docker-compose.yml: valid by the Compose specification, and true to the project.

No Docker engine runs in CI, so the file is checked statically: against the Compose
specification's JSON schema (tests/fixtures/compose-spec.json, from
github.com/compose-spec/compose-spec, Apache-2.0), and against the code it names.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from api.settings import ApiSettings
from stream.settings import StreamSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec.json"
# Variables only the local stack script reads (scripts/stack.sh), not the services.
STACK_ONLY = {"SCORER_KAFKA_PORT", "SCORER_KAFKA_CONTROLLER_PORT", "SCORER_REDIS_PORT"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _known_settings() -> set[str]:
    names = set(StreamSettings.model_fields) | set(ApiSettings.model_fields)
    return {f"SCORER_{n.upper()}" for n in names}


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    if isinstance(cmd, str):
        return cmd.split()
    return [str(c) for c in cmd]


def _modules(words: list[str]) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-m"]


def test_the_file_is_valid_by_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(compose)


def test_a_broken_file_is_caught_by_the_schema(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["restart"] = ["always"]
    broken["services"]["api"]["ports"] = {"8000": "8000"}
    schema = json.loads(SCHEMA.read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(broken))
    assert errors


def test_every_python_module_a_service_runs_exists(compose: dict[str, Any]) -> None:
    seen = 0
    for name, service in compose["services"].items():
        for module in _modules(_command(service)):
            assert importlib.util.find_spec(module) is not None, (name, module)
            seen += 1
        test = service.get("healthcheck", {}).get("test", [])
        for module in _modules([str(t) for t in test]):
            assert importlib.util.find_spec(module) is not None, (name, module)
    assert seen >= 4


def test_the_subcommands_it_runs_exist(compose: dict[str, Any]) -> None:
    from api.__main__ import _parser as api_parser
    from stream.__main__ import _parser as stream_parser
    from training.__main__ import _parser as training_parser

    parsers = {"stream": stream_parser, "training": training_parser, "api": api_parser}
    for name, service in compose["services"].items():
        words = _command(service)
        if words[:1] == ["sh"]:
            # sh -c "python -m a ... && python -m b ...": check each python command
            text = " ".join(words[2:]).strip("\"'")
            commands = [c.split() for c in re.split(r"&&|;", text)]
        else:
            commands = [words]
        for cmd in commands:
            if cmd[:2] != ["python", "-m"] or cmd[2] not in parsers:
                continue
            args = cmd[3:]
            try:
                parsers[cmd[2]]().parse_args(args)
            except SystemExit as exc:  # argparse's way of saying no
                raise AssertionError(f"{name}: {' '.join(cmd)} is not a valid command") from exc


def test_every_scorer_variable_is_a_setting(compose: dict[str, Any]) -> None:
    known = _known_settings()
    text = COMPOSE.read_text()
    named = set(re.findall(r"\bSCORER_[A-Z0-9_]+", text))
    assert named, "the compose file names no settings"
    assert named - known - STACK_ONLY == set()


def test_published_ports_are_the_ones_the_services_listen_on(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api_port = _command(services["api"])[_command(services["api"]).index("--port") + 1]
    published = [str(p).rsplit(":", 1)[-1] for p in services["api"]["ports"]]
    assert api_port in published
    health = " ".join(services["api"]["healthcheck"]["test"])
    assert f":{api_port}/ready" in health
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    worker_sd = jobs["worker"]["dns_sd_configs"][0]
    assert worker_sd["names"] == ["worker"] and "worker" in services
    assert worker_sd["port"] == StreamSettings.model_fields["metrics_port"].default
    # The API's metrics are on its operator port, which is not published to the host.
    operator_port = str(ApiSettings.model_fields["api_operator_port"].default)
    assert services["api"]["environment"]["SCORER_API_OPERATOR_PORT"] == int(operator_port)
    assert jobs["api"]["static_configs"][0]["targets"] == [f"api:{operator_port}"]
    assert operator_port not in published
    quality = jobs["quality"]["static_configs"][0]["targets"][0]
    assert (
        quality == f"quality:{StreamSettings.model_fields['quality_metrics_port'].default}"
        and "quality" in services
    )
    assert "prometheus" in services and "grafana" in services


def test_redis_never_evicts_live_state_and_persists(compose: dict[str, Any]) -> None:
    cmd = _command(compose["services"]["redis"])
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"


def test_the_kafka_image_is_the_version_the_local_stack_runs(compose: dict[str, Any]) -> None:
    stack = (ROOT / "scripts" / "stack.sh").read_text()
    version = re.search(r"KAFKA_VERSION=\$\{KAFKA_VERSION:-([0-9.]+)\}", stack)
    assert version is not None
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{version.group(1)}"


def test_the_image_runs_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    lock = dockerfile.index("pip install --require-hashes -r requirements/runtime.lock")
    assert lock < dockerfile.index("COPY features") < dockerfile.index("pip install --no-deps")


def test_services_restart_and_have_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("kafka", "redis", "worker", "api"):
        assert services[name].get("restart") in ("unless-stopped", "always", "on-failure"), name
    for name in ("kafka", "redis", "api", "worker"):
        assert "healthcheck" in services[name], name


def test_the_services_of_the_design_are_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "trainer", "topics", "worker", "api", "replayer"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    published = [
        str(port) for service in compose["services"].values() for port in service.get("ports", [])
    ]
    assert published
    assert all(port.startswith("127.0.0.1:") for port in published), published


def test_the_api_runs_with_a_key_and_never_as_an_open_demo(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    assert "SCORER_API_INSECURE_DEMO" not in text
    api = compose["services"]["api"]["environment"]
    # ${VAR:?message}: compose stops when the key is unset or empty, rather than pass "".
    assert api["SCORER_API_KEY"].startswith("${SCORER_API_KEY:?")
    for name in ("worker", "quality", "topics", "trainer", "replayer"):
        assert "SCORER_API_KEY" not in compose["services"][name]["environment"], name


def test_metrics_servers_open_to_the_scrape_inside_the_compose_network(
    compose: dict[str, Any],
) -> None:
    for name in ("worker", "quality", "api"):
        env = compose["services"][name]["environment"]
        assert env["SCORER_METRICS_HOST"] == "0.0.0.0", name
    published = {
        str(port).rsplit(":", 1)[-1]
        for service in compose["services"].values()
        for port in service.get("ports", [])
    }
    assert {"9108", "9109", "9110"}.isdisjoint(published)
