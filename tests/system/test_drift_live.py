"""Drift that acts, against the running Airflow: a shifted day starts exactly one training run, an ordinary day
none, and re-running the shifted day none.

Three days of conversations go through the real daily_conversations DAG (real sentence encoder, the session's
champion tagging them): an ordinary day (the store's first, so nothing to compare with), another ordinary day of
another seed (compared with the first: no drift), and a day of which half is shifted in topic and language
(`synth-conversations --shift 0.5`: drift, one `drift__<day>__<hash>` training run on the latest labelled
partition). Clearing the shifted day's drift task re-runs it: the same run id, which already exists, so none.

The days run in the background from the session's first champion on (live_airflow.drift_days, started by
conftest.started_runs), beside the other modules' runs. What the triggered run trains is the training DAG's
business (tested in test_running_airflow); it is stopped once seen, so it neither holds the machine nor moves
the champion under the other modules' runs.
"""

from __future__ import annotations

import pytest
from live_airflow import (
    CONVERSATIONS,
    DRIFT_LABELLED,
    RUN_TIMEOUT,
    SHIFTED,
    drift_runs,
    task_state,
    wait_for_run,
    wait_for_task,
    xcom,
)

pytestmark = pytest.mark.system


def test_a_shifted_day_trains_once_an_ordinary_day_never_and_a_rerun_never(airflow, started_runs) -> None:
    days = started_runs.drift.result(timeout=3 * RUN_TIMEOUT)

    drift = xcom(airflow, days.ordinary, "drift", dag_id=CONVERSATIONS)
    assert drift["drifted"] is False and drift["drift_score"] is not None and drift["drift_score"] <= 0.55, drift
    assert task_state(airflow, CONVERSATIONS, days.ordinary, "retrain_on_drift") == "skipped"
    assert days.drift_runs_after_ordinary == []

    drift = xcom(airflow, days.shifted, "drift", dag_id=CONVERSATIONS)
    assert drift["drifted"] is True and drift["drift_score"] > 0.55, drift
    assert drift["top_features"], drift
    (started,) = days.drift_runs_after_shifted
    assert started["dag_run_id"] == drift["trigger_run_id"]
    assert started["dag_run_id"].startswith(f"drift__{SHIFTED}__")
    assert started["conf"]["data_prefix"] == DRIFT_LABELLED

    # Re-running the shifted day's drift: the same evidence, the same run id, found, so no second run.
    clear = {
        "dag_run_id": days.shifted,
        "task_ids": ["drift"],
        "include_downstream": True,
        "only_failed": False,
        "dry_run": False,
        "reset_dag_runs": True,
    }
    assert airflow.api("POST", f"/dags/{CONVERSATIONS}/clearTaskInstances", clear)[0] == 200
    wait_for_task(airflow, CONVERSATIONS, days.shifted, "retrain_on_drift", timeout=300)
    assert wait_for_run(airflow, CONVERSATIONS, days.shifted) == "success"
    assert xcom(airflow, days.shifted, "drift", dag_id=CONVERSATIONS)["trigger_run_id"] == started["dag_run_id"]
    assert task_state(airflow, CONVERSATIONS, days.shifted, "retrain_on_drift") == "skipped"
    assert [run["dag_run_id"] for run in drift_runs(airflow)] == [started["dag_run_id"]]
