"""``conversations-tag``: the champion privacy-intent model's intent and probability for each conversation.

Batch inference on the redacted user turns, featurized exactly as training did
(``featurize.featurize_frame``) and fed to the registry's current champion
pipeline. Tagging is enrichment, not a precondition of the store: with no
champion yet, or a champion that cannot read raw text (trained in embedded
mode on 584-dim production embeddings), the stage succeeds with
``tagged: false`` and the reason, and the day is stored untagged.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from privacy_pipeline import registry, storage, tabular
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.conversations.layout import REDACT, TAG, ConversationsLayout
from privacy_pipeline.errors import StageError
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "conversations-tag"
TAG_COLUMNS = ["conversation_id", "intent", "intent_probability"]


def _skipped(layout: ConversationsLayout, reason: str, day: Any, conversations: int, **extra: Any) -> StageResult:
    # A tags file left by an earlier attempt of this run must not be mistaken for this one's.
    storage.delete(layout.tags)
    log.warning("tagging skipped: %s", reason)
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: skipped, {reason}; {conversations} conversations stay untagged",
        xcom={"tagged": False, "reason": reason, "day": day, "conversations": conversations, **extra},
        commit_uri=layout.result(TAG),
    )


def _champion_spec(registry_uri: str, version: str) -> dict[str, Any] | None:
    uri = registry.RegistryLayout(registry_uri).metadata(version)
    if not storage.exists(uri):
        return None
    metadata = storage.read_json(uri)
    spec = metadata.get("feature_spec") if isinstance(metadata, dict) else None
    return spec if isinstance(spec, dict) else None


def run(*, config: PipelineConfig, run_uri: str, registry_uri: str) -> StageResult:
    layout = ConversationsLayout(run_uri)
    redact_result = layout.require(REDACT, needed_by=STAGE)
    day = redact_result.get("day")
    redacted = pd.read_parquet(
        io.BytesIO(storage.read_bytes(layout.redacted)), columns=["conversation_id", "user_text"]
    )
    conversations = len(redacted)

    champion = registry.champion(registry_uri)
    if champion is None:
        return _skipped(layout, f"no champion in {registry_uri}", day, conversations)
    version, model_uri = str(champion["version"]), str(champion["model_uri"])
    about = {"champion_version": version, "model_uri": model_uri}
    spec = _champion_spec(registry_uri, version)
    if spec is not None and spec.get("mode") != "text":
        reason = (
            f"champion {version} was trained in {spec.get('mode')} mode on production embeddings, "
            "so raw conversation text cannot be featurized for it"
        )
        return _skipped(layout, reason, day, conversations, **about)

    from privacy_pipeline import model_io, modeling
    from privacy_pipeline.stages.featurize import featurize_frame

    model = model_io.load_model(model_uri)
    frame = pd.DataFrame({"id": redacted["conversation_id"].astype(str), "text": redacted["user_text"].astype(str)})
    features, text_spec = featurize_frame(frame, config, source=layout.redacted)
    try:
        inputs = modeling.model_inputs(features, spec or text_spec, layout.redacted, STAGE)
    except StageError as exc:
        return _skipped(layout, f"champion {version} cannot read these features ({exc})", day, conversations, **about)
    probabilities = np.asarray(model.predict_proba(inputs))
    classes = np.asarray(model.classes_).astype(str)
    best = probabilities.argmax(axis=1)
    tags = pd.DataFrame(
        {
            "conversation_id": redacted["conversation_id"].astype(str),
            "intent": classes[best],
            "intent_probability": probabilities[np.arange(len(best)), best].astype("float64"),
        },
        columns=TAG_COLUMNS,
    )

    storage.write_bytes(layout.tags, tabular.parquet_bytes(tags))
    intent_counts = Counter(tags["intent"].tolist())
    privacy = conversations - intent_counts.get(config.negative_label, 0)
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: {conversations} conversations tagged by champion {version}, {privacy} privacy requests",
        xcom={
            "tagged": True,
            "reason": None,
            "day": day,
            "conversations": conversations,
            "tags_uri": layout.tags,
            **about,
            "intent_counts": dict(sorted(intent_counts.items())),
            "privacy_conversations": privacy,
        },
        commit_uri=layout.result(TAG),
    )
