"""``conversations-upsert``: the store's latest version with this run's day replaced, as a candidate in the run.

Every entry of the day in the latest version goes, the day's conversations
come (ids: first 8 bytes of sha256(conversation_id)), so re-processing a day
replaces it and never duplicates it. The candidate (vectors, metadata, counts,
parent version) is written into the run; publish turns it into a version.
Nothing under the store is written here.
"""

from __future__ import annotations

import hashlib
import io
import logging
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.conversations import vector_store
from privacy_pipeline.conversations.layout import EMBED, REDACT, TAG, UPSERT, ConversationsLayout
from privacy_pipeline.errors import StageError
from privacy_pipeline.stage_result import StageResult
from privacy_pipeline.stages.conversations_embed import read_embeddings

log = logging.getLogger(__name__)

STAGE = "conversations-upsert"


def _day_metadata(layout: ConversationsLayout, tagged: bool, conversation_ids: list[str]) -> pd.DataFrame:
    redacted = pd.read_parquet(
        io.BytesIO(storage.read_bytes(layout.redacted)),
        columns=["conversation_id", "day", "snippet", "user_id_hash", "n_messages", "started_at"],
    )
    if sorted(redacted["conversation_id"]) != sorted(conversation_ids):
        raise StageError(
            f"{STAGE}: {layout.embeddings} and {layout.redacted} hold different conversations; "
            "rerun conversations-embed"
        )
    frame = pd.DataFrame({"conversation_id": conversation_ids}).merge(redacted, on="conversation_id", how="left")
    if tagged:
        tags = pd.read_parquet(io.BytesIO(storage.read_bytes(layout.tags)))
        frame = frame.merge(tags, on="conversation_id", how="left")
    else:
        frame["intent"] = pd.Series([None] * len(frame), dtype="str")
        frame["intent_probability"] = np.nan
    frame["id"] = vector_store.stable_ids(conversation_ids)
    frame["n_messages"] = frame["n_messages"].astype("int64")
    return frame[list(vector_store.METADATA_COLUMNS)]


def _check_ids(day: pd.DataFrame, base: pd.DataFrame) -> None:
    """Two conversation ids sharing 64 bits of SHA-256 would silently replace each other; refuse instead."""
    both = pd.concat([day[["id", "conversation_id"]], base[["id", "conversation_id"]]]).drop_duplicates()
    clashing = both[both["id"].duplicated(keep=False)]
    if not clashing.empty:
        names = ", ".join(sorted(clashing["conversation_id"].astype(str))[:4])
        raise StageError(f"{STAGE}: conversations {names} hash to the same FAISS id; rename one of them")


def _check_compatible(base: vector_store.StoreVersion, embed_result: dict[str, Any], store_uri: str) -> None:
    manifest = base.manifest
    ours = (
        embed_result.get("sentence_model"),
        embed_result.get("sentence_model_version"),
        embed_result.get("dimension"),
    )
    theirs = (manifest.get("sentence_model"), manifest.get("sentence_model_version"), manifest.get("dimension"))
    if ours != theirs:
        raise StageError(
            f"{STAGE}: store {store_uri} version {base.version} holds {theirs[0]} {theirs[1]} {theirs[2]}-dim vectors "
            f"but this run embedded with {ours[0]} {ours[1]} {ours[2]}-dim; vectors of different models cannot share "
            "an index: publish into a new store prefix and re-process the days"
        )


def candidate_sha256(vectors_bytes: bytes, metadata_bytes: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(vectors_bytes)
    digest.update(metadata_bytes)
    return digest.hexdigest()


def run(*, config: PipelineConfig, run_uri: str, store_uri: str) -> StageResult:
    layout = ConversationsLayout(run_uri)
    layout.require(REDACT, needed_by=STAGE)
    embed_result = layout.require(EMBED, needed_by=STAGE)
    tag_result = layout.require(TAG, needed_by=STAGE)
    day = str(embed_result["day"])
    conversation_ids, day_vectors = read_embeddings(layout.embeddings)
    tagged = bool(tag_result.get("tagged"))
    day_metadata = _day_metadata(layout, tagged, conversation_ids)

    latest = vector_store.read_latest(store_uri, STAGE)
    if latest.version is None:
        base_vectors = np.zeros((0, day_vectors.shape[1]), dtype=np.float32)
        base_metadata = vector_store.empty_metadata()
    else:
        base = vector_store.load_version(store_uri, latest.version, STAGE)
        _check_compatible(base, embed_result, store_uri)
        base_vectors, base_metadata = base.vectors, base.metadata
    _check_ids(day_metadata, base_metadata)
    merged = vector_store.merge_day(base_vectors, base_metadata, day_vectors, day_metadata, day)

    vectors_bytes = vector_store.vectors_bytes(merged.vectors)
    metadata_bytes = tabular.parquet_bytes(merged.metadata)
    by_day = {str(d): int(n) for d, n in merged.metadata["day"].value_counts().sort_index().items()}
    counts = {
        "total": len(merged.metadata),
        "day": len(day_metadata),
        "added": merged.added,
        "replaced": merged.replaced,
        "removed": merged.removed,
        "by_day": by_day,
    }
    candidate = {
        "store_uri": store_uri,
        "run_uri": run_uri,
        "day": day,
        "parent_version": latest.version,
        "counts": counts,
        "sentence_model": embed_result.get("sentence_model"),
        "sentence_model_version": embed_result.get("sentence_model_version"),
        "dimension": int(day_vectors.shape[1]),
        "tagged": tagged,
        "tag_note": tag_result.get("reason"),
        "champion_version": tag_result.get("champion_version"),
        "candidate_sha256": candidate_sha256(vectors_bytes, metadata_bytes),
    }
    storage.write_bytes(layout.candidate_vectors, vectors_bytes)
    storage.write_bytes(layout.candidate_metadata, metadata_bytes)
    storage.write_json(layout.candidate_manifest, candidate)

    log.info("candidate for %s on top of %s: %s", day, latest.version or "an empty store", counts)
    return StageResult(
        stage=STAGE,
        summary=(
            f"{STAGE}: {day} -> {counts['total']} conversations on top of {latest.version or 'an empty store'} "
            f"({merged.added} added, {merged.replaced} replaced, {merged.removed} removed)"
        ),
        xcom={
            "candidate_uri": layout.candidate_manifest,
            "day": day,
            "parent_version": latest.version,
            "counts": counts,
            "tagged": tagged,
        },
        commit_uri=layout.result(UPSERT),
    )
