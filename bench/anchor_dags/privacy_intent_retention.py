"""
### privacy_intent_retention, written with plain operators (the parse-time anchor of `make bench`)

The same task, Params and pod as `dags/privacy_intent_retention.py`, spelled out the way the
provider's `example_kubernetes.py` does it: `KubernetesPodOperator` tasks and `k8s.V1…` module constants,
no plugin, no settings object. `bench/dag_parse.py` times both files the way the dag-processor parses them;
the difference is what our factory and settings cost per parse.
"""

from __future__ import annotations

import pendulum
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG, Param
from kubernetes.client import models as k8s

REGISTRY = "gs://privacy-intent-data/registry/"

CONTAINER_SECURITY = k8s.V1SecurityContext(
    allow_privilege_escalation=False,
    capabilities=k8s.V1Capabilities(drop=["ALL"]),
    read_only_root_filesystem=True,
    run_as_non_root=True,
    run_as_user=10001,
    run_as_group=10001,
    seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
)
POD_SECURITY = k8s.V1PodSecurityContext(
    run_as_non_root=True,
    run_as_user=10001,
    run_as_group=10001,
    fs_group=10001,
    seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
)
VOLUMES = [
    k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="2Gi")),
    k8s.V1Volume(
        name="pipeline-config",
        config_map=k8s.V1ConfigMapVolumeSource(name="privacy-pipeline-config", default_mode=0o444),
    ),
    k8s.V1Volume(
        name="gcp-credentials",
        secret=k8s.V1SecretVolumeSource(secret_name="privacy-pipeline-gcp", default_mode=0o440),
    ),
]
VOLUME_MOUNTS = [
    k8s.V1VolumeMount(name="scratch", mount_path="/tmp"),
    k8s.V1VolumeMount(name="pipeline-config", mount_path="/etc/privacy-pipeline", read_only=True),
    k8s.V1VolumeMount(name="gcp-credentials", mount_path="/var/run/secrets/gcp", read_only=True),
]
ENV = [
    k8s.V1EnvVar(name="PIPELINE_IMAGE_TAG", value="0.1.0"),
    k8s.V1EnvVar(
        name="POD_NAME", value_from=k8s.V1EnvVarSource(field_ref=k8s.V1ObjectFieldSelector(field_path="metadata.name"))
    ),
    k8s.V1EnvVar(name="GOOGLE_APPLICATION_CREDENTIALS", value="/var/run/secrets/gcp/credentials.json"),
]
ENV_FROM = [k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="privacy-pipeline-env"))]
SMALL = k8s.V1ResourceRequirements(
    requests={"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "2Gi"},
    limits={"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "2Gi"},
)
POD = {
    "namespace": "privacy-pipeline",
    "service_account_name": "privacy-pipeline-runner",
    "automount_service_account_token": False,
    "image": "privacy-intent-pipeline:0.1.0",
    "image_pull_policy": "IfNotPresent",
    "cmds": ["privacy-pipeline"],
    "volumes": VOLUMES,
    "volume_mounts": VOLUME_MOUNTS,
    "env_vars": ENV,
    "env_from": ENV_FROM,
    "security_context": POD_SECURITY,
    "container_security_context": CONTAINER_SECURITY,
    "xcom_sidecar_container_security_context": CONTAINER_SECURITY,
    "do_xcom_push": True,
    "get_logs": True,
    "log_events_on_failure": True,
    "on_finish_action": "delete_pod",
    "termination_message_policy": "FallbackToLogsOnError",
    "startup_timeout_seconds": 600,
    "active_deadline_seconds": 3600,
    "retries": 2,
    "retry_delay": pendulum.duration(seconds=60),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": pendulum.duration(seconds=900),
}


def labels(stage: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "privacy-intent-pipeline", "app.kubernetes.io/component": stage}


with DAG(
    dag_id="privacy_intent_retention",
    description="Delete old run prefixes, model versions and vector-store versions nothing kept refers to",
    schedule="0 4 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "ml-platform", "retries": 2},
    tags=["privacy-intent", "retention", "kubernetes"],
    doc_md=__doc__,
    params={"dry_run": Param(False, type="boolean")},
) as dag:
    apply_retention = KubernetesPodOperator(
        task_id="apply_retention",
        name="privacy-retention",
        arguments=[
            "retention",
            "--runs",
            "gs://privacy-intent-data/runs/",
            "--registry",
            REGISTRY,
            "--store",
            "gs://privacy-intent-data/vector_store/conversations/",
            "--report",
            "gs://privacy-intent-data/retention/{{ run_id }}.json",
            "--dry-run={{ params.dry_run | lower }}",
        ],
        labels=labels("retention"),
        container_resources=SMALL,
        **POD,
    )
