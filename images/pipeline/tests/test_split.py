"""``split``: a stratified, deterministic train/holdout cut of the featurized rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from modeling_runs import clustered_features, featurized_run, small_config

from privacy_pipeline import modeling, storage
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stages import split


def test_split_writes_disjoint_stratified_train_and_holdout(tmp_path: Path) -> None:
    frame, spec = clustered_features(n_rows=300)
    run_uri = featurized_run(tmp_path, frame, spec)
    result = split.run(config=small_config(), run_uri=run_uri)

    layout = RunLayout(run_uri)
    train = modeling.read_table(layout.train_split)
    holdout = modeling.read_table(layout.holdout_split)
    assert set(train["id"]).isdisjoint(holdout["id"])
    assert set(train["id"]) | set(holdout["id"]) == set(frame["id"])
    assert list(train.columns) == list(frame.columns) == list(holdout.columns)
    assert len(holdout) == pytest.approx(0.2 * len(frame), abs=1)
    # Stratified: every class keeps its share on both sides, within a row.
    for label, total in frame["label"].value_counts().items():
        assert (holdout["label"] == label).sum() == pytest.approx(0.2 * total, abs=1)
    assert result.xcom["train_rows"] == len(train) and result.xcom["holdout_rows"] == len(holdout)
    assert result.xcom["class_counts"]["holdout"] == holdout["label"].value_counts().sort_index().to_dict()
    assert result.xcom["holdout_uri"] == layout.holdout_split
    assert result.commit_uri == layout.result("split")
    assert "240 train and 60 holdout rows" in result.summary


def test_the_same_seed_gives_the_same_holdout_and_another_seed_another(tmp_path: Path) -> None:
    frame, spec = clustered_features(n_rows=200)
    holdouts = {}
    for name, seed in [("a", 5), ("b", 5), ("c", 6)]:
        run_uri = featurized_run(tmp_path, frame, spec, name=name)
        split.run(config=small_config(seed=seed), run_uri=run_uri)
        holdouts[name] = list(modeling.read_table(RunLayout(run_uri).holdout_split)["id"])
    assert holdouts["a"] == holdouts["b"]
    assert holdouts["a"] != holdouts["c"]


def test_split_refuses_a_run_without_featurize(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="split: run .* has no completed featurize stage"):
        split.run(config=small_config(), run_uri=str(tmp_path / "empty"))


def test_split_refuses_a_class_with_a_single_row_and_writes_nothing(tmp_path: Path) -> None:
    frame, spec = clustered_features(n_rows=200)
    frame.loc[frame.index[0], "label"] = "consent_withdrawal_typo"
    run_uri = featurized_run(tmp_path, frame, spec)
    with pytest.raises(StageError, match=r"split: .*features.parquet has classes with fewer than 2 rows"):
        split.run(config=small_config(), run_uri=run_uri)
    assert not storage.exists(RunLayout(run_uri).train_split)


def test_split_refuses_features_that_lack_columns_of_the_spec(tmp_path: Path) -> None:
    frame, spec = clustered_features(n_rows=200)
    run_uri = featurized_run(tmp_path, frame.drop(columns=["hc_noise"]), spec)
    with pytest.raises(StageError, match="split: .*features.parquet lacks the feature columns hc_noise"):
        split.run(config=small_config(), run_uri=run_uri)
