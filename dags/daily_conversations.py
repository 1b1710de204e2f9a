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
`upsert` → `publish`.

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

    wait_for_conversations >> validate >> redact >> embed >> tag >> upsert >> publish
