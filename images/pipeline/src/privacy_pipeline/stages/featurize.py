"""``featurize``: validated rows -> the feature table the model trains on.

Two modes, chosen by what the data carries:

- text: ``st_000..st_383`` (all-MiniLM-L6-v2 sentence embeddings) plus the
  handcrafted ``hc_*`` columns; the text stays in the table because the
  TF-IDF -> SVD dims are fitted later, inside the model, on training rows only.
- embedded: the given 584-dim embeddings unpacked into ``emb_000..emb_583``,
  plus ``hc_*`` when text is present too.

``featurize_frame`` is the per-row work on an in-memory frame, so batch
inference featurizes new conversations exactly as training did;
``production_embeddings`` builds the 584-dim form production data arrives in.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.phrasing import PHRASING_COLUMNS
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.sentence_encoder import MODEL_NAME, SentenceEncoder, model_version
from privacy_pipeline.stage_result import StageResult
from privacy_pipeline.text_features import HANDCRAFTED_COLUMNS, handcrafted_features
from privacy_pipeline.tfidf_svd import make_tfidf_svd

log = logging.getLogger(__name__)

STAGE = "featurize"
TEXT_COLUMN = "text"
EMBEDDING_COLUMN = "embedding"
# Carried through untouched, in this order, ahead of the feature columns
# (the phrasing columns, where present, for split's and evaluate's unseen-phrasing holdout).
PASSTHROUGH_COLUMNS = ("id", "label", TEXT_COLUMN, *PHRASING_COLUMNS)
SENTENCE_PREFIX = "st_"
EMBEDDING_PREFIX = "emb_"


def _column_names(prefix: str, width: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(width)]


def _first_rows(mask: np.ndarray) -> tuple[int, int]:
    """How many rows ``mask`` flags and the first one's position."""
    flagged = np.flatnonzero(mask)
    return len(flagged), int(flagged[0])


def _texts(frame: pd.DataFrame, source: str) -> list[str]:
    missing = frame[TEXT_COLUMN].isna().to_numpy()
    if missing.any():
        count, first = _first_rows(missing)
        raise StageError(f"{STAGE}: {count} rows in {source} have no text, first at row {first}")
    return [str(text) for text in frame[TEXT_COLUMN].tolist()]


def _embedding_matrix(column: pd.Series, expected_dim: int, source: str) -> np.ndarray:
    values = column.tolist()
    lengths = np.array([-1 if v is None or (np.isscalar(v) and pd.isna(v)) else len(v) for v in values])
    missing = lengths < 0
    if missing.any():
        count, first = _first_rows(missing)
        raise StageError(f"{STAGE}: {count} rows in {source} have no embedding, first at row {first}")
    wrong = lengths != expected_dim
    if wrong.any():
        count, first = _first_rows(wrong)
        raise StageError(
            f"{STAGE}: {count} rows in {source} have {lengths[first]}-dim embeddings (expected {expected_dim}), "
            f"first at row {first}"
        )
    if not values:
        return np.zeros((0, expected_dim), dtype=np.float32)
    matrix = np.stack([np.asarray(v, dtype=np.float32) for v in values])
    non_finite = np.asarray(~np.isfinite(matrix).all(axis=1))
    if non_finite.any():
        count, first = _first_rows(non_finite)
        raise StageError(
            f"{STAGE}: {count} rows in {source} have NaN or infinite embedding values, first at row {first}"
        )
    return matrix


def feature_spec(
    mode: str, has_text: bool, embedding_columns: list[str], handcrafted_columns: list[str]
) -> dict[str, Any]:
    """The ``feature_spec.json`` contract that split, tune and train read."""
    return {
        "mode": mode,
        "text_column": TEXT_COLUMN if has_text else None,
        "embedding_columns": embedding_columns,
        "handcrafted_columns": handcrafted_columns,
        "sentence_model": MODEL_NAME,
        "sentence_model_version": model_version(),
    }


