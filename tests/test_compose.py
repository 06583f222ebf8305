"""docker-compose.yml cannot run here (no Docker engine): check what it names exists."""

import importlib
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command_words(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return cmd if isinstance(cmd, list) else cmd.split()


def _settings_fields() -> set[str]:
    from api.settings import ApiSettings
    from stream.settings import StreamSettings

    names = set()
    for cls in (ApiSettings, StreamSettings):
        prefix = cls.model_config.get("env_prefix", "")
        names |= {f"{prefix}{name}".upper() for name in cls.model_fields}
    return names


def test_the_services_of_the_design_are_there(compose: dict) -> None:
    assert {"kafka", "redis", "trainer", "worker", "api"} <= set(compose["services"])


def test_kafka_is_the_version_the_local_stack_runs(compose: dict) -> None:
    stack = (ROOT / "scripts" / "stack.sh").read_text()
    version = re.search(r"KAFKA_VERSION=\$\{[A-Z_]+:-([0-9.]+)\}|KAFKA_VERSION=\"?([0-9.]+)", stack)
    assert version, "scripts/stack.sh pins no KAFKA_VERSION"
    pinned = version.group(1) or version.group(2)
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{pinned}"
    assert compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == (
        "broker,controller"
    )


def test_every_python_module_a_service_runs_exists(compose: dict) -> None:
    modules = []
    for service in compose["services"].values():
        words = _command_words(service)
        modules += [words[i + 1] for i, w in enumerate(words) if w == "-m"]
    assert modules
    for module in modules:
        assert importlib.util.find_spec(f"{module}.__main__"), f"no python -m {module}"


def test_every_subcommand_a_service_runs_exists(compose: dict) -> None:
    from stream.__main__ import _parser as stream_parser
    from training.__main__ import _parser as training_parser

    parsers = {"stream": stream_parser(), "training": training_parser()}
    for service in compose["services"].values():
        text = " ".join(_command_words(service))
        for part in re.split(r"&&", text):
            words = part.replace('"', " ").split()
            if "-m" not in words:
                continue
            module = words[words.index("-m") + 1]
            if module in parsers:
                args = words[words.index("-m") + 2 :]
                parsers[module].parse_args(args)  # exits with an error when it is wrong


def test_every_scorer_setting_is_a_real_setting(compose: dict) -> None:
    known = _settings_fields()
    used = set(compose["x-scorer-env"])
    for service in compose["services"].values():
        env = service.get("environment", {})
        used |= {k for k in env if k.startswith("SCORER_")}
    assert used
    assert used <= known, f"unknown settings: {sorted(used - known)}"


def test_published_ports_are_loopback_only(compose: dict) -> None:
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:")
