"""``conversations-drift``: has the day's traffic moved away from what came before, and from the champion's training?

One question, two references, each compared with the same tests:

- **recent days** (the decision): the store's conversations of the ``drift.reference_days`` days before
  this one. They are what the day must look like when nothing changed: the same form (a conversation's
  user turns, redacted, as the store snippet), the same encoder, tagged by the champion.
- **the champion's training data** (reported, not deciding): its training split's messages (redacted
  here the same way) and sentence embeddings, and its class mix. Measured on the synthetic data, an
  ordinary day is told apart from training messages with ROC AUC 0.93 (handcrafted features) to 0.99
  (bag-of-words vectors): a conversation's joined user turns are not a labelled single message, so that gap is the
  champion's training/serving skew, always there, and no threshold on it could say whether *today* moved.

The tests, per reference, on at most ``drift.sample_size`` rows a side (scipy.stats and scikit-learn):
PSI and the two-sample KS test per handcrafted feature (text_features.py) and per principal component of
the sentence embeddings (PCA fitted on the reference side); a domain classifier (logistic regression on
the handcrafted features and the whole embedding, cross-validated ROC AUC: 0.5 means the two cannot be
told apart); and the chi-square test of the predicted-intent mix. The day drifted when the classifier's
AUC against recent days is above ``drift.auc_threshold`` (0.55, Evidently's default for embedding
drift). The report (JSON, and an HTML page with its plots inline) names the features that moved most.

When it drifted, the XCom says which training run to start: ``drift__<day>__<content hash>``, on the
latest labelled partition up to the day (conversations carry no labels), so the DAG's trigger starts
one run per distinct drifted day and a re-run of the same day finds that run and starts none.
"""

from __future__ import annotations

import hashlib
import html
import io
import logging
import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from privacy_pipeline import figures, registry, storage
from privacy_pipeline.config import DriftConfig, PipelineConfig
from privacy_pipeline.conversations import vector_store
from privacy_pipeline.conversations.layout import EMBED, REDACT, TAG, ConversationsLayout
from privacy_pipeline.conversations.redaction import redact
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult
from privacy_pipeline.stages.conversations_embed import read_embeddings
from privacy_pipeline.stages.featurize import SENTENCE_PREFIX
from privacy_pipeline.text_features import HANDCRAFTED_COLUMNS, handcrafted_features

log = logging.getLogger(__name__)

