"""
### Daily conversations

Embeds each day's support conversations into the versioned FAISS vector store, tagged with the
champion privacy-intent model, so similar requests can be searched
(`privacy-pipeline search --index gs://<bucket>/vector_store/conversations/ --query "..."`).
One Kubernetes pod per stage (`privacy-pipeline conversations-<stage>` in the pipeline image).

**When it runs**
- daily at 03:30 UTC, after training, on that day's partition
  `gs://<bucket>/raw/conversations/ds={{ ds }}/` (JSONL or Parquet: `conversation_id`,
  `messages` [{`role`, `text`, `timestamp`}], optional `user_id`);
- from `airflow backfill create` or a cleared run for past dates: each run reads only its own `ds`
  partition, and re-processing a day replaces that day's entries in the store, never duplicates them.

**Graph**: `wait_for_conversations` (deferrable GCS sensor) → `validate` → `redact` → `embed` → `tag` →
`upsert` → `publish`, and beside them `tag` → `drift` → `drifted` → `retrain_on_drift`.

**Drift that acts**: `drift` compares the day with the store's recent days (that decides) and with the
champion's training data (reported): per-feature PSI and KS, a domain classifier's ROC AUC, the
predicted-intent mix; its report is `report.json` and `report.html` under the run's `conversations/drift/`.
When the AUC is above `drift.auc_threshold` (0.55), `drifted` lets `retrain_on_drift` trigger
`privacy_intent_training` once, with run id `drift__<day>__<hash of the day's conversations>` and
`data_prefix` the latest labelled `ds=` partition up to the day (conversations carry no labels); a run with
that id already existing (the same day re-run) means it was triggered before, and nothing is started, the
upload watch's rule. A failed or skipped `drift` never holds back `upsert` and `publish`.

Every stage writes under the run's own prefix `gs://<bucket>/runs/conversations/<run_id>/conversations/`;
only `publish` writes to the store, `gs://<bucket>/vector_store/conversations/`: a new
`versions/<version>/` (index, vectors, metadata, manifest), then the `latest.json` pointer, last.
Raw text never leaves the source partition: `validate` indexes conversations without their text and
`redact` stores only text with emails, phone numbers, card numbers and IPs replaced. **XCom** carries
only small metadata:

| task | XCom `return_value` |
|---|---|
| `wait_for_conversations` | the matching object names |
| `validate` | `day`, `validated_uri`, `quarantine_uri`, `report_uri`, `conversations`, `quarantined`, |
|  | `reasons`, `parts` (URIs and generations) |
| `redact` | `redacted_uri`, `day`, `conversations`, `conversations_with_pii`, `redactions` (count per kind) |
| `embed` | `embeddings_uri`, `day`, `conversations`, `dimension`, `sentence_model(_version)`, `texts_per_second` |
| `tag` | `tagged`, `reason` (why not, e.g. no champion yet), `champion_version`, `model_uri`, `tags_uri`, |
|  | `intent_counts`, `privacy_conversations` |
| `upsert` | `candidate_uri`, `day`, `parent_version`, `tagged`, |
|  | `counts` (`total`, `day`, `added`, `replaced`, `removed`, `by_day`) |
| `publish` | `version`, `version_uri`, `manifest_uri`, `parent_version`, `day`, `counts`, `index_kind`, |
|  | `recall_at_10`, `build_seconds` |
| `drift` | `drift_score` (the AUC), `drifted`, `report_uri`, `html_uri`, `top_features`, `training_auc`, |
|  | `intent_mix_p_value`, `champion_version`, `notes`, `retrain`, `trigger_run_id`, `retrain_data_prefix` |
| `drifted` | whether `retrain_on_drift` runs |

`tag` does not fail without a usable champion: the day is stored untagged and the reason is in its XCom.
`publish` fails, publishing nothing, when the new index's recall@10 against exact search is below
`conversations.min_recall_at_10`.
"""

from __future__ import annotations

from datetime import timedelta

