"""privacy_intent_rollback through the running Airflow's REST API: the previous champion back, and a repeat a no-op.

It takes the two newest versions the session's earlier modules registered (two
FAST training runs of its own when fewer exist, as when it runs alone). The
later is then made champion over the earlier as a passing gate would (the
gate's own tests are the stage package's: whether a FAST model beats another
is not this test's question), so the champion has a previous version to go
back to. The rollback DAG is triggered with an empty ``version`` Param, as a
person would from the web UI: the champion is the earlier version again and
the deploy task rolls the InferenceService to it; the same Params again move
nothing and add no history.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from live_airflow import FAST, TRAINING, registry_runs, synth, trigger, unpause, wait_for_run, xcom

from embedded.stack import BUCKET, PIPELINE_BIN

pytestmark = pytest.mark.system

ROLLBACK = "privacy_intent_rollback"
REGISTRY = f"gs://{BUCKET}/registry/"
# register's champion move after a passing gate: compare-and-swap from whatever is champion, history included.
_PROMOTE = """
import sys
from privacy_pipeline import registry
from privacy_pipeline.registry import RegistryLayout
uri = sys.argv[1]
for version in sys.argv[2:]:
    registry.cas_update_champion(uri, lambda current, v=version: {
        "version": v, "model_uri": RegistryLayout(uri).model(v), "action": "promote", "by": "register",
        "reason": "promoted: test_rollback_live", "promoted_at": "2026-12-01T00:00:00Z",
        "previous_version": current["version"] if current else None})
"""


def _champion(bucket) -> dict:
    return json.loads(bucket.blob("registry/champion.json").download_as_bytes())


def _history_length(bucket) -> int:
    return sum(1 for _ in bucket.list_blobs(prefix="registry/history/"))


def _two_registered_versions(airflow, bucket) -> tuple[str, str]:
    """The two newest registered versions (names sort by registration time), training two when fewer exist."""
    versions = sorted(record["version"] for record in registry_runs(bucket))
    if len(versions) >= 2:
        return versions[-2], versions[-1]
    started = []
    for name, seed in (("rollback-a", 31), ("rollback-b", 32)):
        synth(airflow, f"raw/{name}/part-0000.csv", 1200, seed)
        status, run = trigger(airflow, TRAINING, {**FAST, "data_prefix": f"raw/{name}/"})
        assert status == 200, run
        started.append(run["dag_run_id"])
    for run_id in started:
        assert wait_for_run(airflow, TRAINING, run_id) == "success"
    earlier, later = (xcom(airflow, run_id, "register")["model_version"] for run_id in started)
    return earlier, later


def test_rollback_over_rest_restores_the_previous_champion_and_a_repeat_is_a_no_op(
    airflow, bucket, unpaused_training
) -> None:
    unpause(airflow, ROLLBACK)
    earlier, later = _two_registered_versions(airflow, bucket)
    subprocess.run(
        [str(PIPELINE_BIN / "python"), "-c", _PROMOTE, REGISTRY, earlier, later],
        env=airflow.stack.env,
        check=True,
        capture_output=True,
    )
    assert (_champion(bucket)["version"], _champion(bucket)["previous_version"]) == (later, earlier)
    moves_before = _history_length(bucket)

    status, first = trigger(airflow, ROLLBACK, {"version": "", "reason": "system test"})
    assert status == 200, first
    assert wait_for_run(airflow, ROLLBACK, first["dag_run_id"]) == "success"

    rolled = xcom(airflow, first["dag_run_id"], "rollback", dag_id=ROLLBACK)
    assert (rolled["moved"], rolled["champion_version"], rolled["previous_champion"]) == (True, earlier, later)
    champion = _champion(bucket)
    assert (champion["version"], champion["action"], champion["reason"]) == (earlier, "rollback", "system test")
    assert _history_length(bucket) == moves_before + 1
    deployed = xcom(airflow, first["dag_run_id"], "deploy", dag_id=ROLLBACK)
    predictor = deployed["manifest"]["spec"]["predictor"]
    assert predictor["model"]["args"] == ["--version", earlier] and "canaryTrafficPercent" not in predictor

    status, second = trigger(airflow, ROLLBACK, {"version": "", "reason": "system test"})
    assert status == 200, second
    assert wait_for_run(airflow, ROLLBACK, second["dag_run_id"]) == "success"

    again = xcom(airflow, second["dag_run_id"], "rollback", dag_id=ROLLBACK)
    assert again["moved"] is False and again["champion_version"] == earlier
    assert "set by a rollback" in again["note"]
    assert _champion(bucket) == champion
    assert _history_length(bucket) == moves_before + 1
