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


def checkov(target: Path, frameworks: tuple[str, ...], skips: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One report per framework. Without --quiet, so that passed and skipped checks are listed too."""
    command = [str(CHECKOV), "--framework", *frameworks, "--skip-download", "--output", "json"]
    command += ["--directory", str(target)]
    if skips:
        command += ["--skip-check", ",".join(skips)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON report (exit {result.returncode}): {result.stderr[-2000:]}")
    # An empty result set comes back as a bare summary.
    return report if isinstance(report, list) else [report]


def failures(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    return sorted(f"{check['check_id']} {check['check_name']}: {check['resource']}" for check in results["failed"])


INSECURE_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "careless", "namespace": "privacy-pipeline"},
    "spec": {"containers": [{"name": "base", "image": "python:latest", "securityContext": {"privileged": True}}]},
}


@pytest.fixture(scope="module")
def scan_root(tmp_path_factory) -> Path:
    """What the one checkov run scans, a folder each: the cluster (every stage pod the DAGs render and the
    namespace manifest, together so that graph checks see the NetworkPolicy), a careless pod, each Dockerfile."""
    root = tmp_path_factory.mktemp("checkov")
    cluster = root / "cluster"
    cluster.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _production_connections().items():
            patch.setenv(name, value)
        pods = _stage_pods()
    for name, pod in pods.items():
        (cluster / f"{name}.yaml").write_text(yaml.safe_dump(pod, sort_keys=False), encoding="utf-8")
    manifest = string.Template(MANIFEST.read_text(encoding="utf-8")).safe_substitute(
        AWS_ACCOUNT_ID="123456789012", GCP_PROJECT="demo"
    )
    (cluster / "privacy-pipeline.yaml").write_text(manifest, encoding="utf-8")
    (root / "careless").mkdir()
    (root / "careless" / "careless.yaml").write_text(yaml.safe_dump(INSECURE_POD), encoding="utf-8")
    for dockerfile in DOCKERFILES:
        (root / dockerfile.parent.name).mkdir()
        shutil.copy(dockerfile, root / dockerfile.parent.name / "Dockerfile")
    return root


@pytest.fixture(scope="module")
def scan(scan_root: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every check result of one checkov run over scan_root (checkov's start-up is most of a scan's cost),
    by the folder of the file it is about, then by outcome (passed, failed, skipped)."""
    by_folder: dict[str, dict[str, list[dict[str, Any]]]] = {
        folder.name: {"passed": [], "failed": [], "skipped": []} for folder in scan_root.iterdir()
    }
    for report in checkov(scan_root, ("kubernetes", "dockerfile"), POD_SKIPS):
        for outcome, checks in report.get("results", {}).items():
            for check in checks:
                folder = check["file_path"].strip("/").split("/")[0]
                by_folder[folder][outcome.removesuffix("_checks")].append(check)
    return by_folder


def test_every_dag_renders_stage_pods_to_scan(scan_root) -> None:
    scanned = {path.stem.split(".")[0] for path in (scan_root / "cluster").glob("*.*.yaml")}
    assert {"privacy_intent_training", "daily_conversations"} <= scanned


def test_stage_pods_and_namespace_manifest_pass(scan_root, scan) -> None:
    cluster = scan["cluster"]

    assert failures(cluster) == []
    assert cluster["passed"]
    # Every file was read and checked, none skipped as unparsable.
    checked = {Path(check["file_path"]).name for outcome in cluster.values() for check in outcome}
    assert checked == {path.name for path in (scan_root / "cluster").glob("*.yaml")}


def test_xcom_sidecar_has_limits_from_the_production_connection(scan_root) -> None:
    train = scan_root / "cluster" / "privacy_intent_training.train.yaml"
    pod = yaml.safe_load(train.read_text(encoding="utf-8"))
    sidecar = next(c for c in pod["spec"]["containers"] if c["name"] != "base")
    assert {"cpu", "memory"} <= sidecar["resources"]["limits"].keys()


def test_an_insecure_pod_fails(scan) -> None:
    found = " ".join(failures(scan["careless"]))

    for check in ("CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_28"):
        assert check in found, f"checkov did not report {check}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_pass_with_inline_justified_skips(dockerfile: Path, scan) -> None:
    results = scan[dockerfile.parent.name]

    assert failures(results) == []
    assert results["passed"]
    assert results["skipped"], "the Dockerfiles' inline skips were not seen"
    for skipped in results["skipped"]:
        # checkov fills in this text for a skip comment without a reason.
        reason = skipped["check_result"].get("suppress_comment", "").strip()
        assert reason not in ("", "No comment provided"), f"{skipped['check_id']} has no reason"
