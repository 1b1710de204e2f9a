"""
### Privacy-intent training

Trains, evaluates and registers the privacy-intent classifier, one Kubernetes
pod per stage (`privacy-pipeline <stage>` in the pipeline image).

**When it runs**
- daily at 02:00 UTC on that day's partition `gs://<bucket>/raw/privacy_intent/ds={{ ds }}/`;
- from the web UI's Trigger button, with the Params below;
- from `privacy_intent_data_watch` when a new upload lands (its `data_prefix` Param names the upload);
- from `airflow backfill create` for past dates: each run reads only its own `ds` partition.

**Graph**: `wait_for_data` (deferrable GCS sensor) → `ingest` → `validate` → `featurize` → `split` →
`plan_tune_shards` → `tune` (one mapped pod per shard) → `select_best` → `train` → `evaluate` → `register` →
`deploy` → `canary_check`.

**Rollout**: when `register` promotes, `deploy` renders the champion's KServe InferenceService (Knative mode)
with the new version as a canary taking `rollout.canary_traffic_percent` of traffic; `canary_check` compares
it with the previous version (error rate, p99 latency, prediction agreement: Prometheus in the cluster, a
replay of the holdout to both as local servers on the embedded default) and promotes it to all traffic or
rolls the registry's champion back to the previous version, saying why.

Every stage writes under the run's own prefix `gs://<bucket>/runs/<run_id>/`, so a retry, clear or
backfill replaces its outputs. Data stays in the bucket; **XCom** carries only small metadata:

| task | XCom `return_value` |
|---|---|
| `wait_for_data` | the matching object names |
| `ingest` | `snapshot_uri`, `manifest_uri`, `rows`, `parts`, `content_sha256` |
| `validate` | `validated_uri`, `report_uri`, `rows_valid`, `rows_quarantined`, `reasons`, `class_counts` |
| `featurize` | `features_uri`, `mode`, `rows`, `n_features`, `sentence_model(_version)`, `texts_per_second` |
| `split` | `train_uri`, `holdout_uri`, `train_rows`, `holdout_rows`, `class_counts` |
| `plan_tune_shards` | the argument list of each tune pod |
| `tune` (per shard) | `shard`, `num_shards`, `candidates`, `best_candidate_id`, `best_score`, `shard_uri` |
| `select_best` | `best_candidate_id`, `best_params`, `cv_f1_macro`, `n_candidates` |
| `train` | `model_uri`, `params`, `train_rows`, `resampled_rows`, `fit_seconds` |
| `evaluate` | `metrics_uri`, `f1_macro`, `f1_macro_unseen`, `f1_macro_seen` (and their baselines), `accuracy`, |
|  | `roc_auc_ovr`, `baseline_f1_macro`, `phrasing_note`, `plot_uris` |
| `register` | `model_version`, `model_uri`, `promoted`, `decision_reason`, `candidate_f1_macro`, |
|  | `champion_f1_macro` (on this holdout), `champion_version`, `compared_against`, `compared_rows`, |
|  | `f1_macro_difference`, `difference_interval` (the paired bootstrap's), `excluded_rows`, |
|  | `report_uri` (the run report; the task's **Run report** link opens it), |
|  | `tracking` (the MLflow mirror: the run and model version logged, or `skipped: <why>`) |
| `deploy` | `deployed`, `reason`, `model_version`, `previous_version`, `canary_traffic_percent`, `manifest_uri`, |
|  | `manifest` (the rendered InferenceService), `applied`, `deployment_mode` |
| `canary_check` | `checked`, `decision` (promote/rollback), `reason`, `champion_version`, `rolled_back`, `agreement`, |
|  | `canary` and `previous` (requests, errors, p99 seconds), `source`, `manifest_uri` |

**Params** (manual trigger): `data_prefix` (a prefix inside the bucket; empty = the `ds` partition),
`search` (grid/random), `n_trials` (random search), `num_shards` (tune pods), `promote`.

**Runs overlap; promotions do not.** A run whose `wait_for_data` waits (deferred, up to six hours) for its
partition blocks no other run: there is no `max_active_runs=1`. What must not overlap is serialised per task:
`register` (the promotion gate and the champion's compare-and-swap) runs for one run at a time
(`max_active_tis_per_dag=1`, which counts deferred tasks since apache/airflow#61769, in Airflow 3.3).

**Assets**: `register` updates `privacy_intent_registry` (every registered version); `announce_champion`
updates `privacy_intent_champion` when this run's model became the champion (skipped otherwise).
"""

from __future__ import annotations

from datetime import timedelta

# Named here although stage_pod builds the tasks on it: the dag-processor pre-imports the airflow.* modules a DAG
# file names before it forks each parse ([dag_processor] parsing_pre_import_modules), and this one, with the
# Kubernetes client under it, is most of a parse's cost otherwise (bench/dag_parse.py).
import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401
import pendulum
from airflow.providers.google.cloud.sensors.gcs import GCSObjectsWithPrefixExistenceSensor
from airflow.sdk import DAG, Param, task

