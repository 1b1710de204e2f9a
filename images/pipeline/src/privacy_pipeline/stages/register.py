"""register: version the run's model in the registry and decide whether it becomes the champion.

Everything the registry will hold is read and checked first, so a run with a
missing or broken input leaves the registry untouched. Then, in the order that
keeps readers safe: the by-run index (the version), the model and its metadata,
the run record with the decision, and last the champion pointer.

The promotion gate (``promotion_gate``) is judged on this run's holdout: the
current champion is loaded and scored on the holdout rows it never trained on
(its training fingerprint says which), and the candidate is promoted only when
the paired bootstrap interval of the macro-F1 difference lies above
``register.promotion_margin``. With no champion, or one that cannot be scored
on this holdout (another feature spec, a model that no longer loads), the
candidate must clear the majority-class baseline by ``register.baseline_margin``
with the same test instead, and the reason says why: a champion is never kept
only because it could not be compared.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

import privacy_pipeline
from privacy_pipeline import model_io, promotion_gate, registry, storage, tracking
from privacy_pipeline.config import PipelineConfig, config_as_dict, config_sha256
from privacy_pipeline.errors import StageError
from privacy_pipeline.promotion_gate import PairedComparison
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.run_report import write_report
from privacy_pipeline.stage_result import StageResult
from privacy_pipeline.stages import evaluate, split

log = logging.getLogger(__name__)

STAGE = "register"
IMAGE_TAG_ENV = "PIPELINE_IMAGE_TAG"


@dataclass(frozen=True)
class RunInputs:
    """What this run contributes to the registry, all read before anything is written."""

    model_bytes: bytes
    metrics: dict[str, Any]
    candidate_f1_macro: float
    feature_spec: dict[str, Any]
    manifest: dict[str, Any]
    train_result: dict[str, Any]
    holdout: pd.DataFrame
    # The candidate's label for every holdout row, and what the gate needs to judge it.
    candidate_predictions: np.ndarray
    holdout_content_keys: np.ndarray
    train_fingerprint: np.ndarray
    majority_label: str
    # Stage pods that died on an earlier try of this run, by task (written by the Airflow side).
    pod_failures: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    # The champion the candidate was judged against, and its score on the
    # holdout rows it never trained on (None when there was none, or it could not be scored).
    champion_before: str | None
    champion_f1_macro: float | None
    # The paired comparison the decision rests on (None when there was none to make).
    comparison: PairedComparison | None = None
    # Holdout rows left out because the champion trained on them.
    excluded_rows: int = 0


def run(*, config: PipelineConfig, run_uri: str, registry_uri: str) -> StageResult:
    layout = RunLayout(run_uri)
    layout.require("evaluate", needed_by=STAGE)
    train_result = layout.require("train", needed_by=STAGE)
    inputs = _read_run_inputs(layout, train_result)

    registration = registry.claim_registration(registry_uri, run_uri, datetime.now(UTC))
    version = str(registration["version"])
    reg = RegistryLayout(registry_uri)
    storage.write_bytes(reg.model(version), inputs.model_bytes)
    storage.write_json(reg.metadata(version), _metadata(config, run_uri, registration, inputs))
    storage.write_bytes(reg.train_fingerprint(version), promotion_gate.fingerprint_bytes(inputs.train_fingerprint))
    log.info("registered %s as version %s at %s", run_uri, version, reg.model_dir(version))

    judge = _ChampionJudge(config, reg, inputs)
    outcome: dict[str, Decision] = {}

    def decide(current: dict[str, Any] | None) -> dict[str, Any] | None:
        decision = judge.decide(current, version)
        outcome["decision"] = decision
        already_champion = current is not None and current.get("version") == version
        if already_champion and storage.exists(reg.run_record(version)):
            # A rerun after this run was promoted: its record already tells why.
            return None
        champion_after = version if decision.promoted else (current or {}).get("version")
        # The record goes in before the pointer moves, so the champion never
        # names a version without a run record; a lost race rewrites it.
        storage.write_json(
            reg.run_record(version),
            _run_record(config, run_uri, registration, reg, inputs, decision, champion_after),
        )
        if not decision.promoted or already_champion:
            return None
        return {
            "version": version,
            "model_uri": reg.model(version),
            "f1_macro": inputs.candidate_f1_macro,
            "run_uri": run_uri,
            "promoted_at": registry.timestamp(datetime.now(UTC)),
            "previous_version": current.get("version") if current else None,
            "action": "promote",
            "by": "register",
            "reason": decision.reason,
        }

    champion_after = registry.cas_update_champion(registry_uri, decide)
    decision = outcome["decision"]
    champion_version = champion_after.get("version") if champion_after else None
    log.info("promotion decision for %s: promoted=%s (%s)", version, decision.promoted, decision.reason)

    # The run's HTML page (data, metrics beside the champion's, plots, decision, lineage); the UI links it.
    report_uri = write_report(run_uri, registry_uri, version)
    # Last: the mirror logs the report too, and whatever it does, the registry above is already complete.
    tracking_line = tracking.mirror_registration(
        _training_run(config, run_uri, registry_uri, reg, version, inputs, decision, champion_version), config
    )
    verdict = "promoted to champion" if decision.promoted else "registered, not promoted"
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: {version} {verdict} ({decision.reason})",
        xcom={
            "model_version": version,
            "model_uri": reg.model(version),
            "registry_uri": registry_uri,
            "promoted": decision.promoted,
            "decision_reason": decision.reason,
            "candidate_f1_macro": inputs.candidate_f1_macro,
            "champion_f1_macro": decision.champion_f1_macro,
            "champion_version": champion_version,
            **_gate_fields(decision),
            "report_uri": report_uri,
            # The MLflow mirror: what was logged, or "skipped: <why>" (the registry above is the source of truth).
            "tracking": tracking_line,
        },
        commit_uri=layout.result(STAGE),
    )


def _training_run(
    config: PipelineConfig,
    run_uri: str,
    registry_uri: str,
    reg: RegistryLayout,
    version: str,
    inputs: RunInputs,
    decision: Decision,
    champion_version: str | None,
) -> tracking.TrainingRun:
    return tracking.TrainingRun(
        version=version,
        run_uri=run_uri,
        registry_uri=registry_uri,
        promoted=decision.promoted,
        decision_reason=decision.reason,
        champion_version=champion_version,
        model_bytes=inputs.model_bytes,
        metrics=inputs.metrics,
        train_params=inputs.train_result.get("params", {}),
        run_record=storage.read_json(reg.run_record(version)),
        data_sha256=inputs.manifest.get("content_sha256"),
        image_tag=_image_tag(config),
        holdout_truth=inputs.holdout["label"].astype(str).to_numpy(),
        holdout_predictions=inputs.candidate_predictions,
        gate=decision.comparison.as_dict() if decision.comparison else None,
    )


def _read_run_inputs(layout: RunLayout, train_result: dict[str, Any]) -> RunInputs:
    run_uri = layout.run_uri
    model_bytes = _read_required(layout.model, f"run {run_uri} has no trained model", "rerun train")
    metrics = _read_json_object(layout.metrics, f"run {run_uri} has no holdout metrics", "rerun evaluate")
    f1_macro = metrics.get("f1_macro")
    if not isinstance(f1_macro, int | float) or isinstance(f1_macro, bool) or not 0.0 <= f1_macro <= 1.0:
        raise StageError(f"{STAGE}: {layout.metrics} has no valid 'f1_macro' (got {f1_macro!r}); rerun evaluate")
    feature_spec = _read_json_object(layout.feature_spec, f"run {run_uri} has no feature spec", "rerun featurize")
    manifest = _read_json_object(
        layout.ingest_manifest, f"run {run_uri} has no ingest manifest (data lineage)", "rerun ingest"
    )
    holdout = _read_split(layout.holdout_split, f"run {run_uri} has no holdout split")
    train = _read_split(layout.train_split, f"run {run_uri} has no training split")
    candidate = model_io.loads(model_bytes, source=layout.model)
    try:
        content_keys = {
            name: split.group_keys(rows, feature_spec) for name, rows in (("train", train), ("holdout", holdout))
        }
    except KeyError as exc:
        raise StageError(
            f"{STAGE}: the training or holdout split of {run_uri} lacks column {exc} named by its feature spec; "
            "rerun featurize and split"
        ) from exc
    return RunInputs(
        model_bytes=model_bytes,
        metrics=metrics,
        candidate_f1_macro=float(f1_macro),
        feature_spec=feature_spec,
        manifest=manifest,
        train_result=train_result,
        holdout=holdout,
        candidate_predictions=evaluate.predict(candidate, holdout, needed_by=STAGE),
        holdout_content_keys=content_keys["holdout"],
        train_fingerprint=promotion_gate.fingerprint(content_keys["train"]),
        majority_label=str(evaluate.majority_baseline(train["label"], holdout["label"])["predicts"]),
        pod_failures=_pod_failures(layout),
    )


def _read_split(uri: str, problem: str) -> pd.DataFrame:
    data = _read_required(uri, problem, "rerun split")
    try:
        rows = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise StageError(f"{STAGE}: {uri} is not a readable Parquet file ({exc})") from exc
    if rows.empty or "label" not in rows.columns:
        raise StageError(f"{STAGE}: {uri} has no rows or no 'label' column; rerun split")
    return rows


def _pod_failures(layout: RunLayout) -> dict[str, Any]:
    """``<run>/_pod_failures/<task>.json`` records: why a stage pod died before its retry succeeded."""
    failures: dict[str, Any] = {}
    for uri in storage.list_uris(layout.path("_pod_failures")):
        if uri.endswith(".json"):
            failures[uri.rsplit("/", 1)[-1].removesuffix(".json")] = storage.read_json(uri)
    return failures


def _require_exists(uri: str, problem: str, remedy: str) -> None:
    if not storage.exists(uri):
        raise StageError(f"{STAGE}: {problem} ({uri} is missing); {remedy}")


def _read_required(uri: str, problem: str, remedy: str) -> bytes:
    _require_exists(uri, problem, remedy)
    return storage.read_bytes(uri)


def _read_json_object(uri: str, problem: str, remedy: str) -> dict[str, Any]:
    _require_exists(uri, problem, remedy)
    payload = storage.read_json(uri)
    if not isinstance(payload, dict):
        raise StageError(f"{STAGE}: {uri} is not a JSON object; {remedy}")
    return payload


def _image_tag(config: PipelineConfig) -> str:
    return os.environ.get(IMAGE_TAG_ENV) or config.register_.image_tag


def _metadata(config: PipelineConfig, run_uri: str, registration: dict[str, Any], inputs: RunInputs) -> dict[str, Any]:
    manifest = inputs.manifest
    return {
        "version": registration["version"],
        "run_uri": run_uri,
        "registered_at": registration["registered_at"],
        "params": inputs.train_result.get("params", {}),
        "metrics": inputs.metrics,
        "data": {
            "content_sha256": manifest.get("content_sha256"),
            "source": manifest.get("source"),
            # Each source object with its size and GCS generation, as ingest read it.
            "parts": manifest.get("parts", []),
            "rows": manifest.get("rows"),
            "train_rows": inputs.train_result.get("train_rows"),
            "holdout_rows": len(inputs.holdout),
        },
        "feature_spec": inputs.feature_spec,
        **_config_lineage(config),
        "package_version": privacy_pipeline.__version__,
        "image_tag": _image_tag(config),
        "sentence_model": inputs.feature_spec.get("sentence_model"),
        "sentence_model_version": inputs.feature_spec.get("sentence_model_version"),
    }


def _run_record(
    config: PipelineConfig,
    run_uri: str,
    registration: dict[str, Any],
    reg: RegistryLayout,
    inputs: RunInputs,
    decision: Decision,
    champion_after: str | None,
) -> dict[str, Any]:
    version = str(registration["version"])
    return {
        "version": version,
        "run_uri": run_uri,
        "registered_at": registration["registered_at"],
        "model_uri": reg.model(version),
        "metadata_uri": reg.metadata(version),
        "candidate_f1_macro": inputs.candidate_f1_macro,
        "champion_before": decision.champion_before,
        "champion_f1_macro": decision.champion_f1_macro,
        "promotion_margin": config.register_.promotion_margin,
        "baseline_margin": config.register_.baseline_margin,
        "promote_enabled": config.register_.promote,
        "promoted": decision.promoted,
        "decision_reason": decision.reason,
        "champion_version": champion_after,
        "gate": decision.comparison.as_dict() if decision.comparison else None,
        "excluded_rows": decision.excluded_rows,
        "image_tag": _image_tag(config),
        "pod_failures": inputs.pod_failures,
        **_config_lineage(config),
    }


def _config_lineage(config: PipelineConfig) -> dict[str, Any]:
    """The effective config and its hash, and the hash of the --config file it came from.

    The data watch compares ``config_source_sha256`` of the newest record with the cluster's config to
    start a run when the config changes (privacy_pipeline_airflow/config_watch.py).
    """
    return {
        "config": config_as_dict(config),
        "config_sha256": config_sha256(config),
        "config_source_sha256": config.source_sha256,
    }


def _gate_fields(decision: Decision) -> dict[str, Any]:
    """The comparison behind the decision, flat for XCom: difference, interval and what it was against."""
    comparison = decision.comparison
    return {
        "compared_against": comparison.against if comparison else None,
        "compared_rows": comparison.rows if comparison else None,
        "f1_macro_difference": comparison.difference if comparison else None,
        "difference_interval": list(comparison.interval) if comparison else None,
        "excluded_rows": decision.excluded_rows,
    }


@dataclass(frozen=True)
class _ChampionOnHoldout:
    """The champion's labels for this holdout, and which rows it trained on."""

    predictions: np.ndarray
    trained_on: np.ndarray
    note: str


