"""Typed settings of the Airflow side: image, namespace, bucket, pod runtime, resources per stage.

Read once per process from ``PIPELINE_*`` environment variables (set by the Helm
values in production and by ``make demo`` locally), so DAG parsing never touches
the metadata database. Nested values use ``__``:
``PIPELINE_RESOURCES__FEATURIZE__MEMORY_LIMIT=8Gi``; a JSON object sets a whole
mapping (``PIPELINE_FEATURIZE_GPU='{"enabled": true}'``). A malformed value, or an
unknown key under a known one, fails DAG import naming the setting.

The variables are read here rather than by pydantic-settings: its import (with
python-dotenv and its cloud secret sources) cost every DAG parse tens of
milliseconds for the dozen lines below (bench/dag_parse.py).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Bucket names per GCS's naming rules (lowercase, digits, -, _, .; 3-63 chars).
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


class StageResources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_request: str = "500m"
    cpu_limit: str = "2"
    memory_request: str = "1Gi"
    memory_limit: str = "2Gi"
    ephemeral_storage: str = "2Gi"
    # Kubernetes kills a pod that runs longer (activeDeadlineSeconds).
    deadline_seconds: int = Field(default=3600, gt=0)


def _default_resources() -> dict[str, StageResources]:
    standard = StageResources()
    heavy = StageResources(cpu_request="2", cpu_limit="4", memory_request="4Gi", memory_limit="8Gi")
    return {
        "ingest": standard,
        "validate": standard,
        # The sentence-transformer and its batches need the most memory.
        "featurize": heavy,
        "split": standard,
        "tune": heavy,
        "select": StageResources(cpu_request="100m", cpu_limit="500m", memory_request="256Mi", memory_limit="512Mi"),
        "train": heavy,
        "evaluate": standard,
        "register": standard,
        # deploy renders a manifest; canary-check, on the embedded default, runs two model servers beside itself.
        "deploy": StageResources(cpu_request="100m", cpu_limit="500m", memory_request="256Mi", memory_limit="512Mi"),
        "canary-check": StageResources(memory_request="2Gi", memory_limit="4Gi"),
        # The daily conversations job (dags/daily_conversations.py): the stages
        # that load the sentence model or a whole store version are heavy.
        "conversations-validate": standard,
        "conversations-redact": standard,
        "conversations-embed": heavy,
        "conversations-tag": heavy,
        "conversations-upsert": heavy,
        "conversations-publish": heavy,
        # Reads a whole store version and the champion's training split.
        "conversations-drift": heavy,
        # Lists and deletes objects, holding only their names.
        "retention": StageResources(cpu_request="100m", cpu_limit="500m", memory_request="256Mi", memory_limit="1Gi"),
    }


class GpuSettings(BaseModel):
    """Optional GPU for the featurize pod: a device request plus where such nodes are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    count: int = Field(default=1, gt=0)
    node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    # EKS GPU node groups carry this taint so ordinary pods stay off them.
    toleration_key: str = "nvidia.com/gpu"


ENV_PREFIX = "PIPELINE_"
ENV_NESTED_DELIMITER = "__"


class PipelineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = "privacy-intent-pipeline:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    namespace: str = "privacy-pipeline"
    service_account: str = "privacy-pipeline-runner"
    kubernetes_conn_id: str = "kubernetes_default"
    gcp_conn_id: str = "google_cloud_default"
    bucket: str = "privacy-intent-data"
    # Where daily partitions land: <data_prefix>/ds=YYYY-MM-DD/part-*.csv|parquet
    data_prefix: str = "raw/privacy_intent"
    # Where uploads outside the schedule land, one folder per batch.
    incoming_prefix: str = "incoming/privacy_intent"
    # An upload counts as complete once its objects stop changing for this long.
    upload_inactivity_seconds: int = Field(default=60, gt=0)
    conversations_prefix: str = "raw/conversations"
    runs_prefix: str = "runs"
    registry_prefix: str = "registry"
    vector_store_prefix: str = "vector_store/conversations"
    # Non-secret env for every stage pod (e.g. GOOGLE_CLOUD_PROJECT).
    env_configmap: str = "privacy-pipeline-env"
    # The Prometheus Pushgateway every stage pushes its figures to (telemetry.py), set as the pod's
    # PIPELINE_PUSHGATEWAY_URL. Empty: the pod takes it from env_configmap, if that names one.
    pushgateway_url: str = ""
    # The pipeline config (deploy/k8s/pipeline-config.yaml, key pipeline.yaml): mounted read-only into every
    # stage pod, which gets --config pointing at it. Empty: the stages run on the config's defaults in code.
    pipeline_configmap: str = "privacy-pipeline-config"
    # The MLflow tracking server the register and rollback pods mirror the registry to (tracking.py), e.g.
    # http://mlflow.mlflow.svc:5000; empty: no mirror, and register's XCom says tracking was skipped.
    mlflow_tracking_uri: str = ""
    # Kubernetes Secret holding GCP credentials as credentials.json; mounted as
    # a file, never copied into env values. Empty when the node's identity
    # (workload identity federation) is enough.
    gcp_credentials_secret: str = "privacy-pipeline-gcp"
    # Kubernetes Secret holding the key of user_id_hash (an HMAC) as the file
    # "key"; mounted into conversations-validate only. Without it validate refuses.
    pseudonym_key_secret: str = "privacy-pipeline-pseudonym-key"
    # Who runs a rendered stage pod: the cluster, this machine from the stage
    # package's venv (local), or this machine inside the built image (image).
    pod_runtime: Literal["kubernetes", "local", "image"] = "kubernetes"
    startup_timeout_seconds: int = Field(default=600, gt=0)
    # After an OOMKilled try the next one asks for this much more memory, up to the cap.
    oom_memory_step: float = Field(default=1.5, ge=1.0)
    oom_max_memory: str = "32Gi"
    # Failure alerts (notifications.py): one mail per task that fails for good, to these addresses
    # (comma-separated; empty: no mail) through the SMTP connection (AIRFLOW_CONN_SMTP_DEFAULT, whose
    # extra names from_email), and to Slack when slack_conn_id names an Airflow Slack API connection.
    alert_email_to: str = ""
    smtp_conn_id: str = "smtp_default"
    slack_conn_id: str = ""
    slack_channel: str = "#privacy-pipeline-alerts"
    # The training deadline alert: a scheduled (02:00 UTC) run still unfinished this long after its
    # logical date alerts the same people.
    training_deadline_minutes: int = Field(default=240, gt=0)
    retries: int = Field(default=2, ge=0)
    retry_delay_seconds: int = Field(default=60, gt=0)
    max_retry_delay_seconds: int = Field(default=900, gt=0)
    resources: dict[str, StageResources] = Field(default_factory=_default_resources)
    featurize_gpu: GpuSettings = GpuSettings()
    # Where the local runtime finds `privacy-pipeline` (the stage package's venv).
    local_bin_dir: str = ""
    # Kubernetes ConfigMap/Secret manifests the local runtime resolves env refs from.
    local_cluster_file: str = ""
    # The image the `image` runtime runs from buildah's local store (`make image`
    # builds localhost/privacy-intent-pipeline:<version>); empty means `image`.
    local_image: str = ""

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not _BUCKET_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid GCS bucket name")
        return value

    @field_validator("resources")
    @classmethod
    def _resources_cover_stages(cls, value: dict[str, StageResources]) -> dict[str, StageResources]:
        defaults = _default_resources()
        unknown = sorted(set(value) - set(defaults))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {sorted(defaults)}")
        return {**defaults, **value}

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> PipelineSettings:
        """The settings the ``PIPELINE_*`` variables of ``environ`` (default: this process's) give."""
        return cls.model_validate(environ_values(os.environ if environ is None else environ))

    def resources_for(self, stage: str) -> StageResources:
        return self.resources.get(stage, StageResources())

    def gcs_uri(self, *parts: str) -> str:
        return "gs://" + "/".join([self.bucket, *(p.strip("/") for p in parts if p)])


def environ_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``PIPELINE_*`` variables of ``environ`` as the (nested) values PipelineSettings validates.

    Names are case-insensitive; ``__`` descends a level. Variables whose first
    part names no setting are other programs' (the stage pods' ``PIPELINE_DAG_ID``,
    the demo's ``PIPELINE_LOG_LEVEL``) and are left alone.
    """
    values: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        *parents, leaf = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER)
        if (parents[0] if parents else leaf) not in PipelineSettings.model_fields:
            continue
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        # No setting is a string starting with "{": such a value is a mapping (resources, a node selector).
        node[leaf] = json.loads(value) if value.lstrip().startswith("{") else value
    return values


@functools.cache
def get_settings() -> PipelineSettings:
    return PipelineSettings.from_environ()
