"""The rollback DAG: manual only, a rollback pod then a deploy pod, its Params, and its commands run on a registry."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import ParamValidationError
from pod_security import restricted_violations
from rendered_pods import render_task, task_context

from embedded.stack import PIPELINE_BIN, REPO, pipeline_config_manifest

KUBERNETES_VERSION = "1.34"
RUN_ID = "manual__2026-11-23T10:00:00+00:00"
FIRST, SECOND = "20261120T020000Z-aaaaaaaa", "20261121T020000Z-bbbbbbbb"


@pytest.fixture(scope="module")
def dag():
    return DagBag(dag_folder=str(REPO / "dags")).dags["privacy_intent_rollback"]


def _pod(dag, task_id: str = "rollback", **params):
    context = task_context(dag, task_id, ds="2026-11-23", run_id=RUN_ID, params=params, triggering_user="alice")
    task = render_task(dag, dag.get_task(task_id), context)
    return task.build_pod_request_obj(context, dry_run=True)


def test_it_runs_only_when_triggered_a_rollback_pod_then_a_deploy_pod(dag) -> None:
    assert dag.schedule is None and type(dag.timetable).__name__ == "NullTimetable"
    assert [task.task_id for task in dag.tasks] == ["rollback", "deploy"]
    assert dag.get_task("rollback").downstream_task_ids == {"deploy"}
    assert dag.max_active_runs == 1


def test_the_deploy_pod_rolls_the_champion_out_with_all_traffic_under_the_runs_own_prefix(dag) -> None:
    args = _pod(dag, "deploy").spec.containers[0].args
    assert args[args.index("deploy") :] == [
        "deploy",
        "--run",
        "gs://privacy-intent-data/runs/rollback/manual__2026-11-23T10-00-00-00-00/",
        "--registry",
        "gs://privacy-intent-data/registry/",
        "--all-traffic",
    ]


def test_the_pod_runs_rollback_on_the_registry_with_the_params_and_the_triggering_user(dag) -> None:
    args = _pod(dag).spec.containers[0].args
    assert args == [
        "--config",
        "/etc/privacy-pipeline/pipeline.yaml",
        "rollback",
        "--registry",
        "gs://privacy-intent-data/registry/",
        "--to",
        "",
        "--by",
        "alice",
        "--reason",
        "",
    ]
    named = _pod(dag, version=FIRST, reason="bad canary").spec.containers[0].args
    assert named[named.index("--to") + 1] == FIRST and named[-1] == "bad canary"


@pytest.mark.parametrize("version", ["latest", "../champion", "20261120T020000Z-AAAAAAAA"])
def test_the_version_param_refuses_what_is_not_a_version_name(dag, version: str) -> None:
    params = ParamsDict(dag.params)
    with pytest.raises(ParamValidationError, match="does not match"):
        params["version"] = version


@pytest.mark.parametrize("task_id", ["rollback", "deploy"])
def test_the_pods_validate_and_meet_pod_security_restricted(dag, task_id: str) -> None:
    serialized = PodGenerator.serialize_pod(_pod(dag, task_id))
    kubernetes_validate.validate(serialized, KUBERNETES_VERSION, strict=True)
    assert restricted_violations(serialized) == []


_REGISTRY_WITH_TWO_PROMOTIONS = """
import sys
from privacy_pipeline import registry, storage
from privacy_pipeline.registry import RegistryLayout
uri = sys.argv[1]
for version in sys.argv[2:]:
    layout = RegistryLayout(uri)
    storage.write_bytes(layout.model(version), b"model")
    storage.write_json(layout.run_record(version), {"version": version, "candidate_f1_macro": 0.8})
    registry.cas_update_champion(uri, lambda current, v=version: {
        "version": v, "model_uri": layout.model(v), "action": "promote", "by": "register",
        "previous_version": current["version"] if current else None, "promoted_at": "2026-11-20T02:00:00Z"})
"""


def test_the_rendered_command_restores_the_previous_champion_and_a_second_run_is_a_no_op(dag, tmp_path: Path) -> None:
    registry_uri = str(tmp_path / "registry")
    python = str(PIPELINE_BIN / "python")
    subprocess.run([python, "-c", _REGISTRY_WITH_TWO_PROMOTIONS, registry_uri, FIRST, SECOND], check=True)
    args = _pod(dag).spec.containers[0].args
    args[args.index("--registry") + 1] = registry_uri
    # What the pod mounts at --config: the ConfigMap's pipeline.yaml.
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(pipeline_config_manifest()["data"]["pipeline.yaml"], encoding="utf-8")
    args[args.index("--config") + 1] = str(config_file)
    champion = Path(registry_uri) / "champion.json"

    def trigger(args: list[str] = args) -> str:
        xcom = tmp_path / "return.json"
        env = {"XCOM_RETURN_PATH": str(xcom), "PATH": str(PIPELINE_BIN)}
        subprocess.run([str(PIPELINE_BIN / "privacy-pipeline"), *args], check=True, env=env, capture_output=True)
        return xcom.read_text()

    first = json.loads(trigger())
    assert first["moved"] is True and first["champion_version"] == FIRST and first["by"] == "alice"
    after_first = champion.read_bytes()
    second = json.loads(trigger())
    assert second["moved"] is False and second["champion_version"] == FIRST
    assert champion.read_bytes() == after_first
    assert len(list((Path(registry_uri) / "history").glob("*.json"))) == 3

    # deploy, downstream: the InferenceService rolls to the restored champion, all traffic, no canary.
    deploy_args = _pod(dag, "deploy").spec.containers[0].args
    deploy_args[deploy_args.index("--registry") + 1] = registry_uri
    deploy_args[deploy_args.index("--run") + 1] = str(tmp_path / "rollback-run")
    deploy_args[deploy_args.index("--config") + 1] = str(config_file)
    deployed = json.loads(trigger(deploy_args))
    predictor = yaml.safe_load(Path(deployed["manifest_uri"]).read_text(encoding="utf-8"))["spec"]["predictor"]
    assert predictor["model"]["args"] == ["--version", FIRST] and "canaryTrafficPercent" not in predictor