STAGE = "conversations-drift"
DRIFT = "conversations/drift"
TRIGGER_PREFIX = "drift"
_PARTITION = re.compile(r"/ds=(\d{4}-\d{2}-\d{2})/")
# Reference-quantile bins for PSI; an empty bin counts as this share, so the log stays finite.
PSI_BINS = 10
PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a text per row, its embedding, and the intents it was labelled or tagged with."""

    name: str
    texts: list[str]
    embeddings: np.ndarray
    intents: pd.Series | None


def run(*, config: PipelineConfig, run_uri: str, registry_uri: str, store_uri: str, training_data: str) -> StageResult:
    layout = ConversationsLayout(run_uri)
    day = str(layout.require(REDACT, needed_by=STAGE).get("day"))
    layout.require(EMBED, needed_by=STAGE)
    tag_result = layout.require(TAG, needed_by=STAGE)
    settings = config.drift

    redacted = _read_parquet(layout.redacted, ["conversation_id", "user_text", "snippet"])
    ids, vectors = _read_day_embeddings(layout.embeddings)
    if ids != redacted["conversation_id"].astype(str).tolist():
        raise StageError(
            f"{STAGE}: {layout.embeddings} does not hold one vector per conversation of {layout.redacted} "
            "in the same order; rerun conversations-embed"
        )
    if not ids:
        raise StageError(f"{STAGE}: {layout.redacted} has no conversations; nothing to compare")
    intents = _day_intents(layout, tag_result, ids)
    content = _content_hash(redacted)

    comparisons: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    recent = _recent_days(store_uri, day, vectors.shape[1], settings)
    if isinstance(recent, str):
        notes.append(recent)
    else:
        day_side = Side("day", redacted["snippet"].astype(str).tolist(), vectors, intents)
        comparisons["recent_days"] = _compare(recent, day_side, settings)
    training = _champion_training(registry_uri, vectors.shape[1])
    if isinstance(training, str):
        notes.append(training)
    else:
        day_side = Side("day", redacted["user_text"].astype(str).tolist(), vectors, intents)
        comparisons["training"] = _compare(training, day_side, settings)

    decision = comparisons.get("recent_days")
    drift_score = decision["domain_auc"] if decision else None
    drifted = bool(drift_score is not None and drift_score > settings.auc_threshold)
    top_features = [f["feature"] for f in decision["top_features"]] if decision else []
    retrain_prefix = _latest_partition(training_data, day)
    if drifted and retrain_prefix is None:
        notes.append(f"no labelled partition under {training_data} up to {day} to retrain on")
    champion = registry.champion(registry_uri)

    report_uri = layout.run.path(DRIFT, "report.json")
    html_uri = layout.run.path(DRIFT, "report.html")
    report = {
        "day": day,
        "conversations": len(ids),
        "content_sha256": content,
        "champion_version": champion.get("version") if champion else None,
        "auc_threshold": settings.auc_threshold,
        "drift_score": drift_score,
        "drifted": drifted,
        "top_features": top_features,
        "notes": notes,
        "comparisons": comparisons,
        "config": settings.model_dump(mode="json"),
    }
    storage.write_json(report_uri, report)
    storage.write_bytes(html_uri, _html_page(report).encode("utf-8"), content_type="text/html; charset=utf-8")

    retrain = drifted and retrain_prefix is not None
    trigger_run_id = f"{TRIGGER_PREFIX}__{day}__{content[:16]}"
    score = "n/a" if drift_score is None else f"{drift_score:.3f}"
    verdict = f"drifted, retrain {trigger_run_id}" if retrain else ("drifted" if drifted else "no drift")
    summary = f"{STAGE}: {day}, domain-classifier AUC {score} vs recent days (threshold {settings.auc_threshold}): "
    summary += verdict + (f"; moved most: {', '.join(top_features)}" if drifted and top_features else "")
    log.info("%s", summary)
    return StageResult(
        stage=STAGE,
        summary=summary + ("; " + "; ".join(notes) if notes else ""),
        xcom={
            "day": day,
            "drift_score": drift_score,
            "drifted": drifted,
            "report_uri": report_uri,
            "html_uri": html_uri,
            "top_features": top_features,
            "training_auc": comparisons["training"]["domain_auc"] if "training" in comparisons else None,
            "intent_mix_p_value": (decision or {}).get("intent_mix", {}).get("p_value"),
            "champion_version": report["champion_version"],
            "notes": notes,
            "retrain": retrain,
            "trigger_run_id": trigger_run_id,
            "retrain_data_prefix": retrain_prefix,
        },
        commit_uri=layout.result(DRIFT),
    )


# --- reading the two sides ---------------------------------------------------------------------------------


def _read_parquet(uri: str, columns: list[str]) -> pd.DataFrame:
    if not storage.exists(uri):
        raise StageError(f"{STAGE}: {uri} is missing although the stage that writes it completed; rerun it")
    try:
        frame = pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise StageError(f"{STAGE}: {uri} is not a readable Parquet file ({exc})") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StageError(f"{STAGE}: {uri} lacks column(s) {', '.join(missing)}")
    return frame[columns]


def _read_day_embeddings(uri: str) -> tuple[list[str], np.ndarray]:
    if not storage.exists(uri):
        raise StageError(f"{STAGE}: {uri} is missing although conversations-embed completed; rerun it")
    try:
        ids, vectors = read_embeddings(uri)
    except Exception as exc:
        raise StageError(f"{STAGE}: {uri} is not an embeddings file as conversations-embed writes ({exc})") from exc
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise StageError(f"{STAGE}: {len(bad)} vectors in {uri} have NaN or infinite values, first at row {bad[0]}")
    return ids, vectors


def _day_intents(layout: ConversationsLayout, tag_result: dict[str, Any], ids: list[str]) -> pd.Series | None:
    if not tag_result.get("tagged"):
        return None
    tags = _read_parquet(layout.tags, ["conversation_id", "intent"])
    return tags.set_index("conversation_id")["intent"].reindex(ids).dropna().astype(str)


def _content_hash(redacted: pd.DataFrame) -> str:
    """sha256 over the day's (conversation id, redacted user text) pairs: same conversations, same hash."""
    digest = hashlib.sha256()
    for conversation_id, text in sorted(
        zip(redacted["conversation_id"].astype(str), redacted["user_text"].astype(str), strict=True)
    ):
        digest.update(f"{conversation_id}\0{text}\n".encode())
    return digest.hexdigest()


