"""rollback: the champion back to an earlier registered version in one compare-and-swap step, with history.

The registry is built with the registry module's own calls (run records,
model files, champion moves), so these tests need no trained models; each
compare-and-swap test runs on a local path and on gs:// against the
precondition-enforcing emulator (conftest's ``bucket_root``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from privacy_pipeline import cli, registry, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.stages import rollback

CONFIG = PipelineConfig()
VERSIONS = ("20261120T020000Z-aaaaaaaa", "20261121T020000Z-bbbbbbbb", "20261122T020000Z-cccccccc")


def _registered(registry_uri: str, version: str) -> None:
    layout = RegistryLayout(registry_uri)
    storage.write_bytes(layout.model(version), f"model {version}".encode())
    storage.write_json(
        layout.run_record(version),
        {"version": version, "run_uri": f"gs://bucket/runs/{version}/", "candidate_f1_macro": 0.8, "promoted": True},
    )


def _promote(registry_uri: str, version: str) -> None:
    """Register ``version`` and make it champion, as register does after a passing gate."""
    _registered(registry_uri, version)

    def decide(current: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "version": version,
            "model_uri": RegistryLayout(registry_uri).model(version),
            "f1_macro": 0.8,
            "run_uri": f"gs://bucket/runs/{version}/",
            "promoted_at": "2026-11-2" + version[7] + "T02:00:00Z",
            "previous_version": current["version"] if current else None,
            "action": "promote",
            "by": "register",
            "reason": "promoted: test",
        }

    registry.cas_update_champion(registry_uri, decide)


def _state(registry_uri: str) -> dict[str, bytes]:
    return {uri: storage.read_bytes(uri) for uri in storage.list_uris(registry_uri)}


@pytest.fixture
def registry_uri(bucket_root: str) -> str:
    """A registry where VERSIONS[0] was promoted, then VERSIONS[1]; VERSIONS[2] is registered, never champion."""
    uri = storage.join(bucket_root, "registry")
    _promote(uri, VERSIONS[0])
    _promote(uri, VERSIONS[1])
    _registered(uri, VERSIONS[2])
    return uri


def test_a_default_rollback_restores_the_previous_champion_and_records_who_when_why(registry_uri: str) -> None:
    result = rollback.run(config=CONFIG, registry_uri=registry_uri, by="alice", reason="bad canary")

    assert result.xcom["moved"] is True
    assert result.xcom["champion_version"] == VERSIONS[0] and result.xcom["previous_champion"] == VERSIONS[1]
    assert result.summary == f"rollback: champion moved from {VERSIONS[1]} to {VERSIONS[0]} by alice"
    champion = registry.champion(registry_uri)
    assert champion["version"] == VERSIONS[0]
    assert champion["model_uri"] == RegistryLayout(registry_uri).model(VERSIONS[0])
    assert champion["previous_version"] == VERSIONS[1]
    assert (champion["action"], champion["by"], champion["reason"]) == ("rollback", "alice", "bad canary")
    assert champion["promoted_at"].endswith("Z")
    history = registry.champion_history(registry_uri)
    assert [(move["action"], move["version"]) for move in history] == [
        ("promote", VERSIONS[0]),
        ("promote", VERSIONS[1]),
        ("rollback", VERSIONS[0]),
    ]
    assert history[-1] == champion


def test_a_second_default_rollback_is_a_no_op(registry_uri: str) -> None:
    rollback.run(config=CONFIG, registry_uri=registry_uri, by="alice")
    before = _state(registry_uri)

    again = rollback.run(config=CONFIG, registry_uri=registry_uri, by="alice")

    assert again.xcom["moved"] is False
    assert again.xcom["champion_version"] == VERSIONS[0]
    assert "set by a rollback" in again.xcom["note"]
    assert _state(registry_uri) == before


def test_rolling_back_to_the_current_champion_is_a_no_op(registry_uri: str) -> None:
    before = _state(registry_uri)
    result = rollback.run(config=CONFIG, registry_uri=registry_uri, to=VERSIONS[1])
    assert result.xcom["moved"] is False
    assert result.summary == f"rollback: nothing to do, {VERSIONS[1]} is already the champion"
    assert _state(registry_uri) == before


def test_the_same_named_rollback_twice_moves_once(registry_uri: str) -> None:
    first = rollback.run(config=CONFIG, registry_uri=registry_uri, to=VERSIONS[0])
    after_first = _state(registry_uri)
    second = rollback.run(config=CONFIG, registry_uri=registry_uri, to=VERSIONS[0])
    assert (first.xcom["moved"], second.xcom["moved"]) == (True, False)
    assert _state(registry_uri) == after_first


def test_any_registered_version_can_be_named(registry_uri: str) -> None:
    result = rollback.run(config=CONFIG, registry_uri=registry_uri, to=VERSIONS[2], by="bob")
    assert result.xcom["moved"] is True
    assert registry.champion(registry_uri)["version"] == VERSIONS[2]


@pytest.mark.parametrize("version", ["20991231T000000Z-deadbeef", "../champion"], ids=["unknown", "not-a-version"])
def test_a_version_that_is_not_registered_is_refused_and_nothing_changes(registry_uri: str, version: str) -> None:
    before = _state(registry_uri)
    with pytest.raises(StageError, match=rf"rollback: {version.replace('.', '[.]')} is not a registered model version"):
        rollback.run(config=CONFIG, registry_uri=registry_uri, to=version)
    assert _state(registry_uri) == before


def test_a_version_with_a_model_file_but_no_run_record_is_refused(registry_uri: str) -> None:
    # Written by a register that died before its run record: not a registered model.
    orphan = "20261123T020000Z-dddddddd"
    storage.write_bytes(RegistryLayout(registry_uri).model(orphan), b"model")
    before = _state(registry_uri)
    with pytest.raises(StageError, match=f"rollback: {orphan} is not a registered model version"):
        rollback.run(config=CONFIG, registry_uri=registry_uri, to=orphan)
    assert _state(registry_uri) == before


def test_without_a_champion_or_a_previous_one_there_is_nothing_to_roll_back(tmp_path: Path) -> None:
    empty = str(tmp_path / "empty")
    with pytest.raises(StageError, match="has no champion yet; there is nothing to roll back"):
        rollback.run(config=CONFIG, registry_uri=empty)
    _promote(empty, VERSIONS[0])
    with pytest.raises(StageError, match=f"champion {VERSIONS[0]} was the first champion"):
        rollback.run(config=CONFIG, registry_uri=empty)


def test_a_rollback_that_loses_the_race_re_decides_against_the_new_champion(
    registry_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promotion lands between the rollback's read and its swap: the rollback undoes that promotion instead."""
    real_read = registry.read_champion
    raced: list[bool] = []

    def read_then_lose_the_race(uri: str) -> registry.ChampionSnapshot:
        snapshot = real_read(uri)
        if not raced:
            raced.append(True)
            _promote(registry_uri, VERSIONS[2])
        return snapshot

    monkeypatch.setattr(registry, "read_champion", read_then_lose_the_race)
    result = rollback.run(config=CONFIG, registry_uri=registry_uri, by="alice")

    assert raced and result.xcom["moved"] is True
    assert result.xcom["previous_champion"] == VERSIONS[2]
    champion = registry.champion(registry_uri)
    assert champion["version"] == VERSIONS[1] and champion["previous_version"] == VERSIONS[2]
    assert [(m["action"], m["version"]) for m in registry.champion_history(registry_uri)][-2:] == [
        ("promote", VERSIONS[2]),
        ("rollback", VERSIONS[1]),
    ]