from privacy_pipeline_airflow import assets, notifications, run_templates
from privacy_pipeline_airflow.settings import get_settings
from privacy_pipeline_airflow.stage_pod import StagePodOperator, deferred_stage_pod_kwargs, stage_arguments, stage_pod

settings = get_settings()
RUN = run_templates.run_uri(settings)
# The Params every stage's config must agree on (select re-derives tune's candidate list; register
# reads promote), passed identically to each pod as `--set` overrides.
RUN_CONFIG = {
    "tune.search": "{{ params.search }}",
    "tune.n_trials": "{{ params.n_trials }}",
    "register.promote": "{{ params.promote | lower }}",
}

with DAG(
    dag_id="privacy_intent_training",
    description="Train, evaluate and register the privacy-intent classifier, one pod per stage",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    dagrun_timeout=timedelta(hours=6),
    default_args={
        "owner": "ml-platform",
        "retries": settings.retries,
        "on_failure_callback": notifications.failure_notifiers(settings),
    },
    # A scheduled run still unfinished PIPELINE_TRAINING_DEADLINE_MINUTES after 02:00 alerts people.
    deadline=notifications.deadline_alert(settings),
    tags=["privacy-intent", "training", "kubernetes"],
    doc_md=__doc__,
    user_defined_filters=run_templates.USER_DEFINED_FILTERS,
    params={
        "data_prefix": Param(
            None,
            type=["null", "string"],
            pattern=run_templates.DATA_PREFIX_PATTERN,
            title="Data prefix",
            description="Objects to train on, inside the configured bucket (e.g. raw/privacy_intent/ds=2026-11-20/). "
            "Empty: the logical date's partition.",
        ),
        "search": Param("grid", enum=["grid", "random"], title="Search", description="Hyperparameter search mode"),
        "n_trials": Param(12, type="integer", minimum=1, maximum=200, title="Random-search trials"),
        "num_shards": Param(2, type="integer", minimum=1, maximum=16, title="Tune pods"),
        "promote": Param(True, type="boolean", title="Promote", description="Let the gate promote a better model"),
    },
) as dag:
    wait_for_data = GCSObjectsWithPrefixExistenceSensor(
        task_id="wait_for_data",
        bucket=settings.bucket,
        prefix=run_templates.data_prefix(settings),
        google_cloud_conn_id=settings.gcp_conn_id,
        deferrable=True,
        poke_interval=300,
        timeout=int(timedelta(hours=6).total_seconds()),
    )

    ingest = stage_pod(
        "ingest", "--source", run_templates.source_uri(settings), "--run", RUN, config_overrides=RUN_CONFIG
    )
    validate = stage_pod("validate", "--run", RUN, config_overrides=RUN_CONFIG)
    featurize = stage_pod("featurize", "--run", RUN, config_overrides=RUN_CONFIG)
    split = stage_pod("split", "--run", RUN, config_overrides=RUN_CONFIG)

    @task
    def plan_tune_shards(run_uri: str, num_shards: str, run_config: dict[str, str]) -> list[list[str]]:
        """One argument list per tune pod: the same search, a different share of its candidates."""
        shards = int(num_shards)
        return [
            stage_arguments(
                "tune", "--run", run_uri, "--shard", str(i), "--num-shards", str(shards), config_overrides=run_config
            )
            for i in range(shards)
        ]

    tune_shards = plan_tune_shards(RUN, "{{ params.num_shards }}", RUN_CONFIG)
    tune = StagePodOperator.partial(task_id="tune", **deferred_stage_pod_kwargs("tune")).expand(arguments=tune_shards)

    select_best = stage_pod("select", "--run", RUN, task_id="select_best", config_overrides=RUN_CONFIG)
    train = stage_pod("train", "--run", RUN, config_overrides=RUN_CONFIG)
    evaluate = stage_pod("evaluate", "--run", RUN, config_overrides=RUN_CONFIG)
    register = stage_pod(
        "register",
        "--run",
        RUN,
        "--registry",
        run_templates.registry_uri(settings),
        config_overrides=RUN_CONFIG,
        outlets=[assets.registry(settings)],
        # One run at a time judges and moves the champion; the other stages of runs overlap freely.
        max_active_tis_per_dag=1,
    )

    @task(outlets=[assets.champion_model(settings)])
    def announce_champion(registered: dict) -> str:
        """The champion asset's event, when this run's model became the champion; skipped otherwise."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not registered.get("promoted"):
            raise AirflowSkipException(f"{registered.get('model_version')} was not promoted")
        return str(registered["model_version"])

    announce_champion(register.output)
    deploy = stage_pod(
        "deploy", "--run", RUN, "--registry", run_templates.registry_uri(settings), config_overrides=RUN_CONFIG
    )
    canary_check = stage_pod(
        "canary-check",
        "--run",
        RUN,
        "--registry",
        run_templates.registry_uri(settings),
        task_id="canary_check",
        config_overrides=RUN_CONFIG,
    )

    wait_for_data >> ingest >> validate >> featurize >> split >> tune_shards
    tune_shards >> tune >> select_best >> train >> evaluate >> register >> deploy >> canary_check
