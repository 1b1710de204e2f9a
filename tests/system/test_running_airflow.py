"""Every way users start the training DAG, against a running Airflow (api-server, scheduler, triggerer).

Asserts on real state: DAG run states from the REST API, XComs, registry objects in the bucket.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from live_airflow import (
    BROKEN_PREFIX,
    REST_ROWS,
    RUN_TIMEOUT,
    TRAINING,
    UPLOAD_BATCH,
    UPLOAD_ROWS,
    registry_runs,
    runs,
    synth,
    task_state,
    trigger,
    wait_for_run,
    xcom,
)

pytestmark = pytest.mark.system


def test_every_service_listens_on_loopback_only(airflow) -> None:
    import psutil

    # The services, the GCS emulator and their workers are this test process's descendants.
    # (PostgreSQL daemonises away from it; local_postgres starts it with -h 127.0.0.1.)
    listening = [
        (process.name(), connection.laddr)
        for process in psutil.Process().children(recursive=True)
        for connection in process.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    ]
    api_port = int(airflow.url.rsplit(":", 1)[1])
    assert api_port in {address.port for _, address in listening}, listening
    exposed = [(name, address) for name, address in listening if address.ip not in ("127.0.0.1", "::1")]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_a_failed_task_cleared_completes_without_duplicate_registry_entries(airflow, bucket, started_runs):
    # First in the module: the cleared run then overlaps the other started runs.
    run_id = started_runs.broken
    assert wait_for_run(airflow, TRAINING, run_id) == "failed"
    assert task_state(airflow, TRAINING, run_id, "ingest") == "failed"

    key = BROKEN_PREFIX + "part-0000.csv"
    bucket.blob(key).delete()
    synth(airflow, key, 1210, 4)
    clear = {"dag_run_id": run_id, "only_failed": True, "dry_run": False, "reset_dag_runs": True}
    assert airflow.api("POST", f"/dags/{TRAINING}/clearTaskInstances", clear)[0] == 200
    assert wait_for_run(airflow, TRAINING, run_id) == "success"
    version = xcom(airflow, run_id, "register")["model_version"]

    # Clearing register again re-registers the same run: still one record.
    clear_register = {**clear, "only_failed": False, "task_ids": ["register"]}
    assert airflow.api("POST", f"/dags/{TRAINING}/clearTaskInstances", clear_register)[0] == 200
    assert wait_for_run(airflow, TRAINING, run_id) == "success"
    assert [r["version"] for r in registry_runs(bucket)].count(version) == 1


def test_rest_trigger_with_params_runs_to_success(airflow, bucket, started_runs) -> None:
    run_id = started_runs.rest
    assert wait_for_run(airflow, TRAINING, run_id) == "success"
    assert xcom(airflow, run_id, "ingest")["rows"] == REST_ROWS
    register = xcom(airflow, run_id, "register")
    assert register["model_version"] in {record["version"] for record in registry_runs(bucket)}


@pytest.mark.parametrize(
    "conf,field",
    [
        ({"data_prefix": "../other-bucket/x"}, "data_prefix"),
        ({"data_prefix": "gs://another-bucket/x/"}, "data_prefix"),
        ({"search": "bayesian"}, "search"),
        ({"num_shards": 99}, "num_shards"),
    ],
)
def test_bad_params_are_rejected_with_a_clear_message(airflow, conf, field) -> None:
    status, body = trigger(airflow, TRAINING, conf)
    assert status == 400
    assert field in body["detail"]
    # No run has the rejected value (other runs may start meanwhile: counting them would race).
    assert not [run for run in runs(airflow, TRAINING) if (run["conf"] or {}).get(field) == conf[field]]


def test_an_upload_starts_exactly_one_run_on_it_and_the_same_bytes_again_none(airflow, started_runs) -> None:
    # live_airflow.watch_uploads: three data-watch runs, each after a change to the batch.
    uploads = started_runs.uploads.result(timeout=RUN_TIMEOUT)
    (run_id,) = uploads.after_upload
    assert run_id.startswith("upload__batch-1__")
    # It reads the upload (its later stages are every run's, and it is stopped after ingest).
    assert xcom(airflow, run_id, "ingest")["rows"] == UPLOAD_ROWS
    assert task_state(airflow, TRAINING, run_id, "ingest") == "success"
    # The same bytes uploaded again (a new generation, the same content): no run.
    assert uploads.after_same_bytes == uploads.after_upload
    # New content in the batch is new data: one more run, on the batch.
    (added,) = set(uploads.after_new_content) - set(uploads.after_upload)
    assert added.startswith("upload__batch-1__")
    status, run = airflow.api("GET", f"/dags/{TRAINING}/dagRuns/{added}")
    assert status == 200 and run["conf"] == {"data_prefix": UPLOAD_BATCH}, run


def test_the_next_scheduled_run_is_at_two_utc(airflow, unpaused_training) -> None:
    status, dag = airflow.api("GET", f"/dags/{TRAINING}")
    assert status == 200
    next_run = datetime.fromisoformat(dag["next_dagrun_run_after"].replace("Z", "+00:00"))
    assert (next_run.hour, next_run.minute) == (2, 0)
    assert next_run > datetime.now(UTC) - timedelta(days=1)
