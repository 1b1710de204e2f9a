"""The image runtime runs the rendered pod inside the stage image: its command, env and volumes, as uid 10001.

A stand-in ``buildah`` on PATH records what it is asked to do and plays the
stage, so these run without an image; tests/images/test_image.py runs the real one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from airflow.providers.common.compat.sdk import AirflowException

from embedded.stack import embedded_stack
from privacy_pipeline_airflow.image_runtime import image_command
from privacy_pipeline_airflow.local_runtime import PodFailed, run_pod
from privacy_pipeline_airflow.settings import PipelineSettings
from privacy_pipeline_airflow.stage_pod import StagePodOperator, stage_pod_kwargs

FAKE_BUILDAH = """\
#!/usr/bin/env python3
# Stands in for buildah: from/rm are logged; run plays the stage inside the "container".
import json, os, sys
log = os.path.join(os.path.dirname(os.path.abspath(__file__)), "buildah.log")
verb, args = sys.argv[1], sys.argv[2:]
with open(log, "a") as handle:
    handle.write(json.dumps([verb, *args]) + "\\n")
if verb == "from":
    if args[-1] == "missing:1":
        print(f"Error: {args[-1]}: image not known", file=sys.stderr)
        sys.exit(125)
    print(args[args.index("--name") + 1])
elif verb == "run":
    split = args.index("--")
    options, command = args[: split - 1], args[split + 1 :]
    volumes = {}
    env = {}
    for flag, value in zip(options, options[1:]):
        if flag == "--volume":
            source, target, mode = value.split(":")
            volumes[target] = [source, mode]
        elif flag == "--env":
            name, _, val = value.partition("=")
            env[name] = val
    if "fail" in command:
        print("error: validate: 3 rows in part-0001.csv have 583-dim embeddings (expected 584)", file=sys.stderr)
        sys.exit(2)
    xcom_dir = volumes["/airflow/xcom"][0]
    credentials = volumes.get("/var/run/secrets/gcp")
    payload = {
        "command": command,
        "user": options[options.index("--user") + 1],
        "isolation": options[options.index("--isolation") + 1],
        "container": args[split - 1],
        "env": env,
        "volumes": volumes,
        "scratch_writable": oct(os.stat(volumes["/tmp"][0]).st_mode & 0o777),
        "credentials": open(os.path.join(credentials[0], "credentials.json")).read() if credentials else None,
        "buildah_env": sorted(os.environ),
    }
    with open(os.path.join(xcom_dir, "return.json"), "w") as handle:
        json.dump(payload, handle)
    print("fake: done")
