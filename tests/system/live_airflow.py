"""What the system tests do through a running Airflow's REST API and its bucket, one helper each."""

from __future__ import annotations

import json
import time
from concurrent.futures import Future
from dataclasses import dataclass

from google.cloud import storage

from embedded.services import RunningAirflow
from embedded.stack import BUCKET

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
UPLOAD_BATCH = "incoming/privacy_intent/batch-1/"
UPLOAD_KEY, UPLOAD_ROWS = UPLOAD_BATCH + "part-0000.csv", 1250
BROKEN_PREFIX = "raw/privacy_intent/manual-b/"
UNLABELLED_PREFIX = "raw/failure-mail/"
# Two dates: the second's candidate faces the champion the first (or another run) made.
BACKFILL_DATES = ["2026-11-02", "2026-11-03"]
CONVERSATIONS = "daily_conversations"
# Before the config module's 2026-11-28 (its "latest partition") and after the backfill's 2026-11-0x:
# the newest labelled partition up to the drift days, so the one a drift run must train on.
DRIFT_LABELLED = "raw/privacy_intent/ds=2026-11-19/"
ORDINARY_FIRST, ORDINARY_SECOND, SHIFTED = "2026-11-20", "2026-11-21", "2026-11-22"
CONVERSATIONS_PER_DAY = 300


def backfill_rows(offset: int) -> int:
    return 1200 + 10 * offset


@dataclass
class UploadRuns:
    """What three data-watch runs started: after the upload, after the same bytes again, after new content."""

    after_upload: list[str]
    after_same_bytes: list[str]
    after_new_content: list[str]


@dataclass
class DriftDays:
    """Three days of conversations through daily_conversations, and the drift runs seen after each."""

    ordinary: str  # the second ordinary day's run (compared with the first)
    shifted: str  # the shifted day's run
    drift_runs_after_ordinary: list[str]
    drift_runs_after_shifted: list[dict]


@dataclass
class StartedRuns:
    """The runs of the tier's tests, started together so that they overlap; each test waits for its own."""

    # For a partition that never arrives: deferred in wait_for_data before `rest` was triggered.
    waiting: str
    # A REST trigger with FAST Params on REST_PREFIX.
    rest: str
    # On BROKEN_PREFIX, whose one object is no data file: fails in ingest (the clear test mends and clears it).
    broken: str
    # On UNLABELLED_PREFIX, a CSV without the label column: fails in ingest (the failure-mail test).
    unlabelled: str
    # The data watch after UPLOAD_KEY's upload, the same bytes again and new content (watch_uploads).
    uploads: Future
    # `airflow backfill create` of BACKFILL_DATES, started once a champion exists.
    backfill: Future
    # The drift days (drift_days), started once a champion exists.
    drift: Future


def started_run_id(started: tuple[int, dict]) -> str:
    status, run = started
    assert status == 200, run
    return str(run["dag_run_id"])


def stop_run(airflow: RunningAirflow, dag_id: str, run_id: str) -> None:
    """Mark a run failed as an operator would: its running tasks are killed, the rest never start."""
    status, body = airflow.api("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", {"state": "failed"})
    assert status == 200, body


