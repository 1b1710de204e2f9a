"""The daily conversations DAG: its graph and schedule, and every pod it renders."""

from __future__ import annotations

import kubernetes_validate
import pendulum
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
from pod_security import restricted_violations
from rendered_pods import render_pod, render_task, task_context

from embedded.stack import REPO

# A current Kubernetes minor that kubernetes-validate ships the schema of.
KUBERNETES_VERSION = "1.34"
STAGES = {
    "validate": "conversations-validate",
    "redact": "conversations-redact",
    "embed": "conversations-embed",
    "tag": "conversations-tag",
    "upsert": "conversations-upsert",
    "publish": "conversations-publish",
    "drift": "conversations-drift",
}
DS = "2026-11-20"
RUN_ID = "scheduled__2026-11-20T03:30:00+00:00"
RUN_PREFIX = "gs://privacy-intent-data/runs/conversations/scheduled__2026-11-20T03-30-00-00-00/"
STORE = "gs://privacy-intent-data/vector_store/conversations/"


@pytest.fixture(scope="module")
def dag():
    return DagBag(dag_folder=str(REPO / "dags")).dags["daily_conversations"]


def _pods(dag, ds: str = DS, run_id: str = RUN_ID):
    return {task_id: render_pod(dag, task_id, ds=ds, run_id=run_id) for task_id in STAGES}


def _args(pod) -> list[str]:
    return pod.spec.containers[0].args


def test_graph_reads_like_the_pipeline(dag) -> None:
    chain = ["wait_for_conversations", "validate", "redact", "embed", "tag", "upsert", "publish"]
    drift_branch = ["tag", "drift", "drifted", "retrain_on_drift"]
    assert {task.task_id for task in dag.tasks} == set(chain) | set(drift_branch)
    for upstream, downstream in zip(chain[:4], chain[1:5], strict=True):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}, upstream
    # Drift is a side branch: it needs the champion's tags, and upsert and publish never wait for it.
    assert dag.get_task("tag").downstream_task_ids == {"upsert", "drift"}
    assert dag.get_task("upsert").downstream_task_ids == {"publish"}
    for upstream, downstream in zip(drift_branch[1:], drift_branch[2:], strict=False):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}, upstream
    assert dag.get_task("publish").downstream_task_ids == set()
    assert dag.get_task("retrain_on_drift").downstream_task_ids == set()


def _drift_xcom(day: str, content: str) -> dict:
    return {
        "drifted": True,
        "retrain": True,
        "trigger_run_id": f"drift__{day}__{content}",
        "retrain_data_prefix": f"raw/privacy_intent/ds={day}/",
    }


def _rendered_trigger(dag, drift_xcom: dict, run_id: str = RUN_ID):
    context = task_context(dag, "retrain_on_drift", ds=DS, run_id=run_id)
    context["ti"].xcom_pull = lambda task_ids: drift_xcom if task_ids == "drift" else None
    return render_task(dag, dag.get_task("retrain_on_drift"), context)


def test_drift_triggers_training_once_per_drift_with_the_upload_watchs_rule(dag) -> None:
    trigger = dag.get_task("retrain_on_drift")
    assert trigger.trigger_dag_id == "privacy_intent_training"
    assert trigger.skip_when_already_exists is True and trigger.wait_for_completion is False
    drift = _drift_xcom("2026-11-20", "0123456789abcdef")
    first = _rendered_trigger(dag, drift)
    assert first.trigger_run_id == "drift__2026-11-20__0123456789abcdef"
    assert first.conf == {"data_prefix": "raw/privacy_intent/ds=2026-11-20/"}
    # A re-run of the day (another Airflow run, same drift evidence) names the same training run, which
    # skip_when_already_exists then finds: the same drift never trains twice.
    again = _rendered_trigger(dag, drift, run_id="manual__2026-11-21T09:00:00+00:00")
    assert again.trigger_run_id == first.trigger_run_id
    assert _rendered_trigger(dag, _drift_xcom("2026-11-20", "fedcba9876543210")).trigger_run_id != first.trigger_run_id


def test_only_a_drifted_day_with_data_to_train_on_reaches_the_trigger(dag) -> None:
    gate = dag.get_task("drifted")
    assert gate.python_callable(_drift_xcom(DS, "x")) is True
    assert gate.python_callable({"drifted": False, "retrain": False}) is False
    assert gate.python_callable({"drifted": True, "retrain": False}) is False


def test_drift_reads_the_store_registry_and_labelled_partitions_but_writes_only_its_run(dag) -> None:
    args = _args(render_pod(dag, "drift", ds=DS, run_id=RUN_ID))
    assert args[args.index("--store") + 1] == STORE
    assert args[args.index("--registry") + 1] == "gs://privacy-intent-data/registry/"
    assert args[args.index("--training-data") + 1] == "gs://privacy-intent-data/raw/privacy_intent/"


def test_publish_declares_the_index_asset(dag) -> None:
    (index,) = dag.get_task("publish").outlets
    assert index.name == "conversation_index"
    assert index.uri == "gs://privacy-intent-data/vector_store/conversations/latest.json"


