"""The one place a pipeline stage becomes a Kubernetes pod.

Every stage task is ``stage_pod("<stage>", *args)``: the image's
``privacy-pipeline <stage>`` CLI in a pod that meets the Pod Security Standard
"restricted" profile on every container (the XCom sidecar included), with a
writable emptyDir for scratch under a read-only root filesystem, env from a
ConfigMap, the pipeline config from another ConfigMap mounted read-only and
passed as ``--config``, GCP credentials mounted from a Secret (never copied into values),
per-stage requests and limits, retries with exponential backoff, startup and
active deadlines, logs streamed to the task log and the XCom JSON pushed.

``PIPELINE_POD_RUNTIME`` picks who runs the rendered pod: the cluster
(``kubernetes``) or this machine (``local``, ``image``; see local_runtime.py).

A DAG file's task holds only the stage's name and plain values; its
``k8s.V1…`` objects (volumes, env, resources, security contexts) are built
from the settings when the pod is, at rendering, a dry run or execute. Each
model object costs about a millisecond to construct (the Kubernetes client copies its
default configuration into every one), some twenty per task, and the
dag-processor parses every DAG file again and again; KubernetesPodOperator
only reads them when it builds the pod.
"""

from __future__ import annotations

import copy
import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import BaseOperatorLink
from kubernetes.client import models as k8s

from privacy_pipeline_airflow.pod_contract import (
    GCP_CREDENTIALS_MOUNT,
    IMAGE_UID,
    PIPELINE_CONFIG_FILE,
    PIPELINE_CONFIG_MOUNT,
    SCRATCH_MOUNT,
    STAGE_CLI,
)
from privacy_pipeline_airflow.settings import PipelineSettings, get_settings

# Only the stage that turns user ids into pseudonyms mounts the key they are made with.
PSEUDONYMISING_STAGES = frozenset({"conversations-validate"})
# The stages that mirror registry moves to MLflow (register; rollback and canary-check move the champion alias).
TRACKING_STAGES = frozenset({"register", "rollback", "canary-check"})
PSEUDONYM_KEY_MOUNT = "/var/run/secrets/pseudonym"


class RunReportLink(BaseOperatorLink):
    """The register task's "Run report" button: the page its XCom's ``report_uri`` names, as a browser URL.

    Airflow 3 calls this in the worker when the task ends and keeps the URL in
    XCom, where the UI reads it; no plugin registration is needed (a link
    registered by a plugin would run here in the api-server instead, which has
    no task SDK to read XCom with). Other stages have no report: their button stays empty.
    """

    name = "Run report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        result = XCom.get_value(ti_key=ti_key, key="return_value")
        uri = result.get("report_uri") if isinstance(result, dict) else None
        return browser_url(uri) if isinstance(uri, str) and uri else ""


def browser_url(uri: str) -> str:
    """Where a browser opens an object: GCS's authenticated URL, the emulator's media URL, or a file:// URL."""
    if not uri.startswith("gs://"):
        return Path(uri.removeprefix("file://")).resolve().as_uri()
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        return f"{emulator.rstrip('/')}/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media"
    return f"https://storage.cloud.google.com/{bucket}/{quote(name)}"