def featurize_frame(
    frame: pd.DataFrame, config: PipelineConfig, *, source: str = "the input frame"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Featurize ``frame`` row by row; returns the feature table and its spec.

    The table keeps ``id``, ``label`` and ``text`` where present, then the
    float32 feature columns. ``source`` names the data in error messages.
    """
    has_text = TEXT_COLUMN in frame.columns
    has_embedding = EMBEDDING_COLUMN in frame.columns
    if not has_text and not has_embedding:
        raise StageError(
            f"{STAGE}: {source} has neither a {TEXT_COLUMN!r} nor an {EMBEDDING_COLUMN!r} column "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    texts = _texts(frame, source) if has_text else []
    blocks: list[pd.DataFrame] = [frame[[c for c in PASSTHROUGH_COLUMNS if c in frame.columns]].reset_index(drop=True)]

    if has_embedding:
        mode = "embedded"
        matrix = _embedding_matrix(frame[EMBEDDING_COLUMN], config.validate_.embedding_dim, source)
        embedding_columns = _column_names(EMBEDDING_PREFIX, matrix.shape[1])
    else:
        mode = "text"
        log.info("encoding %d texts with %s on %s", len(texts), MODEL_NAME, config.featurize.device)
        matrix = SentenceEncoder(config.featurize).encode(texts)
        embedding_columns = _column_names(SENTENCE_PREFIX, matrix.shape[1])
    blocks.append(pd.DataFrame(matrix, columns=embedding_columns))

    handcrafted_columns: list[str] = []
    if has_text:
        blocks.append(handcrafted_features(texts))
        handcrafted_columns = list(HANDCRAFTED_COLUMNS)

    features = pd.concat(blocks, axis=1)
    return features, feature_spec(mode, has_text, embedding_columns, handcrafted_columns)


def production_embeddings(texts: Sequence[str], config: PipelineConfig) -> np.ndarray:
    """(n, 584) float32: 384 sentence dims + TF-IDF -> SVD dims fitted on ``texts`` themselves.

    The form production training data arrives in (``synth --embedded``
    writes it). The TF-IDF part is fitted on exactly these texts, so call it
    once on the whole dataset, not per row.
    """
    texts = list(texts)
    sentence = SentenceEncoder(config.featurize).encode(texts)
    tfidf = make_tfidf_svd(config.featurize, config.seed).fit_transform(np.asarray(texts, dtype=object))
    return np.hstack([sentence, np.asarray(tfidf, dtype=np.float32)])


def _read_validated(uri: str) -> pd.DataFrame:
    if not storage.exists(uri):
        raise StageError(f"{STAGE}: {uri} is missing although validate completed; rerun validate")
    try:
        return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))
    except (OSError, ValueError) as exc:
        raise StageError(f"{STAGE}: {uri} is not a readable Parquet file ({exc}); rerun validate") from exc


def run(*, config: PipelineConfig, run_uri: str) -> StageResult:
    layout = RunLayout(run_uri)
    layout.require("validate", needed_by=STAGE)
    validated = _read_validated(layout.validated)
    source = layout.validated.rsplit("/", 1)[-1]
    if validated.empty:
        raise StageError(f"{STAGE}: {layout.validated} has no rows; nothing to featurize")

    started = time.perf_counter()
    features, spec = featurize_frame(validated, config, source=source)
    elapsed = time.perf_counter() - started
    rows = len(features)
    has_text = spec["text_column"] is not None
    texts_per_second = round(rows / max(elapsed, 1e-9), 1) if has_text else None
    log.info("featurized %d rows in %.1fs", rows, elapsed)

    # Everything is computed before the first write, so a failure leaves no partial output.
    storage.write_bytes(layout.features, tabular.parquet_bytes(features))
    storage.write_json(layout.feature_spec, spec)

    n_embedding = len(spec["embedding_columns"])
    n_handcrafted = len(spec["handcrafted_columns"])
    if spec["mode"] == "text":
        summary = (
            f"{STAGE}: {rows} rows -> {n_embedding} sentence dims + {n_handcrafted} handcrafted features "
            f"(text mode, {texts_per_second:.0f} texts/s)"
        )
    else:
        summary = (
            f"{STAGE}: {rows} rows -> {n_embedding} embedding dims + {n_handcrafted} handcrafted features "
            f"(embedded mode{'' if has_text else ', no text'})"
        )
    return StageResult(
        stage=STAGE,
        summary=summary,
        xcom={
            "features_uri": layout.features,
            "feature_spec_uri": layout.feature_spec,
            "mode": spec["mode"],
            "rows": rows,
            "n_features": n_embedding + n_handcrafted,
            "sentence_model": spec["sentence_model"],
            "sentence_model_version": spec["sentence_model_version"],
            "texts_per_second": texts_per_second,
        },
        commit_uri=layout.result(STAGE),
    )
