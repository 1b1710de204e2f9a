"""Run a rendered stage pod on this machine instead of a cluster.

The pod spec that ``StagePodOperator`` renders is the contract; nothing here
goes around it. From the pod's main container we take the command, args and
env exactly as rendered and resolve what a kubelet would: ``configMapRef`` /
``secretRef`` / ``*KeyRef`` values from Kubernetes ConfigMap and Secret
manifests in ``PIPELINE_LOCAL_CLUSTER_FILE``, ``fieldRef`` from the pod's
metadata, and volumes as temp directories (emptyDir empty, Secret/ConfigMap
volumes holding their keys as files; env values and arguments under a mount
path, such as ``--config /etc/privacy-pipeline/pipeline.yaml``, are pointed at
its directory). The process starts with no environment but the
pod's and the image's own ``ENV``, gets ``XCOM_RETURN_PATH`` pointing into
its XCom volume, and its XCom JSON is returned as the sidecar would return it.

The command is found in the stage package's venv (``PIPELINE_LOCAL_BIN_DIR``); with
``PIPELINE_POD_RUNTIME=image`` it runs inside the built stage image instead
(image_runtime.py), with the same env, volumes, deadline and memory limit.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from airflow.providers.common.compat.sdk import AirflowException
from kubernetes.client import models as k8s
from kubernetes.utils import parse_quantity

from privacy_pipeline_airflow import image_runtime
from privacy_pipeline_airflow.pod_contract import BASE_CONTAINER, IMAGE_ENV, SCRATCH_MOUNT, XCOM_MOUNT
from privacy_pipeline_airflow.pod_failures import OOM_KILLED
from privacy_pipeline_airflow.settings import PipelineSettings


class PodFailed(AirflowException):
    """The stage's main container exited non-zero, with Kubernetes' reason (OOMKilled, DeadlineExceeded, Error)."""

    def __init__(self, pod_name: str, exit_code: int, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"Pod {pod_name} failed (exit code {exit_code}, {reason}): {message}")


@dataclass
class LocalCluster:
    """The ConfigMaps and Secrets a kubelet would resolve env and volumes from."""

    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str) -> LocalCluster:
        cluster = cls()
        if not path:
            return cluster
        for manifest in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")):
            if not manifest:
                continue
            name = manifest["metadata"]["name"]
            if manifest["kind"] == "ConfigMap":
                cluster.config_maps[name] = {k: str(v) for k, v in (manifest.get("data") or {}).items()}
            elif manifest["kind"] == "Secret":
                values = {k: base64.b64decode(v).decode() for k, v in (manifest.get("data") or {}).items()}
                values.update({k: str(v) for k, v in (manifest.get("stringData") or {}).items()})
                cluster.secrets[name] = values
        return cluster

    def config_map(self, name: str, optional: bool | None) -> dict[str, str]:
        if name not in self.config_maps and not optional:
            raise AirflowException(f"local runtime: ConfigMap {name!r} is not defined in the local cluster file")
        return self.config_maps.get(name, {})

    def secret(self, name: str, optional: bool | None) -> dict[str, str]:
        if name not in self.secrets and not optional:
            raise AirflowException(f"local runtime: Secret {name!r} is not defined in the local cluster file")
        return self.secrets.get(name, {})


def pod_yaml(pod: k8s.V1Pod) -> str:
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    return yaml.safe_dump(PodGenerator.serialize_pod(pod), sort_keys=False)


def main_container(pod: k8s.V1Pod) -> k8s.V1Container:
    for container in pod.spec.containers:
        if container.name == BASE_CONTAINER:
            return container
    raise AirflowException(f"pod {pod.metadata.name} has no {BASE_CONTAINER!r} container")


def _materialise_volumes(
    pod: k8s.V1Pod, container: k8s.V1Container, cluster: LocalCluster, root: Path
) -> dict[str, Path]:
    """Mount path -> a local directory with what the volume would hold."""
    volumes = {v.name: v for v in pod.spec.volumes or []}
    mounted: dict[str, Path] = {}
    for mount in container.volume_mounts or []:
        volume = volumes[mount.name]
        directory = root / "volumes" / mount.name
        directory.mkdir(parents=True, exist_ok=True)
        if volume.secret is not None:
            for key, value in cluster.secret(volume.secret.secret_name, volume.secret.optional).items():
                (directory / key).write_text(value, encoding="utf-8")
        elif volume.config_map is not None:
            for key, value in cluster.config_map(volume.config_map.name, volume.config_map.optional).items():
                (directory / key).write_text(value, encoding="utf-8")
        mounted[mount.mount_path] = directory
    return mounted


def _resolve_env(pod: k8s.V1Pod, container: k8s.V1Container, cluster: LocalCluster) -> dict[str, str]:
    env: dict[str, str] = {}
    # Kubernetes applies envFrom first; explicit env entries win.
    for source in container.env_from or []:
        if source.config_map_ref is not None:
            values = cluster.config_map(source.config_map_ref.name, source.config_map_ref.optional)
        else:
            values = cluster.secret(source.secret_ref.name, source.secret_ref.optional)
        env.update({f"{source.prefix or ''}{k}": v for k, v in values.items()})
    metadata = {"metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace}
    for var in container.env or []:
        if var.value_from is None:
            env[var.name] = var.value or ""
            continue
        ref = var.value_from
        if ref.field_ref is not None:
            env[var.name] = metadata.get(ref.field_ref.field_path, "")
        elif ref.config_map_key_ref is not None:
            key_ref = ref.config_map_key_ref
            env[var.name] = cluster.config_map(key_ref.name, key_ref.optional).get(key_ref.key, "")
        elif ref.secret_key_ref is not None:
            key_ref = ref.secret_key_ref
            env[var.name] = cluster.secret(key_ref.name, key_ref.optional).get(key_ref.key, "")
        elif ref.resource_field_ref is not None:
            env[var.name] = _resource_field(container, ref.resource_field_ref)
    return env


def _resource_field(container: k8s.V1Container, selector: k8s.V1ResourceFieldSelector) -> str:
    """What the Downward API gives for ``limits.cpu`` and friends: the quantity over the divisor, rounded up.

    With no limit set, Kubernetes gives the node's allocatable amount; this machine's CPUs stand in for it.
    A CPU limit above this machine's CPUs is capped at them: the local "node" has no more to give.
    """
    kind, _, resource = selector.resource.partition(".")
    quantities = (container.resources.limits if kind == "limits" else container.resources.requests) or {}
    machine = {"cpu": os.cpu_count() or 1, "memory": psutil.virtual_memory().total}
    if resource not in machine:
        raise AirflowException(f"env resourceFieldRef {selector.resource!r}: the local runtime knows cpu and memory")
    amount = float(parse_quantity(quantities[resource])) if resource in quantities else machine[resource]
    amount = min(amount, machine[resource])
    return str(math.ceil(amount / float(parse_quantity(selector.divisor or "1"))))


def _local_path(value: str, mounted: Mapping[str, Path]) -> str:
    """A path under a mount (``/etc/privacy-pipeline/pipeline.yaml``) as the local directory standing in for it."""
    for mount_path, directory in mounted.items():
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(directory) + value[len(mount_path.rstrip("/")) :]
    return value


def _point_into_volumes(env: Mapping[str, str], mounted: Mapping[str, Path]) -> dict[str, str]:
    """An env value naming a path under a mount (GOOGLE_APPLICATION_CREDENTIALS) points at its local directory."""
    return {name: _local_path(value, mounted) for name, value in env.items()}


def _termination_message(returncode: int, stderr_tail: list[str]) -> str:
    """What the stage wrote to its termination log (its `error:` line), as Kubernetes would report it."""
    for line in reversed(stderr_tail):
        if line.startswith("error: "):
            return line[len("error: ") :]
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return stderr_tail[-1] if stderr_tail else "no output"


def run_pod(pod: k8s.V1Pod, *, runtime: str, settings: PipelineSettings, log: logging.Logger) -> Any:
    """Run the pod's main container here and return its XCom, as KubernetesPodOperator would."""
    log.debug("Rendered pod (what the cluster would run):\n%s", pod_yaml(pod))
    container = main_container(pod)
    cluster = LocalCluster.from_file(settings.local_cluster_file)
    command = [*(container.command or []), *(container.args or [])]
    with (
        tempfile.TemporaryDirectory(prefix=f"pod-{pod.metadata.name}-") as pod_root,
        contextlib.ExitStack() as image_session,
    ):
        root = Path(pod_root)
        mounted = _materialise_volumes(pod, container, cluster, root)
        scratch = mounted.get(SCRATCH_MOUNT, root / "scratch")
        scratch.mkdir(parents=True, exist_ok=True)
        xcom_dir = root / "xcom"
        xcom_dir.mkdir()
        if runtime == "image":
            # Inside the image its own ENV and the real mount paths apply: the
            # stage gets the pod's env as resolved and every volume where the pod mounts it.
            working = image_session.enter_context(image_runtime.working_container(settings, pod.metadata.name))
            image_runtime.make_pod_writable(scratch, xcom_dir)
            read_only = {mount.mount_path for mount in container.volume_mounts or [] if mount.read_only}
            argv = image_runtime.image_command(
                working,
                command,
                env=_resolve_env(pod, container, cluster),
                mounts={**mounted, SCRATCH_MOUNT: scratch, XCOM_MOUNT: xcom_dir},
                read_only=read_only,
            )
            env = image_runtime.buildah_env()
            log.info("Image runtime: %s in working container %s", image_runtime.image_name(settings), working)
        else:
            env = {**IMAGE_ENV, **_resolve_env(pod, container, cluster)}
            env = _point_into_volumes(env, mounted)
            env.update(
                {
                    "HOME": str(scratch),
                    "TMPDIR": str(scratch),
                    "MPLCONFIGDIR": str(scratch / "matplotlib"),
                    "XCOM_RETURN_PATH": str(xcom_dir / "return.json"),
                }
            )
            path = os.pathsep.join(p for p in (settings.local_bin_dir, "/usr/local/bin", "/usr/bin", "/bin") if p)
            env["PATH"] = path
            executable = shutil.which(command[0], path=path)
            if executable is None:
                raise AirflowException(f"local runtime: {command[0]!r} is not on {path}; set PIPELINE_LOCAL_BIN_DIR")
            # Arguments naming a mounted file (--config) point at its local copy, as env values do.
            argv = [executable, *(_local_path(arg, mounted) for arg in command[1:])]
        log.info("Running pod %s locally (%s runtime): %s", pod.metadata.name, runtime, " ".join(command))
        limits = (container.resources.limits or {}) if container.resources else {}
        memory_limit = int(parse_quantity(limits["memory"])) if "memory" in limits else None
        outcome = _stream(argv, env, pod.spec.active_deadline_seconds, memory_limit, log)
        if outcome.returncode != 0:
            message = _termination_message(outcome.returncode, outcome.tail)
            raise PodFailed(pod.metadata.name, outcome.returncode, outcome.reason or "Error", message)
        return_json = xcom_dir / "return.json"
        if not return_json.is_file():
            raise AirflowException(f"Pod {pod.metadata.name} succeeded but wrote no {XCOM_MOUNT}/return.json")
        return json.loads(return_json.read_text(encoding="utf-8"))


