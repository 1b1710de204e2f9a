"""Drift that acts, against the running Airflow: a shifted day starts exactly one training run, an ordinary day
none, and re-running the shifted day none.

Three days of conversations go through the real daily_conversations DAG (real sentence encoder, the session's
champion tagging them): an ordinary day (the store's first, so nothing to compare with), another ordinary day of
another seed (compared with the first: no drift), and a day of which half is shifted in topic and language
(`synth-conversations --shift 0.5`: drift, one `drift__<day>__<hash>` training run on the latest labelled
partition). Clearing the shifted day's drift task re-runs it: the same run id, which already exists, so none.

What the triggered run trains is the training DAG's business (tested in test_running_airflow); it is stopped
once seen, so it neither holds the machine nor moves the champion under the other modules' runs.
"""

from __future__ import annotations

import time

import pytest
from live_airflow import FAST, TRAINING, runs, synth, trigger, unpause, wait_for_run, xcom

from embedded.stack import BUCKET

pytestmark = pytest.mark.system

CONVERSATIONS = "daily_conversations"
# Before the config module's 2026-11-28 (its "latest partition") and after the backfill's 2026-11-0x:
# the newest labelled partition up to the drift days, so the one a drift run must train on.
LABELLED = "raw/privacy_intent/ds=2026-11-19/"
ORDINARY_FIRST, ORDINARY_SECOND, SHIFTED = "2026-11-20", "2026-11-21", "2026-11-22"
PER_DAY = 300


def _conversations_run(airflow, day: str, seed: int, shift: float = 0.0) -> str:
    key = f"raw/conversations/ds={day}/part-0000.jsonl"
    args = ["--out", f"gs://{BUCKET}/{key}", "--day", day, "--conversations", str(PER_DAY), "--seed", str(seed)]
    airflow.stack.pipeline("synth-conversations", *args, "--shift", str(shift))
    status, run = trigger(airflow, CONVERSATIONS, {}, logical_date=f"{day}T03:30:00+00:00")
    assert status == 200, run
    assert wait_for_run(airflow, CONVERSATIONS, run["dag_run_id"]) == "success"
    return run["dag_run_id"]


def _drift_runs(airflow) -> list[dict]:
    return [run for run in runs(airflow, TRAINING) if run["dag_run_id"].startswith("drift__")]


def _task_state(airflow, run_id: str, task_id: str) -> str | None:
    status, body = airflow.api("GET", f"/dags/{CONVERSATIONS}/dagRuns/{run_id}/taskInstances/{task_id}")
    assert status == 200, body
    return body.get("state")


@pytest.fixture(scope="module")
def champion(airflow, bucket, unpaused_training) -> None:
    synth(airflow, LABELLED + "part-0000.csv", 1200, 31)
    if not bucket.blob("registry/champion.json").exists():
        status, run = trigger(airflow, TRAINING, {**FAST, "data_prefix": LABELLED})
        assert status == 200, run
        assert wait_for_run(airflow, TRAINING, run["dag_run_id"]) == "success"
    unpause(airflow, CONVERSATIONS)


def test_a_shifted_day_trains_once_an_ordinary_day_never_and_a_rerun_never(airflow, champion) -> None:
    assert _drift_runs(airflow) == []
    _conversations_run(airflow, ORDINARY_FIRST, seed=7)

    ordinary = _conversations_run(airflow, ORDINARY_SECOND, seed=8)
    drift = xcom(airflow, ordinary, "drift", dag_id=CONVERSATIONS)
    assert drift["drifted"] is False and drift["drift_score"] is not None and drift["drift_score"] <= 0.55, drift
    assert _task_state(airflow, ordinary, "retrain_on_drift") == "skipped"
    assert _drift_runs(airflow) == []

    shifted = _conversations_run(airflow, SHIFTED, seed=9, shift=0.5)
    drift = xcom(airflow, shifted, "drift", dag_id=CONVERSATIONS)
    assert drift["drifted"] is True and drift["drift_score"] > 0.55, drift
    assert drift["top_features"], drift
    (started,) = _drift_runs(airflow)
    assert started["dag_run_id"] == drift["trigger_run_id"]
    assert started["dag_run_id"].startswith(f"drift__{SHIFTED}__")
    assert started["conf"]["data_prefix"] == LABELLED
    airflow.api("PATCH", f"/dags/{TRAINING}/dagRuns/{started['dag_run_id']}", {"state": "failed"})

    # Re-running the shifted day's drift: the same evidence, the same run id, found, so no second run.
    clear = {
        "dag_run_id": shifted,
        "task_ids": ["drift"],
        "include_downstream": True,
        "only_failed": False,
        "dry_run": False,
        "reset_dag_runs": True,
    }
    assert airflow.api("POST", f"/dags/{CONVERSATIONS}/clearTaskInstances", clear)[0] == 200
    deadline = time.monotonic() + 300
    while _task_state(airflow, shifted, "retrain_on_drift") not in ("success", "skipped", "failed"):
        assert time.monotonic() < deadline, "the cleared drift branch did not finish"
        time.sleep(3)
    assert wait_for_run(airflow, CONVERSATIONS, shifted) == "success"
    assert xcom(airflow, shifted, "drift", dag_id=CONVERSATIONS)["trigger_run_id"] == started["dag_run_id"]
    assert _task_state(airflow, shifted, "retrain_on_drift") == "skipped"
    assert [run["dag_run_id"] for run in _drift_runs(airflow)] == [started["dag_run_id"]]
