"""Saving and loading models: a round trip keeps predictions; a file with untrusted types is refused."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from modeling_runs import clustered_features, selected_run, small_config
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.preprocessing import FunctionTransformer

from privacy_pipeline import model_io, modeling, storage
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stages import train


class Unlisted(TransformerMixin, BaseEstimator):
    """A harmless class that simply is not on the trusted list."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X


@pytest.fixture(scope="module")
def fitted() -> tuple[object, pd.DataFrame]:
    frame, spec = clustered_features(n_rows=200, seed=5)
    # Without SMOTE, as train saves a model.
    pipeline = modeling.build_pipeline(spec, {"clf__C": 1.0, "clf__l1_ratio": 0.0}, small_config(), resample=False)
    inputs = modeling.model_inputs(frame, spec, "train.parquet", "test")
    return pipeline.fit(inputs, frame["label"]), inputs


def test_a_saved_model_loads_and_predicts_the_same(fitted, tmp_path: Path) -> None:
    pipeline, inputs = fitted
    uri = str(tmp_path / "train" / "model.skops")
    model_io.save_model(pipeline, uri)
    loaded = model_io.load_model(uri)
    assert list(loaded.predict(inputs)) == list(pipeline.predict(inputs))
    np.testing.assert_allclose(loaded.predict_proba(inputs), pipeline.predict_proba(inputs))


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The model file train saves, in each feature mode, SMOTE on (the default)."""
    frame, embedded_spec = clustered_features(n_rows=300, seed=4, dims=4)
    # Distinct texts (split keeps copies of a text together), each starting with its label's words.
    words = np.array(["delete", "my", "data", "please", "opt", "out", "weather", "pizza", "order", "hello"])
    rng = np.random.default_rng(4)
    frame["text"] = [f"{label.replace('_', ' ')} {' '.join(rng.choice(words, size=8))}" for label in frame["label"]]
    text_spec = embedded_spec | {"mode": "text", "text_column": "text"}
    config = small_config(featurize={"tfidf_svd_dim": 4})
    root = tmp_path_factory.mktemp("trained")
    models = {}
    for mode, spec in (("embedded", embedded_spec), ("text", text_spec)):
        run_uri = selected_run(root, mode, frame, spec, config)
        train.run(config=config, run_uri=run_uri)
        models[mode] = storage.read_bytes(RunLayout(run_uri).model)
    return models


def test_the_trusted_types_are_exactly_what_saved_models_hold(trained_models: dict[str, bytes]) -> None:
    # Both directions: a class the models gain is refused until listed, and one they lose must leave the list.
    held = {mode: set(sio.get_untrusted_types(data=data)) for mode, data in trained_models.items()}
    assert held["embedded"] | held["text"] == set(model_io.TRUSTED_TYPES)
    assert len(model_io.TRUSTED_TYPES) == len(set(model_io.TRUSTED_TYPES))
    for mode, data in trained_models.items():
        assert model_io.loads(data, source=f"{mode}/train/model.skops").named_steps["smote"] == "passthrough"


@pytest.mark.skipif(importlib.util.find_spec("privacy_pipeline.tfidf_svd") is None, reason="tfidf_svd not there yet")
def test_a_text_mode_model_round_trips() -> None:
    rng = np.random.default_rng(1)
    words = ["delete", "my", "data", "please", "opt", "out", "weather", "pizza", "order", "hello"]
    frame = pd.DataFrame({"text": [" ".join(rng.choice(words, size=6)) for _ in range(60)]})
    frame["st_000"] = rng.normal(size=60).astype(np.float32)
    labels = np.where(frame["text"].str.contains("delete"), "data_deletion", "no_privacy_intent")
    spec = {"mode": "text", "text_column": "text", "embedding_columns": ["st_000"], "handcrafted_columns": []}
    pipeline = modeling.build_pipeline(spec, {}, small_config(featurize={"tfidf_svd_dim": 4}), resample=False)
    pipeline.fit(frame, labels)
    loaded = model_io.loads(model_io.dumps(pipeline), source="memory")
    assert list(loaded.predict(frame)) == list(pipeline.predict(frame))


def test_a_model_that_would_call_os_system_is_refused(tmp_path: Path) -> None:
    uri = str(tmp_path / "model.skops")
    storage.write_bytes(uri, sio.dumps(FunctionTransformer(func=os.system)))
    with pytest.raises(
        StageError, match=rf"model: {uri} contains untrusted types \['posix.system'\]; refusing to load"
    ):
        model_io.load_model(uri)


def test_a_pipeline_with_an_unlisted_class_is_refused(fitted) -> None:
    pipeline, _ = fitted
    tampered = modeling.build_pipeline(
        {"mode": "embedded", "text_column": None, "embedding_columns": ["emb_000"], "handcrafted_columns": []},
        {},
        small_config(),
        resample=False,
    )
    tampered.steps.insert(1, ("extra", Unlisted()))
    with pytest.raises(StageError, match=r"contains untrusted types \['test_model_io.Unlisted'\]"):
        model_io.loads(model_io.dumps(tampered), source="gs://bucket/registry/models/v1/model.skops")


def test_a_file_that_is_not_a_skops_model_is_refused_with_its_uri(tmp_path: Path) -> None:
    uri = str(tmp_path / "model.skops")
    storage.write_bytes(uri, b"this is a pickle, honest")
    with pytest.raises(StageError, match=rf"model: {uri} is not a readable skops model file"):
        model_io.load_model(uri)
