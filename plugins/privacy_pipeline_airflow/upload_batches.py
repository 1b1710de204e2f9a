"""Which uploaded batches still need a training run.

A batch is a folder under the incoming prefix. Its fingerprint covers each
object's name, size and MD5, so the same bytes uploaded again (a new GCS
generation) give the same fingerprint, and thus the same training run id,
which TriggerDagRunOperator skips because it already exists.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from privacy_pipeline_airflow.run_templates import object_safe
from privacy_pipeline_airflow.settings import PipelineSettings

DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet")


def fingerprint(objects: list[tuple[str, int, str]]) -> str:
    """sha256 over sorted (name, size, md5) triples."""
    digest = hashlib.sha256()
    for name, size, md5 in sorted(objects):
        digest.update(f"{name}\0{size}\0{md5}\n".encode())
    return digest.hexdigest()


def batch_triggers(settings: PipelineSettings) -> list[dict]:
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    incoming = settings.incoming_prefix.strip("/") + "/"
    client = GCSHook(gcp_conn_id=settings.gcp_conn_id).get_conn()
    batches: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    for blob in client.list_blobs(settings.bucket, prefix=incoming):
        relative = blob.name[len(incoming) :]
        batch, sep, _ = relative.partition("/")
        if not sep or not blob.name.endswith(DATA_SUFFIXES):
            continue  # loose files beside the batch folders, markers, other formats
        batches[batch].append((blob.name, int(blob.size or 0), blob.md5_hash or str(blob.crc32c)))
    return [
        {
            "trigger_run_id": f"upload__{object_safe(batch)}__{fingerprint(objects)[:16]}",
            "conf": {"data_prefix": f"{incoming}{batch}/"},
        }
        for batch, objects in sorted(batches.items())
    ]
