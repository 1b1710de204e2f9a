"""A local Prometheus and Pushgateway on 127.0.0.1: the monitoring of ``make airflow``, ``make demo`` and the tests.

Debian's ``prometheus`` and ``prometheus-pushgateway`` packages (``make
monitoring`` installs them), each on a free port, with the repository's
scrape config (deploy/monitoring/prometheus.yml) rendered for those ports and
its alert rules (deploy/monitoring/alerts.yml) loaded. Stage pods push to the
Pushgateway (``PIPELINE_PUSHGATEWAY_URL``); Prometheus scrapes it and the
model server's ``/metrics``. State lives under the given home, so history
survives from one ``make airflow`` to the next.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from embedded.stack import REPO, free_port, wait_until_ready

MONITORING_DIR = REPO / "deploy" / "monitoring"
PROMETHEUS_CONFIG = MONITORING_DIR / "prometheus.yml"
ALERT_RULES = MONITORING_DIR / "alerts.yml"
# `make serve`'s port (embedded/serve.py): where a locally served model's /metrics is.
LOCAL_MODEL_SERVER = "127.0.0.1:8080"


@dataclass(frozen=True)
class Monitoring:
    prometheus_url: str
    pushgateway_url: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query over the HTTP API; its result vector. A bad query raises with Prometheus's error."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            raise ValueError(f"Prometheus refused {promql!r}: {body.get('error', exc)}") from exc
        return list(body["data"]["result"])

    def wait_for_scrape(self, job: str = "pushgateway", timeout: float = 30.0) -> None:
        """Wait until ``job``'s next scrape after now has happened (Prometheus's own ``up`` sample)."""
        started = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sample in self.query(f'timestamp(up{{job="{job}"}})'):
                if float(sample["value"][1]) > started:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"Prometheus at {self.prometheus_url} did not scrape job {job!r} within {timeout:.0f}s")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: `make monitoring` installs Debian's prometheus packages")
    return path


@contextmanager
def _service(name: str, command: list[str], ready_url: str, log: Path) -> Iterator[None]:
    with log.open("a", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(ready_url, process, name, log)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def render_prometheus_config(
    pushgateway: str, model_server: str, *, scrape_interval: str = "15s", rules: Path = ALERT_RULES
) -> dict[str, Any]:
    """deploy/monitoring/prometheus.yml with each job's targets replaced by a local address (host:port)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    local_targets = {"pushgateway": pushgateway, "model-server": model_server}
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    if jobs != set(local_targets):
        raise RuntimeError(
            f"{PROMETHEUS_CONFIG} has jobs {sorted(jobs)}; embedded/monitoring.py renders {sorted(local_targets)}"
        )
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [local_targets[job["job_name"]]]}]
    config["global"] = {
        **config.get("global", {}),
        "scrape_interval": scrape_interval,
        "evaluation_interval": scrape_interval,
    }
    config["rule_files"] = [str(rules)]
    return config


@contextmanager
def running_pushgateway(home: Path) -> Iterator[str]:
    """Start a Pushgateway on a free 127.0.0.1 port, its groups kept in ``home``; yields its URL."""
    home.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    command = [
        _binary("prometheus-pushgateway"),
        f"--web.listen-address={address}",
        f"--persistence.file={home / 'pushgateway.metrics'}",
    ]
    with _service("prometheus-pushgateway", command, f"http://{address}/-/ready", home / "pushgateway.log"):
        yield f"http://{address}"


@contextmanager
def running_monitoring(
    home: Path, *, model_server: str = LOCAL_MODEL_SERVER, scrape_interval: str = "15s"
) -> Iterator[Monitoring]:
    """Start the Pushgateway and Prometheus on free 127.0.0.1 ports; stop both on exit."""
    home.mkdir(parents=True, exist_ok=True)
    with ExitStack() as services:
        pushgateway_url = services.enter_context(running_pushgateway(home))
        prometheus = f"127.0.0.1:{free_port()}"
        config_file = home / "prometheus.yml"
        config = render_prometheus_config(
            pushgateway_url.removeprefix("http://"), model_server, scrape_interval=scrape_interval
        )
        config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        command = [
            _binary("prometheus"),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={home / 'prometheus-data'}",
            f"--web.listen-address={prometheus}",
        ]
        services.enter_context(_service("prometheus", command, f"http://{prometheus}/-/ready", home / "prometheus.log"))
        yield Monitoring(prometheus_url=f"http://{prometheus}", pushgateway_url=pushgateway_url)


def run_figures(monitoring: Monitoring, dag_id: str, run_id: str) -> list[str]:
    """What Prometheus now holds of one run: lines for people, after its next scrape of the Pushgateway."""
    monitoring.wait_for_scrape()
    selector = f'dag="{dag_id}",run="{run_id}"'
    stages = monitoring.query(f"privacy_pipeline_stage_duration_seconds{{{selector}}}")
    lines = [
        f"  {sample['metric']['task']:<14} {float(sample['value'][1]):7.1f} s"
        for sample in sorted(stages, key=lambda s: float(s["value"][1]), reverse=True)
    ]
    for name, label in (("holdout_f1_macro", "holdout macro-F1"), ("model_promoted", "promoted (1/0)")):
        for sample in monitoring.query(f'privacy_pipeline_{name}{{{selector},stage="register"}}'):
            lines.append(f"  {label:<14} {float(sample['value'][1]):.3f}")
    return lines
