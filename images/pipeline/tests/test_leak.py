"""The whole training chain cannot score what it was not taught: with shuffled labels the holdout is at chance.

Shuffling the labels (a permutation, so every class keeps its size) removes
every link between a message and its label. Whatever then scores above chance
on the holdout came from the holdout itself: rows of it in training, a
featurizer or scaler fitted on it, labels reaching the features. Each mode
runs ingest -> validate -> featurize -> split -> tune -> select -> train ->
evaluate exactly as the DAG does, on synth's data (text, and the 584-dim
embedded form whose TF-IDF/SVD part synth fits on all texts without labels).

Why 2,000 rows and ±0.1: the holdout is about 600 rows (20% of the distinct
texts plus every held-out phrasing), with 5 to 20 of each privacy intent. The
macro one-vs-rest ROC-AUC averages six classes; at chance its standard error
here is about 0.04, so 0.5 ± 0.1 is about 2.5 standard errors, and the seeds
are fixed, so the run is the same every time. Measured when the test was
written: 0.496 (text) and 0.491 (embedded) as it stands; with the holdout rows
appended to the training split after split (a fit on train + holdout), 0.993
in both modes, and the test fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from privacy_pipeline import storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.stage_result import StageResult
from privacy_pipeline.stages import evaluate, featurize, ingest, select, split, synth, train, tune, validate

ROWS = 2000
CHANCE = 0.5
TOLERANCE = 0.1
# Small enough to run in a test: 3 folds, 3 SMOTE neighbours, three C values from weak to strong fitting.
CONFIG = PipelineConfig.model_validate(
    {"seed": 3, "smote": {"k_neighbors": 3}, "tune": {"cv_folds": 3, "c_grid": [0.01, 1.0, 100.0]}}
)


def _commit(result: StageResult) -> None:
    if result.commit_uri:
        storage.write_json(result.commit_uri, result.payload())


def _shuffled_labels(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    shuffled = frame.copy()
    shuffled["label"] = np.random.default_rng(seed).permutation(frame["label"].to_numpy())
    return shuffled


def _train_and_evaluate(source: Path, run_uri: str) -> dict[str, Any]:
    _commit(ingest.run(config=CONFIG, source=str(source), run_uri=run_uri))
    for stage in (validate, featurize, split, tune, select, train):
        _commit(stage.run(config=CONFIG, run_uri=run_uri))
    evaluated = evaluate.run(config=CONFIG, run_uri=run_uri)
    _commit(evaluated)
    return evaluated.xcom


@pytest.fixture(scope="module")
def embedded_source(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """synth --embedded's rows: text, label, phrasing columns and the 584 emb_* columns."""
    out = tmp_path_factory.mktemp("leak") / "embedded.parquet"
    synth.run(config=CONFIG, out=str(out), rows=ROWS, seed=21, embedded=True)
    return pd.read_parquet(out)


@pytest.mark.parametrize("mode", ["text", "embedded"])
def test_shuffled_labels_score_chance_on_the_holdout(tmp_path: Path, embedded_source: pd.DataFrame, mode: str) -> None:
    frame = embedded_source
    if mode == "text":
        frame = frame.drop(columns=[c for c in frame.columns if c.startswith("emb_")])
    source = tmp_path / "source.parquet"
    _shuffled_labels(frame, seed=22).to_parquet(source, index=False)

    xcom = _train_and_evaluate(source, str(tmp_path / "run"))

    assert xcom["n_holdout"] > 500
    assert abs(xcom["roc_auc_ovr"] - CHANCE) < TOLERANCE, xcom