"""


@pytest.fixture
def fake_buildah(tmp_path: Path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    buildah = bin_dir / "buildah"
    buildah.write_text(FAKE_BUILDAH, encoding="utf-8")
    buildah.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir / "buildah.log"


def _settings(cluster_file: Path, **overrides: str) -> PipelineSettings:
    return PipelineSettings(
        pod_runtime="image", local_cluster_file=str(cluster_file), image="privacy-intent-pipeline:0.1.0", **overrides
    )


def _pod(settings: PipelineSettings, args: list[str]):
    operator = StagePodOperator(task_id="validate", arguments=args, **stage_pod_kwargs("validate", settings))
    return operator.build_pod_request_obj(None, dry_run=True)


def _calls(log_file: Path) -> list[list[str]]:
    return [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]


def test_runs_the_pods_command_in_the_image_as_uid_10001(fake_buildah, cluster_file, monkeypatch) -> None:
    monkeypatch.setenv("HOST_ONLY_CANARY", "must-not-leak")
    settings = _settings(cluster_file)
    pod = _pod(settings, ["validate", "--run", "gs://b/runs/r1/"])

    xcom = run_pod(pod, runtime="image", settings=settings, log=logging.getLogger("test"))

    assert xcom["command"] == ["privacy-pipeline", "validate", "--run", "gs://b/runs/r1/"]
    assert xcom["user"] == "10001:10001"
    assert xcom["isolation"] == "chroot"
    env = xcom["env"]
    assert env["GOOGLE_CLOUD_PROJECT"] == "demo-project"  # envFrom the ConfigMap
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9023"  # reachable: the host's network
    assert env["POD_NAME"] == pod.metadata.name
    # The image's own ENV and paths apply inside it: nothing is re-pointed at host directories.
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/run/secrets/gcp/credentials.json"
    assert {"HOME", "PATH", "XCOM_RETURN_PATH", "HOST_ONLY_CANARY"}.isdisjoint(env)
    assert "HOST_ONLY_CANARY" not in xcom["buildah_env"]
    volumes = xcom["volumes"]
    assert volumes["/tmp"][1] == volumes["/airflow/xcom"][1] == "rw"
    assert volumes["/var/run/secrets/gcp"][1] == "ro"
    assert xcom["credentials"] == '{"type": "service_account"}'
    # Like an emptyDir, scratch is writable by uid 10001 whoever created it.
    assert xcom["scratch_writable"] == "0o777"


def test_the_working_container_is_made_from_the_image_and_removed(fake_buildah, cluster_file) -> None:
    settings = _settings(cluster_file)

    xcom = run_pod(
        _pod(settings, ["validate", "--run", "r"]), runtime="image", settings=settings, log=logging.getLogger("t")
    )

    verbs = [call[0] for call in _calls(fake_buildah)]
    assert verbs == ["from", "run", "rm"]
    made = _calls(fake_buildah)[0]
    assert made[-1] == "privacy-intent-pipeline:0.1.0" and "--pull=never" in made
    assert _calls(fake_buildah)[2][-1] == xcom["container"]


def test_local_image_overrides_the_pods_image(fake_buildah, cluster_file) -> None:
    settings = _settings(cluster_file, local_image="localhost/privacy-intent-pipeline:dev")

    run_pod(_pod(settings, ["validate", "--run", "r"]), runtime="image", settings=settings, log=logging.getLogger("t"))

    assert _calls(fake_buildah)[0][-1] == "localhost/privacy-intent-pipeline:dev"


def test_a_failing_stage_reports_its_reason_and_the_container_is_removed(fake_buildah, cluster_file) -> None:
    settings = _settings(cluster_file)
    pod = _pod(settings, ["validate", "--run", "r", "fail"])

    with pytest.raises(PodFailed, match=r"validate: 3 rows in part-0001.csv have 583-dim"):
        run_pod(pod, runtime="image", settings=settings, log=logging.getLogger("test"))

    assert [call[0] for call in _calls(fake_buildah)] == ["from", "run", "rm"]


def test_a_missing_image_says_how_to_build_it(fake_buildah, cluster_file) -> None:
    settings = _settings(cluster_file, local_image="missing:1")

    with pytest.raises(
        AirflowException, match=r"image 'missing:1' \(Error: missing:1: image not known\); .*make image"
    ):
        run_pod(_pod(settings, ["validate"]), runtime="image", settings=settings, log=logging.getLogger("test"))


def test_without_buildah_it_says_how_to_get_it(cluster_file, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    settings = _settings(cluster_file)

    with pytest.raises(AirflowException, match="buildah is not installed; `make image` installs it"):
        run_pod(_pod(settings, ["validate"]), runtime="image", settings=settings, log=logging.getLogger("test"))


def test_image_command_shape(fake_buildah, tmp_path) -> None:
    argv = image_command(
        "ctr-1",
        ["privacy-pipeline", "ingest"],
        env={"A": "1"},
        mounts={"/tmp": tmp_path, "/secrets": tmp_path},
        read_only={"/secrets"},
    )

    assert argv[1:] == [
        "run", "--isolation", "chroot", "--network", "host", "--user", "10001:10001",
        "--volume", f"{tmp_path}:/secrets:ro", "--volume", f"{tmp_path}:/tmp:rw",
        "--env", "A=1", "ctr-1", "--", "privacy-pipeline", "ingest",
    ]  # fmt: skip


@pytest.mark.parametrize(("asked", "runtime"), [("image", "image"), (None, "local"), ("kubernetes", "local")])
def test_the_demo_stack_runs_pods_in_the_image_only_when_asked(asked, runtime, tmp_path, monkeypatch) -> None:
    # `PIPELINE_POD_RUNTIME=image make demo`; the embedded stack has no cluster, so anything else runs locally.
    if asked is None:
        monkeypatch.delenv("PIPELINE_POD_RUNTIME", raising=False)
    else:
        monkeypatch.setenv("PIPELINE_POD_RUNTIME", asked)

    with embedded_stack(tmp_path / "stack", in_memory=True) as stack:
        assert stack.env["PIPELINE_POD_RUNTIME"] == runtime
