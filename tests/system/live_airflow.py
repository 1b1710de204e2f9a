"""What the system tests do through a running Airflow's REST API and its bucket, one helper each."""

from __future__ import annotations

import json
import time

from google.cloud import storage

from embedded.services import RunningAirflow
from embedded.stack import BUCKET

TRAINING = "privacy_intent_training"
WATCH = "privacy_intent_data_watch"
# The smallest training that still tunes, trains and registers: one tune pod, three random candidates.
FAST = {"num_shards": 1, "search": "random", "n_trials": 3}
RUN_TIMEOUT = 600


def synth(airflow: RunningAirflow, key: str, rows: int, seed: int) -> None:
    airflow.stack.pipeline("synth", "--out", f"gs://{BUCKET}/{key}", "--rows", str(rows), "--seed", str(seed))


def wait_for_run(airflow: RunningAirflow, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        try:
            status, body = airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        except TimeoutError:  # an api-server starved of CPU (a loaded CI machine) answers late, not never
            continue
        state = body.get("state", "unknown") if status == 200 else "unknown"
        if state in ("success", "failed"):
            return state
        time.sleep(3)
    raise AssertionError(f"{dag_id} run {run_id} still {state} after {timeout:.0f}s")


def runs(airflow: RunningAirflow, dag_id: str) -> list[dict]:
    status, body = airflow.api("GET", f"/dags/{dag_id}/dagRuns?limit=100")
    assert status == 200, body
    return body["dag_runs"]


def xcom(airflow: RunningAirflow, run_id: str, task_id: str, dag_id: str = TRAINING) -> dict:
    status, body = airflow.api(
        "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    )
    assert status == 200, body
    value = body["value"]
    return json.loads(value) if isinstance(value, str) else value


def registry_runs(bucket: storage.Bucket) -> list[dict]:
    return [json.loads(blob.download_as_bytes()) for blob in bucket.list_blobs(prefix="registry/runs/")]


def trigger(airflow: RunningAirflow, dag_id: str, conf: dict, logical_date: str | None = None) -> tuple[int, dict]:
    return airflow.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": logical_date, "conf": conf})


def unpause(airflow: RunningAirflow, dag_id: str, parse_timeout: float = 180) -> None:
    # Right after Airflow starts, and slower under load, the dag-processor may not have parsed the DAG yet:
    # the API answers 404 until it has.
    deadline = time.monotonic() + parse_timeout
    status, body = airflow.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    while status == 404 and time.monotonic() < deadline:
        time.sleep(2)
        status, body = airflow.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    assert status == 200, body
