"""CSV and Parquet tables as bytes: strict reading, writing, and packing embedding columns; arrays as .npy bytes.

Source data arrives as CSV (optionally gzipped) or Parquet, with embeddings
either as wide ``emb_000..emb_NNN`` float columns or as one Parquet list
column ``embedding``. The run's own tables always hold a single
``list<float32>`` ``embedding`` column; this module converts between the two
and refuses files it cannot read with a message naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from privacy_pipeline.errors import StageError

TableFormat = Literal["csv", "parquet"]

EMBEDDING_COLUMN = "embedding"
EMBEDDING_TYPE = pa.list_(pa.float32())
WIDE_EMBEDDING_PREFIX = "emb_"
_WIDE_EMBEDDING_NAME = re.compile(r"^emb_(\d+)$")

# Longest suffix first, so "x.csv.gz" is not mistaken for something else.
_SUFFIX_FORMATS: tuple[tuple[str, TableFormat], ...] = (
    (".csv.gz", "csv"),
    (".csv", "csv"),
    (".parquet", "parquet"),
)
SUPPORTED_SUFFIXES = tuple(suffix for suffix, _ in _SUFFIX_FORMATS)

# Columns that hold identifiers and free text: read verbatim as strings, so
# an id "000123" keeps its zeros and a message reading "NA" stays a message.
STRING_COLUMNS = ("id", "label", "text")


def file_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def table_format(uri: str) -> TableFormat | None:
    """The format a file's suffix names, or None for anything else."""
    name = file_name(uri).lower()
    for suffix, fmt in _SUFFIX_FORMATS:
        if name.endswith(suffix):
            return fmt
    return None


def file_stem(uri: str) -> str:
    """``part-0003.csv.gz`` -> ``part-0003``."""
    name = file_name(uri)
    for suffix, _ in _SUFFIX_FORMATS:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def wide_embedding_columns(columns: Iterable[str]) -> list[str]:
    """The ``emb_NNN`` columns in dimension order."""
    found = [(int(m.group(1)), name) for name in columns if (m := _WIDE_EMBEDDING_NAME.match(name))]
    return [name for _, name in sorted(found)]


def wide_embedding_names(width: int) -> list[str]:
    return [f"{WIDE_EMBEDDING_PREFIX}{i:03d}" for i in range(width)]


# --- reading ---------------------------------------------------------------


def _decode_csv(data: bytes, uri: str, stage: str) -> str:
    if uri.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise StageError(f"{stage}: {uri} is not a readable gzip file ({exc})") from exc
    try:
        # utf-8-sig drops the byte-order mark spreadsheet exports put in front
        # of the header, which would otherwise rename the first column.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise StageError(
            f"{stage}: {uri} is not UTF-8 text (byte {exc.start}, line {line}: {exc.reason}); re-export it as UTF-8"
        ) from exc


def _read_csv(data: bytes, uri: str, stage: str) -> pa.Table:
    text = _decode_csv(data, uri, stage)
    if not text.strip():
        raise StageError(f"{stage}: {uri} is empty (no header, no rows)")
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            dtype={name: str for name in STRING_COLUMNS},
            keep_default_na=False,
            na_values=[""],
            skipinitialspace=False,
        )
    except pd.errors.ParserError as exc:
        raise StageError(f"{stage}: {uri} is not well-formed CSV ({str(exc).strip()})") from exc
    except pd.errors.EmptyDataError as exc:
        raise StageError(f"{stage}: {uri} is empty (no header, no rows)") from exc
    frame.columns = [str(name).strip() for name in frame.columns]
    if len(frame.columns) == 1:
        header = frame.columns[0]
        hint = next((f" it looks {d!r}-delimited;" for d in (";", "\t", "|") if d in header), "")
        raise StageError(
            f"{stage}: {uri} parses to a single column ({header!r});{hint} "
            "expected comma-separated columns id, label, text and/or emb_*"
        )
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StageError(f"{stage}: {uri} has a column of mixed types ({exc})") from exc


def _read_parquet(data: bytes, uri: str, stage: str) -> pa.Table:
    if not data:
        raise StageError(f"{stage}: {uri} is empty (0 bytes)")
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StageError(f"{stage}: {uri} is not a readable Parquet file; is it truncated or corrupt? ({exc})") from exc
    return table.rename_columns([str(name).strip() for name in table.column_names])


def read_table(data: bytes, uri: str, stage: str) -> pa.Table:
    """Parse one CSV or Parquet file's bytes; the format comes from the URI's suffix."""
    if not data:
        raise StageError(f"{stage}: {uri} is empty (0 bytes)")
    fmt = table_format(uri)
    if fmt == "csv":
        return _read_csv(data, uri, stage)
    if fmt == "parquet":
        return _read_parquet(data, uri, stage)
    raise StageError(f"{stage}: {uri} is neither CSV nor Parquet (expected one of {', '.join(SUPPORTED_SUFFIXES)})")


