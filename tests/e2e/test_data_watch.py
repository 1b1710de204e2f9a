"""privacy_intent_data_watch: a new upload starts exactly one training run; the same bytes again start none."""

from __future__ import annotations

import json
import subprocess

import pytest

from embedded.stack import AIRFLOW_BIN, Stack

pytestmark = pytest.mark.e2e
WATCH = "privacy_intent_data_watch"
TRAINING = "privacy_intent_training"
CSV = "id,text,label\nm1,please delete my account,data_deletion\nm2,where is my parcel,no_privacy_intent\n"


def _training_runs(stack: Stack) -> dict[str, dict]:
    script = f"""
import json
from sqlalchemy import select
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
with create_session() as session:
    runs = session.scalars(select(DagRun).where(DagRun.dag_id == {TRAINING!r})).all()
    print(json.dumps({{run.run_id: run.conf or {{}} for run in runs}}))
"""
    result = subprocess.run(
        [str(AIRFLOW_BIN / "python"), "-c", script], env=stack.env, check=True, text=True, capture_output=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _watch(stack: Stack) -> None:
    result = stack.airflow("dags", "test", WATCH, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_an_upload_triggers_one_run_and_the_same_bytes_again_trigger_none(stack: Stack, bucket) -> None:
    bucket.blob("incoming/privacy_intent/batch-a/part-0000.csv").upload_from_string(CSV)

    _watch(stack)
    runs = _training_runs(stack)
    assert len(runs) == 1
    (run_id, conf), *_ = runs.items()
    assert run_id.startswith("upload__batch-a__")
    assert conf == {"data_prefix": "incoming/privacy_intent/batch-a/"}

    # Same bytes uploaded again: a new GCS generation, the same content fingerprint.
    bucket.blob("incoming/privacy_intent/batch-a/part-0000.csv").upload_from_string(CSV)
    _watch(stack)
    assert _training_runs(stack) == runs

    # New content in the batch is new data: one more run.
    bucket.blob("incoming/privacy_intent/batch-a/part-0001.csv").upload_from_string(CSV.replace("m1", "m3"))
    _watch(stack)
    after = _training_runs(stack)
    assert len(after) == 2 and set(runs) < set(after)
