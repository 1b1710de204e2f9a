"""The stage image's Dockerfile promises what the pods rely on: uid, entrypoint, env, scratch, a lint-clean build."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from embedded.stack import REPO
from privacy_pipeline_airflow.local_runtime import IMAGE_ENV
from privacy_pipeline_airflow.stage_pod import IMAGE_UID, SCRATCH_MOUNT, STAGE_CLI

DOCKERFILE = REPO / "images" / "pipeline" / "Dockerfile"
AIRFLOW_DOCKERFILE = REPO / "images" / "airflow" / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
VENV_BIN = "/opt/venv/bin"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in file order, continuation lines joined, comments dropped."""
    parsed: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        parsed.append((keyword.upper(), arguments.strip()))
        pending = ""
    return parsed


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The build stages, each starting at its FROM (the global ARGs before the first FROM are left out)."""
    found: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions(text):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, arguments))
    return found


def stage_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in stage:
        if keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(arguments)))
    return env


def env_drift(image_env: dict[str, str], expected: dict[str, str]) -> list[str]:
    """How the image's ENV (PATH aside: each runtime sets its own) differs from the local runtime's IMAGE_ENV."""
    image_env = {name: value for name, value in image_env.items() if name != "PATH"}
    problems = [f"{name} is missing from the image's ENV" for name in expected if name not in image_env]
    problems += [f"{name}={image_env[name]!r} in the image is not in IMAGE_ENV" for name in image_env.keys() - expected]
    problems += [
        f"{name}={image_env[name]!r} in the image but {expected[name]!r} in IMAGE_ENV"
        for name in expected.keys() & image_env.keys()
        if image_env[name] != expected[name]
    ]
    return problems


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def final_stage() -> list[tuple[str, str]]:
    return stages(DOCKERFILE.read_text(encoding="utf-8"))[-1]


def test_final_stage_env_is_the_local_runtimes_image_env(final_stage) -> None:
    env = stage_env(final_stage)

    assert env_drift(env, IMAGE_ENV) == []
    # The venv's console scripts (privacy-pipeline) come first on the image's PATH.
    assert env["PATH"].split(":")[0] == VENV_BIN


def test_env_drift_names_each_difference(final_stage) -> None:
    drifted = DOCKERFILE.read_text(encoding="utf-8").replace("HF_HUB_OFFLINE=1", "HF_HUB_OFFLINE=0")
    drifted = drifted.replace("MPLCONFIGDIR=/tmp/matplotlib", "EXTRA=1")

    problems = env_drift(stage_env(stages(drifted)[-1]), IMAGE_ENV)

    assert "HF_HUB_OFFLINE='0' in the image but '1' in IMAGE_ENV" in problems
    assert "MPLCONFIGDIR is missing from the image's ENV" in problems
    assert "EXTRA='1' in the image is not in IMAGE_ENV" in problems


def test_runs_as_the_pods_fixed_non_root_uid(final_stage) -> None:
    users = [arguments for keyword, arguments in final_stage if keyword == "USER"]
    assert users == [f"{IMAGE_UID}:{IMAGE_UID}"]
    created = " ".join(arguments for keyword, arguments in final_stage if keyword == "RUN")
    assert f"--uid {IMAGE_UID}" in created and f"--gid {IMAGE_UID}" in created


def test_entrypoint_is_the_stage_cli(final_stage) -> None:
    entrypoints = [json.loads(arguments) for keyword, arguments in final_stage if keyword == "ENTRYPOINT"]
    assert entrypoints == [[STAGE_CLI]]


def test_scratch_is_the_pods_writable_mount(final_stage) -> None:
    volumes = [json.loads(arguments) for keyword, arguments in final_stage if keyword == "VOLUME"]
    assert volumes == [[SCRATCH_MOUNT]]
    env = stage_env(final_stage)
    # Everything the libraries write at run time lands under the scratch mount.
    assert env["HOME"] == SCRATCH_MOUNT
    assert env["MPLCONFIGDIR"].startswith(SCRATCH_MOUNT + "/")


def test_base_is_a_build_arg_defaulting_to_public_python_311_slim() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    before_first_from = instructions(text)[: [k for k, _ in instructions(text)].index("FROM")]
    assert ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm") in before_first_from
    froms = [arguments.split()[0] for keyword, arguments in instructions(text) if keyword == "FROM"]
    # Multi-stage; the venv is made and run on the same base (its python links to the base's).
    assert len(froms) >= 2
    assert froms[0] == froms[-1] == "${BASE_IMAGE}"


def test_final_stage_only_copies_the_built_venv_and_package(final_stage) -> None:
    runs = " ".join(arguments for keyword, arguments in final_stage if keyword == "RUN")
    for installer in ("apt-get", "pip ", "gcc", "build-essential"):
        assert installer not in runs, f"the final stage runs {installer}"
    copies = [arguments for keyword, arguments in final_stage if keyword in ("COPY", "ADD")]
    # The dependencies' venv (cached across code changes), the model server's venv on top of it, then the
    # package's own files.
    assert copies == [
        "--from=deps /opt/venv /opt/venv",
        "--from=serving /opt/serving /opt/serving",
        "--from=build /package/ /",
    ]


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, AIRFLOW_DOCKERFILE], ids=lambda p: p.parent.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_an_unpinned_root_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN pip install requests\nENTRYPOINT python\n", encoding="utf-8")

    result = hadolint(careless)

    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3042"):
        assert rule in result.stdout


def test_buildah_keeps_the_dockerfiles_shell() -> None:
    # buildah's default OCI format drops SHELL, so RUN would fall back to /bin/sh without pipefail.
    assert any(
        keyword == "SHELL" and "pipefail" in arguments
        for keyword, arguments in stages(DOCKERFILE.read_text(encoding="utf-8"))[0]
    )
    build = (REPO / "images" / "build.sh").read_text(encoding="utf-8")
    buildah_build = re.search(r"^\s*buildah build\b.*$", build, re.MULTILINE)
    assert buildah_build is not None and "--format docker" in buildah_build.group(0)
