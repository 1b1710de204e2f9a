"""TF-IDF -> TruncatedSVD: the 200 text dimensions fitted on training data only.

They are the second part of the 584-dim embedding (384 sentence dims + 200
here). Because the vocabulary and the SVD basis are learned, this runs as the
first step of the model pipeline, inside every CV training fold, so holdout
and validation texts never shape them.

The output width is always ``tfidf_svd_dim``: a small training fold whose
vocabulary has fewer terms than that gets fewer SVD components, padded with
zero columns, so the columns downstream never change. Both classes here keep
plain attributes only, so a fitted pipeline round-trips through ``skops.io``
once their type names (``SKOPS_TRUSTED_TYPES``) are trusted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from sklearn.base import BaseEstimator, TransformerMixin  # type: ignore[import-untyped]
from sklearn.decomposition import TruncatedSVD  # type: ignore[import-untyped]
from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]
from sklearn.pipeline import Pipeline  # type: ignore[import-untyped]
from sklearn.utils.validation import check_is_fitted  # type: ignore[import-untyped]

from privacy_pipeline.config import FeaturizeConfig

TEXT_COLUMN = "text"
FEATURE_PREFIX = "tfidf_svd_"

# What skops.io.load must be told to trust to read a model holding this step.
SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "privacy_pipeline.tfidf_svd.TextColumn",
    "privacy_pipeline.tfidf_svd.PaddedTruncatedSVD",
)


class TextColumn(TransformerMixin, BaseEstimator):
    """Whatever holds the texts -> a 1-D object array of strings.

    Accepts a 1-D array, list or Series; a DataFrame (its ``column``, or its
    only column, which is what a ColumnTransformer given ``["text"]`` passes);
    or a one-column 2-D array. Missing texts become empty strings.
    """

    def __init__(self, column: str = TEXT_COLUMN) -> None:
        self.column = column

    def fit(self, X: Any, y: Any = None) -> TextColumn:
        self.n_features_in_ = 1
        return self

    def transform(self, X: Any) -> np.ndarray:
        if isinstance(X, pd.DataFrame):
            if self.column in X.columns:
                texts = X[self.column]
            elif X.shape[1] == 1:
                texts = X.iloc[:, 0]
            else:
                raise ValueError(
                    f"TextColumn: got a DataFrame with columns {list(X.columns)}; expected a {self.column!r} column"
                )
            values = texts.to_numpy(dtype=object)
        else:
            values = np.asarray(X, dtype=object)
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.ndim != 1:
                raise ValueError(f"TextColumn: expected one column of texts, got an array of shape {values.shape}")
        return np.array(["" if pd.isna(t) else str(t) for t in values], dtype=object)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.array([self.column], dtype=object)


class PaddedTruncatedSVD(TransformerMixin, BaseEstimator):
    """TruncatedSVD whose output is always ``n_components`` wide, as float32.

    The fitted rank is capped at ``n_features - 1`` (what TruncatedSVD
    accepts) and at the number of training rows; the columns beyond the
    fitted rank are zeros.
    """

    def __init__(self, n_components: int = 200, random_state: int | None = None) -> None:
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> PaddedTruncatedSVD:
        n_rows, n_features = X.shape
        self.n_features_in_ = n_features
        self.fitted_rank_ = int(min(self.n_components, n_features - 1, n_rows))
        self.svd_: TruncatedSVD | None = None
        if self.fitted_rank_ >= 1:
            self.svd_ = TruncatedSVD(n_components=self.fitted_rank_, random_state=self.random_state).fit(X)
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "fitted_rank_")
        reduced = np.zeros((X.shape[0], self.n_components), dtype=np.float32)
        if self.svd_ is not None:
            projected = self.svd_.transform(X)
            reduced[:, : projected.shape[1]] = projected
        return reduced

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.array([f"{FEATURE_PREFIX}{i:03d}" for i in range(self.n_components)], dtype=object)


def make_tfidf_svd(config: FeaturizeConfig, seed: int) -> Pipeline:
    """An unfitted texts -> (n, ``config.tfidf_svd_dim``) float32 pipeline."""
    return Pipeline(
        [
            ("text", TextColumn(TEXT_COLUMN)),
            (
                "tfidf",
                TfidfVectorizer(
                    sublinear_tf=True,
                    ngram_range=(1, 2),
                    # A term seen in one training text only is noise to the SVD.
                    min_df=2,
                    max_features=config.tfidf_max_features,
                    dtype=np.float32,
                ),
            ),
            ("svd", PaddedTruncatedSVD(n_components=config.tfidf_svd_dim, random_state=seed)),
        ]
    )
