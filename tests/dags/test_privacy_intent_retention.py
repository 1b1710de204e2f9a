"""The retention DAG: daily and triggerable, one retention pod over the bucket's prefixes, its dry_run Param."""

from __future__ import annotations

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
from pod_security import restricted_violations
from rendered_pods import render_task, task_context

from embedded.stack import REPO

RUN_ID = "scheduled__2026-11-23T04:00:00+00:00"


@pytest.fixture(scope="module")
def dag():
    return DagBag(dag_folder=str(REPO / "dags")).dags["privacy_intent_retention"]


def _pod(dag, **params):
    context = task_context(dag, "apply_retention", ds="2026-11-23", run_id=RUN_ID, params=params)
    task = render_task(dag, dag.get_task("apply_retention"), context)
    return task.build_pod_request_obj(context, dry_run=True)


def test_it_runs_daily_after_training_one_run_at_a_time(dag) -> None:
    assert [task.task_id for task in dag.tasks] == ["apply_retention"]
    assert dag.max_active_runs == 1
    assert dag.params["dry_run"] is False


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_pod_runs_retention_over_the_buckets_prefixes_with_the_dry_run_param(dag, dry_run: bool) -> None:
    args = _pod(dag, dry_run=dry_run).spec.containers[0].args
    assert args[args.index("retention") :] == [
        "retention",
        "--runs",
        "gs://privacy-intent-data/runs/",
        "--registry",
        "gs://privacy-intent-data/registry/",
        "--store",
        "gs://privacy-intent-data/vector_store/conversations/",
        "--report",
        "gs://privacy-intent-data/retention/scheduled__2026-11-23T04-00-00-00-00.json",
        f"--dry-run={str(dry_run).lower()}",
    ]


def test_the_rendered_pod_meets_the_restricted_profile(dag) -> None:
    pod = PodGenerator.serialize_pod(_pod(dag))
    assert restricted_violations(pod) == []
