"""Saving and loading model pipelines with skops, refusing files that could run code.

A pickle runs whatever its bytes say when loaded; a skops file only rebuilds
types it is told to trust. skops itself trusts scikit-learn's estimators,
numpy and builtins; ``TRUSTED_TYPES`` adds exactly the other classes a model
saved by ``train`` holds, no more (tests/test_model_io.py trains one of each
mode and checks that skops reports this very list). A file with any type
outside both (a tampered model that smuggles in ``os.system``, say) is
refused before anything in it is built.
"""

from __future__ import annotations

import logging
from typing import Any

import skops.io as sio  # type: ignore[import-untyped]

from privacy_pipeline import storage
from privacy_pipeline.errors import StageError
from privacy_pipeline.tfidf_svd import SKOPS_TRUSTED_TYPES as TFIDF_SVD_TYPES

log = logging.getLogger(__name__)

TRUSTED_TYPES: tuple[str, ...] = (
    # Every model: train saves the imblearn pipeline with its SMOTE step set to
    # "passthrough", so no fitted neighbour search (KDTree and friends) is in it.
    "imblearn.pipeline.Pipeline",
    # Text-mode models: the featurizer's own classes.
    *TFIDF_SVD_TYPES,
)


def dumps(model: Any) -> bytes:
    return bytes(sio.dumps(model))


def loads(data: bytes, source: str) -> Any:
    """The model in ``data``; ``source`` (its URI) names the file in errors."""
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:
        # skops reads a zip archive with a schema; anything else fails here in many ways.
        raise StageError(f"model: {source} is not a readable skops model file ({type(exc).__name__}: {exc})") from exc
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise StageError(f"model: {source} contains untrusted types {refused}; refusing to load")
    return sio.loads(data, trusted=list(untrusted))


def save_model(model: Any, uri: str) -> None:
    data = dumps(model)
    storage.write_bytes(uri, data)
    log.info("saved model to %s (%d bytes)", uri, len(data))


def load_model(uri: str) -> Any:
    return loads(storage.read_bytes(uri), source=uri)
