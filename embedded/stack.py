"""The embedded default: local Airflow (SQLite), a GCS emulator on 127.0.0.1 as the bucket, pods run locally.

Used by ``make demo``, ``make airflow`` and the end-to-end tests, so all three
run the same wiring: the real DAG files and plugins, an anonymous
``google_cloud_default`` connection from an ``AIRFLOW_CONN_*`` variable, and
``PIPELINE_POD_RUNTIME=local`` with the ConfigMap the stage pods read their
env from written as a Kubernetes manifest. ``PIPELINE_POD_RUNTIME=image`` in the
caller's environment (``PIPELINE_POD_RUNTIME=image make demo``) runs each stage
pod inside the image ``make image`` built instead; there is no cluster here, so
any other value still means ``local``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
AIRFLOW_BIN = REPO / ".venv" / "airflow" / "bin"
PIPELINE_BIN = REPO / ".venv" / "pipeline" / "bin"
# The model server's own venv (kserve): canary_check starts the two versions it compares with this interpreter.
SERVING_PYTHON = REPO / ".venv" / "serving" / "bin" / "python"
BUCKET = "privacy-intent-data"
PROJECT = "privacy-intent-local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"GCS emulator exited with code {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"GCS emulator did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def wait_until_ready(url: str, process: subprocess.Popen, name: str, log: Path, timeout: float = 60.0) -> None:
    """Return once ``url`` answers 200; fail with the log's tail if ``process`` exits first, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited with code {process.returncode} before it was ready; {log}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} was not ready at {url} within {timeout:.0f}s; see {log}")


@dataclass(frozen=True)
class Stack:
    home: Path
    emulator_host: str
    env: dict[str, str]

    def airflow(self, *args: str, check: bool = True, log_file: Path | None = None) -> subprocess.CompletedProcess:
        """Run the ``airflow`` CLI against this stack."""
        command = [str(AIRFLOW_BIN / "airflow"), *args]
        if log_file is None:
            return subprocess.run(command, env=self.env, check=check, text=True, capture_output=True)
        with log_file.open("a", encoding="utf-8") as handle:
            return subprocess.run(
                command, env=self.env, check=check, text=True, stdout=handle, stderr=subprocess.STDOUT
            )

    def xcoms(self, dag_id: str, run_id: str) -> dict[str, list]:
        """A run's XCom return values by task as ``[[map_index, value], ...]``, from Airflow's metadata database."""
        script = f"""
import json
from sqlalchemy import select
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
with create_session() as session:
    rows = session.execute(select(XComModel.task_id, XComModel.map_index, XComModel.value).where(
        XComModel.dag_id == {dag_id!r}, XComModel.run_id == {run_id!r}, XComModel.key == "return_value"))
    out = {{}}
    for task_id, map_index, value in rows:
        if isinstance(value, str):  # a JSON document stored as text; a task that returns a plain string stays one
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out.setdefault(task_id, []).append([map_index, value])
print(json.dumps(out))
"""
        result = subprocess.run(
            [str(AIRFLOW_BIN / "python"), "-c", script], env=self.env, check=True, text=True, capture_output=True
        )
        return json.loads(result.stdout.strip().splitlines()[-1])

    def query(self, sql: str, **params: object) -> list[list]:
        """Rows of a read-only SQL query against Airflow's metadata database (for tests and the demo)."""
        script = f"""
import json
from sqlalchemy import text
from airflow.utils.session import create_session
with create_session() as session:
    rows = session.execute(text({sql!r}), {params!r}).all()
print(json.dumps([list(row) for row in rows], default=str))
"""
        result = subprocess.run(
            [str(AIRFLOW_BIN / "python"), "-c", script], env=self.env, check=True, text=True, capture_output=True
        )
        return json.loads(result.stdout.strip().splitlines()[-1])

    def latest_run(self, dag_id: str) -> tuple[str, str]:
        """(run_id, state) of the DAG's most recently created run."""
        script = f"""
from sqlalchemy import select
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
with create_session() as session:
    run = session.scalars(select(DagRun).where(DagRun.dag_id == {dag_id!r}).order_by(DagRun.id.desc()).limit(1)).first()
    print(f"{{run.run_id}} {{run.state}}" if run else "- none")
"""
        result = subprocess.run(
            [str(AIRFLOW_BIN / "python"), "-c", script], env=self.env, check=True, text=True, capture_output=True
        )
        run_id, state = result.stdout.strip().splitlines()[-1].rsplit(" ", 1)
        return run_id, state

    def pipeline(self, *args: str) -> subprocess.CompletedProcess:
        """Run the stage CLI against this stack's bucket (e.g. to write synthetic data)."""
        env = {**self.env, "HF_HUB_OFFLINE": "1"}
        return subprocess.run(
            [str(PIPELINE_BIN / "privacy-pipeline"), *args], env=env, check=True, text=True, capture_output=True
        )


