"""Saving and loading models: a round trip keeps predictions; a file with untrusted types is refused."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from modeling_runs import clustered_features, small_config
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.preprocessing import FunctionTransformer

from privacy_pipeline import model_io, modeling, storage
from privacy_pipeline.errors import StageError


class Unlisted(TransformerMixin, BaseEstimator):
    """A harmless class that simply is not on the trusted list."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X


@pytest.fixture(scope="module")
def fitted() -> tuple[object, pd.DataFrame]:
    frame, spec = clustered_features(n_rows=200, seed=5)
    pipeline = modeling.build_pipeline(spec, {"clf__C": 1.0, "clf__l1_ratio": 0.0}, small_config())
    inputs = modeling.model_inputs(frame, spec, "train.parquet", "test")
    return pipeline.fit(inputs, frame["label"]), inputs


def test_a_saved_model_loads_and_predicts_the_same(fitted, tmp_path: Path) -> None:
    pipeline, inputs = fitted
    uri = str(tmp_path / "train" / "model.skops")
    model_io.save_model(pipeline, uri)
    loaded = model_io.load_model(uri)
    assert list(loaded.predict(inputs)) == list(pipeline.predict(inputs))
    np.testing.assert_allclose(loaded.predict_proba(inputs), pipeline.predict_proba(inputs))


def test_every_type_our_pipelines_hold_beyond_skops_defaults_is_listed(fitted) -> None:
    pipeline, _ = fitted
    assert set(sio.get_untrusted_types(data=model_io.dumps(pipeline))) <= set(model_io.TRUSTED_TYPES)


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
    )
    tampered.steps.insert(1, ("extra", Unlisted()))
    with pytest.raises(StageError, match=r"contains untrusted types \['test_model_io.Unlisted'\]"):
        model_io.loads(model_io.dumps(tampered), source="gs://bucket/registry/models/v1/model.skops")


def test_a_file_that_is_not_a_skops_model_is_refused_with_its_uri(tmp_path: Path) -> None:
    uri = str(tmp_path / "model.skops")
    storage.write_bytes(uri, b"this is a pickle, honest")
    with pytest.raises(StageError, match=rf"model: {uri} is not a readable skops model file"):
        model_io.load_model(uri)
