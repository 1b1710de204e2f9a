"""The vector store's building blocks: stable ids, replacing a day, index choice, the recall measure, round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from privacy_pipeline.config import ConversationsConfig
from privacy_pipeline.conversations import vector_store

DIM = 32


def _unit(rows: np.ndarray) -> np.ndarray:
    return vector_store.normalize(rows)


def _day(day: str, count: int, seed: int, prefix: str | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    conversation_ids = [f"{prefix or 'conv-' + day}-{i:04d}" for i in range(count)]
    vectors = _unit(np.random.default_rng(seed).normal(size=(count, DIM)))
    metadata = pd.DataFrame(
        {
            "id": vector_store.stable_ids(conversation_ids),
            "conversation_id": conversation_ids,
            "day": day,
            "intent": None,
            "intent_probability": np.nan,
            "snippet": "redacted text",
            "user_id_hash": None,
            "n_messages": 4,
            "started_at": f"{day}T10:00:00Z",
        }
    )
    return vectors, metadata


def _clustered(n: int, clusters: int, seed: int, spread: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, DIM * 4))
    return _unit(centers[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, DIM * 4)))


def test_stable_ids_are_deterministic_non_negative_int64_and_distinct() -> None:
    ids = vector_store.stable_ids([f"conv-{i}" for i in range(5000)])
    assert ids.dtype == np.int64 and (ids >= 0).all()
    assert len(set(ids.tolist())) == 5000
    assert vector_store.stable_id("conv-7") == vector_store.stable_id("conv-7") != vector_store.stable_id("conv-8")


def test_upserting_the_same_day_twice_gives_the_same_count() -> None:
    empty = (np.zeros((0, DIM), dtype=np.float32), vector_store.empty_metadata())
    day1 = _day("2026-11-20", 30, seed=1)
    first = vector_store.merge_day(*empty, *day1, day="2026-11-20")
    again = vector_store.merge_day(first.vectors, first.metadata, *day1, day="2026-11-20")
    assert len(first.metadata) == len(again.metadata) == 30
    assert (again.added, again.replaced, again.removed) == (0, 30, 0)
    assert again.metadata["id"].is_unique
    np.testing.assert_array_equal(first.vectors, again.vectors)


def test_a_second_day_grows_the_store_by_its_conversations() -> None:
    empty = (np.zeros((0, DIM), dtype=np.float32), vector_store.empty_metadata())
    first = vector_store.merge_day(*empty, *_day("2026-11-20", 30, seed=1), day="2026-11-20")
    second = vector_store.merge_day(first.vectors, first.metadata, *_day("2026-11-21", 12, seed=2), day="2026-11-21")
    assert len(second.metadata) == 42 and (second.added, second.replaced) == (12, 0)
    assert second.metadata["day"].value_counts().to_dict() == {"2026-11-20": 30, "2026-11-21": 12}


def test_reprocessing_a_day_drops_its_entries_that_are_gone_and_keeps_vectors_aligned() -> None:
    empty = (np.zeros((0, DIM), dtype=np.float32), vector_store.empty_metadata())
    vectors, metadata = _day("2026-11-20", 30, seed=1)
    first = vector_store.merge_day(*empty, vectors, metadata, day="2026-11-20")
    shrunk = vector_store.merge_day(first.vectors, first.metadata, vectors[:20], metadata[:20], day="2026-11-20")
    assert len(shrunk.metadata) == 20 and (shrunk.replaced, shrunk.removed) == (20, 10)
    by_id = dict(zip(metadata["id"], vectors, strict=True))
    for row_id, vector in zip(shrunk.metadata["id"], shrunk.vectors, strict=True):
        np.testing.assert_array_equal(by_id[row_id], vector)


def test_a_conversation_seen_again_on_a_later_day_is_one_entry() -> None:
    empty = (np.zeros((0, DIM), dtype=np.float32), vector_store.empty_metadata())
    day1 = _day("2026-11-20", 5, seed=1, prefix="conv-shared")
    day2 = _day("2026-11-21", 5, seed=2, prefix="conv-shared")
    first = vector_store.merge_day(*empty, *day1, day="2026-11-20")
    merged = vector_store.merge_day(first.vectors, first.metadata, *day2, day="2026-11-21")
    assert len(merged.metadata) == 5 and set(merged.metadata["day"]) == {"2026-11-21"}


def test_index_kind_follows_the_size_threshold() -> None:
    config = ConversationsConfig(flat_max_vectors=100)
    vectors, metadata = _day("2026-11-20", 99, seed=3)
    _, small_kind = vector_store.build_index(vectors, metadata["id"].to_numpy(), config)
    more_vectors, more_metadata = _day("2026-11-20", 100, seed=3)
    index, large_kind = vector_store.build_index(more_vectors, more_metadata["id"].to_numpy(), config)
    assert (small_kind, large_kind) == ("flat", "hnsw")
    assert index.ntotal == 100


def test_searches_return_the_stable_ids_and_survive_a_round_trip(tmp_path) -> None:
    vectors, metadata = _day("2026-11-20", 50, seed=4)
    ids = metadata["id"].to_numpy()
    index, _ = vector_store.build_index(vectors, ids, ConversationsConfig(flat_max_vectors=0, hnsw_ef_search=16))
    uri = str(tmp_path / "index.faiss")
    data = vector_store.index_bytes(index)
    vector_store.storage.write_bytes(uri, data)
    reread = vector_store.read_index(uri, vector_store.index_sha256(data), "test", ef_search=16)
    _, found = reread.search(vectors[:5], 1)
    assert found[:, 0].tolist() == ids[:5].tolist()


def test_exact_index_has_perfect_recall() -> None:
    vectors = _clustered(600, clusters=12, seed=5)
    ids = vector_store.stable_ids([f"c{i}" for i in range(600)])
    index, kind = vector_store.build_index(vectors, ids, ConversationsConfig())
    assert kind == "flat"
    assert vector_store.recall_at_k(index, vectors, sample=200, seed=0) == pytest.approx(1.0)


def test_a_well_built_hnsw_index_has_high_recall_and_a_starved_one_does_not() -> None:
    vectors = _clustered(2000, clusters=20, seed=6)
    ids = vector_store.stable_ids([f"c{i}" for i in range(2000)])
    good, _ = vector_store.build_index(vectors, ids, ConversationsConfig(flat_max_vectors=0))
    starved, _ = vector_store.build_index(
        vectors, ids, ConversationsConfig(flat_max_vectors=0, hnsw_m=4, hnsw_ef_construction=4, hnsw_ef_search=1)
    )
    good_recall = vector_store.recall_at_k(good, vectors, sample=200, seed=0)
    starved_recall = vector_store.recall_at_k(starved, vectors, sample=200, seed=0)
    assert good_recall >= 0.95
    assert starved_recall < 0.6


def test_identical_vectors_are_interchangeable_for_recall() -> None:
    # Support conversations repeat word for word: which of the tied ids comes back does not matter.
    vectors = np.repeat(_unit(np.random.default_rng(8).normal(size=(5, DIM))), 40, axis=0)
    ids = vector_store.stable_ids([f"c{i}" for i in range(200)])
    index, _ = vector_store.build_index(vectors, ids, ConversationsConfig(flat_max_vectors=0))
    assert vector_store.recall_at_k(index, vectors, sample=50, seed=0) == pytest.approx(1.0)


def test_recall_with_fewer_vectors_than_k() -> None:
    vectors = _unit(np.random.default_rng(7).normal(size=(4, DIM)))
    ids = vector_store.stable_ids(["a", "b", "c", "d"])
    index, _ = vector_store.build_index(vectors, ids, ConversationsConfig())
    assert vector_store.recall_at_k(index, vectors, sample=10, seed=0) == pytest.approx(1.0)