class StagePodOperator(KubernetesPodOperator):
    """KubernetesPodOperator whose rendered pod can also run on this machine.

    The rendered pod spec is the contract: the local runtimes run exactly its
    main container's command, args and env, and return what the XCom sidecar
    would have.
    """

    operator_extra_links = (RunReportLink(),)

    def __init__(self, *, stage: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Given (by stage_pod and deferred_stage_pod_kwargs): the stage's pod objects are still to be built.
        self.stage = stage

    def _build_pod_objects(self) -> None:
        """Give the task its stage's ``k8s.V1…`` objects from the settings, once, before anything reads them."""
        if self.stage is None:
            return
        objects = pod_objects(self.stage, get_settings())
        self.stage = None
        for name, value in objects.items():
            setattr(self, name, value)

    def _do_render_template_fields(
        self, parent: Any, template_fields: Any, context: Any, jinja_env: Any, seen_oids: set[int]
    ) -> None:
        # The hook every rendering passes through, a mapped task's shards included (they skip render_template_fields).
        if parent is self:
            self._build_pod_objects()
        super()._do_render_template_fields(parent, template_fields, context, jinja_env, seen_oids)

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> k8s.V1Pod:
        self._build_pod_objects()
        return super().build_pod_request_obj(context, dry_run=dry_run)

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        # Rendering edits each V1EnvVar in place, and a mapped task's shards share their partial kwargs' objects:
        # where shards render in one process (`airflow dags test`) the first would fix every shard's map index.
        self.env_vars = copy.deepcopy(self.env_vars)
        super().render_template_fields(context, jinja_env)

    def execute(self, context: Any) -> Any:
        settings = get_settings()
        self._build_pod_objects()
        self._grow_memory_after_oom(context, settings)
        try:
            if settings.pod_runtime == "kubernetes":
                return super().execute(context)
            from privacy_pipeline_airflow.local_runtime import run_pod

            pod = self.build_pod_request_obj(context, dry_run=True)
            return run_pod(pod, runtime=settings.pod_runtime, settings=settings, log=self.log)
        except Exception as exc:
            self._record_failure(context, settings, exc)
            raise

    def _task_key(self, context: Any) -> tuple[str | None, str, int]:
        from privacy_pipeline_airflow import pod_failures

        ti = context["ti"]
        map_index = ti.map_index if ti.map_index is not None else -1
        return pod_failures.run_uri_of(self.arguments), ti.task_id, map_index

    def _grow_memory_after_oom(self, context: Any, settings: PipelineSettings) -> None:
        from privacy_pipeline_airflow import pod_failures

        run_uri, task_id, map_index = self._task_key(context)
        if run_uri is None or context["ti"].try_number <= 1:
            return
        failures = pod_failures.previous_failures(run_uri, task_id, map_index, settings.gcp_conn_id)
        if not failures or failures[-1].reason != pod_failures.OOM_KILLED:
            return
        grown = pod_failures.memory_after_oom(
            failures[-1].memory_limit, settings.oom_memory_step, settings.oom_max_memory
        )
        self.log.warning(
            "Try %d of %s was OOMKilled at memory limit %s: asking for %s this time",
            failures[-1].try_number,
            task_id,
            failures[-1].memory_limit,
            grown,
        )
        self.container_resources.requests["memory"] = grown
        self.container_resources.limits["memory"] = grown

    def _record_failure(self, context: Any, settings: PipelineSettings, exc: Exception) -> None:
        # pod_failures (the Kubernetes client's quantity parser, GCS) matters once a pod has run, not at parse time.
        from privacy_pipeline_airflow import pod_failures

        run_uri, task_id, map_index = self._task_key(context)
        reason, message = getattr(exc, "reason", None), getattr(exc, "message", str(exc))
        if reason is None:
            found = pod_failures.failure_reason(getattr(self, "remote_pod", None) or getattr(self, "pod", None))
            reason, message = found if found else ("Error", str(exc).splitlines()[0] if str(exc) else "")
        self.log.error("Stage pod for %s failed: %s%s", task_id, reason, f" ({message})" if message else "")
        if run_uri is None:
            return
        failure = pod_failures.PodFailure(
            try_number=context["ti"].try_number,
            reason=reason,
            message=message[:500],
            memory_limit=self.container_resources.limits["memory"],
            at=pod_failures.now(),
        )
        try:
            pod_failures.record_failure(run_uri, task_id, map_index, failure, settings.gcp_conn_id)
        except Exception:  # the original failure matters more than its bookkeeping
            self.log.exception("Could not record the pod failure under %s", run_uri)


def _volumes(settings: PipelineSettings, stage: str) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    volumes = [
        k8s.V1Volume(
            name="scratch",
            empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=settings.resources_for(stage).ephemeral_storage),
        )
    ]
    mounts = [k8s.V1VolumeMount(name="scratch", mount_path=SCRATCH_MOUNT)]
    if settings.pipeline_configmap:
        # Not optional: a pod without the cluster's config would silently run on the defaults in code.
        volumes.append(
            k8s.V1Volume(
                name="pipeline-config",
                config_map=k8s.V1ConfigMapVolumeSource(name=settings.pipeline_configmap, default_mode=0o444),
            )
        )
        mounts.append(k8s.V1VolumeMount(name="pipeline-config", mount_path=PIPELINE_CONFIG_MOUNT, read_only=True))
    if settings.gcp_credentials_secret:
        volumes.append(
            k8s.V1Volume(
                name="gcp-credentials",
                secret=k8s.V1SecretVolumeSource(secret_name=settings.gcp_credentials_secret, default_mode=0o440),
            )
        )
        mounts.append(k8s.V1VolumeMount(name="gcp-credentials", mount_path=GCP_CREDENTIALS_MOUNT, read_only=True))
    if stage in PSEUDONYMISING_STAGES and settings.pseudonym_key_secret:
        volumes.append(
            k8s.V1Volume(
                name="pseudonym-key",
                secret=k8s.V1SecretVolumeSource(secret_name=settings.pseudonym_key_secret, default_mode=0o440),
            )
        )
        mounts.append(k8s.V1VolumeMount(name="pseudonym-key", mount_path=PSEUDONYM_KEY_MOUNT, read_only=True))
    return volumes, mounts


