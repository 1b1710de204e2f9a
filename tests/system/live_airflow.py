"""What the system tests do through a running Airflow's REST API and its bucket, one helper each."""

from __future__ import annotations

import json
import time
from concurrent.futures import Future
from dataclasses import dataclass

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from embedded.services import RunningAirflow
from embedded.stack import BUCKET, PROJECT

TRAINING = "privacy_intent_training"
WATCH = "privacy_intent_data_watch"
# The smallest training that still tunes, trains and registers: one tune pod, three random candidates.
FAST = {"num_shards": 1, "search": "random", "n_trials": 3}
# Runs overlap (conftest.started_runs): on 2 busy cores one may take several times its time alone.
RUN_TIMEOUT = 1800


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


def task_state(airflow: RunningAirflow, dag_id: str, run_id: str, task_id: str) -> str | None:
    try:
        status, body = airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
    except TimeoutError:  # a loaded machine's api-server answers late: ask again
        return None
    return body.get("state") if status == 200 else None


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


# What the runs started together read; the tests that wait for them assert on these.
NEVER_ARRIVES = "raw/privacy_intent/never-arrives/"
REST_PREFIX, REST_ROWS = "raw/privacy_intent/manual-a/", 1220
UPLOAD_KEY, UPLOAD_ROWS = "incoming/privacy_intent/batch-1/part-0000.csv", 1250
BROKEN_PREFIX = "raw/privacy_intent/manual-b/"
UNLABELLED_PREFIX = "raw/failure-mail/"
BACKFILL_DATES = ["2026-11-02", "2026-11-03", "2026-11-04"]


def backfill_rows(offset: int) -> int:
    return 1200 + 10 * offset


@dataclass
class StartedRuns:
    """The runs of the tier's tests, started together so that they overlap; each test waits for its own."""

    # For a partition that never arrives: deferred in wait_for_data before `rest` was triggered.
    waiting: str
    # A REST trigger with FAST Params on REST_PREFIX.
    rest: str
    # The data watch run after UPLOAD_KEY was uploaded.
    upload_watch: str
    # On BROKEN_PREFIX, whose one object is no data file: fails in ingest (the clear test mends and clears it).
    broken: str
    # On UNLABELLED_PREFIX, a CSV without the label column: fails in ingest (the failure-mail test).
    unlabelled: str
    # `airflow backfill create` of BACKFILL_DATES, started once a champion exists.
    backfill: Future


def started_run_id(started: tuple[int, dict]) -> str:
    status, run = started
    assert status == 200, run
    return str(run["dag_run_id"])


def backfill_once_a_champion_exists(airflow: RunningAirflow) -> None:
    # Each later date's candidate must face a champion (test_backfill_live), and the session's first register
    # may face only the baseline: the backfill starts once some run has made a champion.
    champion = (
        storage.Client(project=PROJECT, credentials=AnonymousCredentials())
        .bucket(BUCKET)
        .blob("registry/champion.json")
    )
    for offset, ds in enumerate(BACKFILL_DATES):
        synth(airflow, f"raw/privacy_intent/ds={ds}/part-0000.csv", backfill_rows(offset), 10 + offset)
    deadline = time.monotonic() + 2 * RUN_TIMEOUT
    while not champion.exists():
        assert time.monotonic() < deadline, "no run made a champion: the backfill was not started"
        time.sleep(5)
    airflow.stack.airflow(
        "backfill", "create", "--dag-id", TRAINING,
        "--from-date", f"{BACKFILL_DATES[0]}T00:00:00+00:00", "--to-date", f"{BACKFILL_DATES[-1]}T23:59:59+00:00",
        "--dag-run-conf", json.dumps(FAST),
    )  # fmt: skip
