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
    index, _ = vector_store.build_index(vectors, ids, ConversationsConfig(flat_max_vectors=0))
    uri = str(tmp_path / "index.faiss")
    data = vector_store.index_bytes(index)
    vector_store.storage.write_bytes(uri, data)
    reread = vector_store.read_index(uri, vector_store.index_sha256(data), "test", ef_search=16)
    _, found = reread.search(vectors[:5], 1)
    assert found[:, 0].tolist() == ids[:5].tolist()


def test_exact_index_has_perfect_recall() -> None:
    vectors = _clustered(600, clusters=12, seed=5)
    ids = vector_store.stable_ids([f"c{i}" for i in range(600)])
    index, kind = vector_store.build_index(vectors[:500], ids[:500], ConversationsConfig())
    assert kind == "flat"
    assert vector_store.recall_at_k(index, vectors[:500], vectors[500:]) == pytest.approx(1.0)


def test_a_well_built_hnsw_index_has_high_recall_and_a_starved_one_does_not() -> None:
    vectors = _clustered(2000, clusters=20, seed=6)
    ids = vector_store.stable_ids([f"c{i}" for i in range(2000)])
    indexed, queries = vectors[:1800], vectors[1800:]
    good, _ = vector_store.build_index(indexed, ids[:1800], ConversationsConfig(flat_max_vectors=0))
    vector_store.set_ef_search(good, 64)
    starved, _ = vector_store.build_index(
        indexed, ids[:1800], ConversationsConfig(flat_max_vectors=0, hnsw_m=4, hnsw_ef_construction=4)
    )
    vector_store.set_ef_search(starved, 1)
    good_recall = vector_store.recall_at_k(good, indexed, queries)
    starved_recall = vector_store.recall_at_k(starved, indexed, queries)
    assert good_recall >= 0.95
    assert starved_recall < 0.6


def test_identical_vectors_are_interchangeable_for_recall() -> None:
    # Support conversations repeat word for word: which of the tied ids comes back does not matter.
    vectors = np.repeat(_unit(np.random.default_rng(8).normal(size=(5, DIM))), 40, axis=0)
    ids = vector_store.stable_ids([f"c{i}" for i in range(200)])
    index, _ = vector_store.build_index(vectors, ids, ConversationsConfig(flat_max_vectors=0))
    vector_store.set_ef_search(index, 16)
    assert vector_store.recall_at_k(index, vectors, vectors[::4]) == pytest.approx(1.0)


def test_recall_with_fewer_vectors_than_k() -> None:
    vectors = _unit(np.random.default_rng(7).normal(size=(4, DIM)))
    ids = vector_store.stable_ids(["a", "b", "c", "d"])
    index, _ = vector_store.build_index(vectors, ids, ConversationsConfig())
    queries = _unit(np.random.default_rng(9).normal(size=(6, DIM)))
    assert vector_store.recall_at_k(index, vectors, queries) == pytest.approx(1.0)


def test_publish_tunes_ef_search_on_held_out_queries_that_are_not_in_the_index(monkeypatch) -> None:
    vectors = _clustered(3000, clusters=30, seed=10, spread=0.6)
    ids = vector_store.stable_ids([f"c{i}" for i in range(3000)])
    config = ConversationsConfig(flat_max_vectors=0, hnsw_m=8, hnsw_ef_construction=16, recall_sample=400)
    measured_against: list[tuple[set[int], np.ndarray]] = []
    measure = vector_store.recall_per_query

    def watched(index, queries, exact):
        indexed_ids = set(vector_store.faiss.vector_to_array(index.id_map).tolist())
        measured_against.append((indexed_ids, queries))
        return measure(index, queries, exact)

    monkeypatch.setattr(vector_store, "recall_per_query", watched)
    tuned = vector_store.build_tuned_index(vectors, ids, config, seed=0)

    assert tuned.kind == "hnsw" and tuned.held_out_queries == 400
    assert tuned.index.ntotal == 3000  # the held-out vectors are searchable once tuned
    by_vector = {vector.tobytes(): int(i) for vector, i in zip(vectors, ids, strict=True)}
    for indexed_ids, queries in measured_against:
        assert len(indexed_ids) == 2600
        assert not {by_vector[q.tobytes()] for q in queries} & indexed_ids, "a measured query was in the index"
    # The smallest efSearch that reaches the target on the lower bound: one less does not.
    assert tuned.recall_lower_bound >= config.min_recall_at_10 and tuned.ef_search is not None
    if tuned.ef_search > 1:
        smaller = vector_store.build_tuned_index(
            vectors, ids, config.model_copy(update={"hnsw_max_ef_search": tuned.ef_search - 1}), seed=0
        )
        assert smaller.recall_lower_bound < config.min_recall_at_10


def test_an_unreachable_recall_target_keeps_the_largest_ef_search_and_reports_its_recall() -> None:
    vectors = _clustered(600, clusters=12, seed=11, spread=0.6)
    ids = vector_store.stable_ids([f"c{i}" for i in range(600)])
    config = ConversationsConfig(flat_max_vectors=0, hnsw_m=4, hnsw_ef_construction=4, hnsw_max_ef_search=1)
    tuned = vector_store.build_tuned_index(vectors, ids, config, seed=0)
    assert tuned.ef_search == 1 and tuned.recall_at_10 < config.min_recall_at_10


def test_the_index_kind_follows_the_whole_store_not_the_part_built_before_tuning() -> None:
    vectors = _clustered(500, clusters=10, seed=12)
    ids = vector_store.stable_ids([f"c{i}" for i in range(500)])
    config = ConversationsConfig(flat_max_vectors=450, recall_sample=100)
    tuned = vector_store.build_tuned_index(vectors, ids, config, seed=0)
    assert tuned.kind == "hnsw" and tuned.ef_search is not None and tuned.index.ntotal == 500
