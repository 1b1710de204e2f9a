"""``split``: a stratified, deterministic train/holdout cut of the featurized rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from modeling_runs import clustered_features, featurized_run, small_config

from privacy_pipeline import modeling, storage
from privacy_pipeline.errors import StageError
from privacy_pipeline.phrasing import normalised_text
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
    assert result.xcom["held_out_phrasing_rows"] == 0 and result.xcom["distinct_texts"] == len(frame)


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


def with_repeated_texts(frame, distinct: int = 40):
    """Each row gets one of ``distinct`` texts (same label per text), written with varying case and punctuation."""
    rng = np.random.default_rng(3)
    frame = frame.copy()
    texts = []
    for i, label in enumerate(frame["label"]):
        base = f"{label} request about item {chr(ord('a') + int(rng.integers(distinct // 6 + 1)))}"
        texts.append(base.upper() + "!!" if i % 3 == 0 else base + ".")
    frame["text"] = texts
    return frame


def test_no_holdout_text_is_in_training_even_as_a_near_copy(tmp_path: Path) -> None:
    frame, spec = clustered_features(n_rows=600)
    frame = with_repeated_texts(frame)
    run_uri = featurized_run(tmp_path, frame, spec)
    result = split.run(config=small_config(), run_uri=run_uri)

    layout = RunLayout(run_uri)
    train = modeling.read_table(layout.train_split)
    holdout = modeling.read_table(layout.holdout_split)
    train_texts = {normalised_text(t) for t in train["text"]}
    holdout_texts = {normalised_text(t) for t in holdout["text"]}
    # Many copies of few texts: a row-level split would put copies on both sides.
    assert len(holdout_texts) >= 5 and len(holdout) > 50
    assert train_texts.isdisjoint(holdout_texts)
    assert set(train["id"]) | set(holdout["id"]) == set(frame["id"])
    assert result.xcom["distinct_texts"] == len(train_texts | holdout_texts)


def test_rows_of_held_out_phrasing_families_go_to_the_holdout_only(tmp_path: Path) -> None:
    frame, spec = clustered_features(n_rows=400)
    rng = np.random.default_rng(4)
    frame["phrasing_family"] = [f"{label}/{int(rng.integers(5)):02d}" for label in frame["label"]]
    frame["phrasing_held_out"] = frame["phrasing_family"].str.endswith("/04")
    run_uri = featurized_run(tmp_path, frame, spec)
    result = split.run(config=small_config(), run_uri=run_uri)

    layout = RunLayout(run_uri)
    train = modeling.read_table(layout.train_split)
    holdout = modeling.read_table(layout.holdout_split)
    held_out_ids = set(frame.loc[frame["phrasing_held_out"], "id"])
    assert held_out_ids <= set(holdout["id"])
    assert not train["phrasing_held_out"].any()
    assert not train["phrasing_family"].str.endswith("/04").any()
    # The rest is cut as before: about holdout_fraction of the trainable rows.
    seen_in_holdout = (~holdout["phrasing_held_out"]).sum()
    assert seen_in_holdout == pytest.approx(0.2 * (len(frame) - len(held_out_ids)), abs=6)
    assert result.xcom["held_out_phrasing_rows"] == len(held_out_ids)
    assert f"plus {len(held_out_ids)} rows of held-out phrasings" in result.summary


@pytest.mark.parametrize("held_out", ["every_opt_out_row", "most_consent_rows"])
def test_too_few_rows_to_hold_phrasings_out_splits_as_without_them_and_says_so(tmp_path: Path, held_out: str) -> None:
    frame, spec = clustered_features(n_rows=200)
    if held_out == "every_opt_out_row":
        frame["phrasing_held_out"] = frame["label"] == "opt_out"
    else:  # 10 rows: routing 4 of them leaves 5 for training, 3-fold CV with 3 SMOTE neighbours needs 6
        consent = frame.index[frame["label"] == "consent_withdrawal"]
        frame["phrasing_held_out"] = frame.index.isin(consent[:4])
    run_uri = featurized_run(tmp_path, frame, spec)

    result = split.run(config=small_config(), run_uri=run_uri)

    train = modeling.read_table(RunLayout(run_uri).train_split)
    assert train["phrasing_held_out"].any()
    assert result.xcom["held_out_phrasing_rows"] == 0
    assert result.xcom["phrasing_note"].startswith("held-out phrasings were not routed to the holdout: classes {")
    assert "no unseen-phrasing metric for this run" in result.xcom["phrasing_note"]