def _env(settings: PipelineSettings, stage: str) -> tuple[list[k8s.V1EnvVar], list[k8s.V1EnvFromSource]]:
    env = [
        k8s.V1EnvVar(name="PIPELINE_IMAGE_TAG", value=settings.image.rpartition(":")[2] or "latest"),
        k8s.V1EnvVar(
            name="POD_NAME",
            value_from=k8s.V1EnvVarSource(field_ref=k8s.V1ObjectFieldSelector(field_path="metadata.name")),
        ),
        # Who the stage's metrics are pushed as (telemetry.py); env_vars is a templated field.
        k8s.V1EnvVar(name="PIPELINE_DAG_ID", value="{{ dag.dag_id }}"),
        k8s.V1EnvVar(name="PIPELINE_RUN_ID", value="{{ run_id }}"),
        k8s.V1EnvVar(name="PIPELINE_TASK_ID", value="{{ ti.task_id }}"),
        k8s.V1EnvVar(name="PIPELINE_MAP_INDEX", value="{{ ti.map_index }}"),
        # torch, OpenMP and BLAS size their thread pools by the node's cores, not by the pod's CPU limit: a
        # 4-CPU featurize pod on a 64-core node would start 64 threads and spend its quota throttled. The
        # Downward API hands the container its own limit, rounded up to whole CPUs.
        k8s.V1EnvVar(
            name="OMP_NUM_THREADS",
            value_from=k8s.V1EnvVarSource(
                resource_field_ref=k8s.V1ResourceFieldSelector(resource="limits.cpu", divisor="1")
            ),
        ),
    ]
    if settings.pushgateway_url:
        env.append(k8s.V1EnvVar(name="PIPELINE_PUSHGATEWAY_URL", value=settings.pushgateway_url))
    if settings.gcp_credentials_secret:
        env.append(
            k8s.V1EnvVar(name="GOOGLE_APPLICATION_CREDENTIALS", value=f"{GCP_CREDENTIALS_MOUNT}/credentials.json")
        )
    if stage in PSEUDONYMISING_STAGES and settings.pseudonym_key_secret:
        # The path, never the key: the stage reads the mounted file.
        env.append(k8s.V1EnvVar(name="PIPELINE_PSEUDONYM_SECRET_PATH", value=f"{PSEUDONYM_KEY_MOUNT}/key"))
    if stage in TRACKING_STAGES and settings.mlflow_tracking_uri:
        env.append(k8s.V1EnvVar(name="MLFLOW_TRACKING_URI", value=settings.mlflow_tracking_uri))
    env_from = [k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=settings.env_configmap))]
    return env, env_from


def _resources(settings: PipelineSettings, stage: str) -> k8s.V1ResourceRequirements:
    spec = settings.resources_for(stage)
    requests = {"cpu": spec.cpu_request, "memory": spec.memory_request, "ephemeral-storage": spec.ephemeral_storage}
    limits = {"cpu": spec.cpu_limit, "memory": spec.memory_limit, "ephemeral-storage": spec.ephemeral_storage}
    if stage == "featurize" and settings.featurize_gpu.enabled:
        limits["nvidia.com/gpu"] = str(settings.featurize_gpu.count)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def _placement(settings: PipelineSettings, stage: str) -> dict[str, Any]:
    if stage != "featurize" or not settings.featurize_gpu.enabled:
        return {}
    gpu = settings.featurize_gpu
    return {
        "node_selector": dict(gpu.node_selector),
        "tolerations": [k8s.V1Toleration(key=gpu.toleration_key, operator="Exists", effect="NoSchedule")],
    }


