"""A training run waiting for its data blocks no other run: a manual run with its own prefix finishes meanwhile.

What a new user met: unpausing through the web UI's Trigger creates the latest scheduled run, whose
`wait_for_data` then waits (deferred, up to six hours) for that day's partition, and with `max_active_runs=1`
the manual run stayed queued behind it all that time (apache/airflow#55675). The shared Airflow creates no
scheduled runs, so the waiting run here is one triggered for a partition that never arrives: the same
deferred sensor in a running run, without the extra minute a second Airflow costs.
"""

from __future__ import annotations

import time

import pytest
from live_airflow import FAST, RUN_TIMEOUT, TRAINING, synth, trigger, wait_for_run, xcom

pytestmark = pytest.mark.system


def _task_state(airflow, run_id: str, task_id: str) -> str | None:
    try:
        status, body = airflow.api("GET", f"/dags/{TRAINING}/dagRuns/{run_id}/taskInstances/{task_id}")
    except TimeoutError:  # a loaded machine's api-server answers late: ask again
        return None
    return body.get("state") if status == 200 else None


def _run_state(airflow, run_id: str) -> str | None:
    return airflow.api("GET", f"/dags/{TRAINING}/dagRuns/{run_id}")[1].get("state")


def test_a_manual_run_finishes_while_another_waits_for_its_data(airflow, bucket, unpaused_training) -> None:
    status, waiting = trigger(airflow, TRAINING, {**FAST, "data_prefix": "raw/privacy_intent/never-arrives/"})
    assert status == 200, waiting
    waiting_id = waiting["dag_run_id"]
    try:
        # Seconds normally; minutes on a machine whose CPUs other jobs hold.
        deadline = time.monotonic() + RUN_TIMEOUT
        while _task_state(airflow, waiting_id, "wait_for_data") != "deferred" and time.monotonic() < deadline:
            time.sleep(2)
        assert _task_state(airflow, waiting_id, "wait_for_data") == "deferred"
        synth(airflow, "raw/privacy_intent/while-another-waits/part-0000.csv", 1210, 31)

        status, manual = trigger(airflow, TRAINING, {**FAST, "data_prefix": "raw/privacy_intent/while-another-waits/"})
        assert status == 200, manual

        assert wait_for_run(airflow, TRAINING, manual["dag_run_id"]) == "success"
        assert xcom(airflow, manual["dag_run_id"], "ingest")["rows"] == 1210
        # The other run is still there, still waiting for its data.
        assert _run_state(airflow, waiting_id) == "running"
        assert _task_state(airflow, waiting_id, "wait_for_data") == "deferred"
    finally:
        # Its sensor would wait six hours; end it as an operator would.
        airflow.api("PATCH", f"/dags/{TRAINING}/dagRuns/{waiting_id}", {"state": "failed"})
