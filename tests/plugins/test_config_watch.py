"""The config watch: one training run when the cluster's config is not the one the newest run record used."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from embedded.stack import PIPELINE_CONFIG_MANIFEST
from privacy_pipeline_airflow import config_watch
from privacy_pipeline_airflow.settings import PipelineSettings

CONFIG_TEXT = yaml.safe_load(PIPELINE_CONFIG_MANIFEST.read_text(encoding="utf-8"))["data"]["pipeline.yaml"]
CURRENT = hashlib.sha256(CONFIG_TEXT.encode("utf-8")).hexdigest()


class _Blob:
    def __init__(self, objects: dict[str, bytes], name: str) -> None:
        self.name, self._objects = name, objects

    def download_as_bytes(self) -> bytes:
        return self._objects[self.name]


class _Bucket:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self._objects = objects

    def blob(self, name: str) -> _Blob:
        return _Blob(self._objects, name)


class _Client:
    """The few google.cloud.storage.Client calls the watch makes, over a dict of object names."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def list_blobs(self, bucket: str, prefix: str = "") -> list[_Blob]:
        return [_Blob(self.objects, name) for name in sorted(self.objects) if name.startswith(prefix)]

    def bucket(self, name: str) -> _Bucket:
        return _Bucket(self.objects)


def _record(version: str, config_hash: str | None) -> tuple[str, bytes]:
    record = {"version": version} | ({"config_source_sha256": config_hash} if config_hash else {})
    return f"registry/runs/{version}.json", json.dumps(record).encode()


PARTITIONS = {
    "raw/privacy_intent/ds=2026-11-20/part-0000.csv": b"x",
    "raw/privacy_intent/ds=2026-11-22/part-0000.parquet": b"x",
    # Not data: a marker only, and a folder that is no partition.
    "raw/privacy_intent/ds=2026-11-23/_SUCCESS": b"",
    "raw/privacy_intent/manual-a/part-0000.csv": b"x",
}


@pytest.fixture
def settings(cluster_file: Path) -> PipelineSettings:
    return PipelineSettings(pod_runtime="local", local_cluster_file=str(cluster_file))


def _triggers(monkeypatch: pytest.MonkeyPatch, settings: PipelineSettings, objects: dict[str, bytes]) -> list[dict]:
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    monkeypatch.setattr(GCSHook, "get_conn", lambda self: _Client(objects))
    return config_watch.config_triggers(settings)


def test_the_hash_is_of_the_bytes_every_stage_pod_reads(settings: PipelineSettings) -> None:
    assert config_watch.read_cluster_config(settings) == CONFIG_TEXT
    assert config_watch.content_hash(CONFIG_TEXT) == CURRENT


def test_a_changed_config_starts_one_run_on_the_latest_partition(monkeypatch, settings) -> None:
    objects = dict([_record("20261122T020000Z-aaaaaaaa", "0" * 64)]) | PARTITIONS

    triggers = _triggers(monkeypatch, settings, objects)

    assert triggers == [
        {"trigger_run_id": f"config__{CURRENT[:16]}", "conf": {"data_prefix": "raw/privacy_intent/ds=2026-11-22/"}}
    ]


def test_the_same_config_starts_none(monkeypatch, settings) -> None:
    objects = dict([_record("20261122T020000Z-aaaaaaaa", CURRENT)]) | PARTITIONS
    assert _triggers(monkeypatch, settings, objects) == []


def test_the_newest_run_record_decides(monkeypatch, settings) -> None:
    older_other = _record("20261121T020000Z-bbbbbbbb", "0" * 64)
    newer_same = _record("20261122T020000Z-aaaaaaaa", CURRENT)
    assert _triggers(monkeypatch, settings, dict([older_other, newer_same]) | PARTITIONS) == []
    older_same = _record("20261121T020000Z-bbbbbbbb", CURRENT)
    newer_other = _record("20261122T020000Z-aaaaaaaa", "0" * 64)
    assert len(_triggers(monkeypatch, settings, dict([older_same, newer_other]) | PARTITIONS)) == 1


def test_a_run_record_from_before_config_hashes_counts_as_another_config(monkeypatch, settings) -> None:
    objects = dict([_record("20261122T020000Z-aaaaaaaa", None)]) | PARTITIONS
    assert len(_triggers(monkeypatch, settings, objects)) == 1


def test_without_any_registered_run_or_any_partition_nothing_starts(monkeypatch, settings) -> None:
    assert _triggers(monkeypatch, settings, dict(PARTITIONS)) == []
    assert _triggers(monkeypatch, settings, dict([_record("20261122T020000Z-aaaaaaaa", "0" * 64)])) == []


def test_a_changed_file_changes_the_run_id(monkeypatch, settings, cluster_file: Path) -> None:
    objects = dict([_record("20261122T020000Z-aaaaaaaa", "0" * 64)]) | PARTITIONS
    first = _triggers(monkeypatch, settings, objects)[0]["trigger_run_id"]
    changed = CONFIG_TEXT.replace("max_bad_row_fraction: 0.02", "max_bad_row_fraction: 0.03")
    manifests = list(yaml.safe_load_all(cluster_file.read_text(encoding="utf-8")))
    for manifest in manifests:
        if manifest["metadata"]["name"] == "privacy-pipeline-config":
            manifest["data"]["pipeline.yaml"] = changed
    cluster_file.write_text(yaml.safe_dump_all(manifests), encoding="utf-8")

    second = _triggers(monkeypatch, settings, objects)[0]["trigger_run_id"]

    assert second == "config__" + hashlib.sha256(changed.encode("utf-8")).hexdigest()[:16] != first


def test_no_configmap_setting_means_nothing_to_watch(monkeypatch, cluster_file: Path) -> None:
    settings = PipelineSettings(pod_runtime="local", local_cluster_file=str(cluster_file), pipeline_configmap="")
    assert _triggers(monkeypatch, settings, dict([_record("20261122T020000Z-aaaaaaaa", "0" * 64)])) == []