def _recent_days(store_uri: str, day: str, dim: int, settings: DriftConfig) -> Side | str:
    """The store's conversations of the reference window before ``day``, or why there are none."""
    latest = vector_store.read_latest(store_uri, STAGE).version
    if latest is None:
        return f"the store {store_uri} has no published version yet: no recent days to compare with"
    stored = vector_store.load_version(store_uri, latest, STAGE)
    first = (date.fromisoformat(day) - timedelta(days=settings.reference_days)).isoformat()
    days = stored.metadata["day"].astype(str)
    window = ((days >= first) & (days < day)).to_numpy()
    if not window.any():
        return f"the store has no conversations of the {settings.reference_days} days before {day}"
    if stored.vectors.shape[1] != dim:
        raise StageError(
            f"{STAGE}: store version {latest} holds {stored.vectors.shape[1]}-dim vectors but the day's are {dim}-dim"
        )
    metadata = stored.metadata[window]
    intents = metadata["intent"].dropna().astype(str) if "intent" in metadata else None
    return Side(
        f"{sorted(set(days[window]))[0]}..{sorted(set(days[window]))[-1]} (store {latest})",
        metadata["snippet"].astype(str).tolist(),
        stored.vectors[window],
        intents if intents is not None and len(intents) else None,
    )


def _champion_training(registry_uri: str, dim: int) -> Side | str:
    """The champion's training split (text, sentence embeddings, labels), or why it cannot be compared."""
    champion = registry.champion(registry_uri)
    if champion is None:
        return f"no champion in {registry_uri}: no training data to compare with"
    version = str(champion["version"])
    metadata_uri = registry.RegistryLayout(registry_uri).metadata(version)
    metadata = storage.read_json(metadata_uri) if storage.exists(metadata_uri) else {}
    run_uri = metadata.get("run_uri") if isinstance(metadata, dict) else None
    if not run_uri:
        return f"champion {version} has no run recorded in {metadata_uri}: its training data is unknown"
    train_uri = RunLayout(str(run_uri)).train_split
    if not storage.exists(train_uri):
        return f"champion {version}'s training split {train_uri} is gone"
    train = pd.read_parquet(io.BytesIO(storage.read_bytes(train_uri)))
    sentence = sorted(c for c in train.columns if str(c).startswith(SENTENCE_PREFIX))
    if "text" not in train.columns or len(sentence) != dim:
        return (
            f"champion {version} was not trained on text with {dim}-dim sentence embeddings "
            f"({len(sentence)} {SENTENCE_PREFIX}* columns in {train_uri})"
        )
    return Side(
        f"champion {version} training split",
        [redact(str(text)).text for text in train["text"].tolist()],
        train[sentence].to_numpy(dtype=np.float32),
        train["label"].astype(str) if "label" in train.columns else None,
    )


def _latest_partition(training_data: str, day: str) -> str | None:
    """The newest ``ds=`` partition under ``training_data`` up to ``day``, as a key inside its bucket."""
    partitions = {
        (match.group(1), uri[: match.end()])
        for uri in storage.list_uris(training_data)
        if (match := _PARTITION.search(uri)) and match.group(1) <= day
    }
    if not partitions:
        return None
    _, prefix = max(partitions)
    return prefix.split("/", 3)[3] if storage.is_gcs(prefix) else prefix


# --- the tests -----------------------------------------------------------------------------------------------


