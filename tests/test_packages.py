"""The packages' import rules (DESIGN.md): stream, api and training never import each
other; features imports none of the project's other packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = {"stream", "api", "training"}
PROJECT = RUNNABLE | {"features", "artifact", "contracts", "bench"}


def _imported(package: str) -> dict[str, set[str]]:
    """Map each module file of a package to the project packages it imports."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names & PROJECT
    return out


@pytest.mark.parametrize("package", sorted(RUNNABLE))
def test_a_runnable_package_imports_no_other_runnable_package(package: str) -> None:
    others = RUNNABLE - {package}
    wrong = {f: sorted(n & others) for f, n in _imported(package).items() if n & others}
    assert wrong == {}


def test_features_imports_nothing_else_of_the_project() -> None:
    wrong = {f: sorted(n - {"features"}) for f, n in _imported("features").items()}
    assert {f: n for f, n in wrong.items() if n} == {}


def test_contracts_import_only_contracts() -> None:
    wrong = {f: sorted(n - {"contracts"}) for f, n in _imported("contracts").items()}
    assert {f: n for f, n in wrong.items() if n} == {}


MODULE_MAX_LINES = 400
CLASS_MAX_LINES = 250


def test_the_workers_modules_and_classes_stay_a_page_or_two() -> None:
    """stream/ is split along its jobs, one per module (docs/worker.md, "Where the code
    is"): a module that grows past MODULE_MAX_LINES, or a class past CLASS_MAX_LINES,
    has taken on another job and is split again."""
    long_modules, long_classes = {}, {}
    for path in sorted((ROOT / "stream").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(ROOT))
        if len(text.splitlines()) > MODULE_MAX_LINES:
            long_modules[name] = len(text.splitlines())
        for node in ast.parse(text).body:
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > CLASS_MAX_LINES:
                    long_classes[f"{name}:{node.name}"] = lines
    assert long_modules == {} and long_classes == {}
