"""The versioned FAISS vector store of conversations.

Layout under the store prefix (local path, ``file://`` or ``gs://``)::

    versions/<version>/index.faiss      IndexIDMap2 over Flat or HNSW, inner product on unit vectors
    versions/<version>/vectors.npy      the vectors, row-aligned with metadata (the next upsert rebuilds from them)
    versions/<version>/metadata.parquet id, conversation_id, day, intent, intent_probability, snippet, ...
    versions/<version>/manifest.json    version, parent_version, counts, model, dimension, index kind, recall@10,
                                        index_sha256 (checked before the index bytes reach FAISS)
    latest.json                         the pointer to the version readers use; moved by compare-and-swap, last

A version is never modified after its pointer is published, and earlier
versions are kept, so a reader holding an old pointer still finds its files.
FAISS ids are stable: the first 8 bytes of sha256(conversation_id), so the
same conversation always has the same id in every version.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faiss  # type: ignore[import-untyped]
import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import ConversationsConfig
from privacy_pipeline.errors import StageError

INDEX_FLAT = "flat"
INDEX_HNSW = "hnsw"
RECALL_K = 10
METADATA_COLUMNS = (
    "id",
    "conversation_id",
    "day",
    "intent",
    "intent_probability",
    "snippet",
    "user_id_hash",
    "n_messages",
    "started_at",
)
_NON_NEGATIVE_INT64 = 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class StoreLayout:
    store_uri: str

    def path(self, *parts: str) -> str:
        return storage.join(self.store_uri, *parts)

    @property
    def latest(self) -> str:
        return self.path("latest.json")

    def version_dir(self, version: str) -> str:
        return self.path("versions", version)

    def index(self, version: str) -> str:
        return self.path("versions", version, "index.faiss")

    def vectors(self, version: str) -> str:
        return self.path("versions", version, "vectors.npy")

    def metadata(self, version: str) -> str:
        return self.path("versions", version, "metadata.parquet")

    def manifest(self, version: str) -> str:
        return self.path("versions", version, "manifest.json")


@dataclass(frozen=True)
class LatestPointer(storage.PointerSnapshot):
    """``latest.json`` as read, with the generation a swap must still find (0: no version yet)."""

    @property
    def version(self) -> str | None:
        return None if self.pointer is None else str(self.pointer["version"])


@dataclass(frozen=True)
class StoreVersion:
    version: str
    manifest: dict[str, Any]
    vectors: np.ndarray
    metadata: pd.DataFrame


@dataclass(frozen=True)
class Merge:
    vectors: np.ndarray
    metadata: pd.DataFrame
    # New conversations, conversations whose earlier entry was replaced, and
    # earlier entries of the day that the day no longer has.
    added: int
    replaced: int
    removed: int


def stable_id(conversation_id: str) -> int:
    """The conversation's FAISS id: the first 8 bytes of its SHA-256, made non-negative for int64."""
    digest = hashlib.sha256(conversation_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & _NON_NEGATIVE_INT64


def stable_ids(conversation_ids: Sequence[str]) -> np.ndarray:
    return np.fromiter((stable_id(c) for c in conversation_ids), dtype=np.int64, count=len(conversation_ids))


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit rows in float32, so inner product is cosine similarity."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def read_latest(store_uri: str, stage: str) -> LatestPointer:
    snapshot = storage.read_pointer(StoreLayout(store_uri).latest, ("version",), stage, "store pointer")
    return LatestPointer(pointer=snapshot.pointer, generation=snapshot.generation)


def resolve_version(store_uri: str, version: str | None, stage: str) -> str:
    """``version`` itself, or the one ``latest.json`` points at."""
    if version:
        return version
    latest = read_latest(store_uri, stage)
    if latest.version is None:
        raise StageError(
            f"{stage}: the store {store_uri} has no published version yet ({StoreLayout(store_uri).latest})"
        )
    return latest.version


def read_manifest(store_uri: str, version: str, stage: str) -> dict[str, Any]:
    uri = StoreLayout(store_uri).manifest(version)
    if not storage.exists(uri):
        raise StageError(f"{stage}: the store {store_uri} has no version {version} ({uri} is missing)")
    manifest = storage.read_json(uri)
    if not isinstance(manifest, dict):
        raise StageError(f"{stage}: {uri} is not a manifest object")
    return manifest


def read_metadata(uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def read_vectors(uri: str) -> np.ndarray:
    return tabular.npy_array(storage.read_bytes(uri))


def vectors_bytes(vectors: np.ndarray) -> bytes:
    return tabular.npy_bytes(np.ascontiguousarray(vectors, dtype=np.float32))


def load_version(store_uri: str, version: str, stage: str) -> StoreVersion:
    layout = StoreLayout(store_uri)
    manifest = read_manifest(store_uri, version, stage)
    vectors = read_vectors(layout.vectors(version))
    metadata = read_metadata(layout.metadata(version))
    if len(vectors) != len(metadata):
        raise StageError(
            f"{stage}: store version {version} is inconsistent: {len(vectors)} vectors in "
            f"{layout.vectors(version)} but {len(metadata)} metadata rows in {layout.metadata(version)}"
        )
    return StoreVersion(version=version, manifest=manifest, vectors=vectors, metadata=metadata)


def merge_day(
    base_vectors: np.ndarray, base_metadata: pd.DataFrame, day_vectors: np.ndarray, day_metadata: pd.DataFrame, day: str
) -> Merge:
    """The store with ``day`` replaced by ``day_metadata``: every earlier entry of the day goes, the new ones come.

    A conversation id that already exists under another day (a conversation
    that went on past midnight) is replaced too: one conversation, one entry.
    Rows are ordered by (day, conversation_id), so the same inputs always give
    the same store, whatever order the days were processed in.
    """
    new_ids = set(day_metadata["id"].tolist())
    base_ids = base_metadata["id"].to_numpy()
    in_new = np.isin(base_ids, np.fromiter(new_ids, dtype=np.int64, count=len(new_ids)))
    of_day = (base_metadata["day"] == day).to_numpy()
    keep = ~(in_new | of_day)
    replaced = int(in_new.sum())
    removed = int((of_day & ~in_new).sum())
    metadata = pd.concat([base_metadata[keep], day_metadata], ignore_index=True)
    vectors = np.concatenate([base_vectors[keep], day_vectors]) if len(base_vectors) else day_vectors
    order = np.lexsort((metadata["conversation_id"].to_numpy(), metadata["day"].to_numpy()))
    return Merge(
        vectors=np.ascontiguousarray(vectors[order], dtype=np.float32),
        metadata=metadata.iloc[order].reset_index(drop=True),
        added=len(day_metadata) - replaced,
        replaced=replaced,
        removed=removed,
    )


def index_kind(n_vectors: int, config: ConversationsConfig) -> str:
    return INDEX_FLAT if n_vectors < config.flat_max_vectors else INDEX_HNSW


def build_index(
    vectors: np.ndarray, ids: np.ndarray, config: ConversationsConfig, kind: str | None = None
) -> tuple[Any, str]:
    """An IndexIDMap2 over exact Flat (small stores) or HNSW (large ones), inner product on unit vectors.

    ``kind`` defaults to what the number of ``vectors`` calls for.
    """
    dimension = vectors.shape[1]
    kind = kind or index_kind(len(vectors), config)
    inner: Any
    if kind == INDEX_FLAT:
        inner = faiss.IndexFlatIP(dimension)
    else:
        inner = faiss.IndexHNSWFlat(dimension, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = config.hnsw_ef_construction
    index = faiss.IndexIDMap2(inner)
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return index, kind


def set_ef_search(index: Any, ef_search: int) -> None:
    """efSearch is a query-time knob; an index read back from bytes gets it from the manifest."""
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = ef_search


def exact_scores(indexed: np.ndarray, queries: np.ndarray, k: int = RECALL_K) -> np.ndarray:
    """Each query's k best inner products over ``indexed`` by exhaustive search (k shrinks to the vectors there are)."""
    exact = faiss.IndexFlatIP(indexed.shape[1])
    exact.add(np.ascontiguousarray(indexed, dtype=np.float32))
    scores, _ = exact.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(indexed)))
    return np.asarray(scores)


def recall_per_query(index: Any, queries: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Share of each query's exact top-k (``exact_scores``) that ``index`` finds.

    A returned neighbour counts when it scores at least the exact k-th
    neighbour's score: support conversations repeat word for word, and among
    identical vectors any of the tied ids is a right answer.
    """
    k = exact.shape[1]
    found_scores, found_ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    # float32 inner products of the same pair can differ in the last bits between index types.
    kth_best = exact[:, k - 1 : k] - 1e-5
    hits = ((found_scores >= kth_best) & (found_ids >= 0)).sum(axis=1)
    return np.asarray(np.minimum(hits, k) / k, dtype=np.float64)


def recall_at_k(index: Any, indexed: np.ndarray, queries: np.ndarray, k: int = RECALL_K) -> float:
    """Mean recall@k of ``index`` (holding ``indexed``) for ``queries``, which should not be vectors in it."""
    if len(indexed) == 0 or len(queries) == 0:
        return 1.0
    return float(recall_per_query(index, queries, exact_scores(indexed, queries, k)).mean())


@dataclass(frozen=True)
class TunedIndex:
    """The published index and how its search was chosen; the recall is on queries it did not hold then."""

    index: Any
    kind: str
    # None for an exact index (no search knob).
    ef_search: int | None
    recall_at_10: float
    # recall@10 minus RECALL_CONFIDENCE_Z standard errors of the per-query mean: what efSearch was chosen on.
    recall_lower_bound: float
    held_out_queries: int


# efSearch is chosen on the lower confidence bound of the held-out recall, so
# that queries the tuning did not see still reach the target (one-sided ~97.7%).
RECALL_CONFIDENCE_Z = 2.0
# The share of the store at most held out as tuning queries (a small store keeps most of its vectors in the graph).
MAX_HELD_OUT_SHARE = 0.2


def build_tuned_index(vectors: np.ndarray, ids: np.ndarray, config: ConversationsConfig, seed: int) -> TunedIndex:
    """The index of ``vectors``, its efSearch the smallest whose held-out recall@10 reaches ``min_recall_at_10``.

    ``recall_sample`` of the store's vectors (at most a fifth) are held out:
    the index is built without them, they are the queries of the recall
    measurement and the efSearch search (by bisection up to
    ``hnsw_max_ef_search``), and are added to the index afterwards, so every
    vector is searchable yet no measured query was a vector of the index it
    measured. Searches see new conversations, not stored ones; held-out
    vectors of the same store are that distribution.
    """
    n = len(vectors)
    held = min(config.recall_sample, int(n * MAX_HELD_OUT_SHARE))
    is_held = np.zeros(n, dtype=bool)
    is_held[np.random.default_rng(seed).choice(n, size=held, replace=False)] = True
    indexed, queries = vectors[~is_held], vectors[is_held]
    # The kind the whole store calls for: the held-out vectors join the index below.
    index, kind = build_index(indexed, ids[~is_held], config, index_kind(n, config))
    exact = exact_scores(indexed, queries) if held and len(indexed) else np.zeros((0, 1), dtype=np.float32)

    def measured(ef_search: int | None) -> tuple[float, float]:
        if held == 0 or len(indexed) == 0:
            return 1.0, 1.0
        if ef_search is not None:
            set_ef_search(index, ef_search)
        per_query = recall_per_query(index, queries, exact)
        spread = float(per_query.std(ddof=1)) / np.sqrt(len(per_query)) if len(per_query) > 1 else 0.0
        return float(per_query.mean()), float(per_query.mean()) - RECALL_CONFIDENCE_Z * spread

    ef_search: int | None = None
    if kind == INDEX_HNSW:
        # Recall grows with efSearch (nearly monotonically: a wider beam), so bisect for the smallest reaching it.
        low, ef_search = 1, config.hnsw_max_ef_search
        if measured(ef_search)[1] >= config.min_recall_at_10:
            while low < ef_search:
                middle = (low + ef_search) // 2
                if measured(middle)[1] >= config.min_recall_at_10:
                    ef_search = middle
                else:
                    low = middle + 1
    recall, lower_bound = measured(ef_search)
    if held:
        index.add_with_ids(np.ascontiguousarray(queries, dtype=np.float32), np.ascontiguousarray(ids[is_held]))
    return TunedIndex(
        index=index,
        kind=kind,
        ef_search=ef_search,
        recall_at_10=recall,
        recall_lower_bound=lower_bound,
        held_out_queries=held,
    )


def index_bytes(index: Any) -> bytes:
    return faiss.serialize_index(index).tobytes()


def index_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_index(uri: str, expected_sha256: str | None, stage: str, ef_search: int | None = None) -> Any:
    """The index at ``uri``, once its bytes match the SHA-256 its manifest records.

    ``faiss.deserialize_index`` is native code parsing bucket bytes: a changed
    or truncated file must never reach it, so anything unverifiable is refused.
    """
    data = storage.read_bytes(uri)
    if not expected_sha256:
        raise StageError(
            f"{stage}: the manifest of {uri} records no index_sha256, so the index cannot be verified; republish it"
        )
    actual = index_sha256(data)
    if actual != expected_sha256:
        raise StageError(
            f"{stage}: {uri} has SHA-256 {actual} but its manifest records {expected_sha256}; "
            "the index changed after it was published, refusing to load it"
        )
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    if ef_search is not None:
        set_ef_search(index, ef_search)
    return index


def empty_metadata() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.Series(dtype="int64"),
            "conversation_id": pd.Series(dtype="str"),
            "day": pd.Series(dtype="str"),
            "intent": pd.Series(dtype="str"),
            "intent_probability": pd.Series(dtype="float64"),
            "snippet": pd.Series(dtype="str"),
            "user_id_hash": pd.Series(dtype="str"),
            "n_messages": pd.Series(dtype="int64"),
            "started_at": pd.Series(dtype="str"),
        }
    )
