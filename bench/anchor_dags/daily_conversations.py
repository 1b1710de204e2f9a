"""
### daily_conversations, written with plain operators (the parse-time anchor of `make bench`)

The same graph, schedule and pods as `dags/daily_conversations.py`, spelled out the way the
provider's `example_kubernetes.py` does it: `KubernetesPodOperator` tasks and `k8s.V1…` module constants,
no plugin, no settings object. `bench/dag_parse.py` times both files the way the dag-processor parses them;
the difference is what our factory and settings cost per parse.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.google.cloud.sensors.gcs import GCSObjectsWithPrefixExistenceSensor
from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Asset
from kubernetes.client import models as k8s

BUCKET = "privacy-intent-data"
RUN = "gs://privacy-intent-data/runs/conversations/{{ run_id }}/"
STORE = "gs://privacy-intent-data/vector_store/conversations/"

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
STANDARD = k8s.V1ResourceRequirements(
    requests={"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "2Gi"},
    limits={"cpu": "2", "memory": "2Gi", "ephemeral-storage": "2Gi"},
)
HEAVY = k8s.V1ResourceRequirements(
    requests={"cpu": "2", "memory": "4Gi", "ephemeral-storage": "2Gi"},
    limits={"cpu": "4", "memory": "8Gi", "ephemeral-storage": "2Gi"},
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
    "retry_delay": timedelta(seconds=60),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(seconds=900),
}


def labels(stage: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "privacy-intent-pipeline", "app.kubernetes.io/component": stage}


with DAG(
    dag_id="daily_conversations",
    description="Embed, tag and publish each day's conversations into the FAISS vector store, one pod per stage",
    schedule="30 3 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={"owner": "ml-platform", "retries": 2},
    tags=["privacy-intent", "conversations", "vector-store", "kubernetes"],
    doc_md=__doc__,
) as dag:
    wait_for_conversations = GCSObjectsWithPrefixExistenceSensor(
        task_id="wait_for_conversations",
        bucket=BUCKET,
        prefix="raw/conversations/ds={{ ds }}/",
        deferrable=True,
        poke_interval=300,
        timeout=int(timedelta(hours=6).total_seconds()),
    )
    validate = KubernetesPodOperator(
        task_id="validate",
        name="privacy-conversations-validate",
        arguments=[
            "conversations-validate",
            "--source",
            "gs://privacy-intent-data/raw/conversations/ds={{ ds }}/",
            "--run",
            RUN,
            "--day",
            "{{ ds }}",
        ],  # fmt: skip
        labels=labels("conversations-validate"),
        container_resources=STANDARD,
        **POD,
    )
    redact = KubernetesPodOperator(
        task_id="redact",
        name="privacy-conversations-redact",
        arguments=["conversations-redact", "--run", RUN],
        labels=labels("conversations-redact"),
        container_resources=STANDARD,
        **POD,
    )
    embed = KubernetesPodOperator(
        task_id="embed",
        name="privacy-conversations-embed",
        arguments=["conversations-embed", "--run", RUN],
        labels=labels("conversations-embed"),
        container_resources=HEAVY,
        **POD,
    )
    tag = KubernetesPodOperator(
        task_id="tag",
        name="privacy-conversations-tag",
        arguments=["conversations-tag", "--run", RUN, "--registry", "gs://privacy-intent-data/registry/"],
        labels=labels("conversations-tag"),
        container_resources=HEAVY,
        **POD,
    )
    upsert = KubernetesPodOperator(
        task_id="upsert",
        name="privacy-conversations-upsert",
        arguments=["conversations-upsert", "--run", RUN, "--store", STORE],
        labels=labels("conversations-upsert"),
        container_resources=HEAVY,
        **POD,
    )
    publish = KubernetesPodOperator(
        task_id="publish",
        name="privacy-conversations-publish",
        arguments=["conversations-publish", "--run", RUN, "--store", STORE],
        outlets=[Asset(uri=STORE + "latest.json", name="conversation_index")],
        labels=labels("conversations-publish"),
        container_resources=HEAVY,
        **POD,
    )
    drift = KubernetesPodOperator(
        task_id="drift",
        name="privacy-conversations-drift",
        arguments=[
            "conversations-drift",
            "--run",
            RUN,
            "--registry",
            "gs://privacy-intent-data/registry/",
            "--store",
            STORE,
            "--training-data",
            "gs://privacy-intent-data/raw/privacy_intent/",
        ],
        labels=labels("conversations-drift"),
        container_resources=HEAVY,
        **POD,
    )
    drifted = ShortCircuitOperator(
        task_id="drifted",
        python_callable=lambda drift_result: bool(drift_result.get("retrain")),
        op_args=[drift.output],
    )
    retrain_on_drift = TriggerDagRunOperator(
        task_id="retrain_on_drift",
        trigger_dag_id="privacy_intent_training",
        trigger_run_id="{{ ti.xcom_pull(task_ids='drift')['trigger_run_id'] }}",
        conf={"data_prefix": "{{ ti.xcom_pull(task_ids='drift')['retrain_data_prefix'] }}"},
        skip_when_already_exists=True,
        wait_for_completion=False,
    )

    wait_for_conversations >> validate >> redact >> embed >> tag >> upsert >> publish
    tag >> drift >> drifted >> retrain_on_drift
