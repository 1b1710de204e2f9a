"""The champion as a KServe model: ``load`` reads it from the registry, ``predict`` classifies messages.

One ``kserve.Model`` subclass; routes, JSON, health and the Open Inference
Protocol ("V2") are the SDK's. A request carries one BYTES input ``text`` of
shape ``[n]`` (or ``[n, 1]``); the response has, per message, ``intent``
(BYTES), ``probabilities`` (FP64, ``[n, k]``, columns in the order the output's
``intents`` parameter and the model metadata list) and ``model_version``
(BYTES), and the response's own ``model_version``.

Featurization is the training pipeline's own code path, as the conversations
tagger runs it: ``featurize_frame`` (sentence embeddings + handcrafted
features), the feature spec's columns, then the saved pipeline's
``predict_proba`` (TF-IDF/SVD, scaling and the classifier are inside it).

Loading is all or nothing: the model, its feature spec and a probe prediction
are checked before anything is assigned and ``ready`` is set, so a missing,
corrupt or untrusted version fails with one clear line and is never served
half-loaded.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import kserve
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from privacy_pipeline import model_io, modeling, registry, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.serving import metrics
from privacy_pipeline.serving.batcher import MicroBatcher
from privacy_pipeline.serving.contract import INPUT_NAME, MODEL_NAME

log = logging.getLogger(__name__)

# Limits a caller can plan for. The sentence model reads 256 word pieces at
# most, so 20,000 characters is far beyond any message it can use; 1,000
# messages take a few seconds on CPU, past which a client should split.
MAX_TEXT_CHARS = 20_000
MAX_TEXTS_PER_REQUEST = 1_000
# A message the model must classify before the server reports ready.
PROBE_TEXT = "Please delete my account and all the data you hold about me."
STAGE = "serve"


@dataclass(frozen=True)
class Prediction:
    intent: str
    probabilities: np.ndarray


@dataclass(frozen=True)
class LoadedModel:
    """Everything ``predict`` reads, built completely before it is published."""

    version: str
    model_uri: str
    pipeline: Any
    feature_spec: dict[str, Any]
    intents: tuple[str, ...]


def resolve_version(registry_uri: str, version: str | None) -> tuple[str, str]:
    """(version, model URI): ``version`` from the registry, or its current champion."""
    if version is None:
        champion = registry.champion(registry_uri)
        if champion is None:
            raise StageError(
                f"{STAGE}: the registry {registry_uri} has no champion yet; train and register a model "
                "(make demo) or pass --version"
            )
        return str(champion["version"]), str(champion["model_uri"])
    return version, registry.RegistryLayout(registry_uri).model(version)


def _feature_spec(registry_uri: str, version: str) -> dict[str, Any]:
    uri = registry.RegistryLayout(registry_uri).metadata(version)
    if not storage.exists(uri):
        raise StageError(f"{STAGE}: model version {version} has no metadata at {uri}; it is not a registered version")
    metadata = storage.read_json(uri)
    spec = metadata.get("feature_spec") if isinstance(metadata, dict) else None
    if not isinstance(spec, dict):
        raise StageError(f"{STAGE}: {uri} has no feature_spec; the registry entry of {version} is damaged")
    if spec.get("mode") != "text":
        raise StageError(
            f"{STAGE}: model version {version} was trained in {spec.get('mode')} mode on production embeddings, "
            "so raw message text cannot be featurized for it; serve a version trained on text"
        )
    return spec


def classify(loaded: LoadedModel, texts: list[str], config: PipelineConfig) -> list[Prediction]:
    """Intent and per-intent probabilities of each text, featurized exactly as training did."""
    # Imported here: featurize pulls in the sentence model's machinery.
    from privacy_pipeline.stages.featurize import featurize_frame

    frame = pd.DataFrame({"id": range(len(texts)), "text": texts})
    features, _ = featurize_frame(frame, config, source="the request")
    inputs = modeling.model_inputs(features, loaded.feature_spec, "the request", STAGE)
    probabilities = np.asarray(loaded.pipeline.predict_proba(inputs), dtype=np.float64)
    best = probabilities.argmax(axis=1)
    return [Prediction(loaded.intents[i], row) for i, row in zip(best, probabilities, strict=True)]


def load_version(registry_uri: str, version: str | None, config: PipelineConfig) -> LoadedModel:
    """The version (default: the champion), loaded with skops' trust check and proven on a probe message."""
    version, model_uri = resolve_version(registry_uri, version)
    if not storage.exists(model_uri):
        raise StageError(f"{STAGE}: the registry {registry_uri} has no model file for version {version} ({model_uri})")
    feature_spec = _feature_spec(registry_uri, version)
    pipeline = model_io.load_model(model_uri)
    classes = getattr(pipeline, "classes_", None)
    if classes is None or not hasattr(pipeline, "predict_proba"):
        raise StageError(f"{STAGE}: {model_uri} is not a fitted classifier (no classes_ or predict_proba)")
    loaded = LoadedModel(
        version=version,
        model_uri=model_uri,
        pipeline=pipeline,
        feature_spec=feature_spec,
        intents=tuple(str(c) for c in classes),
    )
    try:
        classify(loaded, [PROBE_TEXT], config)
    except Exception as exc:
        raise StageError(
            f"{STAGE}: model version {version} failed on a probe message ({type(exc).__name__}: {exc})"
        ) from exc
    return loaded


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [leaf for item in data for leaf in _flatten(item)]
    return [data]


