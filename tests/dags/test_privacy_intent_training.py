"""The training DAG: its graph, schedule and Params, and every pod it renders."""

from __future__ import annotations

import copy

import kubernetes_validate
import pendulum
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
from pod_security import restricted_violations
from rendered_pods import render_pod, render_tune_pods

from embedded.stack import REPO

# A current Kubernetes minor that kubernetes-validate ships the schema of.
KUBERNETES_VERSION = "1.34"
STAGE_TASKS = [
    "ingest", "validate", "featurize", "split", "select_best", "train", "evaluate", "register",
    "deploy", "canary_check",
]  # fmt: skip
DS = "2026-11-20"
RUN_ID = "scheduled__2026-11-20T02:00:00+00:00"


@pytest.fixture(scope="module")
def dag():
    return DagBag(dag_folder=str(REPO / "dags")).dags["privacy_intent_training"]


def _all_pods(dag, **context):
    pods = {task_id: render_pod(dag, task_id, **context) for task_id in STAGE_TASKS}
    for index, pod in enumerate(render_tune_pods(dag, **context)):
        pods[f"tune[{index}]"] = pod
    return pods


def test_graph_reads_like_the_pipeline(dag) -> None:
    chain = [
        "wait_for_data", "ingest", "validate", "featurize", "split", "plan_tune_shards", "tune",
        "select_best", "train", "evaluate", "register", "deploy", "canary_check",
    ]  # fmt: skip
    for upstream, downstream in zip(chain, chain[1:], strict=False):
        # announce_champion only emits the champion asset's event, beside the chain.
        assert dag.get_task(upstream).downstream_task_ids - {"announce_champion"} == {downstream}, upstream
    assert dag.get_task("announce_champion").upstream_task_ids == {"register"}
    assert dag.get_task("announce_champion").downstream_task_ids == set()
    assert dag.get_task("canary_check").downstream_task_ids == set()


def test_schedule_is_daily_at_two_utc(dag) -> None:
    from airflow.timetables.base import DataInterval, TimeRestriction
    from airflow.timetables.trigger import CronTriggerTimetable

    assert dag.timetable.expression == "0 2 * * *"
    assert str(dag.timetable.timezone) == "UTC"
    # What the scheduler computes: the run after 2026-11-20's is at 02:00 UTC the next day.
    timetable = CronTriggerTimetable(dag.timetable.expression, timezone=dag.timetable.timezone)
    last = pendulum.datetime(2026, 11, 20, 2, tz="UTC")
    info = timetable.next_dagrun_info(
        last_automated_data_interval=DataInterval(last, last),
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=True),
    )
    assert info.run_after == pendulum.datetime(2026, 11, 21, 2, tz="UTC")
    assert dag.catchup is False


def test_a_waiting_run_blocks_no_other_run_and_no_two_runs_promote_at_once(dag) -> None:
    # max_active_runs=1 would count a run whose sensor is deferred (apache/airflow#55675) and queue every other
    # run behind it for up to six hours.
    assert dag.max_active_runs != 1
    # The one task that judges and moves the champion runs for one run at a time; the scheduler counts a
    # deferred task instance towards this limit too (apache/airflow#61769, in the installed Airflow).
    assert dag.get_task("register").max_active_tis_per_dag == 1
    assert dag.get_task("wait_for_data").max_active_tis_per_dag is None


def test_the_dag_declares_the_assets_it_produces(dag) -> None:
    def names(task_id: str) -> set[str]:
        return {asset.name for asset in dag.get_task(task_id).outlets}

    assert names("register") == {"privacy_intent_registry"}
    assert names("announce_champion") == {"privacy_intent_champion"}
    assert dag.get_task("register").outlets[0].uri == "gs://privacy-intent-data/registry"


def test_data_sensor_is_deferrable_and_waits_on_the_runs_partition(dag) -> None:
    sensor = dag.get_task("wait_for_data")
    assert sensor.deferrable is True
    assert sensor.timeout > 0
    from rendered_pods import render_task, task_context

    rendered = render_task(dag, sensor, task_context(dag, "wait_for_data", ds=DS, run_id=RUN_ID))
    assert rendered.prefix == f"raw/privacy_intent/ds={DS}/"


@pytest.mark.parametrize(
    "params",
    [
        {"data_prefix": "raw/privacy_intent/../../secrets/"},
        {"data_prefix": "gs://another-bucket/data/"},
        {"data_prefix": "/etc/passwd"},
        {"search": "bayesian"},
        {"num_shards": 0},
        {"num_shards": 64},
        {"n_trials": "many"},
    ],
    ids=["dotdot", "other-bucket", "absolute", "search", "zero-shards", "too-many-shards", "trials-not-int"],
)
def test_bad_params_are_rejected(dag, params) -> None:
    bad = copy.deepcopy(dag.params)
    with pytest.raises(Exception, match=r"(?i)invalid|not valid|does not match|not one of|less than|greater"):
        for key, value in params.items():
            bad[key] = value
        bad.validate()


def test_good_params_validate(dag) -> None:
    params = copy.deepcopy(dag.params)
    params["data_prefix"] = "incoming/privacy_intent/batch-7/"
    params["search"] = "random"
    params["num_shards"] = 4
    assert params.validate()["num_shards"] == 4


