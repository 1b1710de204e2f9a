"""A real MLflow tracking server on 127.0.0.1: the embedded default's experiment tracking and model registry UI.

``make airflow`` and ``make demo`` start it beside the GCS emulator (and the
tests start their own): the full ``mlflow`` package from its own venv
(``.venv/mlflow``, ``make mlflow-env``), a SQLite backend store and the
artifacts in a folder under the embedded home, served through the server
(``--artifacts-destination``), so a client needs nothing but the tracking URI.
MLflow's server has no authentication by default, so it listens on 127.0.0.1
only, never on another interface.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from embedded.stack import REPO, free_port, wait_until_ready

MLFLOW_BIN = REPO / ".venv" / "mlflow" / "bin" / "mlflow"


@dataclass(frozen=True)
class MlflowServer:
    url: str
    home: Path
    process: subprocess.Popen

    @property
    def env(self) -> dict[str, str]:
        """What points Airflow's settings (and so the register and rollback pods) at this server."""
        return {"PIPELINE_MLFLOW_TRACKING_URI": self.url}


def _stop(process: subprocess.Popen) -> None:
    """Stop the server and the workers it forked (its own process group, started below)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def mlflow_server(home: Path, *, port: int | None = None, timeout: float = 120.0) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` on 127.0.0.1 with its state under ``home``; stop it (and its workers) on exit."""
    if not MLFLOW_BIN.exists():
        raise RuntimeError(f"{MLFLOW_BIN} is missing: `make mlflow-env` installs the MLflow server")
    home.mkdir(parents=True, exist_ok=True)
    artifacts = home / "artifacts"
    artifacts.mkdir(exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(MLFLOW_BIN),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{(home / 'mlflow.db').resolve()}",
        "--artifacts-destination",
        str(artifacts.resolve()),
    ]
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # MLflow 3's job runner (about ten huey worker processes, each importing mlflow) serves GenAI jobs this
        # mirror never submits; on two cores it doubled the server's start and the first registrations.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "DO_NOT_TRACK": "true",
    }
    server_log = (home / "server.log").open("a", encoding="utf-8")
    process = subprocess.Popen(
        command, cwd=home, env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_until_ready(f"{url}/health", process, "mlflow server", home / "server.log", timeout)
        yield MlflowServer(url=url, home=home, process=process)
    finally:
        _stop(process)
        server_log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the embedded MLflow tracking server until Ctrl-C")
    parser.add_argument("--home", type=Path, default=REPO / ".local" / "mlflow")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    with mlflow_server(args.home, port=args.port) as server:
        print(f"MLflow is up: {server.url}  (state in {args.home})")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
