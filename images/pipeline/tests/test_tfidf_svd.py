"""TF-IDF -> SVD: always tfidf_svd_dim wide, usable inside a ColumnTransformer, saved by skops."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import skops.io as sio  # type: ignore[import-untyped]
from sklearn.compose import ColumnTransformer  # type: ignore[import-untyped]

from privacy_pipeline.config import FeaturizeConfig
from privacy_pipeline.tfidf_svd import SKOPS_TRUSTED_TYPES, TextColumn, make_tfidf_svd

SEED = 7

TEN_DOCUMENTS = [
    "delete my account please",
    "how do you use cookies",
    "send me my data",
    "stop the marketing emails please",
    "withdraw my consent",
    "delete my data now",
    "what data do you hold",
    "I love your app",
    "question about the cookies policy",
    "unsubscribe me from the emails",
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """250 varied texts: a vocabulary above 200 terms."""
    rng = np.random.default_rng(SEED)
    words = [f"word{i}" for i in range(240)]
    return [" ".join(rng.choice(words, size=12)) for _ in range(250)]


def test_output_is_200_wide_float32_on_a_full_corpus(corpus: list[str]) -> None:
    reduced = make_tfidf_svd(FeaturizeConfig(), SEED).fit_transform(corpus)
    assert reduced.shape == (250, 200)
    assert reduced.dtype == np.float32
    assert np.count_nonzero(np.abs(reduced).sum(axis=0)) == 200


def test_ten_documents_still_give_200_columns_padded_with_zeros() -> None:
    pipeline = make_tfidf_svd(FeaturizeConfig(), SEED)
    reduced = pipeline.fit_transform(pd.Series(TEN_DOCUMENTS))
    rank = pipeline.named_steps["svd"].fitted_rank_
    assert reduced.shape == (10, 200)
    assert 1 <= rank < 200
    assert np.abs(reduced[:, :rank]).sum() > 0
    assert not reduced[:, rank:].any()


def test_configured_width_is_respected() -> None:
    reduced = make_tfidf_svd(FeaturizeConfig(tfidf_svd_dim=16), SEED).fit_transform(TEN_DOCUMENTS)
    assert reduced.shape == (10, 16)


def test_unseen_texts_transform_to_the_same_width() -> None:
    pipeline = make_tfidf_svd(FeaturizeConfig(), SEED).fit(TEN_DOCUMENTS)
    reduced = pipeline.transform(["entirely new words here", ""])
    assert reduced.shape == (2, 200)
    assert not reduced[0].any()  # no training term, no signal


def test_fits_are_deterministic_for_the_seed(corpus: list[str]) -> None:
    first = make_tfidf_svd(FeaturizeConfig(), SEED).fit_transform(corpus)
    second = make_tfidf_svd(FeaturizeConfig(), SEED).fit_transform(corpus)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    "wrap",
    [
        list,
        pd.Series,
        lambda texts: np.asarray(texts, dtype=object),
        lambda texts: np.asarray(texts, dtype=object).reshape(-1, 1),
        lambda texts: pd.DataFrame({"text": texts}),
        lambda texts: pd.DataFrame({"id": range(len(texts)), "text": texts}),
        lambda texts: pd.DataFrame({"message": texts}),
    ],
    ids=["list", "series", "1d-array", "one-column-array", "text-frame", "wide-frame", "one-column-frame"],
)
def test_accepts_texts_in_every_shape_a_caller_passes(wrap: Callable[[list[str]], object]) -> None:
    expected = make_tfidf_svd(FeaturizeConfig(), SEED).fit_transform(TEN_DOCUMENTS)
    np.testing.assert_allclose(make_tfidf_svd(FeaturizeConfig(), SEED).fit_transform(wrap(TEN_DOCUMENTS)), expected)


def test_a_frame_without_a_text_column_is_refused() -> None:
    frame = pd.DataFrame({"id": range(10), "message": TEN_DOCUMENTS})
    with pytest.raises(ValueError, match="expected a 'text' column"):
        TextColumn().fit_transform(frame)


@pytest.mark.parametrize("columns", ["text", ["text"]], ids=["scalar", "list"])
def test_works_inside_a_column_transformer(columns: str | list[str]) -> None:
    frame = pd.DataFrame({"text": TEN_DOCUMENTS, "hc_word_count": np.arange(10, dtype=np.float32)})
    assembled = ColumnTransformer(
        [("tfidf_svd", make_tfidf_svd(FeaturizeConfig(), SEED), columns), ("hc", "passthrough", ["hc_word_count"])]
    )
    features = assembled.fit_transform(frame)
    assert features.shape == (10, 201)
    assert list(assembled.get_feature_names_out()[:2]) == ["tfidf_svd__tfidf_svd_000", "tfidf_svd__tfidf_svd_001"]


def test_a_fitted_pipeline_round_trips_through_skops() -> None:
    pipeline = make_tfidf_svd(FeaturizeConfig(), SEED).fit(TEN_DOCUMENTS)
    data = sio.dumps(pipeline)
    # Exactly the two classes defined here need trusting; nothing else unknown.
    assert sorted(sio.get_untrusted_types(data=data)) == sorted(SKOPS_TRUSTED_TYPES)
    restored = sio.loads(data, trusted=list(SKOPS_TRUSTED_TYPES))
    np.testing.assert_allclose(restored.transform(TEN_DOCUMENTS), pipeline.transform(TEN_DOCUMENTS), atol=1e-6)


def test_loading_without_trusting_the_classes_is_refused() -> None:
    data = sio.dumps(make_tfidf_svd(FeaturizeConfig(), SEED).fit(TEN_DOCUMENTS))
    with pytest.raises(Exception, match="[Uu]ntrusted"):
        sio.loads(data, trusted=[])
