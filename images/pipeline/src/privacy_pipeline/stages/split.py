"""``split``: cut the featurized rows into a stratified training split and an untouched holdout.

The holdout is cut here, before any fitting, and nothing downstream resamples
it: SMOTE lives inside the model pipeline and only ever sees training rows.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

from privacy_pipeline import modeling, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "split"


def _class_counts(labels: Any) -> dict[str, int]:
    return {str(label): int(n) for label, n in sorted(Counter(labels).items())}


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
    try:
        train, holdout = train_test_split(
            features,
            test_size=config.split.holdout_fraction,
            stratify=features["label"],
            random_state=config.seed,
        )
    except ValueError as exc:
        raise StageError(f"{STAGE}: cannot split {len(features)} rows of {layout.features}: {exc}") from exc
    train = train.reset_index(drop=True)
    holdout = holdout.reset_index(drop=True)

    train_bytes = modeling.table_bytes(train)
    holdout_bytes = modeling.table_bytes(holdout)
    storage.write_bytes(layout.train_split, train_bytes)
    storage.write_bytes(layout.holdout_split, holdout_bytes)
    class_counts = {"train": _class_counts(train["label"]), "holdout": _class_counts(holdout["label"])}
    log.info("split %d rows into %d train and %d holdout", len(features), len(train), len(holdout))
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: {len(train)} train and {len(holdout)} holdout rows "
        f"({config.split.holdout_fraction:.0%} holdout, stratified by label)",
        xcom={
            "train_uri": layout.train_split,
            "holdout_uri": layout.holdout_split,
            "train_rows": len(train),
            "holdout_rows": len(holdout),
            "class_counts": class_counts,
        },
        commit_uri=layout.result(STAGE),
    )
