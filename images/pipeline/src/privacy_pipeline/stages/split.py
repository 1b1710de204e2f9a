"""``split``: cut the featurized rows into a stratified training split and an untouched holdout.

The holdout is cut here, before any fitting, and nothing downstream resamples
it: SMOTE lives inside the model pipeline and only ever sees training rows.

Two rules keep the holdout honest:

- Group-aware: rows with the same normalised text (``phrasing.text_keys``; the
  same embedding when there is no text) form one group, and a group lies
  wholly on one side, so no holdout text was seen in training. The stratified
  cut is made over groups, each counted under its first row's label.
- Held-out phrasings: every row marked ``phrasing_held_out`` (and every row
  sharing a text with one) goes to the holdout, on top of the
  ``split.holdout_fraction`` cut of the rest, so evaluate can score phrasing
  families the model never saw.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

from privacy_pipeline import modeling, storage, tabular
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.phrasing import held_out_rows, text_keys
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "split"


def _class_counts(labels: Any) -> dict[str, int]:
    return {str(label): int(n) for label, n in sorted(Counter(labels).items())}


def group_keys(features: pd.DataFrame, spec: dict[str, Any]) -> np.ndarray:
    """Rows with equal keys are copies of one message and must stay on one side of the split."""
    if "text" in features.columns:
        return text_keys(features["text"])
    # No text: an identical embedding is the same message.
    inputs = np.ascontiguousarray(features[modeling.input_columns(spec)].to_numpy(dtype=np.float32))
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=12).hexdigest() for row in inputs], dtype=object)


def _grouped_cut(rows: pd.DataFrame, keys: np.ndarray, config: PipelineConfig, source: str) -> np.ndarray:
    """True for the rows whose group falls in the holdout: a stratified cut over groups, not rows."""
    groups = pd.DataFrame({"key": keys, "label": rows["label"].to_numpy()}).drop_duplicates("key")
    try:
        _, holdout_groups = train_test_split(
            groups["key"].to_numpy(),
            test_size=config.split.holdout_fraction,
            stratify=groups["label"].to_numpy(),
            random_state=config.seed,
        )
    except ValueError as exc:
        raise StageError(
            f"{STAGE}: cannot split {len(rows)} rows ({len(groups)} distinct texts) of {source}: {exc}"
        ) from exc
    return np.isin(keys, holdout_groups)


def _holdout_rows(
    features: pd.DataFrame, keys: np.ndarray, forced: np.ndarray, config: PipelineConfig, source: str
) -> np.ndarray:
    """The forced rows plus the grouped, stratified cut of the others."""
    in_holdout = forced.copy()
    in_holdout[~forced] = _grouped_cut(features[~forced], keys[~forced], config, source)
    return in_holdout


def _short_classes(labels: pd.Series, counts: dict[str, int], needed: int) -> dict[str, int]:
    """Classes with fewer than ``needed`` rows in ``labels``, and how many they have."""
    present = Counter(labels)
    return {label: present[label] for label in counts if present[label] < needed}


def run(*, config: PipelineConfig, run_uri: str) -> StageResult:
    layout = RunLayout(run_uri)
    layout.require("featurize", needed_by=STAGE)
    spec = modeling.check_feature_spec(storage.read_json(layout.feature_spec), layout.feature_spec, STAGE)
    features = modeling.read_table(layout.features)
    if "label" not in features.columns or "id" not in features.columns:
        raise StageError(f"{STAGE}: {layout.features} lacks the id or label column")
    # Fails here, not three stages later, when features and spec disagree.
    modeling.model_inputs(features, spec, layout.features, STAGE)

    counts = _class_counts(features["label"])
    too_small = {label: n for label, n in counts.items() if n < 2}
    if too_small:
        raise StageError(
            f"{STAGE}: {layout.features} has classes with fewer than 2 rows {too_small}; "
            "a stratified split needs at least one row of each class on each side"
        )
    keys = group_keys(features, spec)
    # A text written both from a held-out family and from a seen one goes with the held-out copy.
    forced = np.isin(keys, keys[held_out_rows(features)])
    phrasing_note = None
    # Classes left with under 2 rows cannot be cut at all; check before cutting.
    short = _short_classes(features["label"][~forced], counts, 2)
    in_holdout = forced
    if forced.any() and not short:
        in_holdout = _holdout_rows(features, keys, forced, config, layout.features)
        short = _short_classes(features["label"][~in_holdout], counts, config.min_train_rows_per_class)
    if forced.any() and short:
        # Too few rows to both hold phrasings out and cross-validate with SMOTE: train as without families,
        # and say so, rather than fail a run that would have trained without them.
        phrasing_note = (
            f"held-out phrasings were not routed to the holdout: classes {short} would keep too few training "
            f"rows (tune.cv_folds and SMOTE need {config.min_train_rows_per_class}); no unseen-phrasing metric "
            "for this run"
        )
        log.warning("%s", phrasing_note)
        forced = np.zeros(len(features), dtype=bool)
    if not forced.any():
        in_holdout = _holdout_rows(features, keys, forced, config, layout.features)
    train = features[~in_holdout].reset_index(drop=True)
    holdout = features[in_holdout].reset_index(drop=True)

    train_bytes = tabular.parquet_bytes(train)
    holdout_bytes = tabular.parquet_bytes(holdout)
    storage.write_bytes(layout.train_split, train_bytes)
    storage.write_bytes(layout.holdout_split, holdout_bytes)
    class_counts = {"train": _class_counts(train["label"]), "holdout": _class_counts(holdout["label"])}
    held_out_phrasing_rows = int(forced.sum())
    duplicate_rows = int(pd.Series(keys).duplicated(keep=False).sum())
    log.info(
        "split %d rows into %d train and %d holdout (%d of them held-out phrasings); %d rows share a text with "
        "another row and stay on its side",
        len(features),
        len(train),
        len(holdout),
        held_out_phrasing_rows,
        duplicate_rows,
    )
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: {len(train)} train and {len(holdout)} holdout rows "
        f"({config.split.holdout_fraction:.0%} of distinct texts, stratified by label, copies kept together"
        f"{f'; plus {held_out_phrasing_rows} rows of held-out phrasings' if held_out_phrasing_rows else ''})",
        xcom={
            "train_uri": layout.train_split,
            "holdout_uri": layout.holdout_split,
            "train_rows": len(train),
            "holdout_rows": len(holdout),
            "held_out_phrasing_rows": held_out_phrasing_rows,
            "distinct_texts": int(len(set(keys))),
            "phrasing_note": phrasing_note,
            "class_counts": class_counts,
        },
        commit_uri=layout.result(STAGE),
    )
