"""A training run waiting for its data blocks no other run: a manual run with its own prefix finishes meanwhile.

What a new user met: unpausing through the web UI's Trigger creates the latest scheduled run, whose
`wait_for_data` then waits (deferred, up to six hours) for that day's partition, and with `max_active_runs=1`
the manual run stayed queued behind it all that time (apache/airflow#55675). The shared Airflow creates no
scheduled runs, so the waiting run here is one triggered for a partition that never arrives: the same
deferred sensor in a running run, without the extra minute a second Airflow costs. The manual run is the REST
run of conftest.started_runs, triggered once the waiting run's sensor had deferred.
"""

from __future__ import annotations

import pytest
from live_airflow import REST_ROWS, TRAINING, task_state, wait_for_run, xcom

pytestmark = pytest.mark.system


def test_a_manual_run_finishes_while_another_waits_for_its_data(airflow, started_runs) -> None:
    waiting_id = started_runs.waiting
    try:
        assert wait_for_run(airflow, TRAINING, started_runs.rest) == "success"
        assert xcom(airflow, started_runs.rest, "ingest")["rows"] == REST_ROWS
        # The other run is still there, still waiting for its data.
        assert airflow.api("GET", f"/dags/{TRAINING}/dagRuns/{waiting_id}")[1].get("state") == "running"
        assert task_state(airflow, TRAINING, waiting_id, "wait_for_data") == "deferred"
    finally:
        # Its sensor would wait six hours; end it as an operator would.
        airflow.api("PATCH", f"/dags/{TRAINING}/dagRuns/{waiting_id}", {"state": "failed"})
