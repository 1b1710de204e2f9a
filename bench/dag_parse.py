"""DAG parse cost as the dag-processor pays it: each ``dags/*.py`` beside the same DAG written with plain operators.

The dag-processor imports the ``airflow.*`` modules a DAG file names
(``[dag_processor] parsing_pre_import_modules``, on by default, via
``airflow.utils.file.iter_airflow_imports``) before it forks the process that
parses the file, so what a file costs per parse is the rest: running it with
those modules already loaded. ``bench/dag_import.py --pre-import`` measures
exactly that in a fresh interpreter, once per run. Each DAG file is compared
with its anchor in ``bench/anchor_dags/``: the same DAG, same tasks and pods,
written with ``KubernetesPodOperator`` and literals, no plugin. The runs of a
file and its anchor alternate, so a change in the machine's load hits both.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

from bench.measure import REPO

DAGS = REPO / "dags"
ANCHORS = REPO / "bench" / "anchor_dags"
SCRIPT = REPO / "bench" / "dag_import.py"
# The target: each DAG file within this much of its plain-operator anchor.
TARGET_OVER_ANCHOR_MS = 50.0


def _parse_ms(python: Path, path: Path, env: dict[str, str]) -> tuple[float, list[str]]:
    """One parse of ``path`` in a fresh interpreter, its airflow.* imports pre-loaded: (ms, dag_ids)."""
    command = [str(python), str(SCRIPT), "--pre-import", str(path)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    parsed = json.loads(output.strip().splitlines()[-1])
    return float(parsed["ms"]), list(parsed["dag_ids"])


def measure(airflow_python: Path, work: Path, repeats: int) -> dict[str, Any]:
    """Median per-parse ms of every DAG file and its anchor, ``repeats`` alternating runs each."""
    home = work / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    # A dag-processor reads our plugin's modules from their cached bytecode, as it does the providers'; without
    # this the first parse below could not write that cache, and every parse would compile them from source.
    inherited = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    env = {
        **inherited,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        # The dag-processor puts the plugins folder on sys.path; the DAG files import our plugin from it.
        "PYTHONPATH": str(REPO / "plugins"),
    }
    files: dict[str, Any] = {}
    for dag_file in sorted(DAGS.glob("*.py")):
        anchor = ANCHORS / dag_file.name
        if not anchor.is_file():
            raise FileNotFoundError(f"dag_parse: {dag_file.name} has no plain-operator anchor at {anchor}")
        # The first Airflow import of a fresh home writes its airflow.cfg and caches bytecode: not a parse.
        _parse_ms(airflow_python, anchor, env)
        _parse_ms(airflow_python, dag_file, env)
        ours_runs, anchor_runs = [], []
        for _ in range(repeats):
            ours_ms, dag_ids = _parse_ms(airflow_python, dag_file, env)
            anchor_ms, anchor_ids = _parse_ms(airflow_python, anchor, env)
            if anchor_ids != dag_ids:
                raise ValueError(f"dag_parse: {anchor} defines {anchor_ids}, {dag_file.name} defines {dag_ids}")
            ours_runs.append(ours_ms)
            anchor_runs.append(anchor_ms)
        ours, plain = statistics.median(ours_runs), statistics.median(anchor_runs)
        files[dag_file.name] = {
            "dag_ids": dag_ids,
            "ours_ms": ours,
            "anchor_ms": plain,
            "over_anchor_ms": ours - plain,
            "ours_runs_ms": ours_runs,
            "anchor_runs_ms": anchor_runs,
        }
    return {"repeats": repeats, "target_over_anchor_ms": TARGET_OVER_ANCHOR_MS, "files": files}


def worst(result: dict[str, Any]) -> tuple[str, float]:
    """The file furthest over its anchor, and by how many ms."""
    files = result["files"]
    name = max(files, key=lambda file: files[file]["over_anchor_ms"])
    return name, files[name]["over_anchor_ms"]


def table_rows(result: dict[str, Any], met: Any) -> list[str]:
    """Rows for the bench's "side | size | measured | peak RSS MiB | ratio vs target | met?" table."""
    repeats = result["repeats"]
    rows = []
    for name, entry in result["files"].items():
        over = entry["over_anchor_ms"]
        rows.append(
            f"| dags/{name}, one parse with its airflow.* imports pre-loaded (as the dag-processor does) | "
            f"median of {repeats} | {entry['ours_ms']:.0f} ms vs {entry['anchor_ms']:.0f} ms for "
            f"bench/anchor_dags/{name} (plain operators): {over:+.0f} ms |  | "
            f"{over:+.0f} ms of the +{TARGET_OVER_ANCHOR_MS:.0f} ms allowed | "
            f"{met(over <= TARGET_OVER_ANCHOR_MS)} |"
        )
    return rows
