"""Test environment for the Airflow side: a throwaway AIRFLOW_HOME and settings from env vars, never a database.

Set before anything imports Airflow, so DAG files parse exactly as they would
in the scheduler, with connections and variables from ``AIRFLOW_CONN_*`` /
``AIRFLOW_VAR_*`` rather than the metadata database.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="airflow-home-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, True)

os.environ.update(
    {
        "AIRFLOW_HOME": _AIRFLOW_HOME,
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": '{"conn_type": "google_cloud_platform", "extra": {"is_anonymous": true}}',
    }
)
for path in (REPO / "plugins", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from embedded.stack import PIPELINE_CONFIG_MANIFEST  # noqa: E402  (the repository root is on sys.path only now)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "e2e: runs DAGs through `airflow dags test` on the embedded stack (minutes)")
    config.addinivalue_line("markers", "image: builds or runs the container image with buildah (slow)")
    config.addinivalue_line("markers", "system: against a running Airflow (api-server, scheduler, triggerer)")


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    """The ConfigMaps and Secret of the stage pods' env and pipeline config, as the local pod runtime reads them."""
    path = tmp_path / "cluster.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: ConfigMap
            metadata: {name: privacy-pipeline-env}
            data: {GOOGLE_CLOUD_PROJECT: demo-project, STORAGE_EMULATOR_HOST: "http://127.0.0.1:9023"}
            ---
            apiVersion: v1
            kind: Secret
            metadata: {name: privacy-pipeline-gcp}
            stringData: {credentials.json: '{"type": "service_account"}'}
            ---
            """
        )
        + PIPELINE_CONFIG_MANIFEST.read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    return path
