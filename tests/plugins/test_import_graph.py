"""The plugin's modules import one another in one direction: no cycle, and the runtimes never import the operator.

The graph is read from the source with ``ast``, function-level imports
included: a lazy import inside a function hides a cycle from Python at import
time, not from the reader who has to change the code.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from embedded.stack import REPO

PLUGIN = REPO / "plugins" / "privacy_pipeline_airflow"
RUNTIMES = ("local_runtime", "image_runtime")


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source (``from pkg import mod`` counts)."""
    package = package_dir.name
    modules = {path.stem for path in package_dir.glob("*.py") if path.stem != "__init__"}
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module in modules:
        tree = ast.parse((package_dir / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                head, _, rest = name.partition(".")
                target = rest.partition(".")[0]
                if head == package and target in modules and target != module:
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> list[str] | None:
        if module in visiting:
            return [*visiting[visiting.index(module) :], module]
        if module in done:
            return None
        visiting.append(module)
        for target in sorted(graph[module]):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_the_plugin_has_no_import_cycle() -> None:
    graph = import_graph(PLUGIN)
    assert "stage_pod" in graph and "local_runtime" in graph["stage_pod"]
    assert find_cycle(graph) is None


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_runtimes_never_import_the_operator(runtime: str) -> None:
    assert "stage_pod" not in import_graph(PLUGIN)[runtime]


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    package = tmp_path / "privacy_pipeline_airflow"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "operator.py").write_text(
        textwrap.dedent(
            """\
            def run():
                from privacy_pipeline_airflow.runtime import go
                return go()
            """
        ),
        encoding="utf-8",
    )
    (package / "runtime.py").write_text("from privacy_pipeline_airflow import operator\n", encoding="utf-8")
    (package / "contract.py").write_text("UID = 10001\n", encoding="utf-8")

    assert find_cycle(import_graph(package)) == ["operator", "runtime", "operator"]
