"""Pod failure reasons reach the log and the run; an OOMKilled retry asks for more memory."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from kubernetes.client import models as k8s

from privacy_pipeline_airflow import pod_failures
from privacy_pipeline_airflow.settings import PipelineSettings
from privacy_pipeline_airflow.stage_pod import StagePodOperator, stage_pod_kwargs


def _status(**state) -> k8s.V1Pod:
    return k8s.V1Pod(
        status=k8s.V1PodStatus(
            container_statuses=[
                k8s.V1ContainerStatus(
                    name="base",
                    image="i",
                    image_id="",
                    ready=False,
                    restart_count=0,
                    state=k8s.V1ContainerState(**state),
                )
            ]
        )
    )


@pytest.mark.parametrize(
    "pod,expected",
    [
        (_status(terminated=k8s.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled")), "OOMKilled"),
        (
            _status(terminated=k8s.V1ContainerStateTerminated(exit_code=2, reason="Error", message="validate: bad")),
            "Error",
        ),
        (
            _status(waiting=k8s.V1ContainerStateWaiting(reason="ImagePullBackOff", message="pull access denied")),
            "ImagePullBackOff",
        ),
        (
            k8s.V1Pod(status=k8s.V1PodStatus(reason="Evicted", message="The node was low on resource: memory.")),
            "Evicted",
        ),
        (
            k8s.V1Pod(status=k8s.V1PodStatus(reason="DeadlineExceeded", message="Pod was active too long")),
            "DeadlineExceeded",
        ),
    ],
    ids=["oom", "error", "image-pull", "evicted", "deadline"],
)
def test_failure_reason_reads_what_kubernetes_reports(pod, expected) -> None:
    reason, _ = pod_failures.failure_reason(pod)
    assert reason == expected


def test_a_completed_pod_has_no_failure_reason() -> None:
    pod = _status(terminated=k8s.V1ContainerStateTerminated(exit_code=0, reason="Completed"))
    assert pod_failures.failure_reason(pod) is None


def test_memory_grows_by_the_step_up_to_the_cap() -> None:
    assert pod_failures.memory_after_oom("2Gi", 1.5, "32Gi") == "3072Mi"
    assert pod_failures.memory_after_oom("30Gi", 1.5, "32Gi") == "32768Mi"


def _context(try_number: int) -> dict:
    return {"ti": SimpleNamespace(task_id="train", map_index=-1, try_number=try_number)}


def test_an_oomkilled_try_is_recorded_and_the_retry_asks_for_more_memory(tmp_path, monkeypatch) -> None:
    settings = PipelineSettings()
    monkeypatch.setattr("privacy_pipeline_airflow.stage_pod.get_settings", lambda: settings)
    run_uri = str(tmp_path / "runs" / "r1")
    first = StagePodOperator(task_id="train", arguments=["train", "--run", run_uri], **stage_pod_kwargs("train"))
    oom = type("PodFailed", (Exception,), {})("killed")
    oom.reason, oom.message = "OOMKilled", "used more than its limit"
    first._record_failure(_context(1), settings, oom)

    recorded = pod_failures.previous_failures(run_uri, "train", -1, settings.gcp_conn_id)
    assert [(f.try_number, f.reason, f.memory_limit) for f in recorded] == [(1, "OOMKilled", "8Gi")]

    retry = StagePodOperator(task_id="train", arguments=["train", "--run", run_uri], **stage_pod_kwargs("train"))
    retry._grow_memory_after_oom(_context(2), settings)
    assert retry.container_resources.limits["memory"] == "12288Mi"
    assert retry.container_resources.requests["memory"] == "12288Mi"


def test_a_retry_after_an_ordinary_error_keeps_its_memory(tmp_path, caplog) -> None:
    settings = PipelineSettings()
    run_uri = str(tmp_path / "runs" / "r2")
    operator = StagePodOperator(task_id="train", arguments=["train", "--run", run_uri], **stage_pod_kwargs("train"))
    with caplog.at_level(logging.ERROR):
        operator._record_failure(_context(1), settings, RuntimeError("Pod x returned a failure."))
    retry = StagePodOperator(task_id="train", arguments=["train", "--run", run_uri], **stage_pod_kwargs("train"))
    retry._grow_memory_after_oom(_context(2), settings)
    assert retry.container_resources.limits["memory"] == "8Gi"
    assert pod_failures.previous_failures(run_uri, "train", -1, settings.gcp_conn_id)[0].reason == "Error"
