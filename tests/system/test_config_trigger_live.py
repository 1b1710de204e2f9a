"""A change of the cluster's pipeline config starts exactly one training run, which runs on the new config;
the assets the DAGs produce show in the REST API with their producing tasks.

The running Airflow's stage pods mount the ConfigMap of its local cluster file (what `kubectl apply -f
deploy/k8s/pipeline-config.yaml` updates in a cluster). The test changes one threshold there, runs the data
watch twice and sees one `config__<hash>` run whose validate stage and run record use the new threshold.

The session keeps the changed config afterwards: changing it back would itself be a config change, and the
next module's data watch would rightly start a run for it. The changed threshold (3.5% instead of 2% bad
rows) decides nothing for the synthetic data of the other modules, which has no bad rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml
from live_airflow import (
    FAST,
    RUN_TIMEOUT,
    TRAINING,
    WATCH,
    registry_runs,
    runs,
    synth,
    trigger,
    unpause,
    wait_for_run,
    wait_for_task,
    xcom,
)

from embedded.stack import BUCKET

pytestmark = pytest.mark.system

CONFIG_MAP = "privacy-pipeline-config"
# Later than any partition the other modules write: the latest one, which the config run must train on.
PARTITION = "raw/privacy_intent/ds=2026-11-28/"


def _cluster_file(airflow) -> Path:
    return Path(airflow.stack.env["PIPELINE_LOCAL_CLUSTER_FILE"])


def _apply_config(airflow, text: str) -> None:
    """What `kubectl apply` does to the ConfigMap: its pipeline.yaml becomes ``text``."""
    path = _cluster_file(airflow)
    manifests = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    for manifest in manifests:
        if manifest and manifest["kind"] == "ConfigMap" and manifest["metadata"]["name"] == CONFIG_MAP:
            manifest["data"]["pipeline.yaml"] = text
    path.write_text(yaml.safe_dump_all(manifests, sort_keys=False), encoding="utf-8")


def _cluster_config(airflow) -> str:
    manifests = yaml.safe_load_all(_cluster_file(airflow).read_text(encoding="utf-8"))
    return next(m for m in manifests if m and m["metadata"]["name"] == CONFIG_MAP)["data"]["pipeline.yaml"]


def _config_runs(airflow) -> list[str]:
    return sorted(run["dag_run_id"] for run in runs(airflow, TRAINING) if run["dag_run_id"].startswith("config__"))


def _watch_config_check(airflow) -> list[dict]:
    """Trigger the data watch and return what its config check decided, once it has."""
    status, watch = trigger(airflow, WATCH, {})
    assert status == 200, watch
    state = wait_for_task(airflow, WATCH, watch["dag_run_id"], "find_config_change")
    assert state == "success", state
    return xcom(airflow, watch["dag_run_id"], "find_config_change", dag_id=WATCH)


def test_a_changed_threshold_starts_exactly_one_run_that_uses_it(airflow, bucket, unpaused_training) -> None:
    unpause(airflow, WATCH)
    if not registry_runs(bucket):
        # The config change is measured from the newest registered run: make one if no module has yet.
        synth(airflow, "raw/privacy_intent/config-baseline/part-0000.csv", 1200, 21)
        status, baseline = trigger(airflow, TRAINING, {**FAST, "data_prefix": "raw/privacy_intent/config-baseline/"})
        assert status == 200, baseline
        assert wait_for_run(airflow, TRAINING, baseline["dag_run_id"]) == "success"
    synth(airflow, PARTITION + "part-0000.csv", 1230, 22)
    before = _config_runs(airflow)
    current = _cluster_config(airflow)
    changed = current.replace("max_bad_row_fraction: 0.02\n", "max_bad_row_fraction: 0.035\n")
    assert changed != current
    changed_hash = hashlib.sha256(changed.encode("utf-8")).hexdigest()
    run_id = f"config__{changed_hash[:16]}"

    _apply_config(airflow, changed)
    decided = _watch_config_check(airflow)

    assert decided == [{"trigger_run_id": run_id, "conf": {"data_prefix": PARTITION}}]
    deadline = time.monotonic() + RUN_TIMEOUT
    while run_id not in _config_runs(airflow) and time.monotonic() < deadline:
        time.sleep(2)
    assert _config_runs(airflow) == sorted([*before, run_id])
    assert wait_for_run(airflow, TRAINING, run_id) == "success"
    # It trained on the latest partition, and its stages ran on the new threshold.
    assert xcom(airflow, run_id, "ingest")["rows"] == 1230
    report_uri = xcom(airflow, run_id, "validate")["report_uri"]
    report = json.loads(bucket.blob(report_uri.removeprefix(f"gs://{BUCKET}/")).download_as_bytes())
    bad_rows_check = next(check for check in report["checks"] if check["name"] == "bad_row_fraction")
    assert bad_rows_check["detail"].endswith("<= 3.50%")
    version = xcom(airflow, run_id, "register")["model_version"]
    record = next(record for record in registry_runs(bucket) if record["version"] == version)
    assert record["config"]["validate"]["max_bad_row_fraction"] == 0.035
    assert record["config_source_sha256"] == changed_hash

    # The same config again starts none.
    assert _watch_config_check(airflow) == []
    assert _config_runs(airflow) == sorted([*before, run_id])


def test_the_assets_show_with_the_tasks_that_produce_them(airflow) -> None:
    status, body = airflow.api("GET", "/assets?limit=100")
    assert status == 200, body
    producers = {
        asset["name"]: {(task["dag_id"], task["task_id"]) for task in asset["producing_tasks"]}
        for asset in body["assets"]
    }
    assert producers["privacy_intent_registry"] == {(TRAINING, "register")}
    assert producers["privacy_intent_champion"] == {(TRAINING, "announce_champion")}
    assert producers["conversation_index"] == {("daily_conversations", "publish")}
