"""Both images install only runtime dependencies, from hash-pinned lock files that match their lists.

``make lock`` compiles ``images/pipeline/requirements.lock`` (pyproject.toml's
dependencies) and ``images/airflow/requirements.lock`` (requirements.txt); the
Dockerfiles install them with ``--require-hashes --no-deps``. These tests catch
a list changed without re-locking, a lock line without a hash, a test tool in
an image, and a Dockerfile that installs from anywhere else.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from embedded.stack import REPO

PIPELINE = REPO / "images" / "pipeline"
PIPELINE_LOCK = PIPELINE / "requirements.lock"
SERVING_LOCK = PIPELINE / "requirements-serving.lock"
AIRFLOW_LOCK = REPO / "images" / "airflow" / "requirements.lock"
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def locked(text: str) -> dict[str, tuple[Version | None, set[str]]]:
    """name -> (version pinned with ``==``, or None; its sha256 hashes), from ``uv pip compile`` output."""
    pins: dict[str, tuple[Version | None, set[str]]] = {}
    for line in re.sub(r"\\\n", " ", text).splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry or entry.startswith("-"):
            continue
        requirement = Requirement(entry.split(" --hash", 1)[0])
        exact = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        pin = Version(exact[0]) if len(requirement.specifier) == 1 and exact else None
        pins[canonicalize_name(requirement.name)] = (pin, set(HASH.findall(entry)))
    return pins


def requirement_lines(path: Path) -> list[Requirement]:
    """The requirements a pip requirements file names itself (options such as ``-c``/``-r`` left out)."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def lock_problems(lock: dict[str, tuple[Version | None, set[str]]], wanted: list[Requirement]) -> list[str]:
    """Each way ``lock`` fails ``wanted``: an entry unpinned or unhashed, a wanted one missing or at another version."""
    problems = [f"{name} is not pinned with ==" for name, (version, _) in lock.items() if version is None]
    problems += [f"{name} has no --hash" for name, (_, hashes) in lock.items() if not hashes]
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        if name not in lock:
            problems.append(f"{requirement} is not in the lock")
        elif lock[name][0] is not None and not requirement.specifier.contains(lock[name][0], prereleases=True):
            problems.append(f"{requirement} but the lock pins {name}=={lock[name][0]}")
    return problems


