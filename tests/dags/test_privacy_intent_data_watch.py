"""The data watch: an upload check and a config check, each triggering training runs keyed by their run ids."""

from __future__ import annotations

import pytest
from airflow.dag_processing.dagbag import DagBag

from embedded.stack import REPO


@pytest.fixture(scope="module")
def dag():
    return DagBag(dag_folder=str(REPO / "dags")).dags["privacy_intent_data_watch"]


def test_the_config_check_runs_beside_the_upload_sensor_not_behind_it(dag) -> None:
    # Behind the sensor it would be skipped whenever no upload arrives, which is most of the time.
    assert dag.get_task("find_config_change").upstream_task_ids == set()
    assert dag.get_task("find_config_change").downstream_task_ids == {"train_on_config_change"}
    assert dag.get_task("wait_for_upload").downstream_task_ids == {"find_new_batches"}


def test_a_config_change_triggers_training_once_per_run_id(dag) -> None:
    trigger = dag.get_task("train_on_config_change")
    assert trigger.partial_kwargs["trigger_dag_id"] == "privacy_intent_training"
    assert trigger.partial_kwargs["skip_when_already_exists"] is True
    assert trigger.partial_kwargs["wait_for_completion"] is False


def test_a_manual_check_does_not_wait_behind_a_scheduled_ones_sensor(dag) -> None:
    assert dag.max_active_runs != 1
