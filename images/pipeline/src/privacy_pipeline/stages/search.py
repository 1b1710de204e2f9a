"""``search``: the stored conversations most similar to a query, newest store version unless ``--version``.

The query is embedded with the model the version was built with (checked
against its manifest) and searched by inner product on unit vectors.
``--intent`` and ``--since`` filter the hits; because they apply after
retrieval, the search over-fetches ``k * conversations.search_overfetch``
candidates and widens until k hits pass or the whole store has been seen.
The summary is the result: a table for people, or JSON with ``--json``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.conversations import vector_store
from privacy_pipeline.conversations.encoder import TextEncoder, default_encoder, model_identity
from privacy_pipeline.conversations.schema import parse_day
from privacy_pipeline.errors import StageError
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "search"
# Each widening multiplies the candidates fetched by this.
WIDEN_FACTOR = 4


def _passes(row: Any, intent: str | None, since: str | None) -> bool:
    if intent is not None and row.intent != intent:
        return False
    return since is None or str(row.day) >= since


def _hits(index: Any, metadata: pd.DataFrame, query: np.ndarray, k: int, intent: str | None, since: str | None,
          overfetch: int) -> list[dict[str, Any]]:  # fmt: skip
    total = int(index.ntotal)
    by_id = metadata.set_index("id")
    filtering = intent is not None or since is not None
    fetch = min(total, k * overfetch if filtering else k)
    while True:
        scores, ids = index.search(query, fetch)
        hits = []
        for score, faiss_id in zip(scores[0], ids[0], strict=True):
            if faiss_id < 0:
                continue
            row = by_id.loc[int(faiss_id)]
            if _passes(row, intent, since):
                hits.append((float(score), int(faiss_id), row))
        if len(hits) >= k or fetch >= total:
            break
        fetch = min(total, fetch * WIDEN_FACTOR)
    results = []
    for rank, (score, faiss_id, row) in enumerate(hits[:k], start=1):
        probability = None if pd.isna(row.intent_probability) else round(float(row.intent_probability), 4)
        results.append(
            {
                "rank": rank,
                "id": faiss_id,
                "conversation_id": row.conversation_id,
                "score": round(score, 4),
                "day": row.day,
                "intent": None if pd.isna(row.intent) else row.intent,
                "intent_probability": probability,
                "snippet": row.snippet,
            }
        )
    return results


def _table(header: str, results: list[dict[str, Any]]) -> str:
    lines = [header]
    for hit in results:
        intent = hit["intent"] or "untagged"
        if hit["intent_probability"] is not None:
            intent += f" {hit['intent_probability']:.2f}"
        where = f"{hit['day']}  {intent:<28} {hit['conversation_id']}"
        lines.append(f"{hit['rank']:>3}. {hit['score']:.3f}  {where}  {hit['snippet']}")
    if not results:
        lines.append("  (no matching conversations)")
    return "\n".join(lines)


def run(
    *,
    config: PipelineConfig,
    store_uri: str,
    query: str,
    k: int = 10,
    intent: str | None = None,
    since: str | None = None,
    version: str | None = None,
    as_json: bool = False,
    encoder: TextEncoder | None = None,
) -> StageResult:
    if k <= 0:
        raise StageError(f"{STAGE}: --k must be positive, got {k}")
    if not query.strip():
        raise StageError(f"{STAGE}: --query is empty")
    if intent is not None and intent not in config.labels:
        raise StageError(f"{STAGE}: --intent {intent!r} is not one of {', '.join(config.labels)}")
    since = parse_day(since, STAGE) if since else None

    version = vector_store.resolve_version(store_uri, version, STAGE)
    store = vector_store.StoreLayout(store_uri)
    manifest = vector_store.read_manifest(store_uri, version, STAGE)
    identity = model_identity()
    stored = {key: manifest.get(key) for key in identity}
    if stored != identity:
        raise StageError(
            f"{STAGE}: version {version} of {store_uri} was built with {stored['sentence_model']} "
            f"{stored['sentence_model_version']} but this image embeds queries with {identity['sentence_model']} "
            f"{identity['sentence_model_version']}; search with the image that built it"
        )
    hnsw = manifest.get("hnsw") or {}
    index = vector_store.read_index(
        store.index(version), manifest.get("index_sha256"), STAGE, ef_search=hnsw.get("ef_search")
    )
    metadata = vector_store.read_metadata(store.metadata(version))
    encoder = encoder or default_encoder(config)
    query_vector = vector_store.normalize(encoder.encode([query]))
    results = _hits(index, metadata, query_vector, k, intent, since, config.conversations.search_overfetch)

    filters = {"intent": intent, "since": since}
    payload = {
        "store_uri": store_uri,
        "version": version,
        "query": query,
        "k": k,
        "filters": filters,
        "total": int(index.ntotal),
        "results": results,
    }
    shown = ", ".join(f"{name} {value}" for name, value in filters.items() if value)
    header = (
        f"{STAGE}: {len(results)} of {index.ntotal} conversations in {store_uri} version {version} "
        f"for {query!r}" + (f" ({shown})" if shown else "")
    )
    summary = json.dumps(payload, ensure_ascii=False) if as_json else _table(header, results)
    return StageResult(stage=STAGE, summary=summary, xcom=payload)
