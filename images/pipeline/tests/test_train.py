"""``train``: the final fit, and the product's key promise: resampling never touches the holdout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from modeling_runs import clustered_features, commit, featurized_run, selected_run, small_config

from privacy_pipeline import model_io, modeling, storage
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stages import split, train


@pytest.fixture(scope="module")
def clustered() -> tuple[pd.DataFrame, dict[str, Any]]:
    return clustered_features(n_rows=300, seed=4)


@pytest.fixture(scope="module")
def overlapping() -> tuple[pd.DataFrame, dict[str, Any]]:
    # Overlapping clusters: probabilities far from 0 and 1, so a model fitted differently shows in them.
    return clustered_features(n_rows=300, seed=3, separation=0.6)


def test_resampling_never_touches_the_holdout(clustered, tmp_path: Path) -> None:
    frame, spec = clustered
    results = {}
    for smote_enabled in (True, False):
        config = small_config(smote={"enabled": smote_enabled})
        run_uri = selected_run(tmp_path, f"smote-{smote_enabled}", frame, spec, config)
        results[smote_enabled] = (run_uri, train.run(config=config, run_uri=run_uri))

    holdouts = {key: modeling.read_table(RunLayout(uri).holdout_split) for key, (uri, _) in results.items()}
    # Same rows in the same order, whether or not training resamples.
    pd.testing.assert_frame_equal(holdouts[True], holdouts[False])
    holdout = holdouts[True]
    assert holdout["label"].value_counts().to_dict() == holdouts[False]["label"].value_counts().to_dict()
    # Every holdout row is an original row, feature values untouched: no synthetic row got in.
    original = frame.set_index("id").loc[holdout["id"]].reset_index()
    pd.testing.assert_frame_equal(holdout, original, check_dtype=False)

    with_smote, without_smote = results[True][1].xcom, results[False][1].xcom
    assert with_smote["train_rows"] == without_smote["train_rows"] == len(frame) - len(holdout)
    # SMOTE lifts every minority class to the majority's size, in training only.
    majority = (modeling.read_table(RunLayout(results[True][0]).train_split)["label"] == "no_privacy_intent").sum()
    assert with_smote["resampled_rows"] == majority * len(set(frame["label"])) > with_smote["train_rows"]
    assert without_smote["resampled_rows"] == without_smote["train_rows"]


def test_train_saves_a_loadable_pipeline_with_the_selected_params(clustered, tmp_path: Path) -> None:
    frame, spec = clustered
    config = small_config()
    run_uri = selected_run(tmp_path, "run", frame, spec, config, params={"clf__C": 0.1, "clf__l1_ratio": 0.0})
    result = train.run(config=config, run_uri=run_uri)

    layout = RunLayout(run_uri)
    model = model_io.load_model(layout.model)
    assert model.named_steps["clf"].C == 0.1
    holdout = modeling.read_table(layout.holdout_split)
    # Well-separated clusters: the fitted model gets nearly all of the holdout right.
    assert (model.predict(holdout) == holdout["label"]).mean() > 0.9
    assert result.xcom["model_uri"] == layout.model
    assert result.xcom["params"] == {"clf__C": 0.1, "clf__l1_ratio": 0.0}
    assert result.xcom["lbfgs_iterations"] > 0 and result.xcom["fit_seconds"] >= 0.0
    assert result.commit_uri == layout.result("train")


def test_the_saved_model_keeps_no_copy_of_the_training_rows(clustered, tmp_path: Path) -> None:
    frame, spec = clustered
    config = small_config()
    result = train.run(config=config, run_uri=selected_run(tmp_path, "run", frame, spec, config))
    assert result.xcom["resampled_rows"] > result.xcom["train_rows"]  # SMOTE did run for the fit
    model = model_io.load_model(result.xcom["model_uri"])
    assert model.named_steps["smote"] == "passthrough"
    # The same pipeline saved with its fitted SMOTE carries the (scaled) training rows in its
    # neighbour index: train_rows x features float64 values more than ours.
    layout = RunLayout(result.xcom["model_uri"].rsplit("/train/", 1)[0])
    table = modeling.read_table(layout.train_split)
    kept = modeling.build_pipeline(spec, result.xcom["params"], config)
    kept.fit(modeling.model_inputs(table, spec, "train", "test"), table["label"].to_numpy())
    training_bytes = len(table) * len(modeling.input_columns(spec)) * 8
    saved = len(storage.read_bytes(result.xcom["model_uri"]))
    assert len(model_io.dumps(kept)) - saved >= training_bytes * 0.9


def test_train_smote_off_fits_on_the_training_rows_only(clustered, tmp_path: Path) -> None:
    frame, spec = clustered
    config = small_config(train={"smote": False})
    result = train.run(config=config, run_uri=selected_run(tmp_path, "run", frame, spec, config))
    assert result.xcom["resampled_rows"] == result.xcom["train_rows"]
    assert model_io.load_model(result.xcom["model_uri"]).named_steps["smote"] == "passthrough"


@pytest.mark.parametrize(
    ("params", "train_smote", "classes"),
    [
        ({"clf__C": 0.01, "clf__l1_ratio": 0.0}, True, None),
        ({"clf__C": 1.0, "clf__l1_ratio": 0.0}, True, None),
        ({"clf__C": 1.0, "clf__l1_ratio": 0.0}, False, None),
        # Two classes: LogisticRegression fits one binomial vector, which the multinomial objective is not.
        ({"clf__C": 1.0, "clf__l1_ratio": 0.0}, True, ["no_privacy_intent", "opt_out"]),
        ({"clf__C": 0.1, "clf__l1_ratio": 0.5}, True, None),
    ],
    ids=["lbfgs-C0.01", "lbfgs-C1", "lbfgs-without-smote", "lbfgs-two-classes", "saga"],
)
def test_the_saved_model_is_the_plain_pipeline_fitted_on_the_training_split(
    overlapping, tmp_path: Path, params: dict[str, float], train_smote: bool, classes: list[str] | None
) -> None:
    frame, spec = overlapping
    if classes:
        frame = frame[frame["label"].isin(classes)].reset_index(drop=True)
    config = small_config(train={"smote": train_smote})
    run_uri = selected_run(tmp_path, "run", frame, spec, config, params=params)
    result = train.run(config=config, run_uri=run_uri)

    layout = RunLayout(run_uri)
    saved = model_io.load_model(layout.model)
    table = modeling.read_table(layout.train_split)
    # What train did before it fitted through SMOTE's weights: features, scale, SMOTE, LogisticRegression.fit.
    plain = modeling.build_pipeline(spec, params, config, resample=train_smote)
    plain.fit(modeling.model_inputs(table, spec, "train", "test"), table["label"].to_numpy())
    ours, theirs = saved.named_steps["clf"], plain.named_steps["clf"]
    assert list(ours.classes_) == list(theirs.classes_)
    # Both fits stop where lbfgs's gradient falls under tune.tol, so they agree to about that, not to the last bit;
    # a different objective (the penalty doubled, or SMOTE's rows left out) moves these by 0.1 to 0.8.
    scale = np.abs(theirs.coef_).max()
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=0, atol=1e-3 * scale)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=0, atol=1e-3 * scale)
    holdout = modeling.model_inputs(modeling.read_table(layout.holdout_split), spec, "holdout", "test")
    assert list(saved.predict(holdout)) == list(plain.predict(holdout))
    np.testing.assert_allclose(saved.predict_proba(holdout), plain.predict_proba(holdout), rtol=0, atol=1e-3)
    assert result.xcom["resampled_rows"] == modeling.resampled_rows(plain, len(table))
    assert result.xcom["lbfgs_iterations"] == modeling.lbfgs_iterations(saved)
    assert result.xcom["lbfgs_iterations"] == pytest.approx(modeling.lbfgs_iterations(plain), rel=0.1)


def test_train_refuses_a_run_without_select(clustered, tmp_path: Path) -> None:
    frame, spec = clustered
    run_uri = featurized_run(tmp_path, frame, spec)
    commit(split.run(config=small_config(), run_uri=run_uri))
    with pytest.raises(StageError, match="train: run .* has no completed select stage"):
        train.run(config=small_config(), run_uri=run_uri)


def test_train_refuses_a_best_json_without_params(clustered, tmp_path: Path) -> None:
    frame, spec = clustered
    config = small_config()
    run_uri = selected_run(tmp_path, "run", frame, spec, config, params={"C": 1.0})
    with pytest.raises(StageError, match=r"train: .*best.json holds no params with \['clf__C', 'clf__l1_ratio'\]"):
        train.run(config=config, run_uri=run_uri)
    assert not storage.exists(RunLayout(run_uri).model)


def test_train_refuses_classes_too_small_for_smote(clustered, tmp_path: Path) -> None:
    frame, spec = clustered
    config = small_config(smote={"k_neighbors": 15})
    run_uri = selected_run(tmp_path, "run", frame, spec, config)
    with pytest.raises(StageError, match=r"train: .*train.parquet: SMOTE needs at least 16 rows per class"):
        train.run(config=config, run_uri=run_uri)
