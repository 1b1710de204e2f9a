"""The demo path, end to end: the real training DAG, every stage from its rendered pod, on small data."""

from __future__ import annotations

import json

import pytest

from embedded.stack import BUCKET, Stack

pytestmark = pytest.mark.e2e
DAG_ID = "privacy_intent_training"


def _partition(ds: str) -> str:
    return f"gs://{BUCKET}/raw/privacy_intent/ds={ds}/part-0000.csv"


def _run(stack: Stack, logical_date: str) -> tuple[str, dict]:
    log_file = stack.home / f"dags-test-{logical_date[:10]}.log"
    # The smallest search that still fans out: two tune pods, one random candidate each (the default grid
    # cross-validates eight); tests/system/live_airflow.py's FAST, with the second shard the shard check needs.
    conf = '{"num_shards": 2, "search": "random", "n_trials": 2}'
    stack.airflow("dags", "test", DAG_ID, logical_date, "--conf", conf, check=False, log_file=log_file)
    run_id, state = stack.latest_run(DAG_ID)
    assert state == "success", log_file.read_text(encoding="utf-8")[-5000:]
    xcoms = {task: values[0][1] if len(values) == 1 else values for task, values in stack.xcoms(DAG_ID, run_id).items()}
    return run_id, xcoms


@pytest.fixture(scope="module")
def first_run(stack: Stack) -> tuple[str, dict]:
    stack.pipeline("synth", "--out", _partition("2026-11-20"), "--rows", "1300", "--seed", "11")
    return _run(stack, "2026-11-20T02:00:00+00:00")


def test_every_stage_ran_and_reported_through_xcom(first_run) -> None:
    _, xcoms = first_run
    assert xcoms["ingest"]["rows"] == 1300
    assert xcoms["validate"]["rows_valid"] + xcoms["validate"]["rows_quarantined"] == 1300
    assert xcoms["featurize"]["mode"] == "text"
    assert xcoms["split"]["train_rows"] + xcoms["split"]["holdout_rows"] == xcoms["validate"]["rows_valid"]
    assert sorted(shard["shard"] for _, shard in xcoms["tune"]) == [0, 1]
    assert [shard["candidates"] for _, shard in xcoms["tune"]] == [1, 1]
    assert xcoms["select_best"]["n_candidates"] == sum(shard["candidates"] for _, shard in xcoms["tune"])


def test_holdout_metrics_are_honest_and_beat_the_majority_baseline(first_run) -> None:
    _, xcoms = first_run
    evaluate = xcoms["evaluate"]
    assert 0.0 <= evaluate["baseline_f1_macro"] < 0.3
    assert evaluate["f1_macro"] > evaluate["baseline_f1_macro"] + 0.3
    assert 0.5 < evaluate["roc_auc_ovr"] <= 1.0


def test_the_first_model_is_registered_and_becomes_champion(first_run, bucket) -> None:
    _, xcoms = first_run
    register = xcoms["register"]
    assert register["promoted"] is True
    assert register["champion_version"] == register["model_version"]
    version = register["model_version"]
    names = {blob.name for blob in bucket.list_blobs(prefix="registry/")}
    assert f"registry/models/{version}/model.skops" in names
    # A first champion has no version to share traffic with: all of it, and no canary to judge.
    assert xcoms["deploy"]["model_version"] == version and xcoms["deploy"]["canary_traffic_percent"] is None
    assert xcoms["canary_check"]["checked"] is False
    assert f"registry/models/{version}/metadata.json" in names
    assert f"registry/runs/{version}.json" in names
    assert "registry/champion.json" in names


def test_the_planted_secret_is_nowhere_users_can_read(first_run, stack, bucket, canary_secret) -> None:
    run_id, xcoms = first_run
    assert canary_secret not in json.dumps(xcoms)
    for log_file in stack.home.glob("dags-test-*.log"):
        assert canary_secret not in log_file.read_text(encoding="utf-8"), log_file
    for log_file in (stack.home / "airflow").rglob("*.log"):
        assert canary_secret not in log_file.read_text(encoding="utf-8", errors="replace"), log_file
    rendered = stack.query(
        "SELECT rendered_fields FROM rendered_task_instance_fields WHERE dag_id = :dag_id", dag_id=DAG_ID
    )
    assert rendered and canary_secret not in json.dumps(rendered)
    for blob in bucket.list_blobs():
        assert canary_secret.encode() not in blob.download_as_bytes(), blob.name
