"""``conversations-publish``: the run's candidate as a new store version, behind a recall gate.

Builds the index by size (exact ``IndexFlatIP`` below
``conversations.flat_max_vectors``, HNSW from there on; both inside an
``IndexIDMap2`` keyed by the stable conversation ids), chooses HNSW's efSearch
as the smallest whose recall@10 against exact search reaches
``conversations.min_recall_at_10`` on held-out vectors that were not in the
index when measured (``vector_store.build_tuned_index``), and refuses below it
with nothing published. M, efConstruction and the chosen efSearch go in the
manifest; readers search with that efSearch. Otherwise writes
``versions/<version>/`` (index, vectors, metadata, manifest) and then moves
``latest.json`` by compare-and-swap, last, so a reader never sees a version
without its files. Earlier versions stay.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from privacy_pipeline import storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.conversations import vector_store
from privacy_pipeline.conversations.layout import PUBLISH, UPSERT, ConversationsLayout
from privacy_pipeline.errors import StageError
from privacy_pipeline.registry import version_name
from privacy_pipeline.stage_result import StageResult
from privacy_pipeline.stages.conversations_upsert import candidate_sha256

log = logging.getLogger(__name__)

STAGE = "conversations-publish"


def _result(layout: ConversationsLayout, store_uri: str, manifest: dict[str, Any], already: bool) -> StageResult:
    store = vector_store.StoreLayout(store_uri)
    version = str(manifest["version"])
    counts = manifest["counts"]
    verb = "was already published as" if already else "published"
    return StageResult(
        stage=STAGE,
        summary=(
            f"{STAGE}: {verb} {version}: {counts['total']} conversations ({counts['added']} added, "
            f"{counts['replaced']} replaced, {counts['removed']} removed), {manifest['index_kind']} index, "
            f"recall@10 {manifest['recall_at_10']:.3f}"
        ),
        xcom={
            "version": version,
            "version_uri": store.version_dir(version),
            "manifest_uri": store.manifest(version),
            "parent_version": manifest["parent_version"],
            "day": manifest["day"],
            "counts": counts,
            "index_kind": manifest["index_kind"],
            "recall_at_10": manifest["recall_at_10"],
            "build_seconds": manifest["build_seconds"],
        },
        commit_uri=layout.result(PUBLISH),
    )


def _published_by_this_run(store_uri: str, latest: vector_store.LatestPointer, candidate: dict) -> dict | None:
    """The manifest latest points at when it is this very candidate (a retry after the pointer moved)."""
    if latest.version is None:
        return None
    manifest = vector_store.read_manifest(store_uri, latest.version, STAGE)
    if (
        manifest.get("candidate_sha256") == candidate["candidate_sha256"]
        and manifest.get("run_uri") == candidate["run_uri"]
    ):
        return manifest
    return None


def run(*, config: PipelineConfig, run_uri: str, store_uri: str) -> StageResult:
    layout = ConversationsLayout(run_uri)
    layout.require(UPSERT, needed_by=STAGE)
    candidate = storage.read_json(layout.candidate_manifest)
    if candidate.get("store_uri") != store_uri:
        raise StageError(
            f"{STAGE}: the candidate in {layout.candidate_manifest} was built for store {candidate.get('store_uri')}, "
            f"not {store_uri}; rerun conversations-upsert with --store {store_uri}"
        )
    latest = vector_store.read_latest(store_uri, STAGE)
    already = _published_by_this_run(store_uri, latest, candidate)
    if already is not None:
        return _result(layout, store_uri, already, already=True)
    if latest.version != candidate["parent_version"]:
        raise StageError(
            f"{STAGE}: store {store_uri} moved to {latest.version} since this run's upsert read "
            f"{candidate['parent_version']}; rerun conversations-upsert and publish so no other day is lost"
        )

    vectors_bytes = storage.read_bytes(layout.candidate_vectors)
    metadata_bytes = storage.read_bytes(layout.candidate_metadata)
    if candidate_sha256(vectors_bytes, metadata_bytes) != candidate["candidate_sha256"]:
        raise StageError(f"{STAGE}: the candidate files under {layout.candidate_manifest} changed; rerun upsert")
    vectors = vector_store.read_vectors(layout.candidate_vectors)
    metadata = vector_store.read_metadata(layout.candidate_metadata)
    ids = metadata["id"].to_numpy(dtype="int64")

    settings = config.conversations
    started = time.perf_counter()
    tuned = vector_store.build_tuned_index(vectors, ids, settings, config.seed)
    build_seconds = round(time.perf_counter() - started, 3)
    index, kind, recall = tuned.index, tuned.kind, tuned.recall_at_10
    log.info(
        "built a %s index of %d vectors in %.1fs: efSearch %s, recall@10 %.4f (lower bound %.4f), %d held-out queries",
        kind,
        len(ids),
        build_seconds,
        tuned.ef_search,
        recall,
        tuned.recall_lower_bound,
        tuned.held_out_queries,
    )
    if recall < settings.min_recall_at_10:
        raise StageError(
            f"{STAGE}: the {kind} index of {len(ids)} vectors has recall@10 {recall:.3f} against exact search, below "
            f"conversations.min_recall_at_10 {settings.min_recall_at_10}; nothing was published (raise "
            "conversations.hnsw_max_ef_search or hnsw_m, or conversations.flat_max_vectors for an exact index)"
        )

    created_at = datetime.now(UTC).replace(microsecond=0)
    version = version_name(run_uri, created_at)
    store = vector_store.StoreLayout(store_uri)
    index_data = vector_store.index_bytes(index)
    manifest = {
        "version": version,
        "parent_version": candidate["parent_version"],
        "created_at": created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_uri": run_uri,
        "day": candidate["day"],
        "counts": candidate["counts"],
        "sentence_model": candidate["sentence_model"],
        "sentence_model_version": candidate["sentence_model_version"],
        "dimension": candidate["dimension"],
        "metric": "inner_product_on_unit_vectors",
        "index_kind": kind,
        # Readers refuse an index whose bytes differ from these (vector_store.read_index).
        "index_sha256": vector_store.index_sha256(index_data),
        "hnsw": (
            {
                "m": settings.hnsw_m,
                "ef_construction": settings.hnsw_ef_construction,
                "ef_search": tuned.ef_search,
            }
            if kind == vector_store.INDEX_HNSW
            else None
        ),
        "recall_at_10": round(recall, 4),
        "recall_at_10_lower_bound": round(tuned.recall_lower_bound, 4),
        # Held out of the index while measured, then added: no measured query was a vector of the index.
        "recall_queries": tuned.held_out_queries,
        "build_seconds": build_seconds,
        "tagged": candidate["tagged"],
        "tag_note": candidate.get("tag_note"),
        "champion_version": candidate.get("champion_version"),
        "candidate_sha256": candidate["candidate_sha256"],
    }
    storage.write_bytes(store.index(version), index_data)
    storage.write_bytes(store.vectors(version), vectors_bytes)
    storage.write_bytes(store.metadata(version), metadata_bytes)
    storage.write_json(store.manifest(version), manifest)
    pointer = {"version": version, "manifest_uri": store.manifest(version), "published_at": manifest["created_at"]}

    def decide(current: dict[str, Any] | None) -> dict[str, Any]:
        # The pointer may have been rewritten naming the same parent; any other version means a lost day.
        if (None if current is None else current["version"]) != candidate["parent_version"]:
            raise StageError(
                f"{STAGE}: another publish moved {store.latest} while this one was writing {version}; "
                "rerun conversations-upsert and publish"
            )
        return pointer

    try:
        storage.update_pointer(
            store.latest,
            lambda: vector_store.read_latest(store_uri, STAGE),
            decide,
            gave_up=f"{STAGE}: {store.latest} kept moving under concurrent writers; rerun conversations-publish",
        )
    except StageError:
        # Nobody points at the files just written; remove them rather than leave a dead version behind.
        for uri in (store.index(version), store.vectors(version), store.metadata(version), store.manifest(version)):
            storage.delete(uri)
        raise
    return _result(layout, store_uri, manifest, already=False)
