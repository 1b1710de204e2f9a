"""Run a rendered stage pod inside the built stage image (``PIPELINE_POD_RUNTIME=image``).

The local runtime (local_runtime.py) resolves the pod's env and volumes the
same way for both local modes; in this one the stage runs in the image that
``make image`` built, as a kubelet would run it: a throwaway working container
from the image (``buildah from``, removed afterwards), the pod's command and
args, the pod's env as ``--env`` (the image's own ``ENV`` applies underneath),
every volume bind-mounted at its mount path, the XCom directory at
``/airflow/xcom`` and the pod's uid and gid, 10001, never root.

No Docker engine is needed: ``buildah run --isolation chroot`` works as root on
a plain Linux machine. It shares the host's network, so a GCS emulator on
127.0.0.1 is reachable as in the ``local`` mode. Env values appear on buildah's
command line, which is fine for the emulator's settings; credentials reach the
stage as mounted files, as in the cluster.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from airflow.providers.common.compat.sdk import AirflowException

from privacy_pipeline_airflow.pod_contract import IMAGE_UID
from privacy_pipeline_airflow.settings import PipelineSettings

log = logging.getLogger(__name__)

BUILDAH = "buildah"
POD_USER = f"{IMAGE_UID}:{IMAGE_UID}"


def image_name(settings: PipelineSettings) -> str:
    """The image to run: ``PIPELINE_LOCAL_IMAGE``, else the pods' own image name (buildah resolves it locally)."""
    return settings.local_image or settings.image


def buildah_executable() -> str:
    executable = shutil.which(BUILDAH)
    if executable is None:
        raise AirflowException(
            "image runtime: buildah is not installed; `make image` installs it and builds the stage image"
        )
    return executable


def buildah_env() -> dict[str, str]:
    """What buildah itself needs; nothing of it reaches the container, which gets only the pod's env."""
    return {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}


@contextmanager
def working_container(settings: PipelineSettings, pod_name: str) -> Iterator[str]:
    """A fresh container from the image for one pod, removed afterwards whatever happened in it."""
    image = image_name(settings)
    name = f"{pod_name}-{secrets.token_hex(3)}"
    created = subprocess.run(
        [buildah_executable(), "from", "--pull=never", "--quiet", "--name", name, image],
        env=buildah_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if created.returncode != 0:
        reason = (created.stderr.strip().splitlines() or ["no output"])[-1]
        raise AirflowException(
            f"image runtime: cannot start a container from image {image!r} ({reason}); build it with `make image`"
        )
    container = created.stdout.strip().splitlines()[-1]
    try:
        yield container
    finally:
        removed = subprocess.run(
            [buildah_executable(), "rm", container], env=buildah_env(), capture_output=True, text=True, check=False
        )
        if removed.returncode != 0:
            log.warning("Could not remove working container %s: %s", container, removed.stderr.strip())


def image_command(
    container: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    mounts: Mapping[str, Path],
    read_only: Collection[str] = (),
) -> list[str]:
    """``buildah run`` of the pod's command in ``container``: its env, its volumes at their mount paths, uid 10001.

    ``mounts`` maps a mount path inside the pod to the local directory that
    stands in for the volume; paths in ``read_only`` are mounted read-only.
    """
    argv = [buildah_executable(), "run", "--isolation", "chroot", "--network", "host", "--user", POD_USER]
    for mount_path, directory in sorted(mounts.items()):
        mode = "ro" if mount_path in read_only else "rw"
        argv += ["--volume", f"{directory}:{mount_path}:{mode}"]
    for name, value in env.items():
        argv += ["--env", f"{name}={value}"]
    return [*argv, container, "--", *command]


def make_pod_writable(*directories: Path) -> None:
    """Like an emptyDir: writable by the pod's uid, whichever uid created the directory here."""
    for directory in directories:
        directory.chmod(0o777)
