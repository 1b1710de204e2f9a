"""One running Airflow for the whole system tier: starting one costs about a minute, so every module shares it.

A module that needs Airflow configured differently (for example with the scheduler creating scheduled runs)
starts its own with `running_airflow`, at the cost of that minute.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from live_airflow import TRAINING, unpause

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
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
}
FAST_PIPELINE = {"PIPELINE_RETRIES": "0", "PIPELINE_UPLOAD_INACTIVITY_SECONDS": "5"}


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
