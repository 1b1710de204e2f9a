"""``evaluate``: holdout metrics next to a majority baseline, and plots; ``score`` as register uses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from modeling_runs import clustered_features, commit, featurized_run, selected_run, small_config

from privacy_pipeline import cli, model_io, modeling, storage
from privacy_pipeline.config import INTENTS
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stages import evaluate, split, train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONFIG = small_config()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A run through train on well-separated clusters, with select's choice written directly."""
    frame, spec = clustered_features(n_rows=400, seed=8)
    run_uri = featurized_run(tmp_path_factory.mktemp("evaluate"), frame, spec)
    commit(split.run(config=CONFIG, run_uri=run_uri))
    layout = RunLayout(run_uri)
    storage.write_json(
        layout.best_candidate, {"candidate_id": "c0002", "params": {"clf__C": 1.0, "clf__l1_ratio": 0.0}}
    )
    storage.write_json(layout.result("select"), {"stage": "select"})
    commit(train.run(config=CONFIG, run_uri=run_uri))
    return run_uri


@pytest.fixture(scope="module")
def model_and_holdout(trained_run: str) -> tuple[Any, pd.DataFrame]:
    layout = RunLayout(trained_run)
    return model_io.load_model(layout.model), modeling.read_table(layout.holdout_split)


def test_evaluate_writes_metrics_that_beat_the_majority_baseline_and_plots(trained_run: str) -> None:
    result = evaluate.run(config=CONFIG, run_uri=trained_run)
    layout = RunLayout(trained_run)
    metrics = storage.read_json(layout.metrics)

    assert metrics["n_holdout"] == 80
    assert 0.9 < metrics["f1_macro"] <= 1.0
    assert 0.9 < metrics["accuracy"] <= 1.0
    assert 0.95 < metrics["roc_auc_ovr"] <= 1.0
    # Always predicting no_privacy_intent: right on ~3/4 of rows, useless on the privacy intents.
    assert metrics["baseline"]["predicts"] == "no_privacy_intent"
    assert metrics["baseline"]["f1_macro"] < 0.2 < 0.7 < metrics["baseline"]["accuracy"] < 0.8
    assert metrics["f1_macro"] > metrics["baseline"]["f1_macro"]
    assert set(metrics["f1_per_class"]) == set(INTENTS)
    assert metrics["confusion_matrix"]["labels"] == list(INTENTS)
    assert np.asarray(metrics["confusion_matrix"]["matrix"]).sum() == 80
    assert metrics["privacy_vs_none"]["f1"] > 0.9

    for name in evaluate.PLOTS:
        assert storage.read_bytes(layout.plot(name)).startswith(PNG_SIGNATURE)
    assert result.xcom["plot_uris"] == {name: layout.plot(name) for name in ("confusion_matrix", "roc", "pr")}
    assert result.xcom["f1_macro"] == metrics["f1_macro"]
    assert result.xcom["baseline_f1_macro"] == metrics["baseline"]["f1_macro"]
    assert result.commit_uri == layout.result("evaluate")
    assert result.summary.startswith("evaluate: holdout macro-F1 ") and "on 80 rows" in result.summary
    # These clusters name no phrasing families: no unseen-phrasing metric, and the run says so.
    assert metrics["phrasing"] == {"available": False, "note": evaluate.NO_FAMILIES_NOTE}
    assert result.xcom["f1_macro_unseen"] is None and result.xcom["phrasing_note"] == evaluate.NO_FAMILIES_NOTE
    assert "no unseen-phrasing metric: the data has no phrasing_family column" in result.summary


def test_a_class_absent_from_the_holdout_is_left_out_of_roc_auc(model_and_holdout) -> None:
    model, holdout = model_and_holdout
    without_opt_out = holdout[holdout["label"] != "opt_out"]
    metrics = evaluate.score(model, without_opt_out, list(INTENTS))
    assert metrics["roc_auc_per_class"]["opt_out"] is None
    assert metrics["support_per_class"]["opt_out"] == 0
    assert 0.95 < metrics["roc_auc_ovr"] <= 1.0
    assert metrics["n_holdout"] == len(without_opt_out)


def test_a_label_the_model_never_saw_scores_zero_rather_than_failing(model_and_holdout) -> None:
    model, holdout = model_and_holdout
    metrics = evaluate.score(model, holdout, [*INTENTS, "newly_added_intent"])
    assert metrics["f1_per_class"]["newly_added_intent"] == 0.0
    assert metrics["roc_auc_per_class"]["newly_added_intent"] is None


def test_score_refuses_a_holdout_without_the_models_columns(model_and_holdout) -> None:
    model, holdout = model_and_holdout
    with pytest.raises(
        StageError, match=r"register: the holdout lacks 2 columns the model reads \(emb_000, hc_noise\)"
    ):
        evaluate.score(model, holdout.drop(columns=["emb_000", "hc_noise"]), list(INTENTS), needed_by="register")


def test_majority_baseline_predicts_the_most_frequent_training_class() -> None:
    baseline = evaluate.majority_baseline(["a", "a", "b"], ["a", "b", "b", "b"])
    assert baseline["predicts"] == "a"
    assert baseline["accuracy"] == 0.25
    # F1 of "a" is 2*0.25*1/(1.25) = 0.4; "b" is never predicted: 0.
    assert baseline["f1_macro"] == pytest.approx(0.2)


