"""``evaluate``: score the trained model on the untouched holdout, next to a majority-class baseline.

When the data names each row's phrasing family, the holdout is also scored in
two parts: rows whose family never occurs in training (unseen phrasings, the
headline: it measures generalisation, not recognition of a template) and rows
of families the model trained on (seen phrasings, different texts). Data
without a ``phrasing_family`` column has no unseen-phrasing metric, and the
metrics and summary say so.

``score`` is also what ``register`` uses to score the current champion on this
run's holdout, so candidate and champion are compared on the same rows by the
same code.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
from matplotlib.figure import Figure
from sklearn.metrics import (  # type: ignore[import-untyped]
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from privacy_pipeline import figures, model_io, modeling, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.phrasing import PHRASING_FAMILY_COLUMN, unseen_phrasing_rows
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "evaluate"
PLOTS = ("confusion_matrix", "roc", "pr")
DEFAULT_NEGATIVE_LABEL: str = PipelineConfig.model_fields["negative_label"].default


def _model_inputs(model: Any, holdout: pd.DataFrame, needed_by: str) -> pd.DataFrame:
    """The holdout columns the model was fitted on; a champion from another feature mode fails here, clearly."""
    wanted = [str(column) for column in getattr(model, "feature_names_in_", [])]
    if not wanted:
        raise StageError(f"{needed_by}: the model does not record its input columns; it was not built by this pipeline")
    missing = [column for column in wanted if column not in holdout.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise StageError(
            f"{needed_by}: the holdout lacks {len(missing)} columns the model reads ({shown}); "
            "was the model trained on features of another mode?"
        )
    return holdout[wanted]


def predict(model: Any, holdout: pd.DataFrame, needed_by: str = STAGE) -> np.ndarray:
    """The model's label for every holdout row, as strings: what register's paired comparison scores."""
    return np.asarray(model.predict(_model_inputs(model, holdout, needed_by))).astype(str)


def _probabilities(model: Any, inputs: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """predict_proba with one column per label in ``labels`` order; a class the model never saw scores 0."""
    proba = model.predict_proba(inputs)
    columns = {str(c): i for i, c in enumerate(model.classes_)}
    aligned = np.zeros((len(inputs), len(labels)), dtype=float)
    for j, label in enumerate(labels):
        if label in columns:
            aligned[:, j] = proba[:, columns[label]]
    return aligned


def _roc_auc_per_class(truth: np.ndarray, proba: np.ndarray, labels: list[str]) -> dict[str, float | None]:
    """One-vs-rest ROC-AUC per label; None where the holdout has no positives (or no negatives) of it."""
    per_class: dict[str, float | None] = {}
    for j, label in enumerate(labels):
        positives = truth == label
        if positives.all() or not positives.any():
            per_class[label] = None
        else:
            per_class[label] = float(roc_auc_score(positives, proba[:, j]))
    return per_class


def score(
    model: Any,
    holdout: pd.DataFrame,
    labels: list[str],
    *,
    negative_label: str = DEFAULT_NEGATIVE_LABEL,
    needed_by: str = STAGE,
) -> dict[str, Any]:
    """Holdout metrics of ``model``: macro-F1, accuracy, macro one-vs-rest ROC-AUC and per-class detail.

    ``f1_macro`` averages over the labels present in the holdout or the
    predictions, as the ``f1_macro`` scorer in tuning does, so CV and holdout
    numbers compare. ``roc_auc_ovr`` averages the classes that have both
    positives and negatives in the holdout.
    """
    if "label" not in holdout.columns:
        raise StageError(f"{needed_by}: the holdout has no label column")
    if holdout.empty:
        raise StageError(f"{needed_by}: the holdout has no rows")
    inputs = _model_inputs(model, holdout, needed_by)
    truth = holdout["label"].astype(str).to_numpy()
    predicted = np.asarray(model.predict(inputs)).astype(str)
    proba = _probabilities(model, inputs, labels)

    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0.0)
    auc_per_class = _roc_auc_per_class(truth, proba, labels)
    auc_values = [v for v in auc_per_class.values() if v is not None]
    is_privacy, predicted_privacy = truth != negative_label, predicted != negative_label
    privacy_precision, privacy_recall, privacy_f1, _ = precision_recall_fscore_support(
        is_privacy, predicted_privacy, average="binary", zero_division=0.0
    )
    return {
        "n_holdout": len(holdout),
        "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0.0)),
        "accuracy": float(accuracy_score(truth, predicted)),
        "roc_auc_ovr": float(np.mean(auc_values)) if auc_values else None,
        "roc_auc_per_class": auc_per_class,
        "f1_per_class": {label: float(v) for label, v in zip(labels, f1, strict=True)},
        "precision_per_class": {label: float(v) for label, v in zip(labels, precision, strict=True)},
        "recall_per_class": {label: float(v) for label, v in zip(labels, recall, strict=True)},
        "support_per_class": {label: int(v) for label, v in zip(labels, support, strict=True)},
        "confusion_matrix": {
            "labels": list(labels),
            # rows: true label, columns: predicted label
            "matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        },
        "privacy_vs_none": {
            "negative_label": negative_label,
            "f1": float(privacy_f1),
            "precision": float(privacy_precision),
            "recall": float(privacy_recall),
        },
    }


def majority_baseline(train_labels: Any, holdout_labels: Any) -> dict[str, Any]:
    """What always predicting the most frequent training class scores on the holdout: the bar a model must clear."""
    train_counts = Counter(str(v) for v in train_labels)
    # Ties go to the alphabetically first label, so the baseline is deterministic.
    majority = min(train_counts, key=lambda label: (-train_counts[label], label))
    truth = np.asarray(holdout_labels).astype(str)
    predicted = np.full(len(truth), majority)
    return {
        "strategy": "most_frequent",
        "predicts": majority,
        "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0.0)),
        "accuracy": float(accuracy_score(truth, predicted)),
    }


NO_FAMILIES_NOTE = (
    "no unseen-phrasing metric: the data has no phrasing_family column, so the holdout cannot be told apart "
    "by whether its phrasings occur in training"
)


def phrasing_metrics(
    model: Any,
    holdout: pd.DataFrame,
    train: pd.DataFrame,
    labels: list[str],
    *,
    negative_label: str = DEFAULT_NEGATIVE_LABEL,
) -> dict[str, Any]:
    """Holdout metrics on unseen phrasings (families never in ``train``) and on seen ones, each beside the baseline.

    ``unseen`` or ``seen`` is None when the holdout has no such rows; both are
    absent, with a ``note`` saying why, when the data names no families.
    """
    unseen = unseen_phrasing_rows(holdout, train.get(PHRASING_FAMILY_COLUMN))
    if unseen is None:
        return {"available": False, "note": NO_FAMILIES_NOTE}
    parts: dict[str, Any] = {"available": True}
    for name, rows in (("unseen", unseen), ("seen", ~unseen)):
        subset = holdout[rows]
        if subset.empty:
            parts[name] = None
            continue
        metrics = score(model, subset, labels, negative_label=negative_label)
        parts[name] = {
            "n_holdout": metrics["n_holdout"],
            "phrasing_families": int(subset[PHRASING_FAMILY_COLUMN].nunique()),
            "f1_macro": metrics["f1_macro"],
            "accuracy": metrics["accuracy"],
            "roc_auc_ovr": metrics["roc_auc_ovr"],
            "f1_per_class": metrics["f1_per_class"],
            "support_per_class": metrics["support_per_class"],
            "privacy_vs_none_f1": metrics["privacy_vs_none"]["f1"],
            "baseline_f1_macro": majority_baseline(train["label"], subset["label"])["f1_macro"],
        }
    return parts


def _read_train_labels(uri: str) -> pd.DataFrame:
    """Only the training labels and phrasing families: the baseline and the seen/unseen cut need nothing else."""
    train = pq.ParquetFile(storage.open_bytes(uri))
    wanted = [name for name in ("label", PHRASING_FAMILY_COLUMN) if name in train.schema_arrow.names]
    return train.read(columns=wanted).to_pandas()


def _phrasing_summary(phrasing: dict[str, Any]) -> str:
    if not phrasing["available"]:
        return f"; {NO_FAMILIES_NOTE}"
    parts = []
    for name in ("unseen", "seen"):
        part = phrasing[name]
        if part is None:
            parts.append(f"no {name}-phrasing rows")
        else:
            parts.append(
                f"{name} phrasings {part['f1_macro']:.2f} (baseline {part['baseline_f1_macro']:.2f}, "
                f"{part['n_holdout']} rows)"
            )
    return "; macro-F1 on " + ", ".join(parts)


def _confusion_png(metrics: dict[str, Any]) -> bytes:
    labels = metrics["confusion_matrix"]["labels"]
    counts = np.asarray(metrics["confusion_matrix"]["matrix"])
    # Colour by each true class's share so the small privacy classes are as readable as the big one.
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(7, 6))
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(len(labels)):
        for j in range(len(labels)):
            axes.text(
                j, i, str(counts[i, j]), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black"
            )
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"Holdout confusion matrix (n={metrics['n_holdout']})")
    figure.colorbar(image, ax=axes, label="share of true class")
    return figures.png_bytes(figure, dpi=110)


def _curves_png(kind: str, truth: np.ndarray, proba: np.ndarray, labels: list[str]) -> bytes:
    figure = Figure(figsize=(7, 6))
    axes = figure.subplots()
    for j, label in enumerate(labels):
        positives = truth == label
        if positives.all() or not positives.any():
            continue
        if kind == "roc":
            fpr, tpr, _ = roc_curve(positives, proba[:, j])
            axes.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(positives, proba[:, j]):.2f})")
        else:
            precision, recall, _ = precision_recall_curve(positives, proba[:, j])
            axes.plot(recall, precision, label=f"{label} (AP {average_precision_score(positives, proba[:, j]):.2f})")
    if kind == "roc":
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        axes.set_xlabel("false positive rate")
        axes.set_ylabel("true positive rate")
        axes.set_title("Holdout ROC, one-vs-rest")
    else:
        axes.set_xlabel("recall")
        axes.set_ylabel("precision")
        axes.set_title("Holdout precision-recall, one-vs-rest")
    axes.legend(loc="lower right" if kind == "roc" else "lower left", fontsize="small")
    return figures.png_bytes(figure, dpi=110)


def run(*, config: PipelineConfig, run_uri: str) -> StageResult:
    layout = RunLayout(run_uri)
    layout.require("split", needed_by=STAGE)
    layout.require("train", needed_by=STAGE)
    model = model_io.load_model(layout.model)
    holdout = modeling.read_table(layout.holdout_split)
    train = _read_train_labels(layout.train_split)
    labels = list(config.labels)

    metrics = score(model, holdout, labels, negative_label=config.negative_label)
    metrics["baseline"] = majority_baseline(train["label"], holdout["label"])
    metrics["phrasing"] = phrasing_metrics(model, holdout, train, labels, negative_label=config.negative_label)
    metrics["model_uri"] = layout.model
    truth = holdout["label"].astype(str).to_numpy()
    proba = _probabilities(model, _model_inputs(model, holdout, STAGE), labels)
    plots = {
        "confusion_matrix": _confusion_png(metrics),
        "roc": _curves_png("roc", truth, proba, labels),
        "pr": _curves_png("pr", truth, proba, labels),
    }

    storage.write_json(layout.metrics, metrics)
    for name, png in plots.items():
        storage.write_bytes(layout.plot(name), png, content_type="image/png")
    auc = metrics["roc_auc_ovr"]
    auc_text = f"{auc:.2f}" if auc is not None else "n/a"
    phrasing = metrics["phrasing"]
    unseen = phrasing.get("unseen") or {}
    seen = phrasing.get("seen") or {}
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: holdout macro-F1 {metrics['f1_macro']:.2f} (majority baseline "
        f"{metrics['baseline']['f1_macro']:.2f}), accuracy {metrics['accuracy']:.2f}, ROC-AUC {auc_text} "
        f"on {metrics['n_holdout']} rows{_phrasing_summary(phrasing)}",
        xcom={
            "metrics_uri": layout.metrics,
            "f1_macro": metrics["f1_macro"],
            "accuracy": metrics["accuracy"],
            "roc_auc_ovr": auc,
            "baseline_f1_macro": metrics["baseline"]["f1_macro"],
            "n_holdout": metrics["n_holdout"],
            # None when the data names no phrasing families (see phrasing_note) or the holdout has no such rows.
            "f1_macro_unseen": unseen.get("f1_macro"),
            "baseline_f1_macro_unseen": unseen.get("baseline_f1_macro"),
            "n_holdout_unseen": unseen.get("n_holdout"),
            "f1_macro_seen": seen.get("f1_macro"),
            "baseline_f1_macro_seen": seen.get("baseline_f1_macro"),
            "n_holdout_seen": seen.get("n_holdout"),
            "phrasing_note": phrasing.get("note"),
            "plot_uris": {name: layout.plot(name) for name in PLOTS},
        },
        commit_uri=layout.result(STAGE),
    )
