"""Render a DAG's stage tasks into the V1Pods the operator would submit, without a cluster or a database."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

from kubernetes.client import models as k8s

from privacy_pipeline_airflow.stage_pod import StagePodOperator


def task_context(
    dag: Any,
    task_id: str,
    *,
    ds: str,
    run_id: str,
    params: dict | None = None,
    map_index: int = -1,
    triggering_user: str | None = None,
):
    resolved = {**dag.params.dump(), **(params or {})}
    ti = SimpleNamespace(dag_id=dag.dag_id, task_id=task_id, map_index=map_index, try_number=1)
    # A real run's context always has dag_run; templates may read who triggered it.
    dag_run = SimpleNamespace(dag_id=dag.dag_id, run_id=run_id, triggering_user_name=triggering_user)
    return {
        "ds": ds,
        "run_id": run_id,
        "params": resolved,
        "ti": ti,
        "dag_run": dag_run,
        "dag": dag,
        "task": dag.get_task(task_id),
    }


def render_task(dag: Any, task: Any, context: dict) -> Any:
    rendered = copy.deepcopy(task)
    rendered.render_template_fields(context, jinja_env=dag.get_template_env())
    return rendered


def render_pod(dag: Any, task_id: str, **context_kwargs: Any) -> k8s.V1Pod:
    context = task_context(dag, task_id, **context_kwargs)
    task = render_task(dag, dag.get_task(task_id), context)
    return task.build_pod_request_obj(context, dry_run=True)


def render_tune_pods(dag: Any, **context_kwargs: Any) -> list[k8s.V1Pod]:
    """Every mapped tune pod: plan_tune_shards' output expanded over the tune task's partial arguments."""
    plan_context = task_context(dag, "plan_tune_shards", **context_kwargs)
    plan = render_task(dag, dag.get_task("plan_tune_shards"), plan_context)
    shard_arguments = plan.python_callable(*plan.op_args, **plan.op_kwargs)
    tune = dag.get_task("tune")
    pods = []
    for index, arguments in enumerate(shard_arguments):
        context = task_context(dag, "tune", map_index=index, **context_kwargs)
        operator = StagePodOperator(task_id="tune", arguments=arguments, **tune.partial_kwargs)
        pods.append(render_task(dag, operator, context).build_pod_request_obj(context, dry_run=True))
    return pods
