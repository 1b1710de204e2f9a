"""
### Privacy-intent retention

Deletes from the bucket what nothing needs any more: one pod,
`privacy-pipeline retention --runs gs://<bucket>/runs/ --registry gs://<bucket>/registry/
--store gs://<bucket>/vector_store/conversations/ --report gs://<bucket>/retention/<run>.json`.

**When it runs**: daily at 04:00 UTC, after the 02:00 training run; also when triggered, with `dry_run`.

**Rules** (the pipeline config's `retention` section):
- model versions: the newest `keep_model_versions` (10) stay, and every version that was ever champion;
- vector-store versions: the newest `keep_store_versions` (7) stay, and the one `latest.json` points at;
- run prefixes (`runs/<run_id>/`, `runs/conversations/<run_id>/`): one whose newest object is older than
  `run_max_age_days` (30) goes, unless a kept model or store version, or the champion history, names it.

**Params**
- `dry_run`: report what would go and delete nothing.

**XCom** (`apply_retention`): `dry_run`, `report_uri`, `runs`, `model_versions`, `store_versions` (what went,
or would go; at most 50 names each) and `counts` (runs, model versions, store versions, objects, bytes).
The report in the bucket lists everything, each with its reason and size.
"""

from __future__ import annotations

# Named here although stage_pod builds the task on it: the dag-processor pre-imports the airflow.* modules a DAG
# file names before it forks each parse ([dag_processor] parsing_pre_import_modules).
import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401
import pendulum
from airflow.sdk import DAG, Param

from privacy_pipeline_airflow import notifications, run_templates
from privacy_pipeline_airflow.settings import get_settings
from privacy_pipeline_airflow.stage_pod import stage_pod

settings = get_settings()

with DAG(
    dag_id="privacy_intent_retention",
    description="Delete old run prefixes, model versions and vector-store versions nothing kept refers to",
    schedule="0 4 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    # Two deletions over the same prefixes at once would only race each other.
    max_active_runs=1,
    default_args={
        "owner": "ml-platform",
        "retries": settings.retries,
        "on_failure_callback": notifications.failure_notifiers(settings),
    },
    tags=["privacy-intent", "retention", "kubernetes"],
    doc_md=__doc__,
    user_defined_filters=run_templates.USER_DEFINED_FILTERS,
    params={
        "dry_run": Param(
            False, type="boolean", title="Dry run", description="Report what would be deleted; delete nothing"
        ),
    },
) as dag:
    apply_retention = stage_pod(
        "retention",
        "--runs",
        settings.gcs_uri(settings.runs_prefix) + "/",
        "--registry",
        run_templates.registry_uri(settings),
        "--store",
        run_templates.vector_store_uri(settings),
        "--report",
        settings.gcs_uri("retention") + "/{{ run_id | object_safe }}.json",
        "--dry-run={{ params.dry_run | lower }}",
        task_id="apply_retention",
    )
