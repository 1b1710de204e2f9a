"""``tune``: one shard of the search per call, each in its own file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from modeling_runs import clustered_features, commit, featurized_run, small_config

from privacy_pipeline import storage
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stages import split, tune

CONFIG = small_config(tune={"c_grid": [0.01, 0.1, 1.0]})


@pytest.fixture
def split_run(tmp_path: Path) -> str:
    frame, spec = clustered_features(n_rows=200, seed=2)
    run_uri = featurized_run(tmp_path, frame, spec)
    commit(split.run(config=CONFIG, run_uri=run_uri))
    return run_uri


def test_each_shard_writes_its_own_file_with_its_share_of_the_candidates(split_run: str) -> None:
    layout = RunLayout(split_run)
    first = tune.run(config=CONFIG, run_uri=split_run, shard=0, num_shards=2)
    second = tune.run(config=CONFIG, run_uri=split_run, shard=1, num_shards=2)

    shard_files = [storage.read_json(layout.tune_shard(i, 2)) for i in range(2)]
    assert [[r["candidate_id"] for r in f["results"]] for f in shard_files] == [["c0000", "c0002"], ["c0001"]]
    assert all(f["candidate_ids_all"] == ["c0000", "c0001", "c0002"] for f in shard_files)
    for result in shard_files[0]["results"]:
        assert 0.0 < result["mean_score"] <= 1.0
        assert len(result["fold_scores"]) == CONFIG.tune.cv_folds
        assert result["params"]["clf__l1_ratio"] == 0.0
    # No shared commit marker that parallel shards would overwrite.
    assert first.commit_uri is None and second.commit_uri is None
    assert first.xcom["shard_uri"] == layout.tune_shard(0, 2)
    assert first.xcom["candidates"] == 2 and second.xcom["candidates"] == 1
    best = max(shard_files[0]["results"], key=lambda r: r["mean_score"])
    assert first.xcom["best_score"] == best["mean_score"]
    assert first.xcom["total_lbfgs_iterations"] == sum(r["n_iter"] for r in shard_files[0]["results"])
    # What a gradient pass covers: each fold's training rows after SMOTE, more than the fold had.
    train_rows = len(pd.read_parquet(layout.train_split))
    fold_rows = train_rows * (CONFIG.tune.cv_folds - 1) / CONFIG.tune.cv_folds
    assert len(first.xcom["fitted_rows_per_fold"]) == CONFIG.tune.cv_folds
    assert all(rows > fold_rows + 1 for rows in first.xcom["fitted_rows_per_fold"])
    assert "shard 0 of 2: 2 candidates" in first.summary


def test_a_shard_beyond_the_shard_count_is_refused_before_any_work(split_run: str) -> None:
    with pytest.raises(StageError, match=r"tune: --shard 2 is outside 0..1 for --num-shards 2"):
        tune.run(config=CONFIG, run_uri=split_run, shard=2, num_shards=2)
    assert storage.list_uris(RunLayout(split_run).tune_dir) == []


def test_tune_refuses_a_run_without_split(tmp_path: Path) -> None:
    frame, spec = clustered_features(n_rows=200)
    run_uri = featurized_run(tmp_path, frame, spec)
    with pytest.raises(StageError, match="tune: run .* has no completed split stage .* run split first"):
        tune.run(config=CONFIG, run_uri=run_uri)


def test_a_shard_with_no_candidates_left_still_reports_completion(split_run: str) -> None:
    result = tune.run(config=CONFIG, run_uri=split_run, shard=3, num_shards=4)
    assert result.xcom["candidates"] == 0 and result.xcom["best_candidate_id"] is None
    assert storage.read_json(RunLayout(split_run).tune_shard(3, 4))["results"] == []
