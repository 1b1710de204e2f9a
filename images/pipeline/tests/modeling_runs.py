"""Small featurized runs for the modelling stages' tests: clustered rows, a feature spec, commit markers.

Not a test module: test_split, test_tune, test_select, test_train,
test_evaluate and test_model_io import it so each builds its data the same, small way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import INTENTS, PipelineConfig
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult
from privacy_pipeline.stages import split

EMBEDDING_DIMS = 12
# The privacy intents together ~1:3 here (production: ~1:9), so every class
# keeps enough rows for a 3-fold CV with SMOTE on a few hundred rows.
CLASS_SHARES = {label: 0.05 for label in INTENTS if label != "no_privacy_intent"} | {"no_privacy_intent": 0.75}


def small_config(**overrides: Any) -> PipelineConfig:
    """Defaults shrunk for a few hundred rows: 3 folds, 3 SMOTE neighbours, four C values."""
    tree: dict[str, Any] = {
        "seed": 11,
        "smote": {"k_neighbors": 3},
        "tune": {"cv_folds": 3, "c_grid": [0.01, 0.1, 1.0, 10.0]},
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(tree.get(section), dict):
            tree[section] = {**tree[section], **value}
        else:
            tree[section] = value
    return PipelineConfig.model_validate(tree)


def clustered_features(
    n_rows: int = 300, seed: int = 0, separation: float = 3.0, dims: int = EMBEDDING_DIMS, handcrafted: bool = True
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """features.parquet-shaped rows in embedded mode: one Gaussian cluster per intent, and its feature spec."""
    rng = np.random.default_rng(seed)
    labels = list(CLASS_SHARES)
    counts = {label: max(10, round(share * n_rows)) for label, share in CLASS_SHARES.items()}
    label_column = np.array([label for label in labels for _ in range(counts[label])])
    rng.shuffle(label_column)
    centres = rng.normal(size=(len(labels), dims)) * separation
    rows = centres[[labels.index(v) for v in label_column]] + rng.normal(size=(len(label_column), dims))
    embedding_columns = [f"emb_{i:03d}" for i in range(dims)]
    frame = pd.DataFrame({"id": [f"row-{i:05d}" for i in range(len(label_column))], "label": label_column})
    frame = pd.concat([frame, pd.DataFrame(rows.astype(np.float32), columns=embedding_columns)], axis=1)
    handcrafted_columns = []
    if handcrafted:
        frame["hc_noise"] = rng.normal(size=len(frame)).astype(np.float32)
        handcrafted_columns = ["hc_noise"]
    spec = {
        "mode": "embedded",
        "text_column": None,
        "embedding_columns": embedding_columns,
        "handcrafted_columns": handcrafted_columns,
        "sentence_model": "all-MiniLM-L6-v2",
        "sentence_model_version": "test",
    }
    return frame, spec


def featurized_run(root: Path, frame: pd.DataFrame, spec: dict[str, Any], name: str = "run") -> str:
    """A run prefix in which featurize has completed with ``frame`` and ``spec``."""
    run_uri = str(root / name)
    layout = RunLayout(run_uri)
    storage.write_bytes(layout.features, tabular.parquet_bytes(frame))
    storage.write_json(layout.feature_spec, spec)
    storage.write_json(layout.result("featurize"), {"stage": "featurize", "rows": len(frame)})
    return run_uri


def commit(result: StageResult) -> StageResult:
    """Write the commit marker as the CLI does after a stage returns."""
    if result.commit_uri:
        storage.write_json(result.commit_uri, result.payload())
    return result


BEST_PARAMS = {"clf__C": 1.0, "clf__l1_ratio": 0.0}


def selected_run(
    root: Path, name: str, frame: pd.DataFrame, spec: dict[str, Any], config: PipelineConfig, params: Any = None
) -> str:
    """A run through split, with select's best.json and commit marker written as select would."""
    run_uri = featurized_run(root, frame, spec, name=name)
    commit(split.run(config=config, run_uri=run_uri))
    layout = RunLayout(run_uri)
    storage.write_json(layout.best_candidate, {"candidate_id": "c0006", "params": params or BEST_PARAMS})
    storage.write_json(layout.result("select"), {"stage": "select", "best_candidate_id": "c0006"})
    return run_uri
