"""
### Privacy-intent rollback

Moves the model registry's champion back to an earlier registered version in one step: one pod,
`privacy-pipeline rollback --registry gs://<bucket>/registry/ --to <version>`.

**When it runs**: only when triggered (web UI Trigger button, REST API or CLI); never on a schedule.

**Params**
- `version`: the registered version to make champion (`registry list` shows them, e.g.
  `20261123T021530Z-3fa2c1d0`). Empty: the champion the last promotion replaced.
- `reason`: why, kept in the registry's history (empty: "rollback from <version>").

The champion pointer moves by compare-and-swap, and the move (who: the user who triggered the run;
when; why; from which version) is written to `registry/history/`. Running it again with the same
Params changes nothing: a version that is already champion is a no-op, and so is an empty `version`
right after a rollback (there is no promotion left to undo). A version that does not exist or is not
a registered model fails the task with a one-line reason and leaves the registry untouched.
Then `deploy` rolls the InferenceService to the champion with all traffic (`deploy --all-traffic`),
writing the manifest under `runs/rollback/<run_id>/deploy/`; re-applying the same champion changes nothing.

**Graph**: `rollback` → `deploy`.

**XCom** (`rollback`): `moved`, `champion_version`, `previous_champion`, `by`, `note` (why nothing moved).
(`deploy`): `model_version`, `manifest_uri`, `manifest`, `applied`, `deployment_mode`.
"""

from __future__ import annotations

# Named here although stage_pod builds the task on it: the dag-processor pre-imports the airflow.* modules a DAG
# file names before it forks each parse ([dag_processor] parsing_pre_import_modules), and this one, with the
# Kubernetes client under it, is most of a parse's cost otherwise (bench/dag_parse.py).
import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401
import pendulum
from airflow.sdk import DAG, Param

from privacy_pipeline_airflow import notifications, run_templates
from privacy_pipeline_airflow.settings import get_settings
from privacy_pipeline_airflow.stage_pod import stage_pod

settings = get_settings()
# Where deploy writes the rendered InferenceService: a prefix of this run's own, apart from training runs.
RUN = settings.gcs_uri(settings.runs_prefix, "rollback") + "/{{ run_id | object_safe }}/"

with DAG(
    dag_id="privacy_intent_rollback",
    description="Move the privacy-intent champion back to an earlier registered version",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    # Two rollbacks at once would both be valid compare-and-swaps, one after the other; one at a time is clearer.
    max_active_runs=1,
    default_args={
        "owner": "ml-platform",
        "retries": settings.retries,
        "on_failure_callback": notifications.failure_notifiers(settings),
    },
    tags=["privacy-intent", "registry", "rollback", "kubernetes"],
    doc_md=__doc__,
    user_defined_filters=run_templates.USER_DEFINED_FILTERS,
    params={
        "version": Param(
            "",
            type="string",
            pattern=r"^(\d{8}T\d{6}Z-[0-9a-f]{8})?$",
            title="Version",
            description="The registered version to make champion. Empty: the champion the last promotion replaced.",
        ),
        "reason": Param(
            "", type="string", maxLength=500, title="Reason", description="Why, for the registry's history"
        ),
    },
) as dag:
    rollback = stage_pod(
        "rollback",
        "--registry",
        run_templates.registry_uri(settings),
        "--to",
        "{{ params.version }}",
        "--by",
        "{{ dag_run.triggering_user_name or 'airflow:' ~ dag_run.run_id }}",
        "--reason",
        "{{ params.reason }}",
    )
    deploy = stage_pod("deploy", "--run", RUN, "--registry", run_templates.registry_uri(settings), "--all-traffic")

    rollback >> deploy
