"""Saving and loading model pipelines with skops, refusing files that could run code.

A pickle runs whatever its bytes say when loaded; a skops file only rebuilds
types it is told to trust. skops itself trusts scikit-learn's estimators,
numpy and builtins; ``TRUSTED_TYPES`` adds exactly the other classes our
pipelines contain. A file with any type outside both (a tampered model that
smuggles in ``os.system``, say) is refused before anything in it is built.
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
    "imblearn.pipeline.Pipeline",
    "imblearn.over_sampling._smote.base.SMOTE",
    # SMOTE's fitted neighbour search: scikit-learn picks a KD-tree for up to
    # 15 feature columns (brute force, with nothing extra, beyond that).
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    # Trusted by skops already; listed so this tuple names every class a pipeline holds.
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.pipeline.Pipeline",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.decomposition._truncated_svd.TruncatedSVD",
    # The text-mode featurizer's own classes.
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
