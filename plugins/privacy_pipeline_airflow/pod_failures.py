"""Why a stage pod died, remembered in the run so that the retry can do better.

Kubernetes says why in the pod status: the main container's terminated reason
(``OOMKilled``, or ``Error`` with the stage's one-line termination message),
the pod's reason (``Evicted``, ``DeadlineExceeded``) or a waiting reason
(``ErrImagePull``, ``ImagePullBackOff``). The reason goes into the task log
and into ``<run>/_pod_failures/<task>.json``; the register stage copies those
records into the run's registry entry. A retry after ``OOMKilled`` asks for
more memory (``PIPELINE_OOM_MEMORY_STEP``) instead of dying the same way again.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes.client import models as k8s
from kubernetes.utils import parse_quantity

from privacy_pipeline_airflow.pod_contract import BASE_CONTAINER

OOM_KILLED = "OOMKilled"
_WAITING_FAILURES = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"}


@dataclass(frozen=True)
class PodFailure:
    try_number: int
    reason: str
    message: str
    memory_limit: str
    at: str


def failure_reason(pod: k8s.V1Pod | None, container: str = BASE_CONTAINER) -> tuple[str, str] | None:
    """(reason, message) from a pod's status, most specific first."""
    status = getattr(pod, "status", None)
    if status is None:
        return None
    for container_status in status.container_statuses or []:
        if container_status.name != container or container_status.state is None:
            continue
        terminated = container_status.state.terminated
        if terminated is not None and terminated.reason and terminated.reason != "Completed":
            return terminated.reason, (terminated.message or "").strip()
        waiting = container_status.state.waiting
        if waiting is not None and waiting.reason in _WAITING_FAILURES:
            return waiting.reason, (waiting.message or "").strip()
    if status.reason:
        return status.reason, (status.message or "").strip()
    return None


def run_uri_of(arguments: list[str] | None) -> str | None:
    args = list(arguments or [])
    return args[args.index("--run") + 1] if "--run" in args[:-1] else None


def _record_uri(run_uri: str, task_id: str, map_index: int) -> str:
    name = task_id if map_index < 0 else f"{task_id}.{map_index}"
    return f"{run_uri.rstrip('/')}/_pod_failures/{name}.json"


def _read(uri: str, gcp_conn_id: str) -> list[dict[str, Any]]:
    if uri.startswith("gs://"):
        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        bucket, _, name = uri[len("gs://") :].partition("/")
        hook = GCSHook(gcp_conn_id=gcp_conn_id)
        if not hook.exists(bucket, name):
            return []
        return list(json.loads(hook.download(bucket, name)))
    path = Path(uri)
    return list(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else []


def _write(uri: str, records: list[dict[str, Any]], gcp_conn_id: str) -> None:
    """Replace the record atomically: the Airflow side's only write to a run (the stages write theirs).

    The same idea as the stage package's ``storage.write_bytes``, which the
    plugin may not import (imports go one way: tests/plugins/test_import_graph.py):
    one single-request upload through the Airflow connection on GCS, a synced
    temp file renamed over the record locally.
    """
    data = json.dumps(records, indent=2)
    if uri.startswith("gs://"):
        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        bucket, _, name = uri[len("gs://") :].partition("/")
        GCSHook(gcp_conn_id=gcp_conn_id).upload(bucket, name, data=data, mime_type="application/json")
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: two tries of one task (a zombie and its retry) must not share a temp file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def previous_failures(run_uri: str, task_id: str, map_index: int, gcp_conn_id: str) -> list[PodFailure]:
    return [PodFailure(**record) for record in _read(_record_uri(run_uri, task_id, map_index), gcp_conn_id)]


def record_failure(
    run_uri: str, task_id: str, map_index: int, failure: PodFailure, gcp_conn_id: str
) -> list[PodFailure]:
    uri = _record_uri(run_uri, task_id, map_index)
    # A retry of the same try (e.g. after a worker restart) replaces its own record.
    records = [r for r in _read(uri, gcp_conn_id) if r["try_number"] != failure.try_number]
    records.append(asdict(failure))
    _write(uri, sorted(records, key=lambda r: r["try_number"]), gcp_conn_id)
    return [PodFailure(**record) for record in records]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def memory_after_oom(limit: str, step: float, maximum: str) -> str:
    """The next memory request/limit after an OOM kill: ``limit * step`` in Mi, capped at ``maximum``."""
    grown = float(parse_quantity(limit)) * step
    capped = min(grown, float(parse_quantity(maximum)))
    return f"{math.ceil(capped / 2**20)}Mi"
