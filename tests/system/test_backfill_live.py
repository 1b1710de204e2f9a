"""A backfill of two dates through the running Airflow: each run reads its own partition, and each later date's
candidate faces the champion.

conftest.started_runs creates the backfill once some run has made a champion, so that it overlaps the other
modules' runs.
"""

from __future__ import annotations

import json
import time

import pytest
from live_airflow import BACKFILL_DATES, RUN_TIMEOUT, TRAINING, backfill_rows, registry_runs, runs, xcom

pytestmark = pytest.mark.system


def test_backfill_of_two_dates_reads_each_partition_and_faces_the_champion(airflow, bucket, started_runs):
    started_runs.backfill.result(timeout=2 * RUN_TIMEOUT)
    deadline = time.monotonic() + 3 * RUN_TIMEOUT
    while time.monotonic() < deadline:
        backfills = [run for run in runs(airflow, TRAINING) if run["run_type"] == "backfill"]
        if len(backfills) == len(BACKFILL_DATES) and all(run["state"] in ("success", "failed") for run in backfills):
            break
        time.sleep(5)
    assert sorted(run["state"] for run in backfills) == ["success"] * len(BACKFILL_DATES)
    versions = []
    for offset, run in enumerate(sorted(backfills, key=lambda r: r["logical_date"])):
        assert run["logical_date"].startswith(BACKFILL_DATES[offset])
        assert xcom(airflow, run["dag_run_id"], "wait_for_data") == [
            f"raw/privacy_intent/ds={BACKFILL_DATES[offset]}/part-0000.csv"
        ]
        assert xcom(airflow, run["dag_run_id"], "ingest")["rows"] == backfill_rows(offset)
        register = xcom(airflow, run["dag_run_id"], "register")
        versions.append(register["model_version"])
        if offset:  # each later date's candidate was judged against the champion on that date's holdout
            assert register["champion_f1_macro"] is not None
    # New versions, one record each (other runs register meanwhile: counting all records would race).
    records = registry_runs(bucket)
    assert len(set(versions)) == len(BACKFILL_DATES)
    assert all([record["version"] for record in records].count(version) == 1 for version in versions)
    champion = json.loads(bucket.blob("registry/champion.json").download_as_bytes())
    assert champion["version"] in {record["version"] for record in records}
    assert bucket.blob(f"registry/models/{champion['version']}/model.skops").exists()