def pipeline_wanted() -> list[Requirement]:
    project = tomllib.loads((PIPELINE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(line) for line in project["dependencies"]] + requirement_lines(
        PIPELINE / "requirements-image.in"
    )


def pipeline_extras() -> set[str]:
    project = tomllib.loads((PIPELINE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {}).values()
    return {canonicalize_name(Requirement(line).name) for lines in extras for line in lines}


@pytest.fixture(scope="module")
def pipeline_lock() -> dict[str, tuple[Version | None, set[str]]]:
    return locked(PIPELINE_LOCK.read_text(encoding="utf-8"))


def serving_requirements_module() -> ModuleType:
    """images/pipeline/serving_requirements.py, the one place the serving list is derived (``make lock`` runs it)."""
    spec = importlib.util.spec_from_file_location("serving_requirements", PIPELINE / "serving_requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def serving_lock() -> dict[str, tuple[Version | None, set[str]]]:
    return locked(SERVING_LOCK.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def airflow_lock() -> dict[str, tuple[Version | None, set[str]]]:
    return locked(AIRFLOW_LOCK.read_text(encoding="utf-8"))


def test_the_stage_image_lock_holds_pyproject_dependencies_hashed(pipeline_lock) -> None:
    assert lock_problems(pipeline_lock, pipeline_wanted()) == []


def test_the_serving_lock_holds_the_serving_list_hashed(serving_lock) -> None:
    wanted = [Requirement(line) for line in serving_requirements_module().serving_requirements(with_tests=False)]
    assert {"kserve", "pandas", "torch"} <= {canonicalize_name(r.name) for r in wanted}
    assert lock_problems(serving_lock, wanted) == []


def test_the_serving_lock_differs_from_the_stage_lock_only_where_the_serving_list_says(
    pipeline_lock, serving_lock
) -> None:
    # The image's /opt/serving holds only what differs from /opt/venv and sees the rest there: any other
    # package at another version would shadow the stage venv's and run the stage code on untested versions.
    serving = serving_requirements_module()
    repinned = {
        canonicalize_name(serving.requirement_name(line)) for line in serving.requirement_lines(serving.SERVING)
    }
    differing = {
        name
        for name, (version, _) in serving_lock.items()
        if name in pipeline_lock and pipeline_lock[name][0] != version
    }
    assert differing <= repinned, f"re-run make lock: {sorted(differing - repinned)} differ from the stage lock"
    assert "pandas" in differing


def test_the_airflow_image_lock_holds_the_runtime_list_hashed(airflow_lock) -> None:
    assert lock_problems(airflow_lock, requirement_lines(REPO / "requirements.txt")) == []


def test_the_airflow_image_runs_the_versions_the_tests_ran(airflow_lock) -> None:
    # requirements.lock pins the test venv; the image must not drift from it.
    venv_pins = {canonicalize_name(r.name): r for r in requirement_lines(REPO / "requirements.lock")}
    drift = [
        f"{name}=={version} in the image, {venv_pins[name]} in requirements.lock"
        for name, (version, _) in airflow_lock.items()
        if name in venv_pins and not venv_pins[name].specifier.contains(version, prereleases=True)
    ]
    assert drift == []


def test_no_test_tool_is_in_an_image(pipeline_lock, serving_lock, airflow_lock) -> None:
    test_tools = {canonicalize_name(r.name) for r in requirement_lines(REPO / "requirements-test.txt")}
    assert test_tools and not test_tools & airflow_lock.keys()
    runtime = {canonicalize_name(r.name) for r in pipeline_wanted()}
    # The [test] and [bench] extras, unless a runtime dependency needs the same package anyway.
    assert {"pytest", "ruff", "mypy"} <= pipeline_extras()
    assert not (pipeline_extras() - runtime) & pipeline_lock.keys()
    serving_tests = {canonicalize_name(r.name) for r in requirement_lines(PIPELINE / "requirements-serving-test.txt")}
    assert {"tritonclient", "selenium"} <= serving_tests and not (serving_tests | {"pytest"}) & serving_lock.keys()


def test_torch_is_locked_to_the_cpu_wheel_pip_finds_here(pipeline_lock) -> None:
    version, hashes = pipeline_lock["torch"]
    assert version.local == "cpu", f"torch {version} is not the CPU build"
    find_links = subprocess.run(
        ["pip", "config", "get", "global.find-links"], capture_output=True, text=True, check=False
    ).stdout.split()
    wheels = [wheel for folder in find_links for wheel in Path(folder).glob(f"torch-{version}-*.whl")]
    if not wheels:
        pytest.skip("no local find-links folder with the torch CPU wheel on this machine")
    # The file images/build.sh mounts into the build: pip would refuse it if the lock named another hash.
    assert {hashlib.sha256(wheel.read_bytes()).hexdigest() for wheel in wheels} <= hashes


@pytest.mark.parametrize(
    "dockerfile,locks",
    [
        (PIPELINE / "Dockerfile", ["/src/requirements.lock", "/src/requirements-serving.lock"]),
        (REPO / "images/airflow/Dockerfile", ["requirements.lock"]),
    ],
    ids=["pipeline", "airflow"],
)
def test_each_image_installs_its_locks_with_hashes_required(dockerfile: Path, locks: list[str]) -> None:
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    installs = re.findall(r"pip install ([^&\n]*)", text)
    from_lock = {lock: [args for args in installs if f"{lock} " in args + " "] for lock in locks}
    for lock, lock_installs in from_lock.items():
        assert lock_installs, f"{dockerfile} never installs {lock}"
        assert all("--require-hashes" in args and "--no-deps" in args for args in lock_installs), lock_installs
    # Anything else pip installs is the package's own source, never a download.
    locked_installs = [args for lock_installs in from_lock.values() for args in lock_installs]
    assert all(args.split()[-1] == "/src" for args in installs if args not in locked_installs), installs


def test_lock_problems_names_each_fault() -> None:
    lock = locked("numpy==2.4.6 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via pandas\npandas==3.1.0\ntorch>=2\n")
    wanted = [Requirement("numpy==2.4.6"), Requirement("pandas==3.1.1"), Requirement("scipy==1.17.1")]

    problems = lock_problems(lock, wanted)

    assert problems == [
        "torch is not pinned with ==",
        "pandas has no --hash",
        "torch has no --hash",
        "pandas==3.1.1 but the lock pins pandas==3.1.0",
        "scipy==1.17.1 is not in the lock",
    ]
