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


# What each DAG file loads when it is parsed, probed the way the dag-processor parses: one interpreter holds
# what airflow.utils.file loads (Airflow itself), and each file is parsed in a child forked from it, after the
# `airflow.*` modules the file names were pre-imported ([dag_processor] parsing_pre_import_modules). One
# interpreter for all files instead of one per file and test: importing Airflow is most of each probe's cost.
PARSE_PROBE = """
import importlib, importlib.util, json, os, sys
from airflow.utils.file import iter_airflow_imports

def kubernetes_modules(names):
    return sorted(m for m in names if m.split(".")[0] in ("kubernetes", "kubernetes_asyncio")
                  or m.startswith("airflow.providers.cncf.kubernetes"))

def parse(dag_file):
    for name in iter_airflow_imports(dag_file):
        importlib.import_module(name)
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location("dag_under_test", dag_file)
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    return {
        "heavy": sorted(m for m in HEAVY_MODULES if m in sys.modules),
        "kubernetes": kubernetes_modules(set(sys.modules) - before)[:5],
    }

probes = {}
for dag_file in DAG_FILES:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        try:
            probe = parse(dag_file)
        except BaseException as error:
            probe = {"error": f"{type(error).__name__}: {error}"}
        os.write(write_end, json.dumps(probe).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read()
    os.waitpid(child, 0)
    probes[os.path.basename(dag_file)] = json.loads(output)
print(json.dumps(probes))
"""


@pytest.fixture(scope="module")
def parse_probes() -> dict[str, dict[str, list[str]]]:
    constants = f"HEAVY_MODULES = {HEAVY_MODULES!r}\nDAG_FILES = {[str(path) for path in DAG_FILES]!r}\n"
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    result = subprocess.run(
        [sys.executable, "-c", constants + PARSE_PROBE], capture_output=True, text=True, check=True, env=env
    )
    probes = json.loads(result.stdout.strip().splitlines()[-1])
    assert {name: probe["error"] for name, probe in probes.items() if "error" in probe} == {}
    return probes


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_imports_no_ml_libraries_at_parse_time(dag_file: Path, parse_probes) -> None:
    assert parse_probes[dag_file.name]["heavy"] == []


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_names_the_pod_operator_so_the_dag_processor_pre_imports_it(dag_file: Path, parse_probes) -> None:
    # The dag-processor imports the airflow.* modules a DAG file names before it forks each parse
    # ([dag_processor] parsing_pre_import_modules); what the file loads only through our plugin, every parse
    # pays again. The pod operator and the Kubernetes client under it are most of that cost.
    assert parse_probes[dag_file.name]["kubernetes"] == []
