"""The import contracts of pyproject.toml ([tool.importlinter], checked by `lint-imports`): the repository keeps them,
and each one fails on a copy of the packages given one import that breaks it.

    .venv/bin/python -m pytest -q tests/unit/test_import_contract.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ssl_core", "workflows", "bench")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")  # installed by the dev extra


def lint_imports(cwd: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """lint-imports on the packages and pyproject.toml found in `cwd` (it puts `cwd` first on sys.path)."""
    selected = [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", *selected], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_the_repository_keeps_its_import_contracts() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def packages_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("contract")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


@pytest.mark.parametrize(
    ("module", "added", "contract", "reported"),
    [
        ("ssl_core/checkpoint.py", "import mlflow", "core-free-of-ray-and-mlflow", "ssl_core.checkpoint -> mlflow"),
        ("ssl_core/metrics.py", "import ray.train", "core-free-of-ray-and-mlflow", "ssl_core.metrics -> ray ("),
        ("ssl_core/algorithms/base.py", "from ssl_core.config import Config", "algorithms-free-of-config",
         "ssl_core.algorithms.base -> ssl_core.config"),
        ("ssl_core/schedule.py", "import workflows.cli", "layers", "ssl_core.schedule -> workflows.cli"),
        ("workflows/evaluate.py", "import bench.accuracy", "layers", "workflows.evaluate -> bench.accuracy"),
        # A circle inside ssl_core.algorithms: registry imports base for the Algorithm type.
        ("ssl_core/algorithms/base.py", "import ssl_core.algorithms.registry", "acyclic",
         "No cycles are allowed in ssl_core.algorithms"),
        # A circle through an import made inside a function counts too.
        ("ssl_core/unwrap.py", "def later():\n    import ssl_core.checkpoint", "acyclic",
         "No cycles are allowed in ssl_core"),
    ],
)
def test_each_contract_fails_on_an_import_that_breaks_it(packages_copy: Path, module: str, added: str, contract: str,
                                                           reported: str) -> None:
    path = packages_copy / module
    original = path.read_text()
    path.write_text(f"{original}\n{added}  # noqa\n")
    try:
        result = lint_imports(packages_copy, contract)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 broken" in result.stdout
    assert reported in result.stdout, result.stdout


def circles(graph: grimp.ImportGraph) -> set[str]:
    """Every import circle of modules as "a -> b -> a", starting from its first module in sorted order (the
    shortest circle through each import that closes one)."""
    found = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                circle = (module, *back[:-1])
                start = circle.index(min(circle))
                circle = circle[start:] + circle[:start]
                found.add(" -> ".join((*circle, circle[0])))
    return found


def test_circles_finds_each_circle_once() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in [("p.b", "p.c"), ("p.c", "p.a"), ("p.a", "p.b"), ("p.d", "p.a"), ("p.e", "p.e2"),
                               ("p.e2", "p.e")]:
        graph.add_import(importer=importer, imported=imported)
    assert circles(graph) == {"p.a -> p.b -> p.c -> p.a", "p.e -> p.e2 -> p.e"}


def test_no_module_imports_itself_through_others() -> None:
    """Module by module, without the acyclic contract's exceptions (those close circles of packages only)."""
    found = circles(grimp.build_graph(*PACKAGES, cache_dir=None))
    assert not found, "import circles:\n" + "\n".join(sorted(found))
