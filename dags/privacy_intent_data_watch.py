"""
### Privacy-intent data watch

Starts a training run when labelled data is uploaded outside the daily schedule.

Uploads go to `gs://<bucket>/incoming/privacy_intent/<batch>/` (one folder per batch,
CSV or Parquet part files). Every 15 minutes:

1. `wait_for_upload`: a deferrable `GCSUploadSessionCompleteSensor` (on the triggerer) waits until the
   objects under the incoming prefix stop changing for `PIPELINE_UPLOAD_INACTIVITY_SECONDS`, so a batch
   still being uploaded is not trained half-way; with no upload at all it gives up quietly (skipped)
   before the next check.
2. `find_new_batches`: fingerprints each batch by its objects' names, sizes and MD5 hashes (content,
   not generation, so uploading the same bytes again changes nothing).
3. `train_on_batch`: triggers `privacy_intent_training` once per batch with run id
   `upload__<batch>__<fingerprint>` and `data_prefix` set to the batch; a run with that id already
   existing means this exact data was trained before, and the trigger is skipped.

Beside the upload check, `find_config_change` hashes the pipeline config the stage pods mount (the
ConfigMap `privacy-pipeline-config`, `deploy/k8s/pipeline-config.yaml`); when that content hash differs from
the one the newest registered training run used, `train_on_config_change` triggers one training run on the
latest `ds=` partition with run id `config__<hash>`. The same config again starts none: its hash matches, or
that run id exists already.

Runs may overlap (no `max_active_runs=1`): every trigger is keyed by its run id, so two checks at once still
start each run once, and a manual check never waits behind a scheduled one's upload sensor.

**XCom**: `find_new_batches` and `find_config_change` return `[{"trigger_run_id", "conf": {"data_prefix"}}]`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.google.cloud.sensors.gcs import GCSUploadSessionCompleteSensor
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, task

from privacy_pipeline_airflow import notifications
from privacy_pipeline_airflow.settings import get_settings

settings = get_settings()
INCOMING = settings.incoming_prefix.strip("/") + "/"

with DAG(
    dag_id="privacy_intent_data_watch",
    description="Trigger privacy_intent_training once per newly uploaded batch of labelled data",
    schedule="*/15 * * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    default_args={
        "owner": "ml-platform",
        "retries": 1,
        "retry_delay": timedelta(minutes=1),
        "on_failure_callback": notifications.failure_notifiers(settings),
    },
    tags=["privacy-intent", "sensor", "trigger"],
    doc_md=__doc__,
) as dag:
    wait_for_upload = GCSUploadSessionCompleteSensor(
        task_id="wait_for_upload",
        bucket=settings.bucket,
        prefix=INCOMING,
        google_cloud_conn_id=settings.gcp_conn_id,
        inactivity_period=settings.upload_inactivity_seconds,
        min_objects=1,
        allow_delete=True,
        deferrable=True,
        poke_interval=min(30, settings.upload_inactivity_seconds),
        timeout=int(timedelta(minutes=14).total_seconds()),
        soft_fail=True,
    )

    @task
    def find_new_batches() -> list[dict]:
        """One trigger per batch folder, keyed by a fingerprint of its content."""
        from privacy_pipeline_airflow.upload_batches import batch_triggers

        return batch_triggers(settings)

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
        """One trigger when the cluster's pipeline config is not the one the last training run used."""
        from privacy_pipeline_airflow.config_watch import config_triggers

        return config_triggers(settings)

    TriggerDagRunOperator.partial(
        task_id="train_on_config_change",
        trigger_dag_id="privacy_intent_training",
        skip_when_already_exists=True,
        wait_for_completion=False,
    ).expand_kwargs(find_config_change())
