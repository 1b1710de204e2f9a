"""``validate``: check the ingest snapshot row by row; quarantine bad rows, fail on systematic problems.

Row checks (each bad row is quarantined under the first reason it fails, in
this order): missing id or label, a label outside ``config.labels``, a
missing, wrong-length or non-finite embedding, missing text, and, when the
text is the model's input (no embeddings), empty or over-long text; last, a
repeated id (the first valid row with an id is kept).

The stage fails instead of quarantining when the problem is systematic (a
required column is missing, or one check flags every row, e.g. every
embedding is 583-dim), when bad rows exceed ``validate.max_bad_row_fraction``,
or when what is left is too small to train on: under ``validate.min_rows``
rows, a single class, or a class below ``config.min_rows_per_class``. On
failure nothing is written.

Repeated texts are reported, not quarantined: how many valid rows repeat an
earlier row's text exactly, and how many only after normalisation (case,
punctuation, whitespace, digits; see ``phrasing.normalised_text``). They are
legitimate data, but a copy on each side of the split would score
memorisation as generalisation, so split keeps each group on one side. Row numbers in messages are 0-based positions in
the snapshot, followed by the source file and row the ingest manifest maps
them to.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa  # type: ignore[import-untyped]

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.phrasing import duplicate_report
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "validate"
ID_COLUMN = "id"
LABEL_COLUMN = "label"
TEXT_COLUMN = "text"
EMBEDDING_COLUMN = tabular.EMBEDDING_COLUMN
REQUIRED_COLUMNS = (ID_COLUMN, LABEL_COLUMN)


@dataclass(frozen=True)
class RowCheck:
    """One row-level check: which snapshot rows it flags and how to say so."""

    reason: str
    flagged: np.ndarray
    # Completes "<count> rows in <file> ...", e.g. "have 583-dim embeddings (expected 584)".
    problem: str

    @property
    def count(self) -> int:
        return int(self.flagged.sum())


@dataclass(frozen=True)
class SourceRows:
    """Maps snapshot rows back to the source part file and row they came from (from the ingest manifest)."""

    part_uris: list[str]
    part_starts: np.ndarray

    @classmethod
    def from_manifest(cls, manifest: Any, snapshot_rows: int) -> SourceRows | None:
        try:
            parts = manifest["parts"]
            uris = [str(part["uri"]) for part in parts]
            rows = [int(part["rows"]) for part in parts]
        except (TypeError, KeyError, ValueError):
            return None
        if not parts or sum(rows) != snapshot_rows:
            return None
        return cls(uris, np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64))

    def locate(self, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
        index = np.searchsorted(self.part_starts, rows, side="right") - 1
        return [self.part_uris[i] for i in index], rows - self.part_starts[index]


def _where(row: int, source_rows: SourceRows | None) -> str:
    if source_rows is None:
        return ""
    uris, part_rows = source_rows.locate(np.array([row]))
    return f" ({uris[0]} row {int(part_rows[0])})"


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _strings(table: pa.Table, name: str) -> pd.Series:
    return table.column(name).cast(pa.string()).to_pandas().reset_index(drop=True)


def _blank(values: pd.Series) -> np.ndarray:
    return np.asarray(values.isna() | (values.fillna("").str.strip() == ""), dtype=bool)


def _label_checks(labels: pd.Series, config: PipelineConfig) -> list[RowCheck]:
    missing = _blank(labels)
    unknown = ~missing & ~np.asarray(labels.isin(config.labels), dtype=bool)
    examples = ", ".join(repr(v) for v in pd.unique(labels[unknown])[:3])
    return [
        RowCheck("missing_label", missing, "have no label"),
        RowCheck("unknown_label", unknown, f"have labels outside config labels ({examples})"),
    ]


def _embedding_checks(column: pa.ChunkedArray, expected_dim: int) -> list[RowCheck]:
    lengths = tabular.embedding_lengths(column)
    missing = lengths < 0
    wrong = ~missing & (lengths != expected_dim)
    wrong_dims = sorted({int(n) for n in lengths[wrong]})
    if len(wrong_dims) == 1:
        dim_problem = f"have {wrong_dims[0]}-dim embeddings (expected {expected_dim})"
    else:
        shown = ", ".join(str(n) for n in wrong_dims[:5])
        dim_problem = f"have embeddings of the wrong length ({shown}; expected {expected_dim})"
    non_finite = ~missing & tabular.rows_with_non_finite(column)
    return [
        RowCheck("missing_embedding", missing, "have no embedding"),
        RowCheck("wrong_embedding_dim", wrong, dim_problem),
        RowCheck("non_finite_embedding", non_finite, "have NaN or infinite embedding values"),
    ]


def _text_checks(texts: pd.Series, config: PipelineConfig, text_is_input: bool) -> list[RowCheck]:
    missing = np.asarray(texts.isna(), dtype=bool)
    # featurize derives the handcrafted features from the text in both modes,
    # so a missing text is bad even next to an embedding; empty or long texts
    # only matter when the text itself is what gets embedded.
    checks = [RowCheck("missing_text", missing, "have no text")]
    if text_is_input:
        limit = config.validate_.max_text_chars
        empty = ~missing & _blank(texts)
        too_long = ~missing & np.asarray(texts.fillna("").str.len() > limit, dtype=bool)
        checks += [
            RowCheck("empty_text", empty, "have empty or whitespace-only text"),
            RowCheck("text_too_long", too_long, f"have text longer than validate.max_text_chars ({limit})"),
        ]
    return checks


def _read_snapshot(uri: str) -> pa.Table:
    if not storage.exists(uri):
        raise StageError(f"{STAGE}: {uri} is missing although ingest completed; rerun ingest")
    return tabular.read_parquet(storage.read_bytes(uri), uri, STAGE)


def _check_columns(table: pa.Table, uri: str, expected_dim: int) -> None:
    columns = table.column_names
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise StageError(
            f"{STAGE}: {uri} has no {', '.join(repr(m) for m in missing)} column (columns: {', '.join(columns)})"
        )
    if TEXT_COLUMN not in columns and EMBEDDING_COLUMN not in columns:
        raise StageError(
            f"{STAGE}: {uri} has neither a {TEXT_COLUMN!r} nor an {EMBEDDING_COLUMN!r} column, so the model "
            f"has no input (columns: {', '.join(columns)})"
        )
    if EMBEDDING_COLUMN in columns and not pa.types.is_list(table.schema.field(EMBEDDING_COLUMN).type):
        raise StageError(
            f"{STAGE}: {uri} column {EMBEDDING_COLUMN!r} is {table.schema.field(EMBEDDING_COLUMN).type}, "
            f"expected list<float> of {expected_dim}; rerun ingest"
        )


def row_checks(table: pa.Table, config: PipelineConfig) -> list[RowCheck]:
    """Every row-level check on the snapshot, in the order that decides a bad row's reason."""
    ids = _strings(table, ID_COLUMN)
    checks = [RowCheck("missing_id", _blank(ids), "have no id")]
    checks += _label_checks(_strings(table, LABEL_COLUMN), config)
    has_embedding = EMBEDDING_COLUMN in table.column_names
    if has_embedding:
        checks += _embedding_checks(table.column(EMBEDDING_COLUMN), config.validate_.embedding_dim)
    if TEXT_COLUMN in table.column_names:
        checks += _text_checks(_strings(table, TEXT_COLUMN), config, text_is_input=not has_embedding)
    flagged_so_far = np.logical_or.reduce([c.flagged for c in checks])
    # Among rows that are otherwise fine, so a corrected resend of a bad row
    # survives; conflicting labels for one id are resolved by order.
    repeated = np.zeros(table.num_rows, dtype=bool)
    repeated[~flagged_so_far] = ids[~flagged_so_far].duplicated(keep="first").to_numpy()
    checks.append(RowCheck("duplicate_id", repeated, "repeat the id of an earlier row"))
    return checks


