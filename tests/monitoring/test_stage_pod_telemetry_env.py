"""Every stage pod knows who it pushes its metrics as (DAG, run, task) and, when settings name one, where to."""

from __future__ import annotations

import pytest
from airflow.dag_processing.dagbag import DagBag
from rendered_pods import render_pod, render_tune_pods

from embedded.stack import REPO
from privacy_pipeline_airflow.settings import PipelineSettings
from privacy_pipeline_airflow.stage_pod import stage_pod_kwargs

RUN_ID = "scheduled__2026-11-20T02:00:00+00:00"


@pytest.fixture(scope="module")
def dags():
    return DagBag(dag_folder=str(REPO / "dags")).dags


def _env(pod) -> dict[str, str | None]:
    return {var.name: var.value for var in pod.spec.containers[0].env}


@pytest.mark.parametrize(
    "dag_id,task_id", [("privacy_intent_training", "register"), ("daily_conversations", "publish")]
)
def test_a_rendered_stage_pod_names_its_dag_run_and_task(dags, dag_id: str, task_id: str) -> None:
    env = _env(render_pod(dags[dag_id], task_id, ds="2026-11-20", run_id=RUN_ID))
    assert env["PIPELINE_DAG_ID"] == dag_id
    assert env["PIPELINE_RUN_ID"] == RUN_ID
    assert env["PIPELINE_TASK_ID"] == task_id
    assert env["PIPELINE_MAP_INDEX"] == "-1"


def test_each_tune_shard_names_its_map_index(dags) -> None:
    pods = render_tune_pods(dags["privacy_intent_training"], ds="2026-11-20", run_id=RUN_ID, params={"num_shards": 3})
    assert [_env(pod)["PIPELINE_MAP_INDEX"] for pod in pods] == ["0", "1", "2"]


def test_the_pushgateway_comes_from_settings_or_else_the_env_configmap() -> None:
    default = {var.name for var in stage_pod_kwargs("ingest", PipelineSettings())["env_vars"]}
    assert "PIPELINE_PUSHGATEWAY_URL" not in default
    configured = PipelineSettings(pushgateway_url="http://127.0.0.1:9091")
    env = {var.name: var.value for var in stage_pod_kwargs("ingest", configured)["env_vars"]}
    assert env["PIPELINE_PUSHGATEWAY_URL"] == "http://127.0.0.1:9091"


def test_shards_rendered_in_one_process_each_name_their_own_map_index(dags) -> None:
    """`airflow dags test` renders every shard of the mapped tune task in one process, from shared partial kwargs."""
    from rendered_pods import task_context

    from privacy_pipeline_airflow.stage_pod import StagePodOperator

    dag = dags["privacy_intent_training"]
    tune = dag.get_task("tune")
    shards = [StagePodOperator(task_id="tune", arguments=["tune"], **tune.partial_kwargs) for _ in range(2)]
    for index in (1, 0):
        shards[index].render_template_fields(
            task_context(dag, "tune", ds="2026-11-20", run_id=RUN_ID, map_index=index), jinja_env=dag.get_template_env()
        )
    assert [{v.name: v.value for v in shard.env_vars}["PIPELINE_MAP_INDEX"] for shard in shards] == ["0", "1"]
