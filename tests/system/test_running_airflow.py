"""Every way users start the training DAG, against a running Airflow (api-server, scheduler, triggerer).

Asserts on real state: DAG run states from the REST API, XComs, registry objects in the bucket.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from live_airflow import FAST, RUN_TIMEOUT, TRAINING, WATCH, registry_runs, runs, synth, trigger, wait_for_run, xcom

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


def test_rest_trigger_with_params_runs_to_success(airflow, bucket, unpaused_training) -> None:
    synth(airflow, "raw/privacy_intent/manual-a/part-0000.csv", 1220, 2)
    status, run = trigger(airflow, TRAINING, {**FAST, "data_prefix": "raw/privacy_intent/manual-a/"})
    assert status == 200, run
    assert wait_for_run(airflow, TRAINING, run["dag_run_id"]) == "success"
    assert xcom(airflow, run["dag_run_id"], "ingest")["rows"] == 1220
    register = xcom(airflow, run["dag_run_id"], "register")
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
    before = len(runs(airflow, TRAINING))
    status, body = trigger(airflow, TRAINING, conf)
    assert status == 400
    assert field in body["detail"]
    assert len(runs(airflow, TRAINING)) == before


def test_an_upload_starts_exactly_one_run_that_trains_on_it(airflow, bucket, unpaused_training) -> None:
    # That the same bytes uploaded again start no run is tests/e2e/test_data_watch.py's (with new content: one more).
    assert airflow.api("PATCH", f"/dags/{WATCH}", {"is_paused": False})[0] == 200
    synth(airflow, "incoming/privacy_intent/batch-1/part-0000.csv", 1250, 3)
    status, watch_run = trigger(airflow, WATCH, {})
    assert status == 200, watch_run
    assert wait_for_run(airflow, WATCH, watch_run["dag_run_id"]) == "success"
    uploads = [run for run in runs(airflow, TRAINING) if run["dag_run_id"].startswith("upload__batch-1__")]
    assert len(uploads) == 1
    assert wait_for_run(airflow, TRAINING, uploads[0]["dag_run_id"]) == "success"
    assert xcom(airflow, uploads[0]["dag_run_id"], "ingest")["rows"] == 1250


def test_backfill_of_three_dates_reads_each_partition_and_faces_the_champion(airflow, bucket, unpaused_training):
    dates = ["2026-11-02", "2026-11-03", "2026-11-04"]
    for offset, ds in enumerate(dates):
        synth(airflow, f"raw/privacy_intent/ds={ds}/part-0000.csv", 1200 + 10 * offset, 10 + offset)
    registered_before = len(registry_runs(bucket))
    airflow.stack.airflow(
        "backfill", "create", "--dag-id", TRAINING,
        "--from-date", f"{dates[0]}T00:00:00+00:00", "--to-date", f"{dates[-1]}T23:59:59+00:00",
        "--dag-run-conf", json.dumps(FAST),
    )  # fmt: skip
    deadline = time.monotonic() + 3 * RUN_TIMEOUT
    while time.monotonic() < deadline:
        backfills = [run for run in runs(airflow, TRAINING) if run["run_type"] == "backfill"]
        if len(backfills) == 3 and all(run["state"] in ("success", "failed") for run in backfills):
            break
        time.sleep(5)
    assert sorted(run["state"] for run in backfills) == ["success"] * 3
    for offset, run in enumerate(sorted(backfills, key=lambda r: r["logical_date"])):
        assert run["logical_date"].startswith(dates[offset])
        assert xcom(airflow, run["dag_run_id"], "wait_for_data") == [
            f"raw/privacy_intent/ds={dates[offset]}/part-0000.csv"
        ]
        assert xcom(airflow, run["dag_run_id"], "ingest")["rows"] == 1200 + 10 * offset
        if offset:  # each later date's candidate was judged against the champion on that date's holdout
            assert xcom(airflow, run["dag_run_id"], "register")["champion_f1_macro"] is not None
    records = registry_runs(bucket)
    assert len(records) == registered_before + 3
    champion = json.loads(bucket.blob("registry/champion.json").download_as_bytes())
    assert champion["version"] in {record["version"] for record in records}
    assert bucket.blob(f"registry/models/{champion['version']}/model.skops").exists()


def test_the_next_scheduled_run_is_at_two_utc(airflow, unpaused_training) -> None:
    status, dag = airflow.api("GET", f"/dags/{TRAINING}")
    assert status == 200
    next_run = datetime.fromisoformat(dag["next_dagrun_run_after"].replace("Z", "+00:00"))
    assert (next_run.hour, next_run.minute) == (2, 0)
    assert next_run > datetime.now(UTC) - timedelta(days=1)


def test_a_failed_task_cleared_completes_without_duplicate_registry_entries(airflow, bucket, unpaused_training):
    key = "raw/privacy_intent/manual-b/part-0000.csv"
    bucket.blob(key).upload_from_string(b"PAR1 this is not a parquet file nor a csv with labels")
    status, run = trigger(airflow, TRAINING, {**FAST, "data_prefix": "raw/privacy_intent/manual-b/"})
    run_id = run["dag_run_id"]
    assert wait_for_run(airflow, TRAINING, run_id) == "failed"
    status, ingest = airflow.api("GET", f"/dags/{TRAINING}/dagRuns/{run_id}/taskInstances/ingest")
    assert ingest["state"] == "failed"

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