@dataclass
class _Outcome:
    returncode: int
    tail: list[str]
    # Kubernetes' word for a kill it made: DeadlineExceeded or OOMKilled.
    reason: str | None = None


def _tree_rss(process: psutil.Process) -> int:
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for member in members:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def _stream(
    argv: list[str],
    env: Mapping[str, str],
    deadline_seconds: int | None,
    memory_limit: int | None,
    log: logging.Logger,
) -> _Outcome:
    """Run ``argv``, forwarding its output line by line to the task log like the pod log stream.

    Like the kubelet, kill it past activeDeadlineSeconds, and like the kernel's
    OOM killer in the container's cgroup, kill it when its processes together
    use more memory than the container's limit.
    """
    process = subprocess.Popen(
        argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    killed_because: list[str] = []
    finished = threading.Event()

    def _watch() -> None:
        started = time.monotonic()
        watched = psutil.Process(process.pid)
        while not finished.wait(0.05):
            if deadline_seconds and time.monotonic() - started > deadline_seconds:
                killed_because.append("DeadlineExceeded")
            elif memory_limit and _tree_rss(watched) > memory_limit:
                killed_because.append(OOM_KILLED)
            else:
                continue
            with contextlib.suppress(psutil.Error):
                for member in [*watched.children(recursive=True), watched]:
                    member.kill()
            return

    watcher = threading.Thread(target=_watch, daemon=True)
    watcher.start()
    tail: list[str] = []
    assert process.stdout is not None
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            log.info("[base] %s", line)
            tail = [*tail[-19:], line]
        returncode = process.wait()
    finally:
        finished.set()
        watcher.join()
    reason = killed_because[0] if killed_because else None
    if reason == OOM_KILLED:
        # What Kubernetes reports for a container the OOM killer ended.
        return _Outcome(137, [*tail, f"OOMKilled: used more than the memory limit of {memory_limit} bytes"], reason)
    if reason == "DeadlineExceeded":
        return _Outcome(returncode, [*tail, f"DeadlineExceeded: ran longer than {deadline_seconds}s"], reason)
    return _Outcome(returncode, tail)
