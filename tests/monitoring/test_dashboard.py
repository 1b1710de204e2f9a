"""The Grafana dashboard: its JSON is build_dashboard.py's output, and every panel's query returns data.

Grafana cannot run here, so the test asks what Grafana would ask: a real
Prometheus (Debian's, started by embedded/monitoring.py) scraping a real
Pushgateway that the real telemetry module pushed sample runs to, and the
model server's real metrics (tests/monitoring/sample_metrics.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded.monitoring import MONITORING_DIR, Monitoring, running_monitoring
from embedded.stack import PIPELINE_BIN, free_port

BUILDER = MONITORING_DIR / "grafana" / "build_dashboard.py"
DASHBOARD = MONITORING_DIR / "grafana" / "dashboards" / "privacy-pipeline.json"
SAMPLE_METRICS = Path(__file__).resolve().parent / "sample_metrics.py"


def _builder():
    spec = importlib.util.spec_from_file_location("build_dashboard", BUILDER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (f"{panel['title']} [{target['refId']}]", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_committed_json_is_what_the_builder_makes() -> None:
    stale = "dashboards/privacy-pipeline.json is stale: run deploy/monitoring/grafana/build_dashboard.py"
    assert DASHBOARD.read_text(encoding="utf-8") == _builder().render(), stale


def test_panels_have_unique_ids_and_query_the_provisioned_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
            assert panel["targets"] and panel["description"], panel["title"]


def _expect(sample: subprocess.Popen, word: str) -> None:
    line = sample.stdout.readline() if sample.stdout else ""
    if line.strip() != word:
        sample.kill()
        raise AssertionError(
            f"sample_metrics.py said {line!r}, not {word!r}: {sample.stdout.read() if sample.stdout else ''}"
        )


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitoring]:
    model_server_port = free_port()
    home = tmp_path_factory.mktemp("monitoring")
    with running_monitoring(home, model_server=f"127.0.0.1:{model_server_port}", scrape_interval="1s") as running:
        sample = subprocess.Popen(
            [str(PIPELINE_BIN / "python"), str(SAMPLE_METRICS), running.pushgateway_url, str(model_server_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert sample.stdin and sample.stdout
        try:
            _expect(sample, "pushed")
            running.wait_for_scrape("pushgateway")
            sample.stdin.write("next run\n")
            sample.stdin.flush()
            _expect(sample, "ready")
            running.wait_for_scrape("pushgateway")
            running.wait_for_scrape("model-server")
            # rate() over the serving counters needs two scrapes after requests started flowing.
            time.sleep(3)
            yield running
        finally:
            sample.kill()
            sample.wait()


@pytest.mark.parametrize("panel,expr", _queries(), ids=[title for title, _ in _queries()])
def test_every_panel_query_is_valid_promql_that_returns_data(monitoring: Monitoring, panel: str, expr: str) -> None:
    result = monitoring.query(expr)
    assert result, f"{panel}: {expr} returned no series"
    values = [float(sample["value"][1]) for sample in result]
    assert all(math.isfinite(value) for value in values), f"{panel}: {expr} returned {values}"


def test_the_training_history_has_one_row_per_run(monitoring: Monitoring) -> None:
    rows = monitoring.query(
        'max by (run) (last_over_time(privacy_pipeline_model_promoted{dag="privacy_intent_training"}[30d]))'
    )
    promoted = {sample["metric"]["run"]: float(sample["value"][1]) for sample in rows}
    assert promoted == {"scheduled__2026-11-30T02:00:00+00:00": 0.0, "scheduled__2026-12-01T02:00:00+00:00": 1.0}