def _sample(side: Side, size: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    if len(side.texts) <= size:
        return side.texts, side.embeddings
    rows = np.sort(rng.choice(len(side.texts), size=size, replace=False))
    return [side.texts[i] for i in rows], side.embeddings[rows]


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population Stability Index over the reference's decile bins (ties merged, so a 0/1 cue gets two bins)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1)
    expected_share = np.maximum(expected / expected.sum(), PSI_FLOOR)
    actual_share = np.maximum(actual / actual.sum(), PSI_FLOOR)
    return float(np.sum((actual_share - expected_share) * np.log(actual_share / expected_share)))


def _compare(reference: Side, day: Side, settings: DriftConfig) -> dict[str, Any]:
    from scipy import stats  # type: ignore[import-untyped]
    from sklearn.decomposition import PCA  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.model_selection import StratifiedKFold, cross_val_score  # type: ignore[import-untyped]
    from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
    from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

    rng = np.random.default_rng(settings.seed)
    reference_texts, reference_vectors = _sample(reference, settings.sample_size, rng)
    day_texts, day_vectors = _sample(day, settings.sample_size, rng)
    folds = min(settings.cv_folds, len(reference_texts), len(day_texts))
    if folds < 2:
        raise StageError(f"{STAGE}: {reference.name} and the day need at least 2 rows each to compare")
    components = min(settings.embedding_components, len(reference_texts) - 1, reference_vectors.shape[1])
    pca = PCA(n_components=components, random_state=settings.seed).fit(reference_vectors)
    names = [*HANDCRAFTED_COLUMNS, *(f"embedding_pc{i + 1}" for i in range(components))]
    reference_table = np.hstack([handcrafted_features(reference_texts).to_numpy(), pca.transform(reference_vectors)])
    day_table = np.hstack([handcrafted_features(day_texts).to_numpy(), pca.transform(day_vectors)])

    features: list[dict[str, Any]] = []
    for column, name in enumerate(names):
        ks = stats.ks_2samp(reference_table[:, column], day_table[:, column], method="asymp")
        value = psi(reference_table[:, column], day_table[:, column])
        features.append(
            {
                "feature": name,
                "psi": round(value, 4),
                "ks_statistic": round(float(ks.statistic), 4),
                "ks_p_value": float(ks.pvalue),
                "reference_mean": round(float(reference_table[:, column].mean()), 4),
                "day_mean": round(float(day_table[:, column].mean()), 4),
                "moved": bool(value > settings.psi_threshold and ks.pvalue < settings.ks_alpha),
            }
        )
    features.sort(key=lambda f: (-f["psi"], f["feature"]))

    # The classifier sees the handcrafted features and the whole embedding; balanced sides, so AUC is comparable.
    inputs = np.vstack(
        [
            np.hstack([reference_table[:, : len(HANDCRAFTED_COLUMNS)], reference_vectors]),
            np.hstack([day_table[:, : len(HANDCRAFTED_COLUMNS)], day_vectors]),
        ]
    )
    is_day = np.r_[np.zeros(len(reference_texts)), np.ones(len(day_texts))]
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    auc = cross_val_score(
        classifier,
        inputs,
        is_day,
        cv=StratifiedKFold(folds, shuffle=True, random_state=settings.seed),
        scoring="roc_auc",
    )
    moved = [f for f in features if f["moved"]]
    return {
        "reference": reference.name,
        "reference_rows": len(reference_texts),
        "day_rows": len(day_texts),
        "domain_auc": round(float(np.mean(auc)), 4),
        "domain_auc_folds": [round(float(a), 4) for a in auc],
        "features": features,
        "moved_features": len(moved),
        "top_features": (moved or features)[: settings.top_features],
        "intent_mix": _intent_mix(reference.intents, day.intents, settings),
        "pca_explained_variance": [round(float(v), 4) for v in pca.explained_variance_ratio_],
        "projection": {
            "reference": pca.transform(reference_vectors)[:300, :2].round(4).tolist(),
            "day": pca.transform(day_vectors)[:300, :2].round(4).tolist(),
        },
    }


def _intent_mix(reference: pd.Series | None, day: pd.Series | None, settings: DriftConfig) -> dict[str, Any]:
    """Chi-square test of the day's predicted-intent counts against the reference's, intent by intent."""
    if reference is None or day is None or not len(reference) or not len(day):
        return {"tested": False, "reason": "no intents on one side (no champion tagged them)"}
    from scipy import stats  # type: ignore[import-untyped]

    intents = sorted(set(reference) | set(day))
    counts = np.array([[int((side == i).sum()) for i in intents] for side in (reference, day)])
    counts = counts[:, counts.sum(axis=0) > 0]
    if counts.shape[1] < 2:
        return {"tested": False, "reason": "one intent only on both sides"}
    test = stats.chi2_contingency(counts)
    shares = counts / counts.sum(axis=1, keepdims=True)
    return {
        "tested": True,
        "chi2": round(float(test.statistic), 3),
        "p_value": float(test.pvalue),
        "moved": bool(test.pvalue < settings.intent_alpha),
        "psi": round(
            float(
                np.sum(
                    (shares[1] - shares[0])
                    * np.log(np.maximum(shares[1], PSI_FLOOR) / np.maximum(shares[0], PSI_FLOOR))
                )
            ),
            4,
        ),
        "reference_share": dict(zip(intents, shares[0].round(4).tolist(), strict=True)),
        "day_share": dict(zip(intents, shares[1].round(4).tolist(), strict=True)),
    }


# --- the page ----------------------------------------------------------------------------------------------


def _png(figure: Any) -> str:
    """The figure as a data URI; pyplot keeps every figure it made until closed."""
    import matplotlib.pyplot as plt

    uri = figures.png_data_uri(figures.png_bytes(figure, dpi=90))
    plt.close(figure)
    return uri


def _plots(comparison: dict[str, Any], threshold: float) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    features = comparison["features"][:15]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.barh([f["feature"] for f in features][::-1], [f["psi"] for f in features][::-1], color="#4c72b0")
    axis.axvline(threshold, color="#c44e52", linestyle="--", label=f"PSI {threshold}")
    axis.set_xlabel("PSI (day vs reference)")
    axis.legend(loc="lower right")
    plots.append(("The 15 features that moved most (PSI)", _png(figure)))

    figure, axis = plt.subplots(figsize=(5, 4))
    for side, colour in (("reference", "#4c72b0"), ("day", "#dd8452")):
        points = np.asarray(comparison["projection"][side])
        if len(points) and points.shape[1] == 2:
            axis.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, color=colour, label=side)
    axis.set_xlabel("embedding PC1")
    axis.set_ylabel("embedding PC2")
    axis.legend()
    plots.append(("Sentence embeddings on the reference's first two principal components", _png(figure)))

    mix = comparison["intent_mix"]
    if mix.get("tested"):
        intents = list(mix["reference_share"])
        positions = np.arange(len(intents))
        figure, axis = plt.subplots(figsize=(7, 3.5))
        axis.bar(positions - 0.2, [mix["reference_share"][i] for i in intents], 0.4, label="reference")
        axis.bar(positions + 0.2, [mix["day_share"][i] for i in intents], 0.4, label="day")
        axis.set_xticks(positions, intents, rotation=30, ha="right")
        axis.set_ylabel("share of conversations")
        axis.legend()
        plots.append((f"Intent mix (chi-square p = {mix['p_value']:.2g})", _png(figure)))
    return plots