# Named here although stage_pod builds the tasks on it: the dag-processor pre-imports the airflow.* modules a DAG
# file names before it forks each parse ([dag_processor] parsing_pre_import_modules), and this one, with the
# Kubernetes client under it, is most of a parse's cost otherwise (bench/dag_parse.py).
import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401
import pendulum
from airflow.providers.google.cloud.sensors.gcs import GCSObjectsWithPrefixExistenceSensor

# Rather than airflow.sdk's lazy `task.short_circuit`: a module named here is one the dag-processor pre-imports,
# and the decorator machinery behind it is a third of a parse otherwise (bench/dag_parse.py).
from airflow.providers.standard.decorators.short_circuit import short_circuit_task
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG

from privacy_pipeline_airflow import assets, notifications, run_templates
from privacy_pipeline_airflow.settings import get_settings
from privacy_pipeline_airflow.stage_pod import stage_pod

settings = get_settings()
RUN = run_templates.conversations_run_uri(settings)
STORE = run_templates.vector_store_uri(settings)

with DAG(
    dag_id="daily_conversations",
    description="Embed, tag and publish each day's conversations into the FAISS vector store, one pod per stage",
    schedule="30 3 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    # Each publish builds on the version the previous one published.
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={
        "owner": "ml-platform",
        "retries": settings.retries,
        "on_failure_callback": notifications.failure_notifiers(settings),
    },
    tags=["privacy-intent", "conversations", "vector-store", "kubernetes"],
    doc_md=__doc__,
    user_defined_filters=run_templates.USER_DEFINED_FILTERS,
) as dag:
    wait_for_conversations = GCSObjectsWithPrefixExistenceSensor(
        task_id="wait_for_conversations",
        bucket=settings.bucket,
        prefix=run_templates.conversations_partition(settings),
        google_cloud_conn_id=settings.gcp_conn_id,
        deferrable=True,
        poke_interval=300,
        timeout=int(timedelta(hours=6).total_seconds()),
    )

    validate = stage_pod(
        "conversations-validate",
        "--source",
        run_templates.conversations_source_uri(settings),
        "--run",
        RUN,
        "--day",
        "{{ ds }}",
        task_id="validate",
    )
    redact = stage_pod("conversations-redact", "--run", RUN, task_id="redact")
    embed = stage_pod("conversations-embed", "--run", RUN, task_id="embed")
    tag = stage_pod(
        "conversations-tag", "--run", RUN, "--registry", run_templates.registry_uri(settings), task_id="tag"
    )
    upsert = stage_pod("conversations-upsert", "--run", RUN, "--store", STORE, task_id="upsert")
    publish = stage_pod(
        "conversations-publish",
        "--run",
        RUN,
        "--store",
        STORE,
        task_id="publish",
        # A new `latest` version of the store: what a DAG that reads the index can schedule on.
        outlets=[assets.conversation_index(settings)],
    )
    drift = stage_pod(
        "conversations-drift",
        "--run",
        RUN,
        "--registry",
        run_templates.registry_uri(settings),
        "--store",
        STORE,
        "--training-data",
        settings.gcs_uri(settings.data_prefix) + "/",
        task_id="drift",
    )

    @short_circuit_task
    def drifted(drift_result: dict) -> bool:
        """Only a drifted day with a labelled partition to train on goes on to the trigger."""
        return bool(drift_result.get("retrain"))

    retrain_on_drift = TriggerDagRunOperator(
        task_id="retrain_on_drift",
        trigger_dag_id="privacy_intent_training",
        trigger_run_id="{{ ti.xcom_pull(task_ids='drift')['trigger_run_id'] }}",
        conf={"data_prefix": "{{ ti.xcom_pull(task_ids='drift')['retrain_data_prefix'] }}"},
        # The same drift (same day, same content) names the same run: found, so nothing is triggered again.
        skip_when_already_exists=True,
        wait_for_completion=False,
    )

    wait_for_conversations >> validate >> redact >> embed >> tag >> upsert >> publish
    tag >> drift >> drifted(drift.output) >> retrain_on_drift
