"""retention: exactly the unreferenced old objects go, on a local directory and on gs://.

The bucket holds old and recent run prefixes (training and conversations), four registered model
versions with a champion history, and three vector-store versions with ``latest`` rolled back to the
middle one. The old objects are written, then the recent ones a little later, and retention runs with
``now`` one ``run_max_age_days`` after the moment between the two: what was written before it is old.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from privacy_pipeline import cli, registry, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.conversations.vector_store import StoreLayout
from privacy_pipeline.errors import StageError
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.stages import retention

CONFIG = PipelineConfig.model_validate(
    {"retention": {"run_max_age_days": 1, "keep_model_versions": 2, "keep_store_versions": 1}}
)
V1, V2, V3, V4 = (f"2026110{day}T020000Z-0000000{day}" for day in (1, 2, 3, 4))
S1, S2, S3 = (f"2026110{day}T030000Z-aaaaaaa{day}" for day in (1, 2, 3))


def _run(root: str, name: str) -> str:
    run_uri = storage.join(root, "runs", name) + "/"
    storage.write_bytes(storage.join(run_uri, "ingest", "snapshot.parquet"), b"rows of " + name.encode())
    storage.write_json(storage.join(run_uri, "ingest", "_result.json"), {"stage": "ingest"})
    return run_uri


def _register(root: str, version: str, run_uri: str) -> None:
    registry_uri = storage.join(root, "registry")
    layout = RegistryLayout(registry_uri)
    storage.write_json(layout.by_run(run_uri), {"run_uri": run_uri.rstrip("/"), "version": version})
    storage.write_bytes(layout.model(version), b"model " + version.encode())
    storage.write_json(layout.metadata(version), {"version": version, "run_uri": run_uri})
    storage.write_json(layout.run_record(version), {"version": version, "run_uri": run_uri})


def _champion(root: str, generation: int, version: str, run_uri: str, previous: str | None) -> None:
    layout = RegistryLayout(storage.join(root, "registry"))
    pointer = {
        "version": version,
        "model_uri": layout.model(version),
        "run_uri": run_uri,
        "previous_version": previous,
        "action": "promote",
    }
    storage.write_json(layout.champion, pointer)
    storage.write_json(layout.history_entry(generation), pointer)


def _publish(root: str, version: str, run_uri: str, latest: bool) -> None:
    store = StoreLayout(storage.join(root, "vector_store", "conversations"))
    storage.write_bytes(store.index(version), b"index " + version.encode())
    storage.write_json(store.manifest(version), {"version": version, "run_uri": run_uri})
    if latest:
        storage.write_json(store.latest, {"version": version, "manifest_uri": store.manifest(version)})


def _bucket(root: str) -> tuple[datetime, dict[str, Any]]:
    """The bucket described above; returns the moment between old and recent writes, and the names used."""
    old = {name: _run(root, name) for name in ("champion-once", "dropped-version", "kept-version", "unreferenced")}
    old["conversations/in-latest"] = _run(root, "conversations/in-latest")
    old["conversations/in-old-version"] = _run(root, "conversations/in-old-version")
    old["conversations/unreferenced"] = _run(root, "conversations/unreferenced")
    _register(root, V1, old["champion-once"])
    _register(root, V2, old["dropped-version"])
    _register(root, V3, old["kept-version"])
    _champion(root, 1, V1, old["champion-once"], None)
    _champion(root, 2, V3, old["kept-version"], V1)
    _publish(root, S1, old["conversations/in-old-version"], latest=False)
    _publish(root, S2, old["conversations/in-latest"], latest=True)
    # Timestamps on both schemes are at least this fine; nothing asserts on time, only on order.
    time.sleep(1.1)
    between = datetime.now(UTC)
    time.sleep(1.1)
    recent = {name: _run(root, name) for name in ("recent", "conversations/recent", "newest-version")}
    _register(root, V4, recent["newest-version"])
    _publish(root, S3, recent["conversations/recent"], latest=False)
    return between, {**old, **recent}


def _retention(root: str, between: datetime, dry_run: bool) -> dict[str, Any]:
    return retention.run(
        config=CONFIG,
        runs_uri=storage.join(root, "runs") + "/",
        registry_uri=storage.join(root, "registry") + "/",
        store_uri=storage.join(root, "vector_store", "conversations") + "/",
        report_uri=storage.join(root, "retention", "report.json"),
        dry_run=dry_run,
        now=between + timedelta(days=CONFIG.retention.run_max_age_days),
    ).xcom


def _expected_gone(root: str, runs: dict[str, Any]) -> set[str]:
    layout = RegistryLayout(storage.join(root, "registry"))
    store = StoreLayout(storage.join(root, "vector_store", "conversations"))
    gone = {
        uri
        for name in ("unreferenced", "dropped-version", "conversations/unreferenced", "conversations/in-old-version")
        for uri in storage.list_uris(runs[name])
    }
    gone |= {layout.model(V2), layout.metadata(V2), layout.run_record(V2), layout.by_run(runs["dropped-version"])}
    gone |= {store.index(S1), store.manifest(S1)}
    return gone


def test_retention_deletes_exactly_the_unreferenced_old_objects(bucket_root: str) -> None:
    between, runs = _bucket(bucket_root)
    before = set(storage.list_uris(bucket_root))
    expected_gone = _expected_gone(bucket_root, runs)

    xcom = _retention(bucket_root, between, dry_run=False)

    after = set(storage.list_uris(bucket_root))
    report_uri = storage.join(bucket_root, "retention", "report.json")
    assert before - after == expected_gone
    assert after - before == {report_uri}
    assert sorted(xcom["runs"]) == sorted(
        runs[name]
        for name in ("unreferenced", "dropped-version", "conversations/unreferenced", "conversations/in-old-version")
    )
    assert xcom["model_versions"] == [V2]
    assert xcom["store_versions"] == [S1]
    assert xcom["counts"]["objects"] == len(expected_gone)
    report = storage.read_json(report_uri)
    assert report["dry_run"] is False
    assert {entry["version"] for entry in report["deleted"]["model_versions"]} == {V2}
    assert report["kept"]["model_versions"] == [V1, V3, V4]
    assert sorted(report["kept"]["runs_referenced"]) == sorted(
        runs[name] for name in ("champion-once", "kept-version", "conversations/in-latest")
    )
    # The champion and its history are untouched, and rollback can still reach every version ever champion.
    assert registry.champion(storage.join(bucket_root, "registry"))["version"] == V3
    assert [entry["version"] for entry in registry.champion_history(storage.join(bucket_root, "registry"))] == [V1, V3]

    # Nothing left to delete: a second run deletes nothing.
    again = _retention(bucket_root, between, dry_run=False)
    assert again["counts"]["objects"] == 0


def test_a_dry_run_deletes_nothing_and_reports_what_would_go(bucket_root: str) -> None:
    between, runs = _bucket(bucket_root)
    before = {uri: storage.read_bytes(uri) for uri in storage.list_uris(bucket_root)}

    xcom = _retention(bucket_root, between, dry_run=True)

    report_uri = storage.join(bucket_root, "retention", "report.json")
    after = {uri: storage.read_bytes(uri) for uri in storage.list_uris(bucket_root) if uri != report_uri}
    assert after == before
    assert xcom["dry_run"] is True
    assert xcom["counts"]["objects"] == len(_expected_gone(bucket_root, runs))
    report = storage.read_json(report_uri)
    assert {entry["version"] for entry in report["would_delete"]["model_versions"]} == {V2}
    assert "deleted" not in report


def test_the_cli_takes_the_dags_dry_run_flag(tmp_path, monkeypatch) -> None:
    root = str(tmp_path / "bucket")
    old = _run(root, "old")
    monkeypatch.setenv("XCOM_RETURN_PATH", str(tmp_path / "xcom.json"))
    args = ["--runs", f"{root}/runs/", "--registry", f"{root}/registry/", "--store", f"{root}/store/"]
    report = f"{root}/retention/report.json"
    # Everything here is recent: a dry run and a real one both keep it.
    assert cli.main(["retention", *args, "--report", report, "--dry-run=true"]) == 0
    assert storage.read_json(report)["dry_run"] is True
    assert cli.main(["retention", *args, "--report", report, "--dry-run=false"]) == 0
    assert storage.read_json(report)["dry_run"] is False
    assert storage.list_uris(old)


@pytest.mark.parametrize("runs_uri", ["gs://bucket", "gs://bucket/", "/"])
def test_a_bucket_root_is_refused_as_the_runs_prefix(runs_uri: str, tmp_path) -> None:
    with pytest.raises(StageError, match="bucket root"):
        retention.run(
            config=CONFIG,
            runs_uri=runs_uri,
            registry_uri=str(tmp_path / "registry"),
            store_uri=str(tmp_path / "store"),
            report_uri=str(tmp_path / "report.json"),
        )
