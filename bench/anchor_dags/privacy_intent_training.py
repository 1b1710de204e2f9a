"""
### privacy_intent_training, written with plain operators (the parse-time anchor of `make bench`)

The same graph, schedule, Params and pods as `dags/privacy_intent_training.py`, spelled out the way the
provider's `example_kubernetes.py` does it: `KubernetesPodOperator` tasks and `k8s.V1…` module constants,
no plugin, no settings object. `bench/dag_parse.py` times both files the way the dag-processor parses them;
the difference is what our factory and settings cost per parse.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.google.cloud.sensors.gcs import GCSObjectsWithPrefixExistenceSensor
from airflow.sdk import DAG, Asset, Param, task
from kubernetes.client import models as k8s

BUCKET = "privacy-intent-data"
RUN = "gs://privacy-intent-data/runs/{{ run_id }}/"
RUN_CONFIG = [
    "--config", "/etc/privacy-pipeline/pipeline.yaml",
    "--set", "tune.search={{ params.search }}",
    "--set", "tune.n_trials={{ params.n_trials }}",
    "--set", "register.promote={{ params.promote | lower }}",
]  # fmt: skip

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
SMALL = k8s.V1ResourceRequirements(
    requests={"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "2Gi"},
    limits={"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "2Gi"},
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
    dag_id="privacy_intent_training",
    description="Train, evaluate and register the privacy-intent classifier, one pod per stage",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    dagrun_timeout=timedelta(hours=6),
    default_args={"owner": "ml-platform", "retries": 2},
    tags=["privacy-intent", "training", "kubernetes"],
    doc_md=__doc__,
    params={
        "data_prefix": Param(None, type=["null", "string"], pattern=r"^(?!.*\.\.)(?!/)[A-Za-z0-9_=.,/-]+$"),
        "search": Param("grid", enum=["grid", "random"]),
        "n_trials": Param(12, type="integer", minimum=1, maximum=200),
        "num_shards": Param(2, type="integer", minimum=1, maximum=16),
        "promote": Param(True, type="boolean"),
    },
) as dag:
    wait_for_data = GCSObjectsWithPrefixExistenceSensor(
        task_id="wait_for_data",
        bucket=BUCKET,
        prefix="{{ params.data_prefix or 'raw/privacy_intent/ds=' ~ ds ~ '/' }}",
        deferrable=True,
        poke_interval=300,
        timeout=int(timedelta(hours=6).total_seconds()),
    )
    source = "gs://privacy-intent-data/{{ params.data_prefix or 'raw/privacy_intent/ds=' ~ ds ~ '/' }}"
    ingest = KubernetesPodOperator(
        task_id="ingest",
        name="privacy-ingest",
        arguments=[*RUN_CONFIG, "ingest", "--source", source, "--run", RUN],
        labels=labels("ingest"),
        container_resources=STANDARD,
        **POD,
    )
    validate = KubernetesPodOperator(
        task_id="validate",
        name="privacy-validate",
        arguments=[*RUN_CONFIG, "validate", "--run", RUN],
        labels=labels("validate"),
        container_resources=STANDARD,
        **POD,
    )
    featurize = KubernetesPodOperator(
        task_id="featurize",
        name="privacy-featurize",
        arguments=[*RUN_CONFIG, "featurize", "--run", RUN],
        labels=labels("featurize"),
        container_resources=HEAVY,
        **POD,
    )
    split = KubernetesPodOperator(
        task_id="split",
        name="privacy-split",
        arguments=[*RUN_CONFIG, "split", "--run", RUN],
        labels=labels("split"),
        container_resources=STANDARD,
        **POD,
    )

    @task
    def plan_tune_shards(run_uri: str, num_shards: str) -> list[list[str]]:
        shards = int(num_shards)
        return [
            [*RUN_CONFIG, "tune", "--run", run_uri, "--shard", str(i), "--num-shards", str(shards)]
            for i in range(shards)
        ]

    tune_shards = plan_tune_shards(RUN, "{{ params.num_shards }}")
    tune = KubernetesPodOperator.partial(
        task_id="tune", name="privacy-tune", labels=labels("tune"), container_resources=HEAVY, **POD
    ).expand(arguments=tune_shards)
    select_best = KubernetesPodOperator(
        task_id="select_best",
        name="privacy-select",
        arguments=[*RUN_CONFIG, "select", "--run", RUN],
        labels=labels("select"),
        container_resources=SMALL,
        **POD,
    )
    train = KubernetesPodOperator(
        task_id="train",
        name="privacy-train",
        arguments=[*RUN_CONFIG, "train", "--run", RUN],
        labels=labels("train"),
        container_resources=HEAVY,
        **POD,
    )
    evaluate = KubernetesPodOperator(
        task_id="evaluate",
        name="privacy-evaluate",
        arguments=[*RUN_CONFIG, "evaluate", "--run", RUN],
        labels=labels("evaluate"),
        container_resources=STANDARD,
        **POD,
    )
    register = KubernetesPodOperator(
        task_id="register",
        name="privacy-register",
        arguments=[*RUN_CONFIG, "register", "--run", RUN, "--registry", "gs://privacy-intent-data/registry/"],
        labels=labels("register"),
        container_resources=STANDARD,
        outlets=[Asset(uri="gs://privacy-intent-data/registry", name="privacy_intent_registry")],
        max_active_tis_per_dag=1,
        **POD,
    )

    @task(outlets=[Asset(uri="gs://privacy-intent-data/registry/champion.json", name="privacy_intent_champion")])
    def announce_champion(registered: dict) -> str:
        """The champion asset's event, when this run's model became the champion; skipped otherwise."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not registered.get("promoted"):
            raise AirflowSkipException(f"{registered.get('model_version')} was not promoted")
        return str(registered["model_version"])

    announce_champion(register.output)
    deploy = KubernetesPodOperator(
        task_id="deploy",
        name="privacy-deploy",
        arguments=[*RUN_CONFIG, "deploy", "--run", RUN, "--registry", "gs://privacy-intent-data/registry/"],
        labels=labels("deploy"),
        container_resources=SMALL,
        **POD,
    )
    canary_check = KubernetesPodOperator(
        task_id="canary_check",
        name="privacy-canary-check",
        arguments=[*RUN_CONFIG, "canary-check", "--run", RUN, "--registry", "gs://privacy-intent-data/registry/"],
        labels=labels("canary-check"),
        container_resources=STANDARD,
        **POD,
    )

    wait_for_data >> ingest >> validate >> featurize >> split >> tune_shards
    tune_shards >> tune >> select_best >> train >> evaluate >> register >> deploy >> canary_check