def read_parquet(data: bytes, uri: str, stage: str) -> pa.Table:
    return _read_parquet(data, uri, stage)


# --- embeddings --------------------------------------------------------------


@dataclass(frozen=True)
class PackedEmbeddings:
    values: pa.Array  # list<float32>, one list per row
    # Cells that held something other than a number; they are NaN now, and
    # validate quarantines their rows.
    non_numeric_cells: int


def _numeric_column(column: pa.ChunkedArray) -> tuple[np.ndarray, int]:
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float64), 0
    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan), 0
    raw = column.to_pandas()
    parsed = pd.to_numeric(raw, errors="coerce")
    non_numeric = int((raw.notna() & parsed.isna()).sum())
    return parsed.to_numpy(dtype=np.float64, na_value=np.nan), non_numeric


def pack_wide_embeddings(table: pa.Table, columns: Sequence[str]) -> PackedEmbeddings:
    """Pack ``emb_000..emb_NNN`` columns into one ``list<float32>`` array (missing or non-numeric cells -> NaN)."""
    rows, width = table.num_rows, len(columns)
    matrix = np.empty((rows, width), dtype=np.float32)
    non_numeric = 0
    for dim, name in enumerate(columns):
        values, bad = _numeric_column(table.column(name))
        matrix[:, dim] = values
        non_numeric += bad
    offsets = pa.array(np.arange(rows + 1, dtype=np.int64) * width, type=pa.int32())
    return PackedEmbeddings(pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1))), non_numeric)


def normalise_embedding_list(column: pa.ChunkedArray, uri: str, stage: str) -> PackedEmbeddings:
    """A Parquet list column of numbers as ``list<float32>``; null elements become NaN, null rows stay null."""
    value_type = getattr(column.type, "value_type", None)
    if value_type is None or not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
        raise StageError(f"{stage}: {uri} column {EMBEDDING_COLUMN!r} is {column.type}, expected a list of numbers")
    chunks = []
    for chunk in column.cast(EMBEDDING_TYPE).chunks:
        values = chunk.values.fill_null(np.float32("nan")) if chunk.values.null_count else chunk.values
        chunks.append(pa.ListArray.from_arrays(chunk.offsets, values, mask=chunk.is_null()))
    combined = pa.chunked_array(chunks, type=EMBEDDING_TYPE).combine_chunks()
    return PackedEmbeddings(combined, 0)


def embedding_lengths(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Each row's list length; -1 where the row has no embedding at all."""
    lengths = pc.list_value_length(column).fill_null(-1)
    return np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.int64)


def rows_with_non_finite(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """True for rows whose embedding holds NaN, +-inf or a null element."""
    flags = []
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        values = chunk.values.cast(pa.float32())
        bad = ~np.isfinite(values.fill_null(np.float32("nan")).to_numpy(zero_copy_only=False))
        offsets = np.asarray(chunk.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        bad_before = np.concatenate([[0], np.cumsum(bad, dtype=np.int64)])
        flags.append(bad_before[offsets[1:]] - bad_before[offsets[:-1]] > 0)
    return np.concatenate(flags) if flags else np.zeros(0, dtype=bool)


# --- writing and hashing -------------------------------------------------------


def parquet_bytes(data: pa.Table | pd.DataFrame) -> bytes:
    """The one way a table becomes Parquet bytes for ``storage.write_bytes``; a DataFrame's index is not written."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """The one way an array becomes bytes for ``storage.write_bytes``: NumPy's .npy form, never pickled."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_array(data: bytes) -> np.ndarray:
    """``npy_bytes`` read back; a pickled object array is refused, not run."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def csv_bytes(frame: pd.DataFrame, *, gzipped: bool = False) -> bytes:
    data = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    # mtime=0 keeps the gzip header, and so the file, identical across runs.
    return gzip.compress(data, mtime=0) if gzipped else data


def content_sha256(table: pa.Table) -> str:
    """A hash of the table's column names and values, independent of Parquet encoding and chunking."""
    digest = hashlib.sha256()
    for name in table.column_names:
        column = table.column(name)
        digest.update(f"column:{name}:{column.type}\n".encode())
        if pa.types.is_list(column.type):
            digest.update(embedding_lengths(column).astype("<i8").tobytes())
            flat = pc.list_flatten(column).cast(pa.float32())
            values = flat.fill_null(np.float32("nan")).to_numpy(zero_copy_only=False).astype("<f4")
            # NaN has many bit patterns; hash one so equal content hashes equal.
            values[np.isnan(values)] = np.float32("nan")
            digest.update(values.tobytes())
            continue
        for value in column.to_pylist():
            if value is None:
                digest.update(b"\xff" * 8)
                continue
            encoded = str(value).encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
    return digest.hexdigest()
