"""The classifier pipeline, its hyperparameter candidates and the cross-validated search over them.

One ``imblearn.pipeline.Pipeline`` is the model from end to end: feature
assembly (the TF-IDF -> SVD part is fitted here, on training rows only, so the
holdout never leaks into the vocabulary), scaling, SMOTE and the logistic
regression. Because SMOTE is a pipeline step, it resamples training folds only:
at predict time imbalanced-learn skips samplers.

``cross_validate_candidates`` computes what ``GridSearchCV`` over that pipeline
computes, without refitting the same featurizer, scaler and SMOTE once per
candidate, without starting every fit from zero weights, and without the
gradient passes over SMOTE's synthetic rows that a plain fit makes: those rows
are fixed mixtures of two training rows, so the passes run over the fold's own
rows through SMOTE's interpolation weights (``smote_interpolation``).
``fit_through_resampling`` fits train's final model on the whole split the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from imblearn.over_sampling import SMOTE  # type: ignore[import-untyped]
from imblearn.pipeline import Pipeline  # type: ignore[import-untyped]
from scipy import optimize, sparse  # type: ignore[import-untyped]
from sklearn.base import clone  # type: ignore[import-untyped]
from sklearn.compose import ColumnTransformer  # type: ignore[import-untyped]
from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
from sklearn.metrics import f1_score  # type: ignore[import-untyped]
from sklearn.model_selection import StratifiedKFold  # type: ignore[import-untyped]
from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from privacy_pipeline import storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError

log = logging.getLogger(__name__)

FEATURE_SPEC_KEYS = ("mode", "text_column", "embedding_columns", "handcrafted_columns")
# The only hyperparameters a candidate sets; the fast search relies on them
# leaving featurizer, scaler and SMOTE untouched.
CANDIDATE_PARAMS = ("clf__C", "clf__l1_ratio")


# --- tables -------------------------------------------------------------------------------------------------------


def read_table(uri: str) -> pd.DataFrame:
    """A Parquet table from storage (features, train or holdout)."""
    return pd.read_parquet(storage.open_bytes(uri))


# --- feature spec -------------------------------------------------------------------------------------------------


def check_feature_spec(spec: Any, source: str, needed_by: str) -> dict[str, Any]:
    """The feature spec written by featurize, or a StageError naming what is wrong with it."""
    if not isinstance(spec, dict):
        raise StageError(f"{needed_by}: {source} is not a feature spec object")
    missing = [key for key in FEATURE_SPEC_KEYS if key not in spec]
    if missing:
        raise StageError(f"{needed_by}: {source} lacks the fields {missing}; rerun featurize")
    if spec["mode"] not in ("text", "embedded"):
        raise StageError(f"{needed_by}: {source} has mode {spec['mode']!r} (expected 'text' or 'embedded')")
    if spec["mode"] == "text" and not spec["text_column"]:
        raise StageError(f"{needed_by}: {source} is in text mode but names no text_column")
    if spec["mode"] == "embedded" and not spec["embedding_columns"] and not spec["handcrafted_columns"]:
        raise StageError(f"{needed_by}: {source} lists no embedding or handcrafted columns")
    return spec


def input_columns(spec: dict[str, Any]) -> list[str]:
    """The columns the model reads, in a fixed order: text (in text mode), embeddings, handcrafted."""
    text = [spec["text_column"]] if spec["mode"] == "text" else []
    return [*text, *spec["embedding_columns"], *spec["handcrafted_columns"]]


def model_inputs(frame: pd.DataFrame, spec: dict[str, Any], source: str, needed_by: str) -> pd.DataFrame:
    """Exactly the model's input columns of ``frame``; ids and labels never reach the model."""
    wanted = input_columns(spec)
    missing = [column for column in wanted if column not in frame.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise StageError(f"{needed_by}: {source} lacks the feature columns {shown} named in the feature spec")
    return frame[wanted]


# --- the pipeline -------------------------------------------------------------------------------------------------


def _features_step(spec: dict[str, Any], config: PipelineConfig) -> ColumnTransformer:
    parts: list[tuple[str, Any, Any]] = []
    if spec["mode"] == "text":
        # Imported here: the module pulls in the TF-IDF machinery only pipelines in text mode need.
        from privacy_pipeline.tfidf_svd import make_tfidf_svd

        # A scalar column name hands the transformer a 1-D column of strings, as TfidfVectorizer expects.
        parts.append(("tfidf_svd", make_tfidf_svd(config.featurize, config.seed), spec["text_column"]))
        if spec["embedding_columns"]:
            parts.append(("sentence", "passthrough", list(spec["embedding_columns"])))
    elif spec["embedding_columns"]:
        parts.append(("embedding", "passthrough", list(spec["embedding_columns"])))
    if spec["handcrafted_columns"]:
        parts.append(("handcrafted", "passthrough", list(spec["handcrafted_columns"])))
    # sparse_threshold=0: the downstream scaler and SMOTE want one dense float32 block.
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


def _classifier(params: dict[str, Any], config: PipelineConfig) -> LogisticRegression:
    l1_ratio = float(params.get("clf__l1_ratio", 0.0))
    return LogisticRegression(
        C=float(params.get("clf__C", 1.0)),
        l1_ratio=l1_ratio,
        # lbfgs is the fast solver but only handles pure L2; any L1 share needs saga.
        solver="lbfgs" if l1_ratio == 0.0 else "saga",
        max_iter=config.tune.max_iter,
        tol=config.tune.tol,
        random_state=config.seed,
    )


def build_pipeline(
    spec: dict[str, Any], params: dict[str, Any], config: PipelineConfig, *, resample: bool = True
) -> Pipeline:
    """The whole model: features -> scale -> SMOTE -> logistic regression.

    ``params`` uses scikit-learn's nested names (``{"clf__C": 0.1, "clf__l1_ratio": 0.0}``).
    SMOTE is a step only when ``config.smote.enabled`` and the caller wants
    resampling (``resample``, e.g. ``config.train.smote`` for the final fit);
    otherwise the step is ``"passthrough"`` so every pipeline has the same shape.
    """
    unknown = sorted(set(params) - set(CANDIDATE_PARAMS))
    if unknown:
        raise ValueError(f"build_pipeline: unsupported parameters {unknown}; candidates set only {CANDIDATE_PARAMS}")
    smote: Any = "passthrough"
    if config.smote.enabled and resample:
        smote = SMOTE(k_neighbors=config.smote.k_neighbors, random_state=config.seed)
    return Pipeline(
        [
            ("features", _features_step(spec, config)),
            ("scale", StandardScaler()),
            ("smote", smote),
            ("clf", _classifier(params, config)),
        ]
    )


def solver_threads(config: PipelineConfig) -> threadpool_limits:
    """Run the fits inside this: BLAS limited to ``tune.blas_threads`` threads (see the config field for why)."""
    return threadpool_limits(limits=config.tune.blas_threads, user_api="blas")


def check_resampling_possible(y: np.ndarray, config: PipelineConfig, where: str) -> None:
    """SMOTE interpolates between a row and its k nearest same-class neighbours: every class needs k + 1 rows."""
    if not config.smote.enabled:
        return
    needed = config.smote.k_neighbors + 1
    counts = Counter(y.tolist())
    small = sorted((label, n) for label, n in counts.items() if n < needed)
    if small:
        listed = ", ".join(f"{label} has {n}" for label, n in small)
        raise StageError(
            f"{where}: SMOTE needs at least {needed} rows per class (smote.k_neighbors + 1) but {listed}; "
            "add data, lower smote.k_neighbors or tune.cv_folds, or set smote.enabled=false"
        )


def resampled_rows(pipeline: Pipeline, train_rows: int) -> int:
    """Rows the classifier was fitted on: the training rows plus SMOTE's synthetic ones."""
    smote = pipeline.named_steps["smote"]
    if smote == "passthrough":
        return train_rows
    return train_rows + int(sum(smote.sampling_strategy_.values()))


def lbfgs_iterations(pipeline_or_classifier: Any) -> int:
    """Solver iterations of the last fit (lbfgs iterations, or saga epochs when an L1 share is set)."""
    classifier = getattr(pipeline_or_classifier, "named_steps", {}).get("clf", pipeline_or_classifier)
    return int(np.sum(classifier.n_iter_))


# --- candidates ---------------------------------------------------------------------------------------------------


def candidates(config: PipelineConfig) -> list[dict[str, Any]]:
    """Every hyperparameter candidate of the search, in a fixed order with stable ids (``c0000``, ...)."""
    tune = config.tune
    if tune.search == "grid":
        drawn = [(float(c), float(r)) for c, r in itertools.product(tune.c_grid, tune.l1_ratios)]
    else:
        rng = np.random.default_rng(config.seed)
        log_c = rng.uniform(math.log(tune.c_min), math.log(tune.c_max), size=tune.n_trials)
        ratios = rng.choice(np.asarray(tune.l1_ratios, dtype=float), size=tune.n_trials)
        drawn = [(float(math.exp(c)), float(r)) for c, r in zip(log_c, ratios, strict=True)]
    return [
        {"candidate_id": f"c{index:04d}", "params": {"clf__C": c, "clf__l1_ratio": r}}
        for index, (c, r) in enumerate(drawn)
    ]


def shard_candidates(cands: Sequence[dict[str, Any]], shard: int, num_shards: int) -> list[dict[str, Any]]:
    """Shard ``shard`` of ``num_shards``: every num_shards-th candidate, so each shard gets small and large C alike."""
    if num_shards < 1:
        raise StageError(f"tune: --num-shards must be at least 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        raise StageError(f"tune: --shard {shard} is outside 0..{num_shards - 1} for --num-shards {num_shards}")
    return list(cands[shard::num_shards])


# --- the search ---------------------------------------------------------------------------------------------------


def smote_interpolation(smote: SMOTE, X: np.ndarray, y: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray]:
    """SMOTE's resampling of ``(X, y)`` as a matrix: ``weights @ X`` is, row for row, what ``fit_resample`` returns.

    Every row SMOTE adds is ``x_i + step * (x_nn - x_i)`` for a row ``x_i`` of
    a minority class and one of its k nearest same-class neighbours ``x_nn``:
    a fixed linear combination of two training rows. This runs imbalanced-learn's
    own steps (sampling strategy, neighbour search, random draws, interpolation
    rule) as ``SMOTE._fit_resample`` does, but hands the interpolation the
    identity matrix instead of the rows, so what comes out is each added row's
    two weights, not its 584 values. ``test_smote_interpolation_reproduces_fit_resample``
    holds this equal to ``fit_resample``.
    """
    sampler = clone(smote).fit(X, y)
    sampler._validate_estimator()
    blocks = [sparse.identity(len(y), format="csr", dtype=np.float64)]
    labels = [np.asarray(y)]
    for label, n_samples in sampler.sampling_strategy_.items():
        if n_samples == 0:
            continue
        members = np.flatnonzero(y == label)
        neighbours = sampler.nn_k_.fit(X[members]).kneighbors(X[members], return_distance=False)[:, 1:]
        # Interpolating between rows of the identity gives the weights on those rows.
        identity = sparse.identity(len(members), format="csr", dtype=np.float64)
        within_class, added_labels = sampler._make_samples(identity, y.dtype, label, identity, neighbours, n_samples)
        within_class = sparse.coo_matrix(within_class)
        blocks.append(
            sparse.csr_matrix(
                (within_class.data, (within_class.row, members[within_class.col])), shape=(n_samples, len(y))
            )
        )
        labels.append(added_labels)
    return sparse.vstack(blocks, format="csr"), np.concatenate(labels)


@dataclass(frozen=True)
class ResampledRows:
    """Rows after the pipeline's features and scaler (float32), and SMOTE's resampling of them.

    The classifier is fitted on ``resampling @ rows`` (SMOTE's output, or the
    rows themselves when the pipeline does not resample), labelled ``fitted_labels``.
    """

    rows: np.ndarray
    resampling: sparse.csr_matrix
    fitted_labels: np.ndarray

    @property
    def fitted_rows(self) -> int:
        return len(self.fitted_labels)

    def fitted(self) -> np.ndarray:
        """The fitted rows themselves, for solvers that need them in memory (saga)."""
        return np.asarray(self.resampling @ self.rows, dtype=np.float32)


@dataclass(frozen=True)
class PreparedFold(ResampledRows):
    """One CV fold, prepared once and shared by every candidate.

    The validation fold is only transformed, never resampled: it stays the
    rows a user would send.
    """

    validation_rows: np.ndarray
    validation_labels: np.ndarray


def prepare_rows(pipeline: Pipeline, X: pd.DataFrame, y: np.ndarray) -> ResampledRows:
    """Fit ``pipeline``'s features and scaler steps on ``(X, y)`` in place, as its fit would, and resample their rows.

    The SMOTE step itself stays unfitted: its resampling comes back as
    ``smote_interpolation``'s matrix (the identity when the step is "passthrough").
    """
    features, scaler = pipeline.named_steps["features"], pipeline.named_steps["scale"]
    rows = np.asarray(scaler.fit_transform(features.fit_transform(X, y), y), dtype=np.float32)
    y = np.asarray(y)
    smote = pipeline.named_steps["smote"]
    if smote == "passthrough":
        return ResampledRows(rows, sparse.identity(len(y), format="csr", dtype=np.float64), y)
    return ResampledRows(rows, *smote_interpolation(smote, rows, y))


def prepare_fold(
    reference: Pipeline, X_train: pd.DataFrame, y_train: np.ndarray, X_valid: pd.DataFrame, y_valid: np.ndarray
) -> PreparedFold:
    """Fit features and scaler on the training fold as the pipeline's fit would, and SMOTE's resampling of it."""
    fold_pipeline = clone(reference)
    prepared = prepare_rows(fold_pipeline, X_train, y_train)
    features, scaler = fold_pipeline.named_steps["features"], fold_pipeline.named_steps["scale"]
    validation_rows = np.asarray(scaler.transform(features.transform(X_valid)), dtype=np.float32)
    return PreparedFold(
        prepared.rows, prepared.resampling, prepared.fitted_labels, validation_rows, np.asarray(y_valid)
    )


class _ResampledMultinomialLoss:
    """``LogisticRegression``'s lbfgs objective on the fitted rows of a fold or split, computed through SMOTE's weights.

    The objective is scikit-learn's for the multinomial model with an L2
    penalty: the mean cross-entropy over the n fitted rows plus
    ``||W||^2 / (2 C n)``, intercepts unpenalised. Its gradient passes need
    ``fitted @ W`` and ``fitted.T @ G``; with ``fitted = R @ rows`` those are
    ``R @ (rows @ W)`` and ``rows.T @ (R.T @ G)``, so the dense products run
    over the fold's own rows (about a fifth of what SMOTE makes at this
    imbalance) and only the two-nonzeros-per-row ``R`` touches the rest. The
    products are float32, as the rows are; the optimiser keeps float64.
    """

    def __init__(self, prepared: ResampledRows) -> None:
        self.rows = prepared.rows
        self.resampling = prepared.resampling
        self.resampling_t = prepared.resampling.T.tocsr()
        self.classes, self.codes = np.unique(prepared.fitted_labels, return_inverse=True)
        self.fitted = len(self.codes)

    @property
    def size(self) -> int:
        return (self.rows.shape[1] + 1) * len(self.classes)

    def unpack(self, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        coef = packed.reshape(self.rows.shape[1] + 1, len(self.classes))
        return coef[:-1], coef[-1]

    def loss_gradient(self, packed: np.ndarray, l2_strength: float) -> tuple[float, np.ndarray]:
        weights, intercept = self.unpack(packed)
        # Classes x rows: the per-row reductions over 6 classes then run along contiguous memory.
        raw = np.ascontiguousarray((self.resampling @ (self.rows @ weights.astype(np.float32))).T)
        raw += intercept[:, None]
        every_row = np.arange(self.fitted)
        # A log-sum-exp by hand: its exponentials are the softmax's too (scipy's logsumexp would be a second pass).
        shift = raw.max(axis=0)
        pointwise = np.exp(raw - shift)
        total = pointwise.sum(axis=0)
        loss = float(np.mean(shift + np.log(total) - raw[self.codes, every_row]))
        loss += 0.5 * l2_strength * float(np.sum(weights * weights))
        # d loss / d raw: softmax minus the one-hot labels, over the mean's n.
        pointwise /= total
        pointwise[self.codes, every_row] -= 1.0
        pointwise /= self.fitted
        grad_weights = self.rows.T @ (self.resampling_t @ pointwise.T).astype(np.float32) + l2_strength * weights
        return loss, np.vstack([grad_weights, pointwise.sum(axis=1)]).ravel()

    def predict(self, packed: np.ndarray, rows: np.ndarray) -> np.ndarray:
        weights, intercept = self.unpack(packed)
        return self.classes[np.argmax(rows @ weights.astype(np.float32) + intercept, axis=1)]


def fit_resampled(
    objective: _ResampledMultinomialLoss, c: float, config: PipelineConfig, start: np.ndarray | None = None
) -> optimize.OptimizeResult:
    """Minimise ``objective`` at ``C=c`` from ``start`` (zero weights if None), as ``LogisticRegression`` does.

    The solver call is scikit-learn's lbfgs call (``_logistic_regression_path``):
    scipy's L-BFGS-B with ``gtol=tol``, ``ftol=64*eps``, ``maxls=50``, ``maxiter=max_iter``.
    """
    return optimize.minimize(
        objective.loss_gradient,
        np.zeros(objective.size) if start is None else start,
        args=(1.0 / (c * objective.fitted),),
        method="L-BFGS-B",
        jac=True,
        options={
            "maxiter": config.tune.max_iter,
            "maxls": 50,
            "gtol": config.tune.tol,
            "ftol": 64 * np.finfo(float).eps,
        },
    )


def multinomial_lbfgs(pipeline: Pipeline, labels: np.ndarray) -> bool:
    """Whether ``fit_through_resampling`` fits what ``pipeline.fit`` fits on these labels.

    It computes ``LogisticRegression``'s lbfgs objective for the multinomial
    model, so the classifier must use lbfgs (pure L2: an L1 share needs saga)
    and see three or more classes (on two, scikit-learn fits one binomial
    weight vector instead).
    """
    return pipeline.named_steps["clf"].solver == "lbfgs" and len(np.unique(labels)) > 2


def fit_through_resampling(pipeline: Pipeline, X: pd.DataFrame, y: np.ndarray, config: PipelineConfig) -> ResampledRows:
    """Fit ``pipeline`` as ``pipeline.fit(X, y)`` would, its lbfgs passes running through SMOTE's weights.

    Features and scaler are fitted in place (``prepare_rows``); the classifier's
    objective over ``resampling @ rows`` is minimised without making those rows
    (``fit_resampled``), and the optimum becomes the pipeline's fitted
    ``LogisticRegression`` (``set_solution``). The SMOTE step stays unfitted:
    predict skips samplers either way. Only where ``multinomial_lbfgs`` holds.
    """
    prepared = prepare_rows(pipeline, X, y)
    objective = _ResampledMultinomialLoss(prepared)
    classifier = pipeline.named_steps["clf"]
    set_solution(classifier, objective, fit_resampled(objective, float(classifier.C), config))
    return prepared


def set_solution(
    classifier: LogisticRegression, objective: _ResampledMultinomialLoss, solution: optimize.OptimizeResult
) -> LogisticRegression:
    """``classifier`` left as its own multinomial lbfgs fit leaves it, with ``solution``'s weights.

    The fitted attributes are those ``LogisticRegression.fit`` sets, in its
    shapes and dtypes: ``coef_`` (classes x features) and ``intercept_`` in the
    rows' dtype, ``classes_`` sorted, ``n_iter_`` (int32, at most max_iter) and
    ``n_features_in_``, so predict, predict_proba and skops treat it as any fitted one.
    """
    weights, intercept = objective.unpack(solution.x)
    dtype = objective.rows.dtype
    classifier.n_features_in_ = objective.rows.shape[1]
    classifier.classes_ = objective.classes
    classifier.n_iter_ = np.asarray([min(int(solution.nit), classifier.max_iter)], dtype=np.int32)
    classifier.coef_ = np.ascontiguousarray(weights.T, dtype=dtype)
    classifier.intercept_ = intercept.astype(dtype)
    return classifier


def _walk_lbfgs(
    walk: Sequence[dict[str, Any]], config: PipelineConfig, fold: PreparedFold
) -> dict[str, dict[str, Any]]:
    """Pure-L2 candidates of one fold in increasing C, each fit starting from the previous optimum."""
    objective = _ResampledMultinomialLoss(fold)
    packed: np.ndarray | None = None
    outcomes: dict[str, dict[str, Any]] = {}
    for cand in walk:
        started = time.perf_counter()
        solution = fit_resampled(objective, float(cand["params"]["clf__C"]), config, packed)
        seconds = time.perf_counter() - started
        packed = solution.x
        predicted = objective.predict(solution.x, fold.validation_rows)
        outcomes[cand["candidate_id"]] = {
            "score": float(f1_score(fold.validation_labels, predicted, average="macro", zero_division=0.0)),
            "n_iter": int(solution.nit),
            "converged": bool(solution.nit < config.tune.max_iter),
            "seconds": seconds,
        }
    return outcomes


def _walk_saga(walk: Sequence[dict[str, Any]], config: PipelineConfig, fold: PreparedFold) -> dict[str, dict[str, Any]]:
    """Candidates with an L1 share: scikit-learn's saga, warm-started in increasing C, on the fitted rows in memory."""
    classifier = _classifier(walk[0]["params"], config).set_params(warm_start=True)
    fitted = fold.fitted()
    outcomes: dict[str, dict[str, Any]] = {}
    for cand in walk:
        classifier.set_params(C=float(cand["params"]["clf__C"]))
        started = time.perf_counter()
        with warnings.catch_warnings():
            # Counted by the caller and reported once, instead of one warning per fit.
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(fitted, fold.fitted_labels)
        seconds = time.perf_counter() - started
        predicted = classifier.predict(fold.validation_rows)
        outcomes[cand["candidate_id"]] = {
            "score": float(f1_score(fold.validation_labels, predicted, average="macro", zero_division=0.0)),
            "n_iter": lbfgs_iterations(classifier),
            "converged": bool(np.max(classifier.n_iter_) < config.tune.max_iter),
            "seconds": seconds,
        }
    return outcomes


def cross_validate_candidates(
    X: pd.DataFrame, y: Any, spec: dict[str, Any], cands: Sequence[dict[str, Any]], config: PipelineConfig
) -> list[dict[str, Any]]:
    """Mean macro-F1 over stratified CV folds for each candidate, as ``GridSearchCV`` over ``build_pipeline`` gives.

    Per fold the featurizer, scaler and SMOTE are fitted once on the training
    fold (``prepare_fold``) and shared by every candidate. Per l1_ratio, the
    C values are walked upwards, each fit starting from the previous, more
    regularised optimum, which is close, so it converges in few iterations.
    Pure-L2 candidates (lbfgs) fit SMOTE's rows through its interpolation
    weights (``_ResampledMultinomialLoss``): the same objective and solver as
    ``LogisticRegression`` on the resampled fold, at the cost of the fold's
    own rows.
    """
    if not cands:
        return []
    for cand in cands:
        unknown = sorted(set(cand["params"]) - set(CANDIDATE_PARAMS))
        if unknown:
            raise ValueError(f"cross_validate_candidates: {cand['candidate_id']} sets {unknown}, which it cannot share")
    labels = np.asarray(y)
    reference = build_pipeline(spec, {}, config)
    by_l1_ratio: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for cand in cands:
        by_l1_ratio[float(cand["params"]["clf__l1_ratio"])].append(cand)
    walks = [
        sorted(group, key=lambda c: (float(c["params"]["clf__C"]), c["candidate_id"]))
        for _, group in sorted(by_l1_ratio.items())
    ]

    per_fold: list[dict[str, dict[str, Any]]] = []
    fitted_rows: list[int] = []
    folds = StratifiedKFold(n_splits=config.tune.cv_folds, shuffle=True, random_state=config.seed)
    with solver_threads(config):
        for fold_number, (train_index, valid_index) in enumerate(folds.split(np.zeros(len(labels)), labels)):
            check_resampling_possible(labels[train_index], config, f"tune: CV training fold {fold_number}")
            fold = prepare_fold(
                reference, X.iloc[train_index], labels[train_index], X.iloc[valid_index], labels[valid_index]
            )
            log.info(
                "fold %d: %d training rows (%d after resampling), %d validation rows",
                fold_number,
                len(train_index),
                fold.fitted_rows,
                len(valid_index),
            )
            fitted_rows.append(fold.fitted_rows)
            fold_outcomes: dict[str, dict[str, Any]] = {}
            for walk in walks:
                pure_l2 = float(walk[0]["params"]["clf__l1_ratio"]) == 0.0
                fold_outcomes |= (_walk_lbfgs if pure_l2 else _walk_saga)(walk, config, fold)
            per_fold.append(fold_outcomes)

    results = []
    for cand in cands:
        outcomes = [fold[cand["candidate_id"]] for fold in per_fold]
        scores = [o["score"] for o in outcomes]
        results.append(
            {
                "candidate_id": cand["candidate_id"],
                "params": dict(cand["params"]),
                "mean_score": float(np.mean(scores)),
                "std_score": float(np.std(scores)),
                "fold_scores": scores,
                "n_iter": sum(o["n_iter"] for o in outcomes),
                "fold_n_iter": [o["n_iter"] for o in outcomes],
                # The rows each fold's classifier was fitted on (after SMOTE): what a gradient pass covers.
                "fold_fitted_rows": fitted_rows,
                "converged": all(o["converged"] for o in outcomes),
                "fit_seconds": round(sum(o["seconds"] for o in outcomes), 4),
            }
        )
    unconverged = [r["candidate_id"] for r in results if not r["converged"]]
    if unconverged:
        log.warning(
            "%d of %d candidates hit tune.max_iter=%d in some fold without converging: %s",
            len(unconverged),
            len(cands),
            config.tune.max_iter,
            ", ".join(unconverged),
        )
    return results


def ranked(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results best first: highest mean score; on a tie the smaller C (the simpler model), then the candidate id."""
    return sorted(results, key=lambda r: (-r["mean_score"], float(r["params"]["clf__C"]), r["candidate_id"]))


def candidates_fingerprint(cands: Sequence[dict[str, Any]]) -> str:
    """A short digest of the candidate list, so select can tell shards of different searches apart."""
    canonical = json.dumps([[c["candidate_id"], c["params"]] for c in cands], sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
