"""``ingest``: snapshot the source data into the run, with a manifest of where it came from.

The source is one CSV/Parquet file or a prefix of part files (``*.csv``,
``*.csv.gz``, ``*.parquet``; ``_SUCCESS``, hidden files and other suffixes are
skipped). Every part is read strictly and normalised to the snapshot schema:
``id``, ``label``, ``text`` (when the source has text) and ``embedding``
(``list<float32>``, when it has embeddings, wide ``emb_*`` columns packed),
and the optional ``phrasing_family`` (text) and ``phrasing_held_out`` (bool)
that split and evaluate use for the unseen-phrasing holdout.
Content problems inside rows (unknown labels, wrong embedding lengths, NaN)
are left for validate, which can name and quarantine the rows; ingest fails
only on files it cannot read as a table at all.

``manifest.json`` records each part's size and generation (the GCS object
generation, locally the file's mtime) and a hash of the normalised content,
so a registered model can be traced back to exactly the bytes it was trained on.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.phrasing import PHRASING_FAMILY_COLUMN, PHRASING_HELD_OUT_COLUMN
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "ingest"
ID_COLUMN = "id"
LABEL_COLUMN = "label"
TEXT_COLUMN = "text"
EMBEDDING_COLUMN = tabular.EMBEDDING_COLUMN


@dataclass
class _Part:
    """One source file, read and normalised to the snapshot schema."""

    info: storage.ObjectInfo
    table: pa.Table
    ids_derived: bool = False
    embedding_form: str | None = None
    non_numeric_embedding_cells: int = 0
    dropped_columns: list[str] = field(default_factory=list)

    @property
    def kind(self) -> tuple[bool, bool]:
        return TEXT_COLUMN in self.table.column_names, EMBEDDING_COLUMN in self.table.column_names


def _is_part_file(uri: str, prefix: str) -> bool:
    base = prefix.rstrip("/")
    relative = uri[len(base) + 1 :] if uri.startswith(base + "/") else tabular.file_name(uri)
    # Writers such as Spark leave _SUCCESS markers and _temporary/ or hidden
    # staging folders next to the parts; none of them is data.
    if any(segment.startswith(("_", ".")) for segment in relative.split("/")):
        return False
    return tabular.table_format(uri) is not None


def part_uris(source: str) -> list[str]:
    """The part files ``source`` names: itself when it is a file, else every part file under the prefix."""
    if storage.exists(source):
        if tabular.table_format(source) is None:
            raise StageError(
                f"{STAGE}: {source} is neither CSV nor Parquet (expected one of "
                f"{', '.join(tabular.SUPPORTED_SUFFIXES)})"
            )
        return [source]
    found = storage.list_uris(source)
    parts = [uri for uri in found if _is_part_file(uri, source)]
    if parts:
        return parts
    if not found:
        raise StageError(f"{STAGE}: {source} does not exist (neither a file nor a prefix with files under it)")
    examples = ", ".join(tabular.file_name(uri) for uri in found[:3])
    raise StageError(
        f"{STAGE}: no CSV or Parquet part files under {source} (found {len(found)} other files: {examples}); "
        f"expected {', '.join('*' + s for s in tabular.SUPPORTED_SUFFIXES)}"
    )


def _as_strings(table: pa.Table, name: str, uri: str) -> pa.ChunkedArray:
    column = table.column(name)
    try:
        return column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StageError(f"{STAGE}: {uri} column {name!r} is {column.type}, which cannot be read as text") from exc


def _as_flags(table: pa.Table, name: str, uri: str) -> pa.ChunkedArray:
    column = table.column(name)
    try:
        return column.cast(pa.bool_())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StageError(f"{STAGE}: {uri} column {name!r} ({column.type}) must hold true/false values: {exc}") from exc


def _wide_columns(columns: list[str], uri: str) -> list[str]:
    wide = tabular.wide_embedding_columns(columns)
    dims = [int(name[len(tabular.WIDE_EMBEDDING_PREFIX) :]) for name in wide]
    if dims != list(range(len(wide))):
        first_gap = next(i for i, dim in enumerate(dims + [-1]) if dim != i)
        raise StageError(
            f"{STAGE}: {uri} has embedding columns {wide[0]}..{wide[-1]} but no single "
            f"{tabular.WIDE_EMBEDDING_PREFIX}{first_gap:03d}; wide embeddings must be "
            f"{tabular.WIDE_EMBEDDING_PREFIX}000..{tabular.WIDE_EMBEDDING_PREFIX}NNN, each once, without gaps"
        )
    return wide


def normalise(table: pa.Table, uri: str) -> _Part:
    """One parsed source table in the snapshot schema (the ObjectInfo is filled in by the caller)."""
    columns = table.column_names
    if LABEL_COLUMN not in columns:
        raise StageError(f"{STAGE}: {uri} has no {LABEL_COLUMN!r} column (columns: {', '.join(columns)})")
    wide = _wide_columns(columns, uri)
    has_list = EMBEDDING_COLUMN in columns
    if wide and has_list:
        raise StageError(
            f"{STAGE}: {uri} has both {wide[0]}.. columns and an {EMBEDDING_COLUMN!r} column; keep one of the two forms"
        )
    if TEXT_COLUMN not in columns and not wide and not has_list:
        raise StageError(
            f"{STAGE}: {uri} has neither a {TEXT_COLUMN!r} column nor embeddings "
            f"(emb_000.. or {EMBEDDING_COLUMN!r}); columns: {', '.join(columns)}"
        )
    part = _Part(info=storage.ObjectInfo(uri=uri, size=0, generation=0), table=table)
    if ID_COLUMN in columns:
        ids = _as_strings(table, ID_COLUMN, uri)
    else:
        stem = tabular.file_stem(uri)
        ids = pa.chunked_array([pa.array([f"{stem}-{row}" for row in range(table.num_rows)], type=pa.string())])
        part.ids_derived = True
    arrays: dict[str, pa.ChunkedArray | pa.Array] = {
        ID_COLUMN: ids,
        LABEL_COLUMN: _as_strings(table, LABEL_COLUMN, uri),
    }
    if TEXT_COLUMN in columns:
        arrays[TEXT_COLUMN] = _as_strings(table, TEXT_COLUMN, uri)
    if PHRASING_FAMILY_COLUMN in columns:
        arrays[PHRASING_FAMILY_COLUMN] = _as_strings(table, PHRASING_FAMILY_COLUMN, uri)
    if PHRASING_HELD_OUT_COLUMN in columns:
        arrays[PHRASING_HELD_OUT_COLUMN] = _as_flags(table, PHRASING_HELD_OUT_COLUMN, uri)
    packed: tabular.PackedEmbeddings | None = None
    if wide:
        packed = tabular.pack_wide_embeddings(table, wide)
        part.embedding_form = f"wide columns {wide[0]}..{wide[-1]}"
    elif has_list:
        packed = tabular.normalise_embedding_list(table.column(EMBEDDING_COLUMN), uri, STAGE)
        part.embedding_form = f"list column {EMBEDDING_COLUMN!r}"
    if packed is not None:
        arrays[EMBEDDING_COLUMN] = packed.values
        part.non_numeric_embedding_cells = packed.non_numeric_cells
    used = {
        ID_COLUMN,
        LABEL_COLUMN,
        TEXT_COLUMN,
        PHRASING_FAMILY_COLUMN,
        PHRASING_HELD_OUT_COLUMN,
        EMBEDDING_COLUMN,
        *wide,
    }
    part.dropped_columns = [name for name in columns if name not in used]
    part.table = pa.table(arrays)
    return part


def _read_part(uri: str, config: PipelineConfig) -> _Part:
    before = storage.stat(uri)
    limit = config.ingest.max_source_bytes
    if before.size > limit:
        raise StageError(
            f"{STAGE}: {uri} is {before.size:,} bytes, over ingest.max_source_bytes ({limit:,}); "
            "split it into smaller part files"
        )
    data = storage.read_bytes(uri)
    after = storage.stat(uri)
    if after.generation != before.generation or len(data) != before.size:
        raise StageError(
            f"{STAGE}: {uri} changed while it was being read (generation {before.generation} -> "
            f"{after.generation}); rerun ingest once its writer has finished"
        )
    part = normalise(tabular.read_table(data, uri, STAGE), uri)
    part.info = before
    log.info("read %s: %d rows, %d bytes, generation %d", uri, part.table.num_rows, before.size, before.generation)
    return part


def _describe(kind: tuple[bool, bool]) -> str:
    has_text, has_embedding = kind
    return " and ".join(name for name, present in (("text", has_text), ("embeddings", has_embedding)) if present)


def _check_same_kind(parts: list[_Part], source: str) -> None:
    first = parts[0]
    for part in parts[1:]:
        if part.kind != first.kind:
            raise StageError(
                f"{STAGE}: {part.info.uri} has {_describe(part.kind)} but {first.info.uri} has "
                f"{_describe(first.kind)}; every part under {source} must carry the same columns"
            )


def _embedding_dim(snapshot: pa.Table) -> int | None:
    if EMBEDDING_COLUMN not in snapshot.column_names:
        return None
    lengths = tabular.embedding_lengths(snapshot.column(EMBEDDING_COLUMN))
    counts = Counter(int(n) for n in lengths[lengths >= 0])
    if len(counts) > 1:
        log.warning("embedding lengths differ between rows: %s; validate will quarantine the odd ones", dict(counts))
    return counts.most_common(1)[0][0] if counts else None


def _manifest(source: str, snapshot_uri: str, parts: list[_Part], snapshot: pa.Table, sha: str) -> dict[str, Any]:
    derived = [part.info.uri for part in parts if part.ids_derived]
    manifest: dict[str, Any] = {
        "source": source,
        "snapshot_uri": snapshot_uri,
        "parts": [
            {
                "uri": part.info.uri,
                "size": part.info.size,
                "generation": part.info.generation,
                "rows": part.table.num_rows,
            }
            for part in parts
        ],
        "rows": snapshot.num_rows,
        "columns": snapshot.column_names,
        "content_sha256": sha,
        "has_text": TEXT_COLUMN in snapshot.column_names,
        "has_embeddings": EMBEDDING_COLUMN in snapshot.column_names,
        "embedding_dim": _embedding_dim(snapshot),
        "embedding_forms": sorted({part.embedding_form for part in parts if part.embedding_form}),
        # Cells of embedding columns that were not numbers: now NaN, so that
        # validate quarantines their rows by number.
        "non_numeric_embedding_cells": sum(part.non_numeric_embedding_cells for part in parts),
        "ids_derived_for": derived,
        "dropped_columns": sorted({name for part in parts for name in part.dropped_columns}),
    }
    if derived:
        manifest["ids_note"] = (
            f"{len(derived)} part(s) had no {ID_COLUMN!r} column; their ids are <part file stem>-<row number>"
        )
    return manifest


def run(*, config: PipelineConfig, source: str, run_uri: str) -> StageResult:
    layout = RunLayout(run_uri)
    parts = [_read_part(uri, config) for uri in part_uris(source)]
    _check_same_kind(parts, source)
    # promote: a part without the optional phrasing columns gets nulls there.
    snapshot = pa.concat_tables([part.table for part in parts], promote_options="default")
    if snapshot.num_rows == 0:
        raise StageError(f"{STAGE}: {source} has no data rows ({len(parts)} part file(s), all header-only)")
    sha = tabular.content_sha256(snapshot)
    manifest = _manifest(source, layout.snapshot, parts, snapshot, sha)
    if manifest["non_numeric_embedding_cells"]:
        log.warning(
            "%d embedding cells were not numbers; they are NaN in the snapshot and validate will quarantine their rows",
            manifest["non_numeric_embedding_cells"],
        )
    if manifest["ids_derived_for"]:
        log.warning("%s", manifest["ids_note"])

    snapshot_bytes = tabular.parquet_bytes(snapshot)
    storage.write_bytes(layout.snapshot, snapshot_bytes)
    storage.write_json(layout.ingest_manifest, manifest)

    rows = snapshot.num_rows
    labels = Counter(snapshot.column(LABEL_COLUMN).to_pylist())
    log.info("label counts in the snapshot: %s", dict(labels))
    summary = (
        f"{STAGE}: {rows} rows ({_describe(parts[0].kind)}) from {len(parts)} part file(s) of {source} "
        f"-> {layout.snapshot} (sha256 {sha[:12]})"
    )
    return StageResult(
        stage=STAGE,
        summary=summary,
        xcom={
            "snapshot_uri": layout.snapshot,
            "manifest_uri": layout.ingest_manifest,
            "rows": rows,
            "parts": len(parts),
            "content_sha256": sha,
            "has_text": manifest["has_text"],
            "has_embeddings": manifest["has_embeddings"],
            "embedding_dim": manifest["embedding_dim"],
        },
        commit_uri=layout.result(STAGE),
    )
