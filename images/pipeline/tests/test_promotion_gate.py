"""promotion_gate: the paired bootstrap of the macro-F1 difference, its verdict in words, training fingerprints."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sklearn.metrics import f1_score

from privacy_pipeline import promotion_gate
from privacy_pipeline.promotion_gate import PairedComparison

LABELS = np.array(["data_deletion", "data_access", "opt_out", "no_privacy_intent"])


def _labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(LABELS, size=n, p=[0.1, 0.1, 0.1, 0.7])


def _with_errors(truth: np.ndarray, share: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    predicted = truth.copy()
    wrong = rng.random(len(truth)) < share
    predicted[wrong] = rng.choice(LABELS, size=int(wrong.sum()))
    return predicted


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _comparison(low: float, high: float, difference: float = 0.004) -> PairedComparison:
    return PairedComparison("champion v1", 150, 0.8, 0.796, difference, (low, high), 0.95, 2000)


def test_every_resample_scores_macro_f1_as_sklearn_does() -> None:
    truth, predicted = _labels(200, 1), _with_errors(_labels(200, 1), 0.3, 2)
    codes = {label: i for i, label in enumerate(LABELS)}
    rows = np.random.default_rng(3).integers(0, 200, size=(50, 200))
    truth_codes = np.array([codes[v] for v in truth])
    predicted_codes = np.array([codes[v] for v in predicted])
    fast = promotion_gate._macro_f1(truth_codes[rows], predicted_codes[rows], len(LABELS))
    # Small resamples can miss a label entirely: sklearn then averages over fewer labels, and so must we.
    slow = [f1_score(truth[r], predicted[r], average="macro", zero_division=0.0) for r in rows]
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_the_observed_difference_is_the_difference_of_sklearns_scores() -> None:
    truth = _labels(300, 4)
    candidate, reference = _with_errors(truth, 0.1, 5), _with_errors(truth, 0.3, 6)
    result = promotion_gate.paired_bootstrap(
        truth, candidate, reference, against="champion v1", n_resamples=500, confidence=0.95, seed=7
    )
    expected = f1_score(truth, candidate, average="macro") - f1_score(truth, reference, average="macro")
    assert result.difference == pytest.approx(expected, abs=1e-12)
    assert result.interval[0] < result.difference < result.interval[1]
    assert result.rows == 300 and result.n_resamples == 500


def test_the_interval_is_seeded() -> None:
    truth = _labels(150, 8)
    args = (truth, _with_errors(truth, 0.2, 9), _with_errors(truth, 0.25, 10))
    first = promotion_gate.paired_bootstrap(*args, against="x", n_resamples=300, confidence=0.9, seed=1)
    again = promotion_gate.paired_bootstrap(*args, against="x", n_resamples=300, confidence=0.9, seed=1)
    other = promotion_gate.paired_bootstrap(*args, against="x", n_resamples=300, confidence=0.9, seed=2)
    assert first == again and first.interval != other.interval


def test_identical_predictions_have_a_zero_interval_and_are_not_promoted() -> None:
    truth = _labels(100, 11)
    predicted = _with_errors(truth, 0.2, 12)
    result = promotion_gate.paired_bootstrap(
        truth, predicted, predicted, against="x", n_resamples=200, confidence=0.95, seed=1
    )
    assert result.interval == (0.0, 0.0)
    assert promotion_gate.verdict(result, 0.0)[0] is False


def test_rows_must_line_up() -> None:
    with pytest.raises(ValueError, match="same rows"):
        promotion_gate.paired_bootstrap(
            ["a", "b"], ["a"], ["a", "b"], against="x", n_resamples=100, confidence=0.95, seed=1
        )


def test_the_verdict_says_why_in_numbers() -> None:
    assert promotion_gate.verdict(_comparison(-0.011, 0.019), 0.005) == (
        False,
        "not promoted: +0.004 macro-F1 over champion v1 on 150 holdout rows, 95% interval [-0.011, +0.019] includes 0",
    )
    refused, reason = promotion_gate.verdict(_comparison(0.002, 0.02), 0.005)
    assert refused is False and reason.endswith("lower bound is not above the margin +0.005")
    refused, reason = promotion_gate.verdict(_comparison(-0.05, -0.01, -0.03), 0.005)
    assert refused is False and reason.endswith("is below 0: worse")
    promoted, reason = promotion_gate.verdict(_comparison(0.01, 0.05, 0.03), 0.005)
    assert promoted is True and reason.startswith("promoted: +0.030") and "lower bound above the margin" in reason


def test_a_fingerprint_is_sorted_distinct_and_finds_the_rows_it_holds() -> None:
    trained = promotion_gate.fingerprint(["k1", "k2", "k2", "k3"])
    assert trained.dtype == np.uint64 and len(trained) == 3 and (np.diff(trained.astype(np.float64)) > 0).all()
    assert promotion_gate.seen_in(trained, ["k3", "k4", "k1", "zz"]).tolist() == [True, False, True, False]
    assert promotion_gate.seen_in(promotion_gate.fingerprint([]), ["k1"]).tolist() == [False]


def test_a_fingerprint_round_trips_and_a_foreign_array_is_refused() -> None:
    trained = promotion_gate.fingerprint([f"text {i}" for i in range(1000)])
    data = promotion_gate.fingerprint_bytes(trained)
    assert len(data) < 1000 * 8 + 200  # 8 bytes a row, plus the .npy header
    np.testing.assert_array_equal(promotion_gate.read_fingerprint(data), trained)
    with pytest.raises(ValueError, match="1-d uint64"):
        promotion_gate.read_fingerprint(_npy(np.zeros(3)))
