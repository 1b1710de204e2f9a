"""Checkov passes the stage pods the DAGs render, the namespace manifest and both Dockerfiles.

The pods are rendered the way tests/rendered_pods.py renders them (what
KubernetesPodOperator would submit), with the Kubernetes connection that
helm-values.yaml gives Airflow (it carries the XCom sidecar's limits), and
scanned together with deploy/k8s so that graph checks see the NetworkPolicy.
Checks that do not fit a run-to-completion stage pod are skipped below, each
with its reason; the Dockerfiles carry theirs inline as ``checkov:skip`` comments.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
from rendered_pods import render_pod, render_tune_pods

from embedded.stack import REPO
from privacy_pipeline_airflow.stage_pod import StagePodOperator

# checkov pins libraries that conflict with Airflow's, so it has its own venv (`make checkov`).
CHECKOV = REPO / ".venv" / "checkov" / "bin" / "checkov"
VALUES = REPO / "helm-values.yaml"
MANIFEST = REPO / "deploy" / "k8s" / "privacy-pipeline.yaml"
DOCKERFILES = [REPO / "images" / "pipeline" / "Dockerfile", REPO / "images" / "airflow" / "Dockerfile"]
DS = "2026-11-20"
RUN_ID = "scheduled__2026-11-20T02:00:00+00:00"

POD_SKIPS = {
    "CKV_K8S_8": "a stage pod runs to completion and serves nothing; activeDeadlineSeconds bounds a hang, "
    "a liveness probe would only restart the work",
    "CKV_K8S_9": "nothing connects to a stage pod, so there is no readiness to probe",
    "CKV_K8S_15": "the image is named by an immutable ECR tag (README: tag immutability), so IfNotPresent "
    "always runs the same image as Always would, without a registry round trip per stage",
    "CKV_K8S_43": "the same immutable ECR tag pins the image as a digest would; the tag also names the "
    "package version the stages record (PIPELINE_IMAGE_TAG)",
}

pytestmark = pytest.mark.skipif(
    not CHECKOV.exists() and not os.environ.get("CI"),
    reason=f"checkov is not installed at {CHECKOV}; `make checkov` installs it (CI always does)",
)


def _stage_pods() -> dict[str, dict[str, Any]]:
    """Every stage pod of every DAG, mapped tune shards included, as the API would receive it."""
    pods: dict[str, dict[str, Any]] = {}
    for dag_id, dag in DagBag(dag_folder=str(REPO / "dags")).dags.items():
        for task in dag.tasks:
            if dag_id == "privacy_intent_training" and task.task_id == "tune":
                for index, pod in enumerate(render_tune_pods(dag, ds=DS, run_id=RUN_ID)):
                    pods[f"{dag_id}.tune-{index}"] = PodGenerator.serialize_pod(pod)
            elif isinstance(task, StagePodOperator):
                pod = render_pod(dag, task.task_id, ds=DS, run_id=RUN_ID)
                pods[f"{dag_id}.{task.task_id}"] = PodGenerator.serialize_pod(pod)
    return pods


def _production_connections() -> dict[str, str]:
    values = yaml.safe_load(VALUES.read_text(encoding="utf-8"))
    return {item["name"]: item["value"] for item in values["env"] if item["name"].startswith("AIRFLOW_CONN_")}


def checkov(target: Path, framework: str, skips: dict[str, str] | None = None) -> dict[str, Any]:
    command = [str(CHECKOV), "--framework", framework, "--skip-download", "--quiet", "--output", "json"]
    command += ["--directory", str(target)] if target.is_dir() else ["--file", str(target)]
    if skips:
        command += ["--skip-check", ",".join(skips)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON report (exit {result.returncode}): {result.stderr[-2000:]}")
    # One report per framework; an empty result set comes back as a bare summary.
    return report[0] if isinstance(report, list) else report


def failures(report: dict[str, Any]) -> list[str]:
    failed = report.get("results", {}).get("failed_checks", [])
    return sorted(f"{check['check_id']} {check['check_name']}: {check['resource']}" for check in failed)


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _production_connections().items():
            patch.setenv(name, value)
        pods = _stage_pods()
    for name, pod in pods.items():
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(pod, sort_keys=False), encoding="utf-8")
    manifest = string.Template(MANIFEST.read_text(encoding="utf-8")).safe_substitute(
        AWS_ACCOUNT_ID="123456789012", GCP_PROJECT="demo"
    )
    (directory / "privacy-pipeline.yaml").write_text(manifest, encoding="utf-8")
    return directory


def test_every_dag_renders_stage_pods_to_scan(cluster_dir) -> None:
    scanned = {path.stem.split(".")[0] for path in cluster_dir.glob("*.*.yaml")}
    assert {"privacy_intent_training", "daily_conversations"} <= scanned


def test_stage_pods_and_namespace_manifest_pass(cluster_dir) -> None:
    report = checkov(cluster_dir, "kubernetes", POD_SKIPS)

    assert failures(report) == []
    assert report["summary"]["passed"] > 0
    assert report["summary"]["resource_count"] >= len(list(cluster_dir.glob("*.yaml")))


def test_xcom_sidecar_has_limits_from_the_production_connection(cluster_dir) -> None:
    pod = yaml.safe_load(next(cluster_dir.glob("privacy_intent_training.train.yaml")).read_text(encoding="utf-8"))
    sidecar = next(c for c in pod["spec"]["containers"] if c["name"] != "base")
    assert {"cpu", "memory"} <= sidecar["resources"]["limits"].keys()


def test_an_insecure_pod_fails(tmp_path: Path) -> None:
    insecure = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "careless", "namespace": "privacy-pipeline"},
        "spec": {"containers": [{"name": "base", "image": "python:latest", "securityContext": {"privileged": True}}]},
    }
    (tmp_path / "careless.yaml").write_text(yaml.safe_dump(insecure), encoding="utf-8")

    found = " ".join(failures(checkov(tmp_path, "kubernetes", POD_SKIPS)))

    for check in ("CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_28"):
        assert check in found, f"checkov did not report {check}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_pass_with_inline_justified_skips(dockerfile: Path, tmp_path: Path) -> None:
    # A copy alone in a folder, so the scan sees this Dockerfile and nothing else.
    shutil.copy(dockerfile, tmp_path / "Dockerfile")

    report = checkov(tmp_path, "dockerfile")

    assert failures(report) == []
    for skipped in report["results"].get("skipped_checks", []):
        assert skipped["check_result"].get("suppress_comment", "").strip(), f"{skipped['check_id']} has no reason"
