"""The local pod runtime runs exactly the rendered pod: its command, args and env, nothing from the host."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from kubernetes.client import models as k8s

from embedded.stack import PIPELINE_CONFIG_MANIFEST
from privacy_pipeline_airflow.local_runtime import LocalCluster, PodFailed, run_pod
from privacy_pipeline_airflow.settings import PipelineSettings
from privacy_pipeline_airflow.stage_pod import stage_pod_kwargs

FAKE_STAGE_CLI = """\
#!/usr/bin/env python3
# Stands in for the stage CLI: records its argv and env as its XCom, or fails like a stage does.
import json, os, sys, time
if "fail" in sys.argv:
    print("error: validate: 3 rows in part-0001.csv have 583-dim embeddings (expected 584), first at row 7",
          file=sys.stderr)
    sys.exit(2)
if "hang" in sys.argv:
    time.sleep(60)
if "hog" in sys.argv:
    hoard = bytearray(400 * 2**20)  # touch 400 MiB, over a 256Mi limit
    for i in range(0, len(hoard), 4096):
        hoard[i] = 1
    time.sleep(60)
credentials = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
payload = {
    "argv": sys.argv[1:],
    "env": dict(os.environ),
    "credentials_file": open(credentials).read() if credentials else None,
}
with open(os.environ["XCOM_RETURN_PATH"], "w") as handle:
    json.dump(payload, handle)
print("fake: done")
"""


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "privacy-pipeline"
    cli.write_text(FAKE_STAGE_CLI, encoding="utf-8")
    cli.chmod(0o755)
    return bin_dir


def _pod(settings: PipelineSettings, args: list[str], deadline: int = 60, memory: str | None = None) -> k8s.V1Pod:
    """Build the pod the way the operator would, from the factory's own kwargs."""
    from privacy_pipeline_airflow.stage_pod import StagePodOperator

    kwargs = stage_pod_kwargs("validate", settings)
    kwargs["active_deadline_seconds"] = deadline
    if memory:
        kwargs["container_resources"].limits["memory"] = memory
    operator = StagePodOperator(task_id="validate", arguments=args, **kwargs)
    return operator.build_pod_request_obj(None, dry_run=True)


def _settings(fake_bin: Path, cluster_file: Path) -> PipelineSettings:
    return PipelineSettings(
        pod_runtime="local", local_bin_dir=str(fake_bin), local_cluster_file=str(cluster_file), image="img:1.2.3"
    )


def test_runs_the_pods_command_with_the_pods_env_only(fake_bin, cluster_file, monkeypatch) -> None:
    monkeypatch.setenv("HOST_ONLY_CANARY", "must-not-leak")
    settings = _settings(fake_bin, cluster_file)
    pod = _pod(settings, ["validate", "--run", "gs://b/runs/r1/"])

    xcom = run_pod(pod, runtime="local", settings=settings, log=logging.getLogger("test"))

    assert xcom["argv"] == ["validate", "--run", "gs://b/runs/r1/"]
    env = xcom["env"]
    assert "HOST_ONLY_CANARY" not in env
    assert env["GOOGLE_CLOUD_PROJECT"] == "demo-project"  # envFrom the ConfigMap
    assert env["PIPELINE_IMAGE_TAG"] == "1.2.3"
    assert env["POD_NAME"] == pod.metadata.name  # fieldRef
    # resourceFieldRef: validate's 2-CPU limit sizes the thread pools, capped at this machine's CPUs.
    assert pod.spec.containers[0].resources.limits["cpu"] == "2"
    assert env["OMP_NUM_THREADS"] == str(min(2, os.cpu_count() or 1))
    assert env["HF_HUB_OFFLINE"] == "1"  # the image's own ENV
    # The Secret is mounted as a file and the env var points at the local copy, never at its value.
    assert xcom["credentials_file"] == '{"type": "service_account"}'
    assert "service_account" not in env["GOOGLE_APPLICATION_CREDENTIALS"]


def test_a_failing_stage_reports_its_one_line_reason(fake_bin, cluster_file) -> None:
    settings = _settings(fake_bin, cluster_file)
    pod = _pod(settings, ["validate", "--run", "gs://b/runs/r1/", "fail"])

    with pytest.raises(PodFailed, match=r"exit code 2, Error\): validate: 3 rows in part-0001.csv have 583-dim"):
        run_pod(pod, runtime="local", settings=settings, log=logging.getLogger("test"))


def test_the_active_deadline_kills_the_stage(fake_bin, cluster_file) -> None:
    settings = _settings(fake_bin, cluster_file)
    pod = _pod(settings, ["validate", "hang"], deadline=1)

    with pytest.raises(PodFailed, match="DeadlineExceeded"):
        run_pod(pod, runtime="local", settings=settings, log=logging.getLogger("test"))


def test_memory_over_the_limit_is_oomkilled(fake_bin, cluster_file) -> None:
    settings = _settings(fake_bin, cluster_file)
    pod = _pod(settings, ["validate", "hog"], memory="256Mi")

    with pytest.raises(PodFailed, match=r"exit code 137, OOMKilled") as failure:
        run_pod(pod, runtime="local", settings=settings, log=logging.getLogger("test"))
    assert failure.value.reason == "OOMKilled"


def test_a_missing_configmap_is_a_clear_error(fake_bin, tmp_path) -> None:
    only_secret = tmp_path / "only-secret.yaml"
    only_secret.write_text(
        "kind: Secret\nmetadata: {name: privacy-pipeline-gcp}\nstringData: {a: b}\n---\n"
        + PIPELINE_CONFIG_MANIFEST.read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    settings = _settings(fake_bin, only_secret)
    pod = _pod(settings, ["validate"])

    with pytest.raises(Exception, match="ConfigMap 'privacy-pipeline-env' is not defined"):
        run_pod(pod, runtime="local", settings=settings, log=logging.getLogger("test"))


def test_a_missing_cli_names_the_setting(cluster_file, tmp_path) -> None:
    settings = PipelineSettings(local_bin_dir=str(tmp_path / "nowhere"), local_cluster_file=str(cluster_file))
    pod = _pod(settings, ["validate"])

    with pytest.raises(Exception, match="PIPELINE_LOCAL_BIN_DIR"):
        run_pod(pod, runtime="local", settings=settings, log=logging.getLogger("test"))


def test_secrets_in_the_cluster_file_decode_base64(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kind: Secret\nmetadata: {name: s}\ndata: {token: c2VjcmV0}\n", encoding="utf-8")
    assert LocalCluster.from_file(str(path)).secrets == {"s": {"token": "secret"}}


def test_rendered_pod_yaml_is_logged_at_debug(fake_bin, cluster_file, caplog) -> None:
    settings = _settings(fake_bin, cluster_file)
    pod = _pod(settings, ["validate", "--run", "gs://b/runs/r1/"])
    with caplog.at_level(logging.DEBUG, logger="test"):
        run_pod(pod, runtime="local", settings=settings, log=logging.getLogger("test"))
    rendered = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("readOnlyRootFilesystem: true" in message for message in rendered)
