"""The sentence encoder the conversations job embeds with: the training pipeline's all-MiniLM-L6-v2.

Stages take any ``TextEncoder`` (tests pass a cheap deterministic one) and
default to ``privacy_pipeline.sentence_encoder.SentenceEncoder``, the same model
and version featurize uses, so vectors in the store and the classifier's
sentence features come from one model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.sentence_encoder import MODEL_NAME, SentenceEncoder, model_version


class TextEncoder(Protocol):
    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def default_encoder(config: PipelineConfig) -> TextEncoder:
    return SentenceEncoder(config.featurize)


def model_identity() -> dict[str, str]:
    """What the manifest records about the model, and what a reader checks its queries against."""
    return {"sentence_model": MODEL_NAME, "sentence_model_version": model_version()}
