"""The real stage image: built here from nothing (images/build.sh), and stages run in it as uid 10001.

Slow tier (``-m image``): the first build makes a Debian base with debootstrap
and installs the pinned stage package (minutes); later runs reuse the cached
base and buildah's layers. Needs root for buildah's image store; build.sh
installs buildah and debootstrap with apt-get when they are missing, so a fresh
root machine with apt-get has all it needs. Elsewhere the tier is skipped, except
in CI (``$CI`` set), where it is the only run of the real image: there a machine
that cannot build fails the tier instead of skipping it unnoticed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess

import pytest
from test_kserve_manifests import SERVING_RUNTIME, rendered

from embedded.stack import BUCKET, REPO, embedded_stack
from privacy_pipeline_airflow.local_runtime import run_pod
from privacy_pipeline_airflow.settings import PipelineSettings
from privacy_pipeline_airflow.stage_pod import IMAGE_UID, StagePodOperator, stage_arguments, stage_pod_kwargs

BUILD = REPO / "images" / "build.sh"
VERSION = re.search(r'^version = "(.+)"$', (REPO / "images/pipeline/pyproject.toml").read_text(), re.MULTILINE)
IMAGE = f"localhost/privacy-intent-pipeline:{VERSION.group(1) if VERSION else 'unknown'}"


def _why_it_cannot_build() -> str | None:
    if os.geteuid() != 0:
        return "buildah's image store and debootstrap need root here; run `sudo make image`"
    if shutil.which("buildah") is None and shutil.which("apt-get") is None:
        return "buildah is not installed and there is no apt-get to install it; install buildah and debootstrap"
    return None


pytestmark = pytest.mark.image


@pytest.fixture(scope="module")
def build_output() -> str:
    """Build (or reuse) the base and the image, and run build.sh's own check of it."""
    cannot_build = _why_it_cannot_build()
    if cannot_build is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real image, but it cannot be built here: {cannot_build}")
        pytest.skip(cannot_build)
    result = subprocess.run(["bash", str(BUILD), "all"], capture_output=True, text=True, check=False, timeout=3600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"images/build.sh failed:\n{output[-4000:]}"
    return output


def _as_pod(*command: str) -> subprocess.CompletedProcess:
    container = subprocess.run(
        ["buildah", "from", "--pull=never", "--quiet", IMAGE], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        return subprocess.run(
            [
                "buildah",
                "run",
                "--isolation",
                "chroot",
                "--user",
                f"{IMAGE_UID}:{IMAGE_UID}",
                container,
                "--",
                *command,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def test_build_runs_stages_in_the_image_as_non_root(build_output) -> None:
    assert f"runs as {IMAGE_UID}:{IMAGE_UID}, not root" in build_output
    assert "(CPU); encoder offline -> (1, 384)" in build_output
    assert "validate: 2000 of 2000 rows valid" in build_output
    assert "nothing written outside the scratch and XCom mounts" in build_output
    assert re.search(rf"{re.escape(IMAGE)}: [\d.]+ [MG]B uncompressed", build_output)


def test_the_image_has_no_compilers_and_no_root_user(build_output) -> None:
    compilers = _as_pod("sh", "-c", "for tool in gcc cc c++ g++ clang make; do command -v $tool; done; true")
    assert compilers.stdout.strip() == ""
    identity = _as_pod("id", "-u")
    assert identity.stdout.strip() == str(IMAGE_UID)


def test_the_serving_runtimes_command_serves_from_the_images_serving_environment(build_output) -> None:
    # The command deploy/k8s/kserve/servingruntime.yaml runs: kserve on pandas 2, the stage code from /opt/venv.
    command = rendered(SERVING_RUNTIME)["spec"]["containers"][0]["command"]
    python = command[0]
    imported = _as_pod(
        python, "-c", "import kserve, pandas, privacy_pipeline.serving.server; print(pandas.__version__)"
    )
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert imported.stdout.strip().startswith("2."), imported.stdout
    serve_help = _as_pod(*command, "serve", "--help")
    assert serve_help.returncode == 0, serve_help.stderr[-2000:]
    assert "--registry" in serve_help.stdout and "--max-batch-size" in serve_help.stdout
    # The image's entrypoint stays the stage venv, on the stage package's own pandas.
    stage_pandas = _as_pod("python", "-c", "import pandas; print(pandas.__version__)")
    assert stage_pandas.stdout.strip().startswith("3."), stage_pandas.stdout


def test_the_image_runtime_runs_rendered_pods_against_the_emulator(build_output, tmp_path) -> None:
    with embedded_stack(tmp_path / "stack", in_memory=True) as stack:
        source = f"gs://{BUCKET}/raw/privacy_intent/ds=2026-11-20/part-0000.csv"
        stack.pipeline("synth", "--out", source, "--rows", "2000", "--seed", "7")
        settings = PipelineSettings(
            pod_runtime="image",
            local_image=IMAGE,
            local_cluster_file=str(stack.home / "cluster.yaml"),
            gcp_credentials_secret="",
        )
        run = f"gs://{BUCKET}/runs/image-test/"
        log = logging.getLogger("test_image")

        def run_stage(stage: str, *args: str):
            operator = StagePodOperator(
                task_id=stage, arguments=stage_arguments(stage, *args), **stage_pod_kwargs(stage, settings)
            )
            return run_pod(
                operator.build_pod_request_obj(None, dry_run=True), runtime="image", settings=settings, log=log
            )

        ingested = run_stage("ingest", "--source", source, "--run", run)
        validated = run_stage("validate", "--run", run)

    assert ingested["rows"] == 2000
    assert validated["rows_valid"] + validated["rows_quarantined"] == 2000
    assert validated["validated_uri"].startswith(run)