def _primary_reasons(checks: list[RowCheck], rows: int) -> np.ndarray:
    """Each row's first failing check's reason, or "" for a good row."""
    reasons = np.full(rows, "", dtype=object)
    for check in reversed(checks):
        reasons[check.flagged] = check.reason
    return reasons


def _class_rule(config: PipelineConfig) -> str:
    folds = config.tune.cv_folds
    smote = (
        f"SMOTE needs k_neighbors + 1 = {config.smote.k_neighbors + 1} rows of a class in every training fold"
        if config.smote.enabled
        else "SMOTE is off"
    )
    return (
        f"the holdout split takes {config.split.holdout_fraction:.0%} of each class, {folds}-fold CV trains on "
        f"{folds - 1}/{folds} of the rest, and {smote}"
    )


def _check_trainable(class_counts: dict[str, int], uri: str, config: PipelineConfig) -> list[dict[str, Any]]:
    """Fail unless the valid rows can be split, cross-validated and resampled; else the checks that passed."""
    rows = sum(class_counts.values())
    min_rows = config.validate_.min_rows
    if rows < min_rows:
        raise StageError(f"{STAGE}: only {rows} valid rows in {uri}, fewer than validate.min_rows ({min_rows})")
    if len(class_counts) < 2:
        only = next(iter(class_counts))
        raise StageError(f"{STAGE}: only one class ({only!r}) in {uri}; a classifier needs at least two")
    needed = config.min_rows_per_class
    small = {label: n for label, n in class_counts.items() if n < needed}
    if small:
        listed = ", ".join(f"{label!r} has {n}" for label, n in small.items())
        raise StageError(
            f"{STAGE}: too few valid rows per class in {uri}: {listed}; each class needs at least {needed} because "
            f"{_class_rule(config)}; add rows to the small classes or lower tune.cv_folds / smote.k_neighbors"
        )
    return [
        {"name": "min_rows", "passed": True, "detail": f"{rows} valid rows >= {min_rows}"},
        {"name": "at_least_two_classes", "passed": True, "detail": f"{len(class_counts)} classes"},
        {
            "name": "rows_per_class",
            "passed": True,
            "detail": f"smallest class {min(class_counts, key=class_counts.__getitem__)!r} has "
            f"{min(class_counts.values())} >= {needed}",
        },
    ]


