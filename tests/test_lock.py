"""The lock files: exact versions with hashes for every dependency, and the environment
the tests run in installed from them (``make install``)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEV, RUNTIME = ROOT / "requirements" / "dev.lock", ROOT / "requirements" / "runtime.lock"
# Not installed into the environment by the lock's own install (pip upgrades itself, and
# the venv may hold the bundled copies): left out of the installed-versions check.
BOOTSTRAP = {"pip", "setuptools", "wheel"}


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _pins(path: Path) -> dict[str, tuple[str, int]]:
    """Package -> (version, number of hashes) of a lock file made by pip-compile."""
    text = path.read_text()
    out: dict[str, tuple[str, int]] = {}
    # A requirement starts a line; its hashes follow on continuation lines.
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.split("\n", 1)[0]
        found = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;\\]+)", first)
        if found:
            out[_name(found.group(1))] = (found.group(2), block.count("--hash=sha256:"))
    return out


def _declared(extra: str | None) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return list(reqs)


@pytest.mark.parametrize("lock", [DEV, RUNTIME], ids=["dev", "runtime"])
def test_every_dependency_is_pinned_with_its_hashes(lock: Path) -> None:
    pins = _pins(lock)
    assert len(pins) > 20
    unhashed = sorted(name for name, (_, hashes) in pins.items() if hashes == 0)
    assert not unhashed, f"{lock.name}: no hash for {unhashed}"
    for requirement in _declared(None):
        name = _name(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0])
        assert name in pins, f"{lock.name} leaves out {name}"
        exact = re.search(r"==([0-9][^\s,;]*)", requirement)
        if exact:  # the versions the project's private hooks are checked against
            assert pins[name][0] == exact.group(1), name


def test_the_runtime_lock_is_the_dev_locks_versions() -> None:
    dev, runtime = _pins(DEV), _pins(RUNTIME)
    for requirement in _declared("dev"):
        name = _name(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0])
        assert name in dev, f"dev.lock leaves out {name}"
    differ = {
        n: (v, dev.get(n, ("-",))[0]) for n, (v, _) in runtime.items() if dev.get(n, ("",))[0] != v
    }
    assert not differ, f"runtime.lock and dev.lock disagree: {differ}"


def test_the_environment_is_the_dev_lock() -> None:
    wrong = {}
    for name, (version, _) in _pins(DEV).items():
        if name in BOOTSTRAP:
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (installed, version)
    assert not wrong, (
        f"installed versions differ from requirements/dev.lock (run make install): {wrong}"
    )
