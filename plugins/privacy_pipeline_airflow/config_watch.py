"""Whether the cluster's pipeline config changed since the last training run, and the run that then trains.

The config's content hash is the sha256 of the ConfigMap's ``pipeline.yaml``: the very bytes every stage pod
reads at ``/etc/privacy-pipeline/pipeline.yaml``, and what ``register`` records in each run record as
``config_source_sha256``. When the newest run record's hash differs from the config's, one training run on the
latest data partition starts, with run id ``config__<hash>``: TriggerDagRunOperator skips it when a run with
that id exists already (the config was tried before: running, done or failed), so a config starts at most
one run. With no run record at all there is nothing the config changed from; the first scheduled or
uploaded run trains on it.

Any change of the bytes counts, a comment included. Going back to a config that already had its
``config__`` run starts none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException

from privacy_pipeline_airflow.pod_contract import PIPELINE_CONFIG_KEY
from privacy_pipeline_airflow.settings import PipelineSettings
from privacy_pipeline_airflow.upload_batches import DATA_SUFFIXES

log = logging.getLogger(__name__)

RUN_ID_PREFIX = "config__"
# Characters of the hash in the run id, as for upload fingerprints.
RUN_ID_HASH_CHARS = 16
_PARTITION = re.compile(r"^ds=\d{4}-\d{2}-\d{2}$")


def content_hash(config_text: str) -> str:
    """sha256 of the config file's bytes as a pod reads them from the mounted ConfigMap."""
    return hashlib.sha256(config_text.encode("utf-8")).hexdigest()


def read_cluster_config(settings: PipelineSettings) -> str:
    """The ConfigMap's pipeline.yaml, from where the stage pods get it: the cluster, or the local cluster file."""
    name = settings.pipeline_configmap
    if settings.pod_runtime == "kubernetes":
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        hook = KubernetesHook(conn_id=settings.kubernetes_conn_id)
        data = hook.core_v1_client.read_namespaced_config_map(name, settings.namespace).data or {}
    else:
        from privacy_pipeline_airflow.local_runtime import LocalCluster

        data = LocalCluster.from_file(settings.local_cluster_file).config_map(name, optional=False)
    if PIPELINE_CONFIG_KEY not in data:
        raise AirflowException(f"config watch: ConfigMap {name!r} has no key {PIPELINE_CONFIG_KEY!r}")
    return data[PIPELINE_CONFIG_KEY]


def newest_run_record(client: Any, settings: PipelineSettings) -> dict | None:
    """The registry's newest run record: versions are named by registration time, so the greatest name."""
    prefix = settings.registry_prefix.strip("/") + "/runs/"
    names = [blob.name for blob in client.list_blobs(settings.bucket, prefix=prefix) if blob.name.endswith(".json")]
    if not names:
        return None
    return json.loads(client.bucket(settings.bucket).blob(max(names)).download_as_bytes())


def latest_partition(client: Any, settings: PipelineSettings) -> str | None:
    """``raw/privacy_intent/ds=<newest date>/`` among the partitions holding a data file, else None."""
    root = settings.data_prefix.strip("/") + "/"
    partitions = set()
    for blob in client.list_blobs(settings.bucket, prefix=root + "ds="):
        partition, sep, _ = blob.name[len(root) :].partition("/")
        if sep and _PARTITION.match(partition) and blob.name.endswith(DATA_SUFFIXES):
            partitions.add(partition)
    return f"{root}{max(partitions)}/" if partitions else None


def config_triggers(settings: PipelineSettings) -> list[dict]:
    """``[{"trigger_run_id": "config__<hash>", "conf": {"data_prefix": <latest partition>}}]`` or ``[]``."""
    if not settings.pipeline_configmap:
        log.info("No pipeline ConfigMap configured (PIPELINE_PIPELINE_CONFIGMAP is empty): nothing to watch")
        return []
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    current = content_hash(read_cluster_config(settings))
    client = GCSHook(gcp_conn_id=settings.gcp_conn_id).get_conn()
    record = newest_run_record(client, settings)
    if record is None:
        log.info("Config %s: no training run registered yet, nothing it changed from", current[:RUN_ID_HASH_CHARS])
        return []
    trained = record.get("config_source_sha256")
    if trained == current:
        log.info("Config %s is the one version %s trained with", current[:RUN_ID_HASH_CHARS], record.get("version"))
        return []
    partition = latest_partition(client, settings)
    if partition is None:
        log.warning("Config changed to %s, but there is no data partition to train on", current[:RUN_ID_HASH_CHARS])
        return []
    log.info(
        "Config changed from %s (version %s) to %s: one training run on %s",
        (trained or "unknown")[:RUN_ID_HASH_CHARS],
        record.get("version"),
        current[:RUN_ID_HASH_CHARS],
        partition,
    )
    return [{"trigger_run_id": RUN_ID_PREFIX + current[:RUN_ID_HASH_CHARS], "conf": {"data_prefix": partition}}]
