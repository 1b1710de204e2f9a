"""``select``: the best candidate of the latest complete search; incomplete or mixed results are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from modeling_runs import small_config

from privacy_pipeline import modeling, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stages import select, tune

CONFIG = small_config(tune={"c_grid": [0.01, 0.1, 1.0, 10.0]})


def write_shards(
    run_uri: str,
    num_shards: int,
    scores: dict[str, float] | None = None,
    shards: list[int] | None = None,
    config: PipelineConfig = CONFIG,
) -> None:
    """Shard files as tune writes them, with made-up scores (0.5 unless given)."""
    scores = scores or {}
    cands = modeling.candidates(config)
    for shard in range(num_shards) if shards is None else shards:
        results = [
            {
                "candidate_id": c["candidate_id"],
                "params": c["params"],
                "mean_score": scores.get(c["candidate_id"], 0.5),
                "std_score": 0.01,
                "fold_scores": [scores.get(c["candidate_id"], 0.5)] * 3,
                "n_iter": 10,
                "converged": True,
                "fit_seconds": 0.01,
            }
            for c in modeling.shard_candidates(cands, shard, num_shards)
        ]
        storage.write_json(
            RunLayout(run_uri).tune_shard(shard, num_shards),
            tune.shard_record(config, shard, num_shards, results, 0.1),
        )


def test_select_picks_the_highest_mean_score_and_writes_best_json(tmp_path: Path) -> None:
    run_uri = str(tmp_path)
    write_shards(run_uri, 2, scores={"c0000": 0.61, "c0001": 0.74, "c0002": 0.70, "c0003": 0.52})
    result = select.run(config=CONFIG, run_uri=run_uri)

    best = storage.read_json(RunLayout(run_uri).best_candidate)
    assert best["candidate_id"] == "c0001"
    assert best["params"] == {"clf__C": 0.1, "clf__l1_ratio": 0.0}
    assert best["mean_score"] == 0.74 and best["n_candidates"] == 4
    assert [entry["candidate_id"] for entry in best["leaderboard"]] == ["c0001", "c0002", "c0000", "c0003"]
    assert result.xcom == {
        "best_candidate_id": "c0001",
        "best_params": {"clf__C": 0.1, "clf__l1_ratio": 0.0},
        "cv_f1_macro": 0.74,
        "n_candidates": 4,
    }
    assert result.commit_uri == RunLayout(run_uri).result("select")
    assert "CV macro-F1 0.740" in result.summary


def test_a_tie_goes_to_the_smaller_c(tmp_path: Path) -> None:
    write_shards(str(tmp_path), 1, scores={"c0002": 0.8, "c0003": 0.8, "c0001": 0.8})
    assert select.run(config=CONFIG, run_uri=str(tmp_path)).xcom["best_candidate_id"] == "c0001"


def test_the_leaderboard_keeps_the_top_ten(tmp_path: Path) -> None:
    config = small_config(tune={"c_grid": [0.001 * 2**i for i in range(12)]})
    write_shards(str(tmp_path), 3, scores={f"c{i:04d}": i / 100 for i in range(12)}, config=config)
    select.run(config=config, run_uri=str(tmp_path))
    leaderboard = storage.read_json(RunLayout(str(tmp_path)).best_candidate)["leaderboard"]
    assert [entry["candidate_id"] for entry in leaderboard] == [f"c{i:04d}" for i in range(11, 1, -1)]


def test_a_missing_shard_is_refused_with_the_command_to_rerun_it(tmp_path: Path) -> None:
    run_uri = str(tmp_path)
    write_shards(run_uri, 3, shards=[0, 2])
    missing = RunLayout(run_uri).tune_shard(1, 3)
    with pytest.raises(StageError) as refused:
        select.run(config=CONFIG, run_uri=run_uri)
    assert str(refused.value) == (
        f"select: tune shard 1 of 3 is missing ({missing}); rerun tune --shard 1 --num-shards 3"
    )
    assert not storage.exists(RunLayout(run_uri).best_candidate)


def test_a_rerun_with_another_shard_count_uses_the_latest_complete_attempt_and_says_so(tmp_path: Path) -> None:
    run_uri = str(tmp_path)
    write_shards(run_uri, 2, scores={"c0000": 0.9})
    write_shards(run_uri, 3, scores={"c0003": 0.8})
    result = select.run(config=CONFIG, run_uri=run_uri)
    assert result.xcom["best_candidate_id"] == "c0003"
    assert "ignored stale results of an earlier tune with 2 shards" in result.summary


def test_a_stale_complete_attempt_does_not_stand_in_for_an_incomplete_latest_one(tmp_path: Path) -> None:
    run_uri = str(tmp_path)
    write_shards(run_uri, 2)
    write_shards(run_uri, 3, shards=[0, 2])
    with pytest.raises(StageError, match=r"tune shard 1 of 3 is missing .* \(older results with 2 shards are stale\)"):
        select.run(config=CONFIG, run_uri=run_uri)


def test_shards_that_lack_a_candidate_are_refused(tmp_path: Path) -> None:
    run_uri = str(tmp_path)
    write_shards(run_uri, 2)
    uri = RunLayout(run_uri).tune_shard(1, 2)
    shard = storage.read_json(uri)
    shard["results"] = shard["results"][:1]
    storage.write_json(uri, shard)
    with pytest.raises(StageError, match=r"hold 3 results but the search has 4 candidates \(missing \['c0003'\]"):
        select.run(config=CONFIG, run_uri=run_uri)


def test_shards_of_another_search_than_the_config_defines_are_refused(tmp_path: Path) -> None:
    run_uri = str(tmp_path)
    write_shards(run_uri, 2)
    changed = small_config(tune={"c_grid": [0.5, 5.0, 50.0, 500.0]})
    with pytest.raises(StageError, match="searched a different candidate list than this config defines"):
        select.run(config=changed, run_uri=run_uri)


def test_select_without_any_tune_results_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"select: no tune shard results under .*tune; run tune first"):
        select.run(config=CONFIG, run_uri=str(tmp_path))