def wait_for_task(
    airflow: RunningAirflow, dag_id: str, run_id: str, task_id: str, timeout: float = RUN_TIMEOUT
) -> str | None:
    """The task's state once it has ended (or the run has, leaving it unfinished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = task_state(airflow, dag_id, run_id, task_id)
        if state in ("success", "failed", "upstream_failed", "skipped"):
            return state
        time.sleep(2)
    raise AssertionError(f"{dag_id} run {run_id}: {task_id} still unfinished after {timeout:.0f}s")


def _upload_runs(airflow: RunningAirflow) -> list[str]:
    return sorted(run["dag_run_id"] for run in runs(airflow, TRAINING) if run["dag_run_id"].startswith("upload__"))


def _watch_once(airflow: RunningAirflow) -> list[str]:
    assert wait_for_run(airflow, WATCH, started_run_id(trigger(airflow, WATCH, {}))) == "success"
    return _upload_runs(airflow)


def watch_uploads(airflow: RunningAirflow, bucket: storage.Bucket) -> UploadRuns:
    """The data watch after an upload, after the same bytes again, and after new content in the batch.

    The upload's training run is stopped once its ingest has ended (the test reads what ingest read; the
    stages after it are every other run's), and so is the new content's run, once seen.
    """
    after_upload = _watch_once(airflow)
    for run_id in after_upload:
        wait_for_task(airflow, TRAINING, run_id, "ingest")
        stop_run(airflow, TRAINING, run_id)
    # Same bytes uploaded again: a new GCS generation, the same content fingerprint.
    blob = bucket.blob(UPLOAD_KEY)
    blob.upload_from_string(blob.download_as_bytes())
    after_same_bytes = _watch_once(airflow)
    # New content in the batch is new data: one more run.
    bucket.blob(UPLOAD_BATCH + "part-0001.csv").upload_from_string(
        b"id,text,label\nm3,please delete my account,data_deletion\nm2,where is my parcel,no_privacy_intent\n"
    )
    after_new_content = _watch_once(airflow)
    for run_id in set(after_new_content) - set(after_same_bytes):
        stop_run(airflow, TRAINING, run_id)
    return UploadRuns(after_upload, after_same_bytes, after_new_content)


def wait_for_champion(bucket: storage.Bucket) -> None:
    champion = bucket.blob("registry/champion.json")
    deadline = time.monotonic() + 2 * RUN_TIMEOUT
    while not champion.exists():
        assert time.monotonic() < deadline, "no run made a champion"
        time.sleep(5)


def backfill_once_a_champion_exists(airflow: RunningAirflow, bucket: storage.Bucket) -> None:
    # Each later date's candidate must face a champion (test_backfill_live), and the session's first register
    # may face only the baseline: the backfill starts once some run has made a champion.
    for offset, ds in enumerate(BACKFILL_DATES):
        synth(airflow, f"raw/privacy_intent/ds={ds}/part-0000.csv", backfill_rows(offset), 10 + offset)
    wait_for_champion(bucket)
    airflow.stack.airflow(
        "backfill", "create", "--dag-id", TRAINING,
        "--from-date", f"{BACKFILL_DATES[0]}T00:00:00+00:00", "--to-date", f"{BACKFILL_DATES[-1]}T23:59:59+00:00",
        "--dag-run-conf", json.dumps(FAST),
    )  # fmt: skip


def drift_runs(airflow: RunningAirflow) -> list[dict]:
    return [run for run in runs(airflow, TRAINING) if run["dag_run_id"].startswith("drift__")]


def conversations_run(airflow: RunningAirflow, day: str, seed: int, shift: float = 0.0) -> str:
    key = f"raw/conversations/ds={day}/part-0000.jsonl"
    args = ["--out", f"gs://{BUCKET}/{key}", "--day", day, "--conversations", str(CONVERSATIONS_PER_DAY)]
    airflow.stack.pipeline("synth-conversations", *args, "--seed", str(seed), "--shift", str(shift))
    run_id = started_run_id(trigger(airflow, CONVERSATIONS, {}, logical_date=f"{day}T03:30:00+00:00"))
    assert wait_for_run(airflow, CONVERSATIONS, run_id) == "success"
    return run_id


def drift_days(airflow: RunningAirflow, bucket: storage.Bucket) -> DriftDays:
    """An ordinary day (the store's first), another ordinary day, then a day half shifted in topic and language.

    The day's conversations are tagged by the champion, so the days start once one exists. The training run
    the shifted day starts is stopped once seen: what it trains is the training DAG's business, and it would
    move the champion under the other modules' runs.
    """
    synth(airflow, DRIFT_LABELLED + "part-0000.csv", 1200, 31)
    wait_for_champion(bucket)
    unpause(airflow, CONVERSATIONS)
    conversations_run(airflow, ORDINARY_FIRST, seed=7)
    ordinary = conversations_run(airflow, ORDINARY_SECOND, seed=8)
    after_ordinary = [run["dag_run_id"] for run in drift_runs(airflow)]
    shifted = conversations_run(airflow, SHIFTED, seed=9, shift=0.5)
    after_shifted = drift_runs(airflow)
    for run in after_shifted:
        stop_run(airflow, TRAINING, run["dag_run_id"])
    return DriftDays(ordinary, shifted, after_ordinary, after_shifted)