def _html_page(report: dict[str, Any]) -> str:
    escape = html.escape
    verdict = "DRIFTED" if report["drifted"] else "no drift"
    score = "n/a" if report["drift_score"] is None else f"{report['drift_score']:.3f}"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Drift report {escape(report['day'])}</title>",
        "<style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}"
        "td:first-child,th:first-child{text-align:left}.moved{background:#fde2e2}</style></head><body>",
        f"<h1>Drift report, {escape(report['day'])}: <span id='verdict'>{verdict}</span></h1>",
        f"<p>{report['conversations']} conversations. Domain-classifier ROC AUC against recent days: "
        f"<strong id='drift-score'>{score}</strong> (drift above {report['auc_threshold']}). "
        f"Champion: {escape(str(report['champion_version']))}.</p>",
    ]
    if report["top_features"]:
        parts.append(f"<p>Moved most: <strong>{escape(', '.join(report['top_features']))}</strong></p>")
    for note in report["notes"]:
        parts.append(f"<p class='note'>{escape(note)}</p>")
    titles = {"recent_days": "Against recent days (decides)", "training": "Against the champion's training data"}
    for key, comparison in report["comparisons"].items():
        parts.append(f"<h2>{titles[key]}</h2>")
        parts.append(
            f"<p>Reference: {escape(comparison['reference'])}, {comparison['reference_rows']} rows; "
            f"day: {comparison['day_rows']} rows. Domain-classifier AUC {comparison['domain_auc']:.3f}; "
            f"{comparison['moved_features']} features moved.</p>"
        )
        for title, uri in _plots(comparison, report["config"]["psi_threshold"]):
            parts.append(
                f"<figure><img src='{uri}' alt='{escape(title)}'><figcaption>{escape(title)}</figcaption></figure>"
            )
        parts.append(
            "<table><tr><th>feature</th><th>PSI</th><th>KS</th><th>KS p</th>"
            "<th>reference mean</th><th>day mean</th></tr>"
        )
        for feature in comparison["features"]:
            css = " class='moved'" if feature["moved"] else ""
            parts.append(
                f"<tr{css}><td>{escape(feature['feature'])}</td><td>{feature['psi']:.3f}</td>"
                f"<td>{feature['ks_statistic']:.3f}</td><td>{feature['ks_p_value']:.2g}</td>"
                f"<td>{feature['reference_mean']:.3f}</td><td>{feature['day_mean']:.3f}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
