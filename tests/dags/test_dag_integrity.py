"""Policy every DAG file must meet: imports cleanly, is documented and owned, retries, parses cheaply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
HEAVY_MODULES = ("sklearn", "pandas", "torch", "faiss", "sentence_transformers", "imblearn", "privacy_pipeline")


@pytest.fixture(scope="module")
def dag_bag() -> DagBag:
    return DagBag(dag_folder=str(REPO / "dags"))


def _dags():
    bag = DagBag(dag_folder=str(REPO / "dags"))
    return [(dag_id, dag, Path(dag.fileloc).name) for dag_id, dag in sorted(bag.dags.items())]


DAGS = _dags()


def test_every_dag_file_imports_without_errors(dag_bag: DagBag) -> None:
    assert dag_bag.import_errors == {}
    assert {Path(dag.fileloc).stem for dag in dag_bag.dags.values()} == {path.stem for path in DAG_FILES}


@pytest.mark.parametrize("dag_id,dag,fileloc", DAGS, ids=[d[2] for d in DAGS])
def test_dag_id_is_the_file_stem(dag_id, dag, fileloc) -> None:
    assert dag_id == Path(fileloc).stem


@pytest.mark.parametrize("dag_id,dag,fileloc", DAGS, ids=[d[2] for d in DAGS])
def test_dag_is_owned_tagged_documented_and_retries(dag_id, dag, fileloc) -> None:
    assert dag.tags, f"{dag_id} has no tags"
    assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id} has no real doc_md"
    for task in dag.tasks:
        assert task.owner not in (None, "", "airflow"), f"{dag_id}.{task.task_id} has no owner"
        assert task.retries >= 1, f"{dag_id}.{task.task_id} never retries"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_imports_no_ml_libraries_at_parse_time(dag_file: Path) -> None:
    probe = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('dag_under_test', {str(dag_file)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_names_the_pod_operator_so_the_dag_processor_pre_imports_it(dag_file: Path) -> None:
    # The dag-processor imports the airflow.* modules a DAG file names before it forks each parse
    # ([dag_processor] parsing_pre_import_modules); what the file loads only through our plugin, every parse
    # pays again. The pod operator and the Kubernetes client under it are most of that cost.
    probe = (
        "import importlib, importlib.util, json, sys\n"
        "from airflow.utils.file import iter_airflow_imports\n"
        f"for name in iter_airflow_imports({str(dag_file)!r}):\n"
        "    importlib.import_module(name)\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('dag_under_test', {str(dag_file)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "loaded = set(sys.modules) - before\n"
        "print(json.dumps(sorted(m for m in loaded if m.split('.')[0] in ('kubernetes', 'kubernetes_asyncio')\n"
        "    or m.startswith('airflow.providers.cncf.kubernetes'))[:5]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