def request_texts(request: InferRequest) -> list[str]:
    """The messages of a V2 request, or InvalidInput (HTTP 400) saying what to change. Never echoes a message."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        names = [tensor.name for tensor in request.inputs]
        raise InvalidInput(
            f'expected exactly one input named "{INPUT_NAME}" (datatype BYTES, shape [n]) holding the messages; '
            f"got inputs {names}"
        )
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f'input "{INPUT_NAME}" has datatype {tensor.datatype}; send the messages as BYTES')
    shape = list(tensor.shape)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or any(d < 0 for d in shape):
        raise InvalidInput(f'input "{INPUT_NAME}" has shape {shape}; expected [n] or [n, 1] for n messages')
    values = _flatten(tensor.data) if isinstance(tensor.data, list) else list(tensor.as_numpy().reshape(-1))
    if len(values) != shape[0]:
        raise InvalidInput(f'input "{INPUT_NAME}" has shape {shape} but carries {len(values)} values')
    if not values:
        raise InvalidInput(f'input "{INPUT_NAME}" holds no messages; send at least one')
    if len(values) > MAX_TEXTS_PER_REQUEST:
        raise InvalidInput(
            f"{len(values)} messages in one request; at most {MAX_TEXTS_PER_REQUEST}, split the batch into several"
        )
    texts = []
    for position, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"message {position} is not UTF-8 text") from None
        if not isinstance(value, str):
            raise InvalidInput(f"message {position} is not a string (got {type(value).__name__})")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                # JSON's "\ud800" escape: Python's json accepts a lone surrogate, the tokenizer then fails (a 500).
                raise InvalidInput(f"message {position} is not UTF-8 text (it holds a lone surrogate)") from None
        if not value.strip():
            raise InvalidInput(f"message {position} is empty; send the message text")
        if len(value) > MAX_TEXT_CHARS:
            raise InvalidInput(
                f"message {position} has {len(value):,} characters; at most {MAX_TEXT_CHARS:,}, "
                "send the part that holds the request"
            )
        texts.append(value)
    return texts


class PrivacyIntentModel(kserve.Model):  # type: ignore[misc]
    """The registry's champion (or ``version``) behind the Open Inference Protocol."""

    def __init__(
        self,
        registry_uri: str,
        *,
        version: str | None = None,
        config: PipelineConfig | None = None,
        name: str = MODEL_NAME,
        max_batch_size: int = 32,
        max_batch_wait_seconds: float = 0.005,
    ) -> None:
        super().__init__(name)
        self.registry_uri = registry_uri
        self.requested_version = version
        self.config = config or PipelineConfig()
        self.loaded: LoadedModel | None = None
        self.batcher: MicroBatcher[str, Prediction] = MicroBatcher(
            self._classify_batch,
            max_batch_size=max_batch_size,
            max_wait_seconds=max_batch_wait_seconds,
            on_batch=metrics.BATCH_SIZE.observe,
        )

    @property
    def version(self) -> str | None:
        return self.loaded.version if self.loaded else None

    def load(self) -> bool:
        """Load the version or fail with StageError; ``ready`` only ever follows a complete load."""
        self.ready = False
        self.loaded = load_version(self.registry_uri, self.requested_version, self.config)
        log.info(
            "serving model version %s from %s (intents: %s)",
            self.loaded.version,
            self.loaded.model_uri,
            ", ".join(self.loaded.intents),
        )
        self.ready = True
        return self.ready

    def _classify_batch(self, texts: list[str]) -> list[Prediction]:
        assert self.loaded is not None, "predict before load"
        return classify(self.loaded, texts, self.config)

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        intents = list(self.loaded.intents) if self.loaded else []
        return [
            {"name": "intent", "datatype": "BYTES", "shape": [-1]},
            {
                "name": "probabilities",
                "datatype": "FP64",
                "shape": [-1, len(intents)],
                "parameters": {"intents": intents},
            },
            {"name": "model_version", "datatype": "BYTES", "shape": [-1]},
        ]

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise InvalidInput("this model speaks the Open Inference Protocol: POST /v2/models/<name>/infer")
        loaded = self.loaded
        if loaded is None:
            raise kserve.errors.ModelNotReady(self.name)
        texts = request_texts(payload)
        facts = metrics.request_facts()
        facts.update({"texts": len(texts), "text_chars": sum(map(len, texts)), "model_version": loaded.version})
        predictions = await self.batcher.submit(texts)
        intents = [p.intent for p in predictions]
        counts = Counter(intents)
        for intent, count in counts.items():
            metrics.PREDICTIONS.labels(intent=intent).inc(count)
        facts["intents"] = dict(sorted(counts.items()))
        count = len(texts)
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=loaded.version,
            infer_outputs=[
                InferOutput("intent", [count], "BYTES", data=intents),
                InferOutput(
                    "probabilities",
                    [count, len(loaded.intents)],
                    "FP64",
                    data=np.stack([p.probabilities for p in predictions]).reshape(-1).tolist(),
                    parameters={"intents": ",".join(loaded.intents)},
                ),
                InferOutput("model_version", [count], "BYTES", data=[loaded.version] * count),
            ],
            # What the caller asked for: a subset of outputs, binary or JSON tensors.
            requested_outputs=payload.request_outputs,
            use_binary_outputs=payload.use_binary_outputs,
        )
