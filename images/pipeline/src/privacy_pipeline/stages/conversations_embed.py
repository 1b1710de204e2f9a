"""``conversations-embed``: one vector per conversation from its redacted user turns.

The user's requests are what the store is searched and tagged by, so the
vector is all-MiniLM-L6-v2 (the training pipeline's sentence encoder, same
model and version, recorded in the output) over the user turns joined,
L2-normalised so inner product is cosine similarity. It is computed from
redacted text only: the kinds conversations-redact replaces (emails, IBANs,
IPs, cards, US SSNs, UK NI numbers, postcodes, street addresses, phone and
other 7-15 digit numbers; conversations/redaction.py) are not in it. What
redaction does not cover (names, addresses without a house number and street
suffix, dates of birth, other national ids) is in the text the vector encodes,
and a vector can leak some of what its text held, e.g. to an attacker who
embeds guesses and compares.
"""

from __future__ import annotations

import io
import logging
import time

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.conversations.encoder import TextEncoder, default_encoder, model_identity
from privacy_pipeline.conversations.layout import EMBED, REDACT, ConversationsLayout
from privacy_pipeline.conversations.vector_store import normalize
from privacy_pipeline.errors import StageError
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "conversations-embed"


def read_embeddings(uri: str) -> tuple[list[str], np.ndarray]:
    """(conversation ids, float32 vectors) as embed wrote them."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    ids = [str(c) for c in table.column("conversation_id").to_pylist()]
    column = table.column("embedding").combine_chunks()
    if len(ids) == 0:
        return ids, np.zeros((0, column.type.list_size), dtype=np.float32)
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), column.type.list_size)
    return ids, np.ascontiguousarray(vectors, dtype=np.float32)


def embeddings_bytes(conversation_ids: list[str], vectors: np.ndarray) -> bytes:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), type=pa.float32())
    table = pa.table(
        {
            "conversation_id": pa.array(conversation_ids, type=pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        }
    )
    return tabular.parquet_bytes(table)


def run(*, config: PipelineConfig, run_uri: str, encoder: TextEncoder | None = None) -> StageResult:
    layout = ConversationsLayout(run_uri)
    redact_result = layout.require(REDACT, needed_by=STAGE)
    redacted = pd.read_parquet(
        io.BytesIO(storage.read_bytes(layout.redacted)), columns=["conversation_id", "user_text"]
    )
    encoder = encoder or default_encoder(config)

    started = time.perf_counter()
    texts = redacted["user_text"].astype(str).tolist()
    vectors = encoder.encode(texts)
    elapsed = time.perf_counter() - started
    if vectors.shape != (len(texts), encoder.dim):
        raise StageError(
            f"{STAGE}: the encoder returned an array of shape {vectors.shape} for {len(texts)} texts "
            f"(expected ({len(texts)}, {encoder.dim}))"
        )
    if not np.isfinite(vectors).all():
        raise StageError(f"{STAGE}: the encoder returned NaN or infinite values for {layout.redacted}")
    vectors = normalize(vectors)
    texts_per_second = round(len(texts) / max(elapsed, 1e-9), 1)

    storage.write_bytes(layout.embeddings, embeddings_bytes(redacted["conversation_id"].astype(str).tolist(), vectors))
    identity = model_identity()
    log.info("embedded %d conversations in %.1fs", len(texts), elapsed)
    return StageResult(
        stage=STAGE,
        summary=(
            f"{STAGE}: {len(texts)} conversations -> {encoder.dim}-dim {identity['sentence_model']} "
            f"{identity['sentence_model_version']} vectors ({texts_per_second:.0f} texts/s)"
        ),
        xcom={
            "embeddings_uri": layout.embeddings,
            "day": redact_result.get("day"),
            "conversations": len(texts),
            "dimension": encoder.dim,
            **identity,
            "texts_per_second": texts_per_second,
        },
        commit_uri=layout.result(EMBED),
    )