def pseudonym_key(home: Path) -> str:
    """The embedded stack's pseudonym key: generated once, kept in ``home`` readable by its owner only.

    Kept across runs, so one user keeps one pseudonym from day to day, as with
    the Secret a cluster mounts.
    """
    key_file = home / "pseudonym-key"
    try:
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return key_file.read_text(encoding="utf-8").strip()
    key = secrets.token_hex(32)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(key)
    return key


# The pipeline config's ConfigMap, the same file the cluster applies: every stage pod mounts it.
PIPELINE_CONFIG_MANIFEST = REPO / "deploy" / "k8s" / "pipeline-config.yaml"


def pipeline_config_manifest() -> dict:
    return yaml.safe_load(PIPELINE_CONFIG_MANIFEST.read_text(encoding="utf-8"))


def _cluster_manifests(emulator_host: str, gcp_credentials: str | None, pseudonym: str) -> str:
    """What `kubectl apply` would create in the namespace; the local runtime resolves pod env from it."""
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "privacy-pipeline-env", "namespace": "privacy-pipeline"},
        "data": {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "STORAGE_EMULATOR_HOST": emulator_host,
            "PIPELINE_LOG_LEVEL": "INFO",
            "PIPELINE_SERVING_PYTHON": str(SERVING_PYTHON),
        },
    }
    manifests: list[dict] = [
        config_map,
        pipeline_config_manifest(),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "privacy-pipeline-pseudonym-key", "namespace": "privacy-pipeline"},
            "stringData": {"key": pseudonym},
        },
    ]
    if gcp_credentials is not None:
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "privacy-pipeline-gcp", "namespace": "privacy-pipeline"},
                "stringData": {"credentials.json": gcp_credentials},
            }
        )
    return yaml.safe_dump_all(manifests, sort_keys=False)


@contextmanager
def embedded_stack(
    home: Path,
    *,
    in_memory: bool = False,
    extra_env: dict[str, str] | None = None,
    gcp_credentials: str | None = None,
) -> Iterator[Stack]:
    """Start the GCS emulator and yield the environment that points Airflow and the stages at it.

    ``gcp_credentials``: mount this as the credentials Secret, as production
    does (the emulator ignores it; tests plant a canary in it).
    """
    home.mkdir(parents=True, exist_ok=True)
    gcs_dir = home / "gcs"
    gcs_dir.mkdir(exist_ok=True)
    port = free_port()
    emulator_host = f"http://127.0.0.1:{port}"
    # gcp-storage-emulator extended to enforce generation preconditions, so
    # compare-and-swap on gs:// behaves here as on GCS (see gcs_emulator.py).
    command = [
        str(AIRFLOW_BIN / "python"),
        str(REPO / "embedded" / "gcs_emulator.py"),
        "--data-dir",
        str(gcs_dir.resolve()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--default-bucket",
        BUCKET,
        "--quiet",
    ]
    if in_memory:
        command.append("--in-memory")
    emulator_log = (home / "gcs-emulator.log").open("a", encoding="utf-8")
    emulator = subprocess.Popen(command, cwd=gcs_dir, stdout=emulator_log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, emulator)
        cluster_file = home / "cluster.yaml"
        # It holds Secrets (the pseudonym key): its owner alone reads it.
        cluster_file.touch(mode=0o600)
        cluster_file.chmod(0o600)
        manifests = _cluster_manifests(emulator_host, gcp_credentials, pseudonym_key(home))
        cluster_file.write_text(manifests, encoding="utf-8")
        airflow_home = home / "airflow"
        airflow_home.mkdir(exist_ok=True)
        connection = {"conn_type": "google_cloud_platform", "extra": {"is_anonymous": True, "project": PROJECT}}
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": json.dumps(connection),
            "STORAGE_EMULATOR_HOST": emulator_host,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "PIPELINE_BUCKET": BUCKET,
            "PIPELINE_POD_RUNTIME": "image" if os.environ.get("PIPELINE_POD_RUNTIME") == "image" else "local",
            "PIPELINE_LOCAL_BIN_DIR": str(PIPELINE_BIN),
            "PIPELINE_LOCAL_CLUSTER_FILE": str(cluster_file),
            # The emulator needs no credentials: mount the Secret only when one is given.
            "PIPELINE_GCP_CREDENTIALS_SECRET": "privacy-pipeline-gcp" if gcp_credentials is not None else "",
            "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            **(extra_env or {}),
        }
        yield Stack(home=home, emulator_host=emulator_host, env=env)
    finally:
        emulator.terminate()
        try:
            emulator.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emulator.kill()
        emulator_log.close()