def test_the_cli_refuses_an_unknown_version_in_one_line(registry_uri: str, capsys: pytest.CaptureFixture) -> None:
    before = _state(registry_uri)
    code = cli.main(["rollback", "--registry", registry_uri, "--to", "nope"])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_STAGE_ERROR
    assert err.startswith("error: rollback: nope is not a registered model version") and "\n" not in err
    assert _state(registry_uri) == before


def test_the_cli_rolls_back_with_the_requester_from_the_environment(
    registry_uri: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(rollback.REQUESTED_BY_ENV, "airflow:carol")
    # An empty --to, as the DAG's Param renders when left blank, means "the previous champion".
    assert cli.main(["rollback", "--registry", registry_uri, "--to", "", "--reason", ""]) == 0
    assert capsys.readouterr().out.strip().endswith(f"to {VERSIONS[0]} by airflow:carol")
    champion = registry.champion(registry_uri)
    assert champion["by"] == "airflow:carol" and champion["reason"] == f"rollback from {VERSIONS[1]}"


# --- the vector store's latest.json --------------------------------------------------------------------------


@pytest.fixture
def store_uri(bucket_root: str) -> str:
    """A store whose latest is VERSIONS[1], built on VERSIONS[0]."""
    from privacy_pipeline.conversations import vector_store

    uri = storage.join(bucket_root, "store")
    layout = vector_store.StoreLayout(uri)
    for parent, version in ((None, VERSIONS[0]), (VERSIONS[0], VERSIONS[1])):
        storage.write_json(
            layout.manifest(version),
            {"version": version, "parent_version": parent, "created_at": "2026-11-21T03:30:00Z"},
        )
    pointer = {"version": VERSIONS[1], "manifest_uri": layout.manifest(VERSIONS[1]), "published_at": "x"}
    storage.compare_and_swap(layout.latest, storage.json_bytes(pointer), 0)
    return uri


def test_a_store_rollback_goes_back_to_the_parent_version_once(store_uri: str) -> None:
    from privacy_pipeline.conversations import vector_store

    result = rollback.run(config=CONFIG, store_uri=store_uri, by="alice", reason="bad index")
    assert result.xcom["moved"] is True and result.xcom["latest_version"] == VERSIONS[0]
    latest = vector_store.read_latest(store_uri, "test").pointer
    assert latest is not None
    assert (latest["version"], latest["previous_version"], latest["by"], latest["reason"]) == (
        VERSIONS[0],
        VERSIONS[1],
        "alice",
        "bad index",
    )
    before = _state(store_uri)
    again = rollback.run(config=CONFIG, store_uri=store_uri, by="alice")
    assert again.xcom["moved"] is False and _state(store_uri) == before


def test_a_store_rollback_to_an_unpublished_version_is_refused(store_uri: str) -> None:
    before = _state(store_uri)
    with pytest.raises(StageError, match=f"rollback: {VERSIONS[2]} is not a published version of the store"):
        rollback.run(config=CONFIG, store_uri=store_uri, to=VERSIONS[2])
    assert _state(store_uri) == before


def test_the_cli_takes_exactly_one_of_registry_and_store(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli.main(["rollback", "--registry", str(tmp_path / "r"), "--store", str(tmp_path / "s")])
    with pytest.raises(SystemExit):
        cli.main(["rollback"])
