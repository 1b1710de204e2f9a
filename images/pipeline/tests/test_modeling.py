"""The model pipeline, the candidate lists and the fast cross-validated search."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from imblearn.over_sampling import SMOTE
from modeling_runs import clustered_features, small_config
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from privacy_pipeline import modeling
from privacy_pipeline.errors import StageError


@pytest.fixture(scope="module")
def clustered() -> tuple[pd.DataFrame, dict]:
    # Overlapping clusters, so candidates score differently and the comparison with GridSearchCV means something.
    return clustered_features(n_rows=300, seed=3, separation=0.6)


# --- build_pipeline -----------------------------------------------------------------------------------------------


def test_pipeline_has_features_scale_smote_clf_with_the_configured_classifier(clustered) -> None:
    _, spec = clustered
    config = small_config()
    pipeline = modeling.build_pipeline(spec, {"clf__C": 0.1, "clf__l1_ratio": 0.0}, config)
    assert [name for name, _ in pipeline.steps] == ["features", "scale", "smote", "clf"]
    assert isinstance(pipeline.named_steps["smote"], SMOTE)
    assert pipeline.named_steps["smote"].k_neighbors == 3
    clf = pipeline.named_steps["clf"]
    assert (clf.C, clf.l1_ratio, clf.solver) == (0.1, 0.0, "lbfgs")
    assert (clf.max_iter, clf.tol, clf.random_state) == (config.tune.max_iter, config.tune.tol, config.seed)


def test_an_l1_share_switches_the_solver_to_saga(clustered) -> None:
    _, spec = clustered
    pipeline = modeling.build_pipeline(spec, {"clf__C": 1.0, "clf__l1_ratio": 0.5}, small_config())
    assert pipeline.named_steps["clf"].solver == "saga"


@pytest.mark.parametrize(("enabled", "resample"), [(False, True), (True, False)])
def test_smote_is_passthrough_when_disabled_or_not_wanted(clustered, enabled: bool, resample: bool) -> None:
    _, spec = clustered
    config = small_config(smote={"enabled": enabled})
    pipeline = modeling.build_pipeline(spec, {}, config, resample=resample)
    assert pipeline.named_steps["smote"] == "passthrough"


def test_unknown_hyperparameters_are_refused(clustered) -> None:
    _, spec = clustered
    with pytest.raises(ValueError, match="smote__k_neighbors"):
        modeling.build_pipeline(spec, {"smote__k_neighbors": 2}, small_config())


def test_features_are_the_spec_columns_in_float32_and_ids_labels_never_reach_the_model(clustered) -> None:
    frame, spec = clustered
    inputs = modeling.model_inputs(frame, spec, "features.parquet", "test")
    assert list(inputs.columns) == spec["embedding_columns"] + spec["handcrafted_columns"]
    pipeline = modeling.build_pipeline(spec, {}, small_config())
    scaled = pipeline[:2].fit_transform(inputs, frame["label"])
    assert scaled.dtype == np.float32
    assert scaled.shape == (len(frame), len(spec["embedding_columns"]) + 1)


def test_missing_feature_columns_name_the_file_and_columns(clustered) -> None:
    frame, spec = clustered
    with pytest.raises(StageError, match=r"tune: train.parquet lacks the feature columns emb_003"):
        modeling.model_inputs(frame.drop(columns=["emb_003"]), spec, "train.parquet", "tune")


def test_a_spec_without_its_fields_is_refused() -> None:
    with pytest.raises(StageError, match=r"split: spec.json lacks the fields \['handcrafted_columns'\]"):
        modeling.check_feature_spec(
            {"mode": "embedded", "text_column": None, "embedding_columns": ["emb_000"]}, "spec.json", "split"
        )
    with pytest.raises(StageError, match="mode 'pixels'"):
        modeling.check_feature_spec(
            {"mode": "pixels", "text_column": None, "embedding_columns": ["e"], "handcrafted_columns": []}, "s", "split"
        )


@pytest.mark.skipif(importlib.util.find_spec("privacy_pipeline.tfidf_svd") is None, reason="tfidf_svd not there yet")
def test_text_mode_fits_tfidf_svd_on_text_next_to_sentence_and_handcrafted_columns() -> None:
    rng = np.random.default_rng(0)
    vocab = {
        "data_deletion": "delete erase remove account data forget",
        "opt_out": "opt out stop selling unsubscribe marketing",
        "no_privacy_intent": "weather pizza order shipping hello refund",
    }
    labels = rng.choice(list(vocab), size=120, p=[0.2, 0.2, 0.6])
    texts = [" ".join(rng.choice(vocab[label].split(), size=5)) for label in labels]
    frame = pd.DataFrame({"id": [str(i) for i in range(120)], "label": labels, "text": texts})
    sentence_columns = [f"st_{i:03d}" for i in range(4)]
    for column in sentence_columns:
        frame[column] = rng.normal(size=120).astype(np.float32)
    frame["hc_chars"] = frame["text"].str.len().astype(np.float32)
    spec = {
        "mode": "text",
        "text_column": "text",
        "embedding_columns": sentence_columns,
        "handcrafted_columns": ["hc_chars"],
    }
    config = small_config(featurize={"tfidf_svd_dim": 8})
    pipeline = modeling.build_pipeline(spec, {"clf__C": 1.0, "clf__l1_ratio": 0.0}, config)
    inputs = modeling.model_inputs(frame, spec, "features.parquet", "test")
    pipeline.fit(inputs, labels)
    assert list(pipeline.named_steps["features"].named_transformers_) == ["tfidf_svd", "sentence", "handcrafted"]
    assert pipeline[:2].transform(inputs).shape == (120, 8 + 4 + 1)
    # The words carry the label; a learned vocabulary must find them.
    assert (pipeline.predict(inputs) == labels).mean() > 0.9


# --- candidates and shards ----------------------------------------------------------------------------------------


def test_grid_candidates_are_the_product_of_c_grid_and_l1_ratios_with_stable_ids() -> None:
    config = small_config(tune={"c_grid": [0.1, 1.0, 10.0], "l1_ratios": [0.0, 0.5]})
    cands = modeling.candidates(config)
    assert [c["candidate_id"] for c in cands] == [f"c{i:04d}" for i in range(6)]
    assert {(c["params"]["clf__C"], c["params"]["clf__l1_ratio"]) for c in cands} == {
        (c, r) for c in (0.1, 1.0, 10.0) for r in (0.0, 0.5)
    }
    assert modeling.candidates(config) == cands


def test_random_candidates_are_log_uniform_draws_fixed_by_the_seed() -> None:
    config = small_config(tune={"search": "random", "n_trials": 7, "c_min": 0.01, "c_max": 10.0, "l1_ratios": [0.0, 1]})
    cands = modeling.candidates(config)
    assert len(cands) == 7
    assert all(0.01 <= c["params"]["clf__C"] <= 10.0 for c in cands)
    assert {c["params"]["clf__l1_ratio"] for c in cands} <= {0.0, 1.0}
    assert modeling.candidates(config) == cands
    assert modeling.candidates(config.model_copy(update={"seed": 12})) != cands


@pytest.mark.parametrize("num_shards", [1, 2, 3, 4])
def test_shards_cover_every_candidate_exactly_once(num_shards: int) -> None:
    cands = modeling.candidates(small_config(tune={"c_grid": [0.01, 0.03, 0.1, 0.3, 1.0], "l1_ratios": [0.0, 0.5]}))
    shares = [modeling.shard_candidates(cands, shard, num_shards) for shard in range(num_shards)]
    ids = [c["candidate_id"] for share in shares for c in share]
    assert sorted(ids) == [c["candidate_id"] for c in cands]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize(("shard", "num_shards"), [(4, 4), (-1, 2), (0, 0)])
def test_a_shard_outside_the_shard_count_is_refused(shard: int, num_shards: int) -> None:
    with pytest.raises(StageError, match="tune: --"):
        modeling.shard_candidates(modeling.candidates(small_config()), shard, num_shards)


def test_ranking_breaks_ties_by_smaller_c_then_id() -> None:
    results = [
        {"candidate_id": "c0002", "params": {"clf__C": 1.0}, "mean_score": 0.8},
        {"candidate_id": "c0001", "params": {"clf__C": 0.1}, "mean_score": 0.8},
        {"candidate_id": "c0000", "params": {"clf__C": 0.1}, "mean_score": 0.8},
        {"candidate_id": "c0003", "params": {"clf__C": 10.0}, "mean_score": 0.7},
    ]
    assert [r["candidate_id"] for r in modeling.ranked(results)] == ["c0000", "c0001", "c0002", "c0003"]


# --- the fast search ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("c_grid", "l1_ratio"), [([0.003, 0.03, 0.3], 0.0), ([0.03, 0.3], 0.5)], ids=["lbfgs", "saga"])
def test_fast_cv_matches_grid_search_cv_over_the_same_pipeline(clustered, c_grid, l1_ratio) -> None:
    frame, spec = clustered
    config = small_config(tune={"c_grid": c_grid, "l1_ratios": [l1_ratio]})
    cands = modeling.candidates(config)
    inputs = modeling.model_inputs(frame, spec, "train.parquet", "test")
    labels = frame["label"].to_numpy()

    fast = modeling.cross_validate_candidates(inputs, labels, spec, cands, config)
    # The same candidates as plain GridSearchCV expresses them: an L1 share needs the saga solver spelled out.
    solver = {"clf__solver": ["saga"]} if l1_ratio else {}
    search = GridSearchCV(
        modeling.build_pipeline(spec, {}, config),
        {"clf__C": c_grid, "clf__l1_ratio": [l1_ratio], **solver},
        cv=StratifiedKFold(config.tune.cv_folds, shuffle=True, random_state=config.seed),
        scoring="f1_macro",
        error_score="raise",
    ).fit(inputs, labels)
    reference = {
        p["clf__C"]: score
        for p, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True)
    }
    for result in fast:
        assert result["mean_score"] == pytest.approx(reference[result["params"]["clf__C"]], abs=0.01), result
        assert len(result["fold_scores"]) == config.tune.cv_folds
        assert result["n_iter"] > 0
    # The data is hard enough that the search has something to choose.
    assert max(reference.values()) - min(reference.values()) > 0.01


def test_smote_in_the_search_sees_training_folds_only_once_per_fold(clustered, monkeypatch) -> None:
    frame, spec = clustered
    config = small_config(tune={"c_grid": [0.01, 0.1, 1.0]})
    seen_labels: list[list[str]] = []
    original = modeling.smote_interpolation

    def recording_interpolation(smote, X, y):
        seen_labels.append(list(y))
        return original(smote, X, y)

    monkeypatch.setattr(modeling, "smote_interpolation", recording_interpolation)
    inputs = modeling.model_inputs(frame, spec, "train.parquet", "test")
    labels = frame["label"].to_numpy()
    modeling.cross_validate_candidates(inputs, labels, spec, modeling.candidates(config), config)
    folds = StratifiedKFold(config.tune.cv_folds, shuffle=True, random_state=config.seed)
    # Once per fold, shared by all three candidates, on exactly that fold's training rows.
    assert seen_labels == [list(labels[train]) for train, _ in folds.split(inputs, labels)]


def test_smote_interpolation_reproduces_fit_resample(clustered) -> None:
    frame, spec = clustered
    rows = frame[spec["embedding_columns"]].to_numpy(dtype=np.float32)
    labels = frame["label"].to_numpy()
    smote = SMOTE(k_neighbors=5, random_state=7)
    resampled, resampled_labels = smote.fit_resample(rows, labels)
    weights, weight_labels = modeling.smote_interpolation(smote, rows, labels)
    assert len(resampled) > len(rows)  # the classes are imbalanced: SMOTE adds rows
    np.testing.assert_allclose(weights @ rows, resampled, atol=1e-5)
    assert list(weight_labels) == list(resampled_labels)
    assert weights.getnnz(axis=1).max() == 2  # each added row mixes two training rows


def test_the_search_fits_what_logistic_regression_fits_on_the_resampled_fold(clustered) -> None:
    frame, spec = clustered
    config = small_config(tune={"c_grid": [0.01, 1.0], "tol": 1e-6, "max_iter": 1000})
    inputs = modeling.model_inputs(frame, spec, "train.parquet", "test")
    labels = frame["label"].to_numpy()
    train, valid = next(StratifiedKFold(3, shuffle=True, random_state=0).split(inputs, labels))
    reference = modeling.build_pipeline(spec, {}, config)
    fold = modeling.prepare_fold(reference, inputs.iloc[train], labels[train], inputs.iloc[valid], labels[valid])
    objective = modeling._ResampledMultinomialLoss(fold)
    for cand in modeling.candidates(config):
        outcome = modeling._walk_lbfgs([cand], config, fold)[cand["candidate_id"]]
        solution = modeling.fit_resampled(objective, float(cand["params"]["clf__C"]), config)
        plain = modeling._classifier(cand["params"], config).fit(fold.fitted().astype(np.float64), fold.fitted_labels)
        weights, intercept = objective.unpack(solution.x)
        np.testing.assert_allclose(weights.T, plain.coef_, atol=1e-3 * np.abs(plain.coef_).max())
        np.testing.assert_allclose(intercept, plain.intercept_, atol=1e-3 * np.abs(plain.coef_).max())
        predicted = objective.predict(solution.x, fold.validation_rows)
        assert list(predicted) == list(plain.predict(fold.validation_rows))
        assert outcome["n_iter"] == solution.nit > 0


def test_search_refuses_classes_too_small_for_smote(clustered) -> None:
    frame, spec = clustered
    config = small_config(smote={"k_neighbors": 12})
    inputs = modeling.model_inputs(frame, spec, "train.parquet", "test")
    with pytest.raises(StageError, match=r"SMOTE needs at least 13 rows per class"):
        modeling.cross_validate_candidates(inputs, frame["label"].to_numpy(), spec, modeling.candidates(config), config)


def test_search_without_smote_accepts_small_classes(clustered) -> None:
    frame, spec = clustered
    config = small_config(smote={"enabled": False, "k_neighbors": 12}, tune={"c_grid": [1.0]})
    inputs = modeling.model_inputs(frame, spec, "train.parquet", "test")
    results = modeling.cross_validate_candidates(
        inputs, frame["label"].to_numpy(), spec, modeling.candidates(config), config
    )
    assert len(results) == 1 and 0.0 < results[0]["mean_score"] <= 1.0
