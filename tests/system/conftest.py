"""One running Airflow for the whole system tier: starting one costs about a minute, so every module shares it.

A module that needs Airflow configured differently (for example with the scheduler creating scheduled runs)
starts its own with `running_airflow`, at the cost of that minute.

Most of a training run's time is the latency of one task after another, so the runs the tests wait for are
started together (`started_runs`) and overlap; the modules run in MODULE_ORDER, which puts those that need a
quiet registry last. Each module still passes alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from live_airflow import (
    BROKEN_PREFIX,
    FAST,
    NEVER_ARRIVES,
    REST_PREFIX,
    REST_ROWS,
    RUN_TIMEOUT,
    TRAINING,
    UNLABELLED_PREFIX,
    UPLOAD_KEY,
    UPLOAD_ROWS,
    WATCH,
    StartedRuns,
    backfill_once_a_champion_exists,
    drift_days,
    started_run_id,
    synth,
    task_state,
    trigger,
    unpause,
    watch_uploads,
)

from embedded.services import RunningAirflow, running_airflow
from embedded.stack import BUCKET, PROJECT

# Airflow's fast settings for a test run: the services poll, heartbeat and re-parse every second or two
# instead of Airflow's production intervals, and the scheduler creates no scheduled runs. Triggered and
# backfill runs still run, and the next scheduled run is still computed (by the dag-processor) and checked.
FAST_AIRFLOW = {
    "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
    "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
    # The DAG files do not change during the tier: parsed once at start, then seldom (each re-parse of the five
    # files costs CPU seconds the stage pods need on a 2-core machine).
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
    # With the tier's runs overlapping, a CPU-starved api-server answers a task's start call late: Airflow's
    # 5 s (times its retries) failed a task before it ran.
    "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
}
# The tier's runs overlap on 2 cores: pods of one CPU each, as on a cluster of small nodes, so each stage's
# torch, OpenMP and BLAS pools are one thread (OMP_NUM_THREADS from the pod's CPU limit) instead of pools
# sized for the whole machine spinning against each other's. Memory stays the heavy stages' own.
HEAVY_STAGES = ("featurize", "tune", "train", "conversations-embed", "conversations-tag", "conversations-upsert")
ONE_CPU_PODS = {
    stage: {"cpu_request": "1", "cpu_limit": "1", "memory_request": "4Gi", "memory_limit": "8Gi"}
    for stage in HEAVY_STAGES
}
FAST_PIPELINE = {
    "PIPELINE_RETRIES": "0",
    "PIPELINE_UPLOAD_INACTIVITY_SECONDS": "5",
    "PIPELINE_RESOURCES": json.dumps(ONE_CPU_PODS),
}


@pytest.fixture(scope="session")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAirflow]:
    home: Path = tmp_path_factory.mktemp("airflow-system")
    with running_airflow(home, extra_env={**FAST_AIRFLOW, **FAST_PIPELINE}) as running:
        yield running


@pytest.fixture(scope="session")
def bucket(airflow: RunningAirflow) -> storage.Bucket:
    os.environ["STORAGE_EMULATOR_HOST"] = airflow.stack.emulator_host
    return storage.Client(project=PROJECT, credentials=AnonymousCredentials()).bucket(BUCKET)


@pytest.fixture(scope="session")
def unpaused_training(airflow: RunningAirflow, bucket) -> None:
    # The scheduler starts runs of unpaused DAGs only; with use_job_schedule off, unpausing creates no
    # scheduled run of its own (it would only wait in its sensor for today's partition beside the tests' runs).
    unpause(airflow, TRAINING)


# The order the modules run in when the tier runs whole (unknown ones before rollback). The registry moves
# under the runs `started_runs` overlaps: rollback (which moves the champion itself) and the config change
# (measured from the newest registered run) run once every module before them has waited for its runs. The
# drift days register nothing (their training run is stopped once seen) and run in the background from the
# first champion on: their module comes last, to find them done.
MODULE_ORDER = [
    "test_running_airflow",
    "test_backfill_live",
    "test_waiting_run_live",
    "test_failure_mail_live",
    "test_rollback_live",
    "test_config_trigger_live",
    "test_drift_live",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def position(item: pytest.Item) -> int:
        module = item.path.stem
        return MODULE_ORDER.index(module if module in MODULE_ORDER else "test_rollback_live")

    items.sort(key=position)  # stable: each module's tests keep their order


@pytest.fixture(scope="session")
def started_runs(airflow: RunningAirflow, bucket: storage.Bucket, unpaused_training) -> Iterator[StartedRuns]:
    waiting = started_run_id(trigger(airflow, TRAINING, {**FAST, "data_prefix": NEVER_ARRIVES}))
    bucket.blob(BROKEN_PREFIX + "part-0000.csv").upload_from_string(
        b"PAR1 this is not a parquet file nor a csv with labels"
    )
    broken = started_run_id(trigger(airflow, TRAINING, {**FAST, "data_prefix": BROKEN_PREFIX}))
    bucket.blob(UNLABELLED_PREFIX + "part-0000.csv").upload_from_string(b"message,channel\nhello,chat\n")
    unlabelled = started_run_id(trigger(airflow, TRAINING, {**FAST, "data_prefix": UNLABELLED_PREFIX}))
    unpause(airflow, WATCH)
    synth(airflow, UPLOAD_KEY, UPLOAD_ROWS, 3)
    # Each background job waits on runs of its own (and the later two for a champion), asserting nothing:
    # the test that needs its result asserts on it.
    background = ThreadPoolExecutor(max_workers=3, thread_name_prefix="started")
    uploads = background.submit(watch_uploads, airflow, bucket)
    synth(airflow, REST_PREFIX + "part-0000.csv", REST_ROWS, 2)
    # Seconds normally; minutes on a machine whose CPUs other jobs hold.
    deadline = time.monotonic() + RUN_TIMEOUT
    while task_state(airflow, TRAINING, waiting, "wait_for_data") != "deferred" and time.monotonic() < deadline:
        time.sleep(2)
    assert task_state(airflow, TRAINING, waiting, "wait_for_data") == "deferred"
    rest = started_run_id(trigger(airflow, TRAINING, {**FAST, "data_prefix": REST_PREFIX}))
    try:
        yield StartedRuns(
            waiting=waiting,
            rest=rest,
            broken=broken,
            unlabelled=unlabelled,
            uploads=uploads,
            backfill=background.submit(backfill_once_a_champion_exists, airflow, bucket),
            drift=background.submit(drift_days, airflow, bucket),
        )
    finally:
        # Its sensor would wait six hours; end it as an operator would (test_waiting_run_live does, when it runs).
        airflow.api("PATCH", f"/dags/{TRAINING}/dagRuns/{waiting}", {"state": "failed"})
        background.shutdown(wait=False, cancel_futures=True)