def test_schedule_is_daily_after_training_one_run_at_a_time(dag) -> None:
    from airflow.timetables.base import DataInterval, TimeRestriction
    from airflow.timetables.trigger import CronTriggerTimetable

    assert dag.timetable.expression == "30 3 * * *"
    assert str(dag.timetable.timezone) == "UTC"
    timetable = CronTriggerTimetable(dag.timetable.expression, timezone=dag.timetable.timezone)
    last = pendulum.datetime(2026, 11, 20, 3, 30, tz="UTC")
    info = timetable.next_dagrun_info(
        last_automated_data_interval=DataInterval(last, last),
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=True),
    )
    assert info.run_after == pendulum.datetime(2026, 11, 21, 3, 30, tz="UTC")
    # Each publish builds on the previous one's version.
    assert dag.max_active_runs == 1
    training = DagBag(dag_folder=str(REPO / "dags")).dags["privacy_intent_training"]
    assert training.timetable.expression == "0 2 * * *", "conversations are tagged after the day's training"


def test_sensor_is_deferrable_and_waits_on_the_days_partition(dag) -> None:
    sensor = dag.get_task("wait_for_conversations")
    assert sensor.deferrable is True and sensor.timeout > 0
    rendered = render_task(dag, sensor, task_context(dag, "wait_for_conversations", ds=DS, run_id=RUN_ID))
    assert rendered.bucket == "privacy-intent-data"
    assert rendered.prefix == f"raw/conversations/ds={DS}/"


def test_each_task_runs_its_stage_on_the_runs_prefix(dag) -> None:
    pods = _pods(dag)
    for task_id, stage in STAGES.items():
        args = _args(pods[task_id])
        assert args[:3] == ["--config", "/etc/privacy-pipeline/pipeline.yaml", stage], task_id
        assert args[args.index("--run") + 1] == RUN_PREFIX, task_id
        assert pods[task_id].metadata.labels["app.kubernetes.io/component"] == stage
    validate = _args(pods["validate"])
    assert validate[validate.index("--source") + 1] == f"gs://privacy-intent-data/raw/conversations/ds={DS}/"
    assert validate[validate.index("--day") + 1] == DS
    tag = _args(pods["tag"])
    assert tag[tag.index("--registry") + 1] == "gs://privacy-intent-data/registry/"
    for task_id in ("upsert", "publish"):
        args = _args(pods[task_id])
        assert args[args.index("--store") + 1] == STORE
    # Only upsert and publish know the store before drift (which reads it); nothing before them can write to it.
    assert all("--store" not in _args(pods[t]) for t in ("validate", "redact", "embed", "tag"))


def test_runs_of_two_days_read_their_own_partitions_and_write_their_own_prefixes(dag) -> None:
    first = _args(render_pod(dag, "validate", ds="2026-11-20", run_id="scheduled__2026-11-20T03:30:00+00:00"))
    second = _args(render_pod(dag, "validate", ds="2026-11-21", run_id="scheduled__2026-11-21T03:30:00+00:00"))
    assert second[second.index("--source") + 1].endswith("/ds=2026-11-21/")
    assert "2026-11-20" not in " ".join(second)
    assert first[first.index("--run") + 1] != second[second.index("--run") + 1]


def test_conversation_runs_never_share_a_prefix_with_training_runs(dag) -> None:
    training = DagBag(dag_folder=str(REPO / "dags")).dags["privacy_intent_training"]
    train_args = _args(render_pod(training, "ingest", ds=DS, run_id="manual__x"))
    conversation_args = _args(render_pod(dag, "validate", ds=DS, run_id="manual__x"))
    assert train_args[train_args.index("--run") + 1] != conversation_args[conversation_args.index("--run") + 1]


def test_every_rendered_pod_validates_against_the_kubernetes_schema(dag) -> None:
    for task_id, pod in _pods(dag).items():
        try:
            kubernetes_validate.validate(PodGenerator.serialize_pod(pod), KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{task_id}: {exc}")


def test_every_container_meets_pod_security_restricted(dag) -> None:
    for task_id, pod in _pods(dag).items():
        serialized = PodGenerator.serialize_pod(pod)
        assert restricted_violations(serialized) == [], task_id
        assert [c["name"] for c in serialized["spec"]["containers"]] == ["base", "airflow-xcom-sidecar"], task_id


def test_pods_carry_resources_deadlines_and_no_literal_secrets(dag) -> None:
    pods = _pods(dag)
    for task_id, pod in pods.items():
        base = pod.spec.containers[0]
        assert base.resources.requests["memory"] and base.resources.limits["memory"], task_id
        assert pod.spec.active_deadline_seconds > 0
        assert pod.spec.automount_service_account_token is False
        assert base.command == ["privacy-pipeline"]
        for var in base.env or []:
            assert "KEY" not in var.name and "PASSWORD" not in var.name and "TOKEN" not in var.name, var.name
        assert [source.config_map_ref.name for source in base.env_from] == ["privacy-pipeline-env"]
    # The sentence model and whole store versions need the heavy profile; validate does not.
    limit = {task_id: pods[task_id].spec.containers[0].resources.limits["memory"] for task_id in STAGES}
    assert limit["embed"] == limit["publish"] == "8Gi" and limit["validate"] == "2Gi"


def test_tasks_are_owned_and_retry(dag) -> None:
    for task in dag.tasks:
        assert task.owner == "ml-platform" and task.retries >= 1, task.task_id
    assert "publish" in dag.doc_md and "recall_at_10" in dag.doc_md