def _quarantine_table(
    table: pa.Table, bad: np.ndarray, reasons: np.ndarray, source_rows: SourceRows | None
) -> pa.Table:
    rows = np.flatnonzero(bad).astype(np.int64)
    quarantine = table.filter(pa.array(bad))
    quarantine = quarantine.append_column("reason", pa.array(list(reasons[bad]), type=pa.string()))
    quarantine = quarantine.append_column("source_row", pa.array(rows, type=pa.int64()))
    if source_rows is not None:
        uris, part_rows = source_rows.locate(rows)
        part_column = pa.array(uris, type=pa.string())
        part_row_column = pa.array(part_rows.astype(np.int64), type=pa.int64())
    else:
        part_column = pa.nulls(len(rows), type=pa.string())
        part_row_column = pa.nulls(len(rows), type=pa.int64())
    quarantine = quarantine.append_column("source_part", part_column)
    return quarantine.append_column("part_row", part_row_column)


def _read_source_rows(layout: RunLayout, rows: int) -> SourceRows | None:
    if not storage.exists(layout.ingest_manifest):
        log.warning("%s is missing; messages name snapshot rows only", layout.ingest_manifest)
        return None
    return SourceRows.from_manifest(storage.read_json(layout.ingest_manifest), rows)


def run(*, config: PipelineConfig, run_uri: str) -> StageResult:
    layout = RunLayout(run_uri)
    layout.require("ingest", needed_by=STAGE)
    uri = layout.snapshot
    thresholds = config.validate_
    table = _read_snapshot(uri)
    rows_in = table.num_rows
    if rows_in == 0:
        raise StageError(f"{STAGE}: {uri} has no rows; rerun ingest on a source with data")
    _check_columns(table, uri, thresholds.embedding_dim)
    source_rows = _read_source_rows(layout, rows_in)

    checks = row_checks(table, config)
    for check in checks:
        if check.count == rows_in:
            raise StageError(
                f"{STAGE}: {rows_in} rows in {uri} {check.problem}, first at row 0{_where(0, source_rows)}; "
                "every row fails this check, so the source or the config is wrong, not a few rows"
            )
    reasons = _primary_reasons(checks, rows_in)
    bad = reasons != ""
    rows_quarantined = int(bad.sum())
    reason_counts = {c.reason: int((reasons == c.reason).sum()) for c in checks if (reasons == c.reason).any()}
    if rows_quarantined / rows_in > thresholds.max_bad_row_fraction:
        worst = max(checks, key=lambda c: reason_counts.get(c.reason, 0))
        worst_rows = reasons == worst.reason
        first = _first(worst_rows)
        raise StageError(
            f"{STAGE}: {rows_quarantined} of {rows_in} rows ({rows_quarantined / rows_in:.1%}) in {uri} are bad, "
            f"over validate.max_bad_row_fraction ({thresholds.max_bad_row_fraction:.1%}); most common: "
            f"{int(worst_rows.sum())} rows {worst.problem}, first at row {first}{_where(first, source_rows)}"
        )

    validated = table.filter(pa.array(~bad))
    label_counts = Counter(validated.column(LABEL_COLUMN).to_pylist())
    class_counts = {label: label_counts[label] for label in config.labels if label_counts[label]}
    gating = _check_trainable(class_counts, uri, config)
    quarantine = _quarantine_table(table, bad, reasons, source_rows)
    duplicates = duplicate_report(_strings(validated, TEXT_COLUMN)) if TEXT_COLUMN in validated.column_names else None

    check_reports = [
        {"name": "required_columns", "passed": True, "detail": ", ".join(table.column_names)},
        *(
            {
                "name": check.reason,
                "passed": check.count == 0,
                "detail": f"{check.count} rows {check.problem}, first at row {_first(check.flagged)}"
                if check.count
                else "no rows",
            }
            for check in checks
        ),
        {
            "name": "bad_row_fraction",
            "passed": True,
            "detail": f"{rows_quarantined / rows_in:.2%} <= {thresholds.max_bad_row_fraction:.2%}",
        },
        *gating,
    ]
    report = {
        "snapshot_uri": uri,
        "rows_in": rows_in,
        "rows_valid": validated.num_rows,
        "rows_quarantined": rows_quarantined,
        "reasons": reason_counts,
        "class_counts": class_counts,
        "duplicates": duplicates,
        "checks": check_reports,
        "thresholds": {
            **thresholds.model_dump(mode="json"),
            "labels": list(config.labels),
            "min_rows_per_class": config.min_rows_per_class,
        },
    }
    storage.write_bytes(layout.validated, tabular.parquet_bytes(validated))
    storage.write_bytes(layout.quarantine, tabular.parquet_bytes(quarantine))
    storage.write_json(layout.validation_report, report)

    if rows_quarantined:
        log.warning("quarantined %d rows to %s: %s", rows_quarantined, layout.quarantine, reason_counts)
    quarantined_note = (
        f"{rows_quarantined} quarantined ({', '.join(f'{r}: {n}' for r, n in reason_counts.items())})"
        if rows_quarantined
        else "none quarantined"
    )
    duplicates_note = (
        f"; {duplicates['exact_duplicate_rows']} exact and {duplicates['near_duplicate_rows']} near-duplicate texts"
        if duplicates
        else ""
    )
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: {validated.num_rows} of {rows_in} rows valid, {quarantined_note}; "
        f"{len(class_counts)} classes{duplicates_note}",
        xcom={
            "validated_uri": layout.validated,
            "quarantine_uri": layout.quarantine,
            "report_uri": layout.validation_report,
            "rows_valid": validated.num_rows,
            "rows_quarantined": rows_quarantined,
            # By reason, for the quarantine panels and alert (telemetry.py pushes it).
            "reasons": reason_counts,
            "class_counts": class_counts,
            "exact_duplicate_rows": duplicates["exact_duplicate_rows"] if duplicates else None,
            "near_duplicate_rows": duplicates["near_duplicate_rows"] if duplicates else None,
        },
        commit_uri=layout.result(STAGE),
    )
