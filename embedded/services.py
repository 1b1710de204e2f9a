"""A running local Airflow 3 on the embedded default: ``make airflow`` and the system tests.

PostgreSQL from Debian's packages as the metadata database (production uses
PostgreSQL too), LocalExecutor, and the four services users deal with: the
api-server (web UI and REST API), scheduler, dag-processor and triggerer (for
the deferrable GCS sensors). Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from embedded.mail import ALERT_RECIPIENT, MailServer, mail_server
from embedded.mlflow_server import mlflow_server
from embedded.monitoring import Monitoring, running_monitoring
from embedded.stack import AIRFLOW_BIN, REPO, Stack, embedded_stack, free_port

SERVICES = ("scheduler", "dag-processor", "triggerer")
ADMIN_USER = "admin"


def _postgres_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not candidates:
        raise RuntimeError("PostgreSQL is not installed: `make airflow` installs Debian's postgresql package")
    return candidates[-1].parent


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; Debian's package provides the postgres user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def local_postgres(data_root: Path) -> Iterator[str]:
    """A private PostgreSQL cluster on 127.0.0.1; yields the SQLAlchemy URL of its ``airflow`` database."""
    bindir = _postgres_bin()
    data_root.mkdir(parents=True, exist_ok=True)
    data = data_root / "data"
    if os.geteuid() == 0:
        shutil.chown(data_root, "postgres", "postgres")
    if not (data / "PG_VERSION").exists():
        subprocess.run(
            _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "airflow", "--auth=trust", "-E", "UTF8"]),
            check=True,
            capture_output=True,
        )
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k {data_root}"
    log = data_root / "postgres.log"
    subprocess.run(
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        created = subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "airflow", "airflow"],
            capture_output=True,
            text=True,
        )
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise RuntimeError(f"createdb failed: {created.stderr.strip()}")
        yield f"postgresql+psycopg2://airflow@127.0.0.1:{port}/airflow"
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True
        )


@dataclass
class RunningAirflow:
    stack: Stack
    url: str
    password: str
    # The SMTP server on 127.0.0.1 that Airflow's failure alerts go to.
    mail: MailServer
    # Prometheus and the Pushgateway the stage pods push their figures to.
    monitoring: Monitoring
    # The MLflow tracking server register mirrors the registry to (None: started without one).
    mlflow_url: str | None = None

    def token(self) -> str:
        body = json.dumps({"username": ADMIN_USER, "password": self.password}).encode()
        request = urllib.request.Request(
            f"{self.url}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(json.load(response)["access_token"])

    def api(self, method: str, path: str, payload: dict | None = None) -> tuple[int, dict]:
        """Call the REST API as the web UI does; returns (status, JSON body)."""
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(
            f"{self.url}/api/v2{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


def _wait_healthy(url: str, processes: dict[str, subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with code {process.returncode}; see its log")
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as response:
                health = json.load(response)
            if all(
                health.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler", "triggerer")
            ):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(2)
    raise RuntimeError(f"Airflow at {url} was not healthy within {timeout:.0f}s")


@contextmanager
def running_airflow(
    home: Path, *, port: int | None = None, extra_env: dict[str, str] | None = None, mlflow: bool = False
):
    """Start PostgreSQL, the GCS emulator and Airflow's services (``mlflow``: and MLflow); stop them all on exit."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    with ExitStack() as cleanup:
        pg_root = Path(tempfile.mkdtemp(prefix="airflow-pg-")) if os.geteuid() == 0 else home / "pg"
        if os.geteuid() == 0:
            os.chmod(pg_root, 0o755)
            cleanup.callback(shutil.rmtree, pg_root, True)
        database_url = cleanup.enter_context(local_postgres(pg_root))
        mail = cleanup.enter_context(mail_server(home / "mail"))
        monitoring = cleanup.enter_context(running_monitoring(home / "monitoring"))
        tracking = cleanup.enter_context(mlflow_server(home / "mlflow")) if mlflow else None
        airflow_env = {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__CAPACITY": "50",
            # Failure and deadline alerts (notifications.py) to the SMTP server above.
            "AIRFLOW_CONN_SMTP_DEFAULT": mail.airflow_connection(),
            "PIPELINE_ALERT_EMAIL_TO": ALERT_RECIPIENT,
            # Stage figures (telemetry.py) to the local Pushgateway, which Prometheus scrapes.
            "PIPELINE_PUSHGATEWAY_URL": monitoring.pushgateway_url,
            **(tracking.env if tracking else {}),
            **(extra_env or {}),
        }
        stack = cleanup.enter_context(embedded_stack(home, extra_env=airflow_env))
        migrated = stack.airflow("db", "migrate", check=False)
        if migrated.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed: {migrated.stderr.strip()[-2000:]}")
        logs = home / "logs"
        logs.mkdir(exist_ok=True)
        processes: dict[str, subprocess.Popen] = {}

        def _stop_all() -> None:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()

        cleanup.callback(_stop_all)
        commands = {"api-server": ["api-server", "--host", "127.0.0.1", "--port", str(port)]}
        commands.update({name: [name] for name in SERVICES})
        # Their log servers would listen on every interface (Airflow gives them no host
        # setting); every component here shares one log folder, which the api-server reads.
        for name in ("scheduler", "triggerer"):
            commands[name].append("--skip-serve-logs")
        for name, args in commands.items():
            log = (logs / f"{name}.log").open("a", encoding="utf-8")
            cleanup.callback(log.close)
            processes[name] = subprocess.Popen(
                [str(AIRFLOW_BIN / "airflow"), *args], env=stack.env, stdout=log, stderr=subprocess.STDOUT
            )
        _wait_healthy(url, processes, timeout=240)
        passwords = Path(stack.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords.read_text(encoding="utf-8"))[ADMIN_USER]
        yield RunningAirflow(
            stack=stack,
            url=url,
            password=password,
            mail=mail,
            monitoring=monitoring,
            mlflow_url=tracking.url if tracking else None,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local Airflow 3 on the embedded default until Ctrl-C")
    parser.add_argument("--home", type=Path, default=REPO / ".local")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    with running_airflow(args.home, port=args.port, mlflow=True) as airflow:
        print(f"Airflow is up: {airflow.url}  (login: {ADMIN_USER} / {airflow.password})")
        print(f"GCS emulator (the bucket): {airflow.stack.emulator_host}; logs: {args.home / 'logs'}")
        print(f"Failure alerts to {ALERT_RECIPIENT}: {airflow.mail.address}, delivered to {airflow.mail.maildir}/new/")
        print(
            f"Prometheus: {airflow.monitoring.prometheus_url} (alerts at /alerts); stages push to "
            f"{airflow.monitoring.pushgateway_url}"
        )
        print(f"MLflow (experiment and registered model privacy-intent): {airflow.mlflow_url}")
        print("Press Ctrl-C to stop every service.")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        print("Stopping Airflow, the emulator and PostgreSQL ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