def _restricted_container_security() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        read_only_root_filesystem=True,
        run_as_non_root=True,
        run_as_user=IMAGE_UID,
        run_as_group=IMAGE_UID,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def pod_objects(stage: str, settings: PipelineSettings) -> dict[str, Any]:
    """The stage pod's ``k8s.V1…`` objects, as StagePodOperator attributes: built when the pod is, never at parse."""
    volumes, mounts = _volumes(settings, stage)
    env, env_from = _env(settings, stage)
    return {
        "container_resources": _resources(settings, stage),
        "volumes": volumes,
        "volume_mounts": mounts,
        "env_vars": env,
        "env_from": env_from,
        "security_context": k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=IMAGE_UID,
            run_as_group=IMAGE_UID,
            fs_group=IMAGE_UID,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        "container_security_context": _restricted_container_security(),
        "xcom_sidecar_container_security_context": _restricted_container_security(),
        **_placement(settings, stage),
    }


def stage_pod_kwargs(stage: str, settings: PipelineSettings | None = None) -> dict[str, Any]:
    """Everything about a stage's pod except its arguments, pod objects built now (for a pod built outside a DAG)."""
    settings = settings or get_settings()
    return {**_plain_pod_kwargs(stage, settings), **pod_objects(stage, settings)}


def deferred_stage_pod_kwargs(stage: str) -> dict[str, Any]:
    """What a DAG file's stage task gets (single or mapped): plain values; the operator builds the pod objects."""
    return {**_plain_pod_kwargs(stage, get_settings()), "stage": stage}


def _plain_pod_kwargs(stage: str, settings: PipelineSettings) -> dict[str, Any]:
    return {
        "name": f"privacy-{stage}",
        "namespace": settings.namespace,
        "kubernetes_conn_id": settings.kubernetes_conn_id,
        "service_account_name": settings.service_account,
        # The stage reads the bucket, never the Kubernetes API.
        "automount_service_account_token": False,
        "image": settings.image,
        "image_pull_policy": settings.image_pull_policy,
        "cmds": [STAGE_CLI],
        "labels": {
            "app.kubernetes.io/name": "privacy-intent-pipeline",
            "app.kubernetes.io/component": stage,
            "app.kubernetes.io/part-of": "privacy-intent",
        },
        "do_xcom_push": True,
        "get_logs": True,
        "log_events_on_failure": True,
        "on_finish_action": "delete_pod",
        # The CLI writes its one-line failure reason here; Kubernetes shows it in the pod status.
        "termination_message_policy": "FallbackToLogsOnError",
        "startup_timeout_seconds": settings.startup_timeout_seconds,
        "active_deadline_seconds": settings.resources_for(stage).deadline_seconds,
        "retries": settings.retries,
        "retry_delay": timedelta(seconds=settings.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(seconds=settings.max_retry_delay_seconds),
    }


def stage_arguments(stage: str, *stage_args: str, config_overrides: dict[str, str] | None = None) -> list[str]:
    """``privacy-pipeline [--config FILE] [--set k=v ...] <stage> <args>``: global flags go before the subcommand.

    ``--config`` is the mounted ConfigMap; each ``--set`` (from Params) overrides one key of it for this run.
    """
    config = ["--config", PIPELINE_CONFIG_FILE] if get_settings().pipeline_configmap else []
    overrides = [part for key, value in (config_overrides or {}).items() for part in ("--set", f"{key}={value}")]
    if stage == "featurize" and get_settings().featurize_gpu.enabled:
        overrides += ["--set", "featurize.device=cuda"]
    return [*config, *overrides, stage, *stage_args]


def stage_pod(
    stage: str,
    *stage_args: str,
    task_id: str | None = None,
    config_overrides: dict[str, str] | None = None,
    **task_kwargs: Any,
) -> StagePodOperator:
    """One pipeline stage as one pod; ``stage_args`` may be Jinja templates.

    ``task_kwargs`` are the task's own operator arguments beyond its pod (``outlets``, ``max_active_tis_per_dag``).
    """
    return StagePodOperator(
        task_id=task_id or stage,
        arguments=stage_arguments(stage, *stage_args, config_overrides=config_overrides),
        **deferred_stage_pod_kwargs(stage),
        **task_kwargs,
    )
