"""Every stage pod mounts the pipeline config ConfigMap read-only and runs with --config pointing at it.

The local runtime gives the stage the ConfigMap's own bytes at that path, and a bad config there stops the
stage's pod with one line naming the key.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag
from rendered_pods import render_pod

from embedded.stack import PIPELINE_BIN, PIPELINE_CONFIG_MANIFEST, REPO
from privacy_pipeline_airflow.local_runtime import PodFailed, run_pod
from privacy_pipeline_airflow.pod_contract import PIPELINE_CONFIG_FILE, PIPELINE_CONFIG_MOUNT
from privacy_pipeline_airflow.settings import PipelineSettings
from privacy_pipeline_airflow.stage_pod import StagePodOperator, stage_arguments, stage_pod_kwargs

CONFIG_TEXT = yaml.safe_load(PIPELINE_CONFIG_MANIFEST.read_text(encoding="utf-8"))["data"]["pipeline.yaml"]

# Stands in for the stage CLI: returns the bytes of the file its --config names, and where that file was.
FAKE_STAGE_CLI = """\
#!/usr/bin/env python3
import hashlib, json, os, sys
path = sys.argv[sys.argv.index("--config") + 1]
content = open(path, "rb").read()
with open(os.environ["XCOM_RETURN_PATH"], "w") as handle:
    json.dump({"path": path, "sha256": hashlib.sha256(content).hexdigest()}, handle)
"""


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(REPO / "dags"))


def _stage_tasks(dagbag: DagBag) -> list[tuple[str, str]]:
    return [
        (dag_id, task.task_id)
        for dag_id, dag in sorted(dagbag.dags.items())
        for task in dag.tasks
        if isinstance(task, StagePodOperator)
    ]


def test_every_stage_pod_of_every_dag_mounts_the_config_read_only_and_gets_config(dagbag: DagBag) -> None:
    tasks = _stage_tasks(dagbag)
    assert {"privacy_intent_training", "daily_conversations"} <= {dag_id for dag_id, _ in tasks}
    for dag_id, task_id in tasks:
        pod = render_pod(dagbag.dags[dag_id], task_id, ds="2026-11-20", run_id="manual__x")
        volume = next(v for v in pod.spec.volumes if v.config_map is not None)
        assert volume.config_map.name == "privacy-pipeline-config", task_id
        assert not volume.config_map.optional
        container = pod.spec.containers[0]
        mount = next(m for m in container.volume_mounts if m.name == volume.name)
        assert (mount.mount_path, mount.read_only) == (PIPELINE_CONFIG_MOUNT, True), task_id
        assert container.args[:2] == ["--config", PIPELINE_CONFIG_FILE], task_id


def test_the_mapped_tune_pods_get_the_config_too() -> None:
    assert stage_arguments("tune", "--run", "gs://b/runs/r/")[:2] == ["--config", PIPELINE_CONFIG_FILE]


def _pod(settings: PipelineSettings, args: list[str]):
    operator = StagePodOperator(task_id="ingest", arguments=args, **stage_pod_kwargs("ingest", settings))
    return operator.build_pod_request_obj(None, dry_run=True)


def test_the_local_runtime_gives_the_stage_the_configmaps_bytes_at_the_mount(tmp_path: Path, cluster_file) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "privacy-pipeline").write_text(FAKE_STAGE_CLI, encoding="utf-8")
    (bin_dir / "privacy-pipeline").chmod(0o755)
    settings = PipelineSettings(pod_runtime="local", local_bin_dir=str(bin_dir), local_cluster_file=str(cluster_file))

    xcom = run_pod(
        _pod(settings, stage_arguments("ingest", "--run", "gs://b/runs/r/")),
        runtime="local",
        settings=settings,
        log=logging.getLogger("test"),
    )

    assert xcom["sha256"] == hashlib.sha256(CONFIG_TEXT.encode("utf-8")).hexdigest()
    assert xcom["path"].endswith("/pipeline.yaml") and not xcom["path"].startswith(PIPELINE_CONFIG_MOUNT)


def test_a_bad_config_in_the_cluster_fails_the_first_stage_pod_with_one_line_naming_the_key(tmp_path: Path) -> None:
    manifest = yaml.safe_load(PIPELINE_CONFIG_MANIFEST.read_text(encoding="utf-8"))
    manifest["data"]["pipeline.yaml"] = CONFIG_TEXT.replace("max_bad_row_fraction: 0.02", "max_bad_row_fraction: 2")
    env_config_map = {"kind": "ConfigMap", "metadata": {"name": "privacy-pipeline-env"}, "data": {}}
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump_all([env_config_map, manifest]), encoding="utf-8")
    settings = PipelineSettings(
        pod_runtime="local",
        local_bin_dir=str(PIPELINE_BIN),
        local_cluster_file=str(cluster_file),
        gcp_credentials_secret="",
    )
    missing_source = tmp_path / "no-such-partition"
    pod = _pod(settings, stage_arguments("ingest", "--source", str(missing_source), "--run", str(tmp_path / "run")))

    with pytest.raises(PodFailed) as failure:
        run_pod(pod, runtime="local", settings=settings, log=logging.getLogger("test"))

    # The config is judged first: the missing source is never reached.
    assert failure.value.message.startswith("config: ")
    assert "validate.max_bad_row_fraction" in failure.value.message
    assert "\n" not in failure.value.message
    assert not (tmp_path / "run").exists()