DISABLED = "promotion disabled by register.promote=false"


class _ChampionJudge:
    """Decides promotion against a given champion; remembers its predictions so a re-decision only scores new ones."""

    def __init__(self, config: PipelineConfig, reg: RegistryLayout, inputs: RunInputs) -> None:
        self._config = config
        self._reg = reg
        self._inputs = inputs
        self._truth = inputs.holdout["label"].astype(str).to_numpy()
        self._champions: dict[str, _ChampionOnHoldout | str] = {}

    def decide(self, current: dict[str, Any] | None, version: str) -> Decision:
        if current is None:
            return self._against_baseline(None, "first model")
        champion_version = str(current["version"])
        if champion_version == version:
            # A rerun of the run that is already champion: nothing to move.
            return Decision(True, "already the champion: a rerun of this run", version, self._inputs.candidate_f1_macro)
        if champion_version not in self._champions:
            self._champions[champion_version] = self._champion_on_holdout(champion_version, str(current["model_uri"]))
        champion = self._champions[champion_version]
        if isinstance(champion, str):
            return self._against_baseline(
                champion_version,
                f"champion {champion_version} cannot be scored on this run's holdout ({champion}), "
                "so the candidate is judged against the first-model floor instead",
            )
        return self._against_champion(champion_version, champion)

    def _comparison(self, rows: np.ndarray, reference: np.ndarray, against: str) -> PairedComparison:
        settings = self._config.register_
        return promotion_gate.paired_bootstrap(
            self._truth[rows],
            self._inputs.candidate_predictions[rows],
            reference[rows],
            against=against,
            n_resamples=settings.n_resamples,
            confidence=settings.confidence,
            seed=self._config.seed,
        )

    def _finish(self, promoted: bool, reason: str, champion_version: str | None, **details: Any) -> Decision:
        if not self._config.register_.promote:
            promoted, reason = False, f"{DISABLED}; {reason}"
        return Decision(promoted, reason, champion_version, **details)

    def _against_baseline(self, champion_version: str | None, preface: str) -> Decision:
        majority = self._inputs.majority_label
        everything = np.ones(len(self._truth), dtype=bool)
        baseline = np.full(len(self._truth), majority)
        comparison = self._comparison(everything, baseline, f"the majority-class baseline (always {majority})")
        promoted, reason = promotion_gate.verdict(comparison, self._config.register_.baseline_margin)
        if champion_version is None and not self._config.register_.promote:
            reason = f"there is no champion yet; {reason}"
        return self._finish(
            promoted, f"{preface}: {reason}", champion_version, champion_f1_macro=None, comparison=comparison
        )

    def _against_champion(self, champion_version: str, champion: _ChampionOnHoldout) -> Decision:
        settings = self._config.register_
        comparable = ~champion.trained_on
        excluded = int(champion.trained_on.sum())
        left = int(comparable.sum())
        exclusion = (
            f"; {excluded} of {len(self._truth)} holdout rows left out: champion {champion_version} trained on them"
            if excluded
            else ""
        )
        if left < settings.min_comparable_rows:
            return self._finish(
                False,
                f"not promoted: only {left} of {len(self._truth)} holdout rows were never trained on by champion "
                f"{champion_version} ({excluded} excluded), fewer than register.min_comparable_rows="
                f"{settings.min_comparable_rows}: too few to compare{champion.note}",
                champion_version,
                champion_f1_macro=None,
                excluded_rows=excluded,
            )
        comparison = self._comparison(comparable, champion.predictions, f"champion {champion_version}")
        promoted, reason = promotion_gate.verdict(comparison, settings.promotion_margin)
        return self._finish(
            promoted,
            f"{reason}{exclusion}{champion.note}",
            champion_version,
            champion_f1_macro=comparison.reference_f1_macro,
            comparison=comparison,
            excluded_rows=excluded,
        )

    def _champion_on_holdout(self, champion_version: str, model_uri: str) -> _ChampionOnHoldout | str:
        """The champion's predictions and training overlap on this holdout, or why it cannot be scored here."""
        holdout = self._inputs.holdout
        # Checked on the champion's recorded feature spec first, so a champion
        # of another feature mode is not even downloaded.
        missing = sorted(set(self._champion_columns(champion_version)) - set(holdout.columns))
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            return f"feature-spec mismatch: it needs {len(missing)} columns this holdout lacks: {shown}"
        try:
            predictions = evaluate.predict(model_io.load_model(model_uri), holdout, needed_by=STAGE)
        except StageError as exc:
            log.warning("could not score champion %s on this holdout: %s", champion_version, exc)
            return str(exc)
        except Exception as exc:
            # A champion from an older library or feature spec can fail here in
            # many more ways (incompatible fitted state, dtype changes); each
            # means "cannot be compared on this holdout", a decision, not a crash.
            log.warning("could not score champion %s on this holdout", champion_version, exc_info=True)
            first_line = (str(exc).splitlines() or [""])[0][:200]
            return f"{type(exc).__name__}: {first_line}"
        fingerprint_uri = self._reg.train_fingerprint(champion_version)
        if not storage.exists(fingerprint_uri):
            # Registered before fingerprints were kept: judged on every row, and the reason says so.
            note = f"; champion {champion_version} has no training fingerprint: overlap with its training is unknown"
            return _ChampionOnHoldout(predictions, np.zeros(len(holdout), dtype=bool), note)
        try:
            trained_on = promotion_gate.read_fingerprint(storage.read_bytes(fingerprint_uri))
        except ValueError as exc:
            return f"its training fingerprint {fingerprint_uri} is unreadable ({exc})"
        return _ChampionOnHoldout(
            predictions, promotion_gate.seen_in(trained_on, self._inputs.holdout_content_keys), ""
        )

    def _champion_columns(self, champion_version: str) -> list[str]:
        """The input columns the champion's feature spec names (empty if its metadata is gone)."""
        metadata_uri = self._reg.metadata(champion_version)
        if not storage.exists(metadata_uri):
            return []
        metadata = storage.read_json(metadata_uri)
        spec = (metadata.get("feature_spec") if isinstance(metadata, dict) else None) or {}
        columns = list(spec.get("embedding_columns") or []) + list(spec.get("handcrafted_columns") or [])
        if spec.get("text_column"):
            columns.append(str(spec["text_column"]))
        return columns
