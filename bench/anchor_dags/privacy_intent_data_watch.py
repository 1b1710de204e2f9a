"""
### privacy_intent_data_watch, written with plain operators (the parse-time anchor of `make bench`)

The same graph and schedule as `dags/privacy_intent_data_watch.py`, with its settings written in as
literals: what the DAG file costs per parse without our settings object.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.google.cloud.sensors.gcs import GCSUploadSessionCompleteSensor
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, task

with DAG(
    dag_id="privacy_intent_data_watch",
    description="Trigger privacy_intent_training once per newly uploaded batch of labelled data",
    schedule="*/15 * * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(minutes=1)},
    tags=["privacy-intent", "sensor", "trigger"],
    doc_md=__doc__,
) as dag:
    wait_for_upload = GCSUploadSessionCompleteSensor(
        task_id="wait_for_upload",
        bucket="privacy-intent-data",
        prefix="incoming/privacy_intent/",
        inactivity_period=60,
        min_objects=1,
        allow_delete=True,
        deferrable=True,
        poke_interval=30,
        timeout=int(timedelta(minutes=14).total_seconds()),
        soft_fail=True,
    )

    @task
    def find_new_batches() -> list[dict]:
        """One trigger per batch folder (the real DAG fingerprints the bucket's objects here)."""
        return []

    batches = find_new_batches()
    train_on_batch = TriggerDagRunOperator.partial(
        task_id="train_on_batch",
        trigger_dag_id="privacy_intent_training",
        skip_when_already_exists=True,
        wait_for_completion=False,
    ).expand_kwargs(batches)

    wait_for_upload >> batches >> train_on_batch

    @task
    def find_config_change() -> list[dict]:
        """One trigger when the pipeline config changed (the real DAG reads the ConfigMap and the registry here)."""
        return []

    TriggerDagRunOperator.partial(
        task_id="train_on_config_change",
        trigger_dag_id="privacy_intent_training",
        skip_when_already_exists=True,
        wait_for_completion=False,
    ).expand_kwargs(find_config_change())
