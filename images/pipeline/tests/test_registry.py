"""The registry's building blocks: layout, versions, the by-run index, the champion pointer and its CAS loop.

Every test that stores something runs twice (conftest's ``bucket_root``): on a
local directory and on ``gs://`` against an emulator that enforces generation
preconditions, so both compare-and-swap implementations are held to the same cases.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from privacy_pipeline import registry, storage
from privacy_pipeline.errors import StageError
from privacy_pipeline.registry import RegistryLayout

RUN = "gs://bucket/runs/manual__2026-11-23T02:00:00/"
NOW = datetime(2026, 11, 23, 2, 15, 30, tzinfo=UTC)


def _pointer(version: str, f1: float = 0.8, previous: str | None = None) -> dict:
    return {
        "version": version,
        "model_uri": f"/registry/models/{version}/model.skops",
        "f1_macro": f1,
        "run_uri": f"/runs/{version}",
        "promoted_at": "2026-11-23T02:15:30Z",
        "previous_version": previous,
    }


def _set_champion(registry_uri: str, pointer: dict) -> None:
    snapshot = registry.read_champion(registry_uri)
    storage.compare_and_swap(RegistryLayout(registry_uri).champion, storage.json_bytes(pointer), snapshot.generation)


# --- layout and versions -------------------------------------------------------------------------------------


def test_layout_puts_models_runs_index_and_champion_where_readers_look() -> None:
    layout = RegistryLayout("gs://bucket/registry/")
    assert layout.model("v1") == "gs://bucket/registry/models/v1/model.skops"
    assert layout.metadata("v1") == "gs://bucket/registry/models/v1/metadata.json"
    assert layout.run_record("v1") == "gs://bucket/registry/runs/v1.json"
    assert layout.champion == "gs://bucket/registry/champion.json"
    assert re.fullmatch(r"gs://bucket/registry/by-run/[0-9a-f]{16}\.json", layout.by_run(RUN))


def test_version_is_a_utc_timestamp_plus_the_run_hash() -> None:
    version = registry.version_name(RUN, NOW)
    assert version == f"20261123T021530Z-{registry.run_key(RUN)[:8]}"
    # The same moment written in another zone names the same version.
    assert registry.version_name(RUN, NOW.astimezone(timezone(timedelta(hours=2)))) == version


def test_runs_registered_in_the_same_second_get_different_versions() -> None:
    assert registry.version_name(RUN, NOW) != registry.version_name(RUN + "other", NOW)


def test_a_trailing_slash_does_not_make_another_run() -> None:
    assert registry.run_key(RUN) == registry.run_key(RUN.rstrip("/"))


# --- the by-run index ----------------------------------------------------------------------------------------


def test_a_new_run_claims_a_version_and_a_rerun_gets_the_same_one(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    first = registry.claim_registration(registry_uri, RUN, NOW)
    again = registry.claim_registration(registry_uri, RUN, NOW + timedelta(hours=3))
    assert again == first
    assert first["version"] == registry.version_name(RUN, NOW)
    assert len(storage.list_uris(RegistryLayout(registry_uri).path("by-run"))) == 1


def test_a_different_run_claims_a_different_version(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    first = registry.claim_registration(registry_uri, RUN, NOW)
    other = registry.claim_registration(registry_uri, RUN + "other", NOW)
    assert other["version"] != first["version"]
    assert registry.find_registration(registry_uri, RUN + "other") == other


def test_an_unregistered_run_has_no_registration(bucket_root: str) -> None:
    assert registry.find_registration(storage.join(bucket_root, "registry"), RUN) is None


def test_an_index_entry_of_another_run_is_refused(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    storage.write_json(
        RegistryLayout(registry_uri).by_run(RUN), {"run_uri": "/elsewhere", "version": "v", "registered_at": "t"}
    )
    with pytest.raises(StageError, match="belongs to run /elsewhere"):
        registry.find_registration(registry_uri, RUN)


# --- the champion pointer ------------------------------------------------------------------------------------


def test_an_empty_registry_has_no_champion(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    assert registry.read_champion(registry_uri) == registry.ChampionSnapshot(pointer=None, generation=0)
    assert registry.champion(registry_uri) is None
    assert registry.champion_model_uri(registry_uri) is None


def test_the_champion_and_its_model_uri_are_read_back(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    _set_champion(registry_uri, _pointer("v1"))
    snapshot = registry.read_champion(registry_uri)
    assert snapshot.pointer == _pointer("v1")
    assert snapshot.generation == storage.stat(RegistryLayout(registry_uri).champion).generation > 0
    assert registry.champion_model_uri(registry_uri) == "/registry/models/v1/model.skops"


def test_a_champion_file_that_is_not_a_pointer_is_refused(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    storage.write_json(RegistryLayout(registry_uri).champion, {"f1_macro": 0.9})
    with pytest.raises(StageError, match="champion.json is not a champion pointer"):
        registry.champion(registry_uri)


def test_list_runs_returns_every_record_oldest_first(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    layout = RegistryLayout(registry_uri)
    for version in ["20261123T030000Z-bbbbbbbb", "20261123T020000Z-aaaaaaaa", "20261124T010000Z-cccccccc"]:
        storage.write_json(layout.run_record(version), {"version": version, "promoted": False})
    assert [r["version"] for r in registry.list_runs(registry_uri)] == [
        "20261123T020000Z-aaaaaaaa",
        "20261123T030000Z-bbbbbbbb",
        "20261124T010000Z-cccccccc",
    ]
    assert registry.list_runs(storage.join(bucket_root, "empty")) == []


def test_a_run_record_without_version_is_refused(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    storage.write_json(RegistryLayout(registry_uri).run_record("v1"), {"promoted": True})
    with pytest.raises(StageError, match="v1.json is not a run record"):
        registry.list_runs(registry_uri)


# --- the CAS loop --------------------------------------------------------------------------------------------


def test_cas_update_moves_the_pointer_to_the_decision(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    after = registry.cas_update_champion(registry_uri, lambda current: _pointer("v1"))
    assert after == _pointer("v1")
    assert registry.champion(registry_uri) == _pointer("v1")


def test_cas_update_keeps_the_champion_when_the_decision_is_none(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    _set_champion(registry_uri, _pointer("v1"))
    before = storage.read_bytes(RegistryLayout(registry_uri).champion)
    assert registry.cas_update_champion(registry_uri, lambda current: None) == _pointer("v1")
    assert storage.read_bytes(RegistryLayout(registry_uri).champion) == before


def test_cas_update_re_decides_against_the_champion_that_won_the_race(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    _set_champion(registry_uri, _pointer("v1", f1=0.70))
    seen: list[str] = []

    def decide(current: dict | None) -> dict | None:
        assert current is not None
        seen.append(current["version"])
        if len(seen) == 1:
            # Another registration lands a better champion while we score v1.
            _set_champion(registry_uri, _pointer("v2", f1=0.90, previous="v1"))
        candidate_f1 = 0.80
        return (
            _pointer("v3", f1=candidate_f1, previous=current["version"]) if candidate_f1 > current["f1_macro"] else None
        )

    after = registry.cas_update_champion(registry_uri, decide)
    assert seen == ["v1", "v2"]
    assert after is not None and after["version"] == "v2"
    assert registry.champion(registry_uri)["version"] == "v2"


def test_a_keep_decision_is_re_made_when_the_champion_moved_meanwhile(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    _set_champion(registry_uri, _pointer("v1", f1=0.95))
    seen: list[str] = []

    def decide(current: dict | None) -> dict | None:
        assert current is not None
        seen.append(current["version"])
        if len(seen) == 1:
            _set_champion(registry_uri, _pointer("v2", f1=0.50, previous="v1"))
        return _pointer("v3", f1=0.80, previous=current["version"]) if current["f1_macro"] < 0.80 else None

    after = registry.cas_update_champion(registry_uri, decide)
    assert seen == ["v1", "v2"]
    assert after is not None and after["version"] == "v3"
    assert registry.champion(registry_uri)["previous_version"] == "v2"


def test_cas_update_gives_up_after_the_bounded_attempts(bucket_root: str) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    _set_champion(registry_uri, _pointer("v0"))
    calls = 0

    def always_loses(current: dict | None) -> dict | None:
        nonlocal calls
        calls += 1
        _set_champion(registry_uri, _pointer(f"other{calls}"))
        return _pointer("mine")

    with pytest.raises(StageError, match="kept moving under concurrent registrations; gave up after 3 attempts"):
        registry.cas_update_champion(registry_uri, always_loses, max_attempts=3)
    assert calls == 3
    assert registry.champion(registry_uri)["version"] == "other3"


# --- storage.compare_and_swap, directly ----------------------------------------------------------------------


def test_compare_and_swap_creates_with_generation_zero_and_returns_the_new_generation(bucket_root: str) -> None:
    uri = storage.join(bucket_root, "pointer.json")
    generation = storage.compare_and_swap(uri, b"one", 0)
    assert storage.read_bytes(uri) == b"one"
    assert generation == storage.stat(uri).generation > 0


def test_compare_and_swap_with_the_current_generation_replaces(bucket_root: str) -> None:
    uri = storage.join(bucket_root, "pointer.json")
    first = storage.compare_and_swap(uri, b"one", 0)
    second = storage.compare_and_swap(uri, b"two", first)
    assert storage.read_bytes(uri) == b"two"
    assert second != first


def test_compare_and_swap_with_a_stale_generation_raises_and_keeps_the_object(bucket_root: str) -> None:
    uri = storage.join(bucket_root, "pointer.json")
    stale = storage.compare_and_swap(uri, b"one", 0)
    storage.compare_and_swap(uri, b"two", stale)
    with pytest.raises(storage.GenerationMismatch):
        storage.compare_and_swap(uri, b"three", stale)
    assert storage.read_bytes(uri) == b"two"


def test_compare_and_swap_expecting_absence_raises_when_the_object_exists(bucket_root: str) -> None:
    uri = storage.join(bucket_root, "pointer.json")
    storage.write_bytes(uri, b"already here")
    with pytest.raises(storage.GenerationMismatch):
        storage.compare_and_swap(uri, b"mine", 0)
    assert storage.read_bytes(uri) == b"already here"


def test_compare_and_swap_expecting_an_object_raises_when_it_is_absent(bucket_root: str) -> None:
    uri = storage.join(bucket_root, "pointer.json")
    with pytest.raises(storage.GenerationMismatch):
        storage.compare_and_swap(uri, b"mine", 12345)
    assert not storage.exists(uri)