def test_every_rendered_pod_validates_against_the_kubernetes_schema(dag) -> None:
    for task_id, pod in _all_pods(dag, ds=DS, run_id=RUN_ID, params={"num_shards": 3}).items():
        try:
            kubernetes_validate.validate(PodGenerator.serialize_pod(pod), KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{task_id}: {exc}")


def test_every_container_meets_pod_security_restricted(dag) -> None:
    for task_id, pod in _all_pods(dag, ds=DS, run_id=RUN_ID).items():
        serialized = PodGenerator.serialize_pod(pod)
        assert restricted_violations(serialized) == [], task_id
        names = [c["name"] for c in serialized["spec"]["containers"]]
        assert names == ["base", "airflow-xcom-sidecar"], task_id


def test_restricted_check_catches_a_root_container() -> None:
    pod = {
        "spec": {
            "containers": [{"name": "base", "securityContext": {"runAsUser": 0}}],
            "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        }
    }
    problems = restricted_violations(pod)
    assert any("uid 0" in p for p in problems) and any("hostPath" in p for p in problems)


def test_pods_carry_resources_deadlines_and_no_literal_secrets(dag) -> None:
    for task_id, pod in _all_pods(dag, ds=DS, run_id=RUN_ID).items():
        base = pod.spec.containers[0]
        assert base.resources.requests["memory"] and base.resources.limits["memory"], task_id
        assert pod.spec.active_deadline_seconds > 0
        assert pod.spec.automount_service_account_token is False
        assert base.command == ["privacy-pipeline"]
        for var in base.env or []:
            assert "KEY" not in var.name and "PASSWORD" not in var.name and "TOKEN" not in var.name, var.name
        assert [source.config_map_ref.name for source in base.env_from] == ["privacy-pipeline-env"]


def test_tune_fans_out_one_pod_per_shard(dag) -> None:
    pods = render_tune_pods(dag, ds=DS, run_id=RUN_ID, params={"num_shards": 4, "search": "random", "n_trials": 9})
    arguments = [pod.spec.containers[0].args for pod in pods]
    assert [args[args.index("--shard") + 1] for args in arguments] == ["0", "1", "2", "3"]
    assert all(args[args.index("--num-shards") + 1] == "4" for args in arguments)
    assert all("tune.search=random" in args and "tune.n_trials=9" in args for args in arguments)


def test_a_second_logical_date_reads_only_its_own_partition(dag) -> None:
    first = render_pod(dag, "ingest", ds="2026-11-20", run_id="scheduled__2026-11-20T02:00:00+00:00")
    second = render_pod(dag, "ingest", ds="2026-11-21", run_id="scheduled__2026-11-21T02:00:00+00:00")
    first_args, second_args = first.spec.containers[0].args, second.spec.containers[0].args
    source = second_args[second_args.index("--source") + 1]
    assert source == "gs://privacy-intent-data/raw/privacy_intent/ds=2026-11-21/"
    assert "2026-11-20" not in " ".join(second_args)
    assert first_args[first_args.index("--run") + 1] != second_args[second_args.index("--run") + 1]


def test_data_prefix_param_replaces_the_partition(dag) -> None:
    pod = render_pod(dag, "ingest", ds=DS, run_id="manual__x", params={"data_prefix": "incoming/privacy_intent/b1/"})
    args = pod.spec.containers[0].args
    assert args[args.index("--source") + 1] == "gs://privacy-intent-data/incoming/privacy_intent/b1/"


def test_every_stage_gets_the_same_config_from_the_params(dag) -> None:
    params = {"promote": False, "search": "random", "n_trials": 7}
    expected = [
        "--config", "/etc/privacy-pipeline/pipeline.yaml",
        "--set", "tune.search=random", "--set", "tune.n_trials=7", "--set", "register.promote=false",
    ]  # fmt: skip
    pods = _all_pods(dag, ds=DS, run_id=RUN_ID, params=params)
    for task_id, pod in pods.items():
        args = pod.spec.containers[0].args
        assert args[: len(expected)] == expected, task_id
        assert not args[len(expected)].startswith("-"), task_id  # then the stage's subcommand
    register_args = pods["register"].spec.containers[0].args
    assert register_args[register_args.index("--registry") + 1] == "gs://privacy-intent-data/registry/"


def test_the_rollout_pods_read_the_runs_registration_and_the_registry(dag) -> None:
    pods = _all_pods(dag, ds=DS, run_id=RUN_ID)
    register_args = pods["register"].spec.containers[0].args
    run_prefix = register_args[register_args.index("--run") + 1]
    for task_id, subcommand in (("deploy", "deploy"), ("canary_check", "canary-check")):
        args = pods[task_id].spec.containers[0].args
        assert args[args.index(subcommand) :] == [
            subcommand, "--run", run_prefix, "--registry", "gs://privacy-intent-data/registry/",
        ], task_id  # fmt: skip
    # Two model servers run beside the check on the embedded default; rendering a manifest needs little.
    limits = {
        task_id: pods[task_id].spec.containers[0].resources.limits["memory"] for task_id in ("deploy", "canary_check")
    }
    assert limits == {"deploy": "512Mi", "canary_check": "4Gi"}