def test_evaluate_refuses_a_run_without_train(tmp_path: Path) -> None:
    frame, spec = clustered_features(n_rows=200)
    run_uri = featurized_run(tmp_path, frame, spec)
    commit(split.run(config=CONFIG, run_uri=run_uri))
    with pytest.raises(StageError, match="evaluate: run .* has no completed train stage"):
        evaluate.run(config=CONFIG, run_uri=run_uri)


def test_the_cli_runs_the_modelling_stages_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame, spec = clustered_features(n_rows=200, seed=9)
    run_uri = featurized_run(tmp_path, frame, spec)
    xcom = tmp_path / "xcom.json"
    monkeypatch.setenv("XCOM_RETURN_PATH", str(xcom))
    settings = ["--set", "seed=11", "--set", "smote.k_neighbors=3", "--set", "tune.cv_folds=3"]
    settings += ["--set", "tune.c_grid=[0.1, 1.0, 10.0]"]
    steps = [
        ["split"],
        ["tune", "--shard", "0", "--num-shards", "2"],
        ["tune", "--shard", "1", "--num-shards", "2"],
        ["select"],
        ["train"],
        ["evaluate"],
    ]
    for step in steps:
        assert cli.main([*settings, *step, "--run", run_uri]) == 0, step
    evaluated = json.loads(xcom.read_text())
    assert evaluated["stage"] == "evaluate"
    assert evaluated["f1_macro"] > evaluated["baseline_f1_macro"]
    layout = RunLayout(run_uri)
    for stage in ("split", "select", "train", "evaluate"):
        assert storage.exists(layout.result(stage)), stage


def test_the_cli_reports_a_missing_shard_as_one_line_and_exit_code_2(tmp_path: Path, capsys) -> None:
    frame, spec = clustered_features(n_rows=200)
    run_uri = featurized_run(tmp_path, frame, spec)
    settings = ["--set", "smote.k_neighbors=3", "--set", "tune.cv_folds=3", "--set", "tune.c_grid=[1.0, 10.0]"]
    assert cli.main([*settings, "split", "--run", run_uri]) == 0
    assert cli.main([*settings, "tune", "--shard", "1", "--num-shards", "2", "--run", run_uri]) == 0
    assert cli.main([*settings, "select", "--run", run_uri]) == 2
    assert "error: select: tune shard 0 of 2 is missing" in capsys.readouterr().err


def test_unseen_phrasings_are_scored_apart_from_seen_ones(tmp_path: Path) -> None:
    """Rows of held-out families land in the holdout only; evaluate scores exactly those as unseen."""
    frame, spec = clustered_features(n_rows=500, seed=8)
    rng = np.random.default_rng(5)
    frame["phrasing_family"] = [f"{label}/{int(rng.integers(4)):02d}" for label in frame["label"]]
    frame["phrasing_held_out"] = frame["phrasing_family"].str.endswith("/03")
    # An unseen phrasing sits away from its intent's cluster centre, so it is harder than a seen one.
    embedding_columns = spec["embedding_columns"]
    unseen = frame["phrasing_held_out"].to_numpy()
    noise = rng.normal(scale=4.0, size=(int(unseen.sum()), len(embedding_columns))).astype(np.float32)
    frame.loc[unseen, embedding_columns] += noise
    run_uri = selected_run(tmp_path, "phrasings", frame, spec, CONFIG)
    commit(train.run(config=CONFIG, run_uri=run_uri))

    result = evaluate.run(config=CONFIG, run_uri=run_uri)

    layout = RunLayout(run_uri)
    metrics = storage.read_json(layout.metrics)["phrasing"]
    holdout = modeling.read_table(layout.holdout_split)
    model = model_io.load_model(layout.model)
    unseen_rows = holdout["phrasing_held_out"].to_numpy()
    assert metrics["available"] is True
    assert metrics["unseen"]["n_holdout"] == frame["phrasing_held_out"].sum() == unseen_rows.sum()
    assert metrics["seen"]["n_holdout"] == len(holdout) - unseen_rows.sum()
    assert metrics["unseen"]["phrasing_families"] == 6
    expected_unseen = evaluate.score(model, holdout[unseen_rows], list(INTENTS))["f1_macro"]
    expected_seen = evaluate.score(model, holdout[~unseen_rows], list(INTENTS))["f1_macro"]
    assert metrics["unseen"]["f1_macro"] == pytest.approx(expected_unseen)
    assert metrics["seen"]["f1_macro"] == pytest.approx(expected_seen)
    assert metrics["unseen"]["f1_macro"] < metrics["seen"]["f1_macro"]
    assert metrics["unseen"]["baseline_f1_macro"] < 0.2
    assert result.xcom["f1_macro_unseen"] == metrics["unseen"]["f1_macro"]
    assert result.xcom["n_holdout_unseen"] == metrics["unseen"]["n_holdout"]
    assert result.xcom["phrasing_note"] is None
    assert f"unseen phrasings {expected_unseen:.2f}" in result.summary
