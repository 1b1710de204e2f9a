"""The MLflow mirror of the registry: every registered training run as an MLflow run, the model as a version.

The bucket's registry (``registry.py``) is the source of truth; MLflow is a
mirror and a UI. ``register`` hands over one ``TrainingRun`` and gets back a
line for its XCom: what was logged, or ``skipped: <why>``. Nothing here fails
a stage: the tracking server may be unset, down or slow, and then the run
completes without it.

What one training run becomes, in the experiment ``privacy-intent``:

- params: the trained candidate's hyperparameters and the config's search and gate settings;
- metrics: the holdout metrics, the candidate's macro-F1 with its bootstrap interval, the gate's
  difference and interval, the best CV score;
- artifacts: every tune candidate with its CV fold scores (``tune_candidates.json``, a logged table),
  evaluate's plots, metrics.json and the registry's run record;
- tags: lineage (data hash, config hash, image tag, Airflow run id, run URI, registry version) and the decision;
- the model: the sklearn flavor stored with skops (no pickle), as a version of the registered model
  ``privacy-intent`` carrying the registry version as a tag; the alias ``champion`` follows our champion
  exactly when our gate promotes and when a rollback moves it.

Registering the same run again (a cleared ``register`` task) reuses its MLflow run and model version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privacy_pipeline import model_io, promotion_gate, storage
from privacy_pipeline.config import PipelineConfig, config_as_dict
from privacy_pipeline.run_layout import RunLayout

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# Every stage pod gets its Airflow run id (stage_pod.py); outside Airflow the run prefix's last segment.
AIRFLOW_RUN_ID_ENV = "PIPELINE_RUN_ID"
EXPERIMENT = "privacy-intent"
REGISTERED_MODEL = "privacy-intent"
CHAMPION_ALIAS = "champion"
# The tag on MLflow runs and model versions that names our registry version: how a rerun finds its own.
VERSION_TAG = "registry_version"

# A mirror must not hold a stage hostage: MLflow's client retries 7 times with exponential backoff and
# waits 120 s per request by default, minutes against a server that is down. One quick retry, then give up.
# Set only when the pod's env does not already choose (an operator can still raise them).
_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    # Nothing to gain from a git lookup or a telemetry call inside a stage pod.
    "MLFLOW_TRACKING_DISABLE_GIT": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


@dataclass(frozen=True)
class TrainingRun:
    """What register knows about one run, handed to the mirror after its registry entries are written."""

    version: str
    run_uri: str
    registry_uri: str
    promoted: bool
    decision_reason: str
    champion_version: str | None
    model_bytes: bytes
    metrics: dict[str, Any]
    train_params: dict[str, Any]
    # The registry's run record (decision, gate, lineage), kept as an artifact.
    run_record: dict[str, Any]
    data_sha256: str | None
    image_tag: str
    # The holdout labels and the candidate's predictions, for the interval of its macro-F1.
    holdout_truth: np.ndarray
    holdout_predictions: np.ndarray
    gate: dict[str, Any] | None = None
    extra_tags: dict[str, str] = field(default_factory=dict)


def tracking_uri() -> str | None:
    return os.environ.get(TRACKING_URI_ENV, "").strip() or None


def config_sha256(config: PipelineConfig) -> str:
    """The effective config's hash: the same settings always give the same hash, whatever file they came from."""
    return hashlib.sha256(storage.json_bytes(config_as_dict(config))).hexdigest()


def airflow_run_id(run_uri: str) -> str:
    return os.environ.get(AIRFLOW_RUN_ID_ENV) or run_uri.rstrip("/").rsplit("/", 1)[-1]


def _skipped(why: str) -> str:
    log.warning("MLflow tracking skipped: %s", why)
    return f"skipped: {why}"


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def _client_env() -> Iterator[None]:
    added = {name: value for name, value in _CLIENT_DEFAULTS.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def mirror_registration(run: TrainingRun, config: PipelineConfig) -> str:
    """Log ``run`` to MLflow; the line register's XCom carries under ``tracking``. Never raises."""
    uri = tracking_uri()
    if uri is None:
        return _skipped(f"{TRACKING_URI_ENV} is not set")
    try:
        with _client_env():
            return _Mirror(uri).log_training_run(run, config)
    except Exception as exc:
        # Any failure of the mirror (server down, refused, timed out, an MLflow error) is reported, not raised:
        # the registry in the bucket already holds the run and its decision.
        log.debug("MLflow tracking failed", exc_info=True)
        return _skipped(f"MLflow at {uri} failed: {_first_line(exc)}")


def mirror_champion(registry_version: str | None) -> str:
    """Point the ``champion`` alias at the model version of ``registry_version`` (rollback); never raises."""
    uri = tracking_uri()
    if uri is None:
        return _skipped(f"{TRACKING_URI_ENV} is not set")
    try:
        with _client_env():
            return _Mirror(uri).move_champion(registry_version)
    except Exception as exc:
        log.debug("MLflow alias move failed", exc_info=True)
        return _skipped(f"MLflow at {uri} failed: {_first_line(exc)}")


def candidate_interval(truth: np.ndarray, predicted: np.ndarray, config: PipelineConfig) -> tuple[float, float]:
    """The percentile bootstrap interval of the candidate's holdout macro-F1, with the gate's settings.

    The gate's paired bootstrap against a reference that is never right: that reference scores 0 on every
    resample (its one predicted label never occurs in the truth), so the difference is the candidate's own
    macro-F1, resampled exactly as the gate resamples it.
    """
    never_right = np.full(len(truth), "\x00never-a-label")
    comparison = promotion_gate.paired_bootstrap(
        truth,
        predicted,
        never_right,
        against="no model",
        n_resamples=config.register_.n_resamples,
        confidence=config.register_.confidence,
        seed=config.seed,
    )
    return comparison.interval


def _flat_metrics(prefix: str, values: Mapping[str, Any]) -> dict[str, float]:
    """Numbers of a nested metrics dict as ``prefix.key.sub`` (MLflow metric names allow dots and slashes)."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) and np.isfinite(value):
            flat[name] = float(value)
        elif isinstance(value, Mapping) and key not in {"confusion_matrix"}:
            flat.update(_flat_metrics(name, value))
    return flat


def tune_candidates(run_uri: str) -> list[dict[str, Any]]:
    """Every candidate tune scored in this run, across its shards: id, params, mean/std CV score, fold scores."""
    candidates = []
    for uri in storage.list_uris(RunLayout(run_uri).tune_dir):
        if not uri.endswith(".json"):
            continue
        shard = storage.read_json(uri)
        for result in shard.get("results", []) if isinstance(shard, dict) else []:
            candidates.append(
                {
                    "candidate_id": result.get("candidate_id"),
                    **{f"param.{k}": v for k, v in (result.get("params") or {}).items()},
                    "mean_cv_f1_macro": result.get("mean_score"),
                    "std_cv_f1_macro": result.get("std_score"),
                    "fold_scores": json.dumps(result.get("fold_scores")),
                    "converged": result.get("converged"),
                    "fit_seconds": result.get("fit_seconds"),
                }
            )
    return sorted(candidates, key=lambda row: str(row["candidate_id"]))


class _Mirror:
    def __init__(self, uri: str) -> None:
        import mlflow
        from mlflow import MlflowClient

        self._mlflow = mlflow
        self._uri = uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def _experiment_id(self) -> str:
        experiment = self._client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(self._client.create_experiment(EXPERIMENT))
        except self._mlflow.exceptions.MlflowException:
            # Another register created it in between.
            experiment = self._client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def _existing_run(self, experiment_id: str, version: str) -> Any | None:
        runs = self._client.search_runs([experiment_id], filter_string=f"tags.{VERSION_TAG} = '{version}'")
        return runs[0] if runs else None

    def _model_version_of(self, registry_version: str) -> Any | None:
        for model_version in self._client.search_model_versions(f"name = '{REGISTERED_MODEL}'"):
            if model_version.tags.get(VERSION_TAG) == registry_version:
                return model_version
        return None

    def log_training_run(self, run: TrainingRun, config: PipelineConfig) -> str:
        from mlflow.entities import Metric, Param, RunTag

        experiment_id = self._experiment_id()
        existing = self._existing_run(experiment_id, run.version)
        model_version = self._model_version_of(run.version)
        if existing is not None and model_version is not None:
            # A rerun of register for a run already mirrored: only the alias may need to follow.
            mlflow_run_id = existing.info.run_id
            log.info("MLflow run %s already mirrors %s", mlflow_run_id, run.version)
        else:
            tags = self._tags(run, config)
            mlflow_run = existing or self._client.create_run(experiment_id, run_name=run.version, tags=tags)
            mlflow_run_id = mlflow_run.info.run_id
            low, high = candidate_interval(run.holdout_truth, run.holdout_predictions, config)
            metrics = _flat_metrics("holdout", run.metrics)
            metrics.update({"holdout.f1_macro.interval_low": low, "holdout.f1_macro.interval_high": high})
            if run.gate:
                metrics["gate.f1_macro_difference"] = float(run.gate["difference"])
                metrics["gate.interval_low"], metrics["gate.interval_high"] = map(float, run.gate["interval"])
                metrics["gate.rows"] = float(run.gate["rows"])
            candidates = tune_candidates(run.run_uri)
            scores = [c["mean_cv_f1_macro"] for c in candidates if isinstance(c["mean_cv_f1_macro"], int | float)]
            if scores:
                metrics["tune.best_mean_cv_f1_macro"] = float(max(scores))
                metrics["tune.candidates"] = float(len(candidates))
            params = {f"train.{k}": v for k, v in run.train_params.items()}
            params.update(
                {
                    "tune.search": config.tune.search,
                    "tune.cv_folds": config.tune.cv_folds,
                    "register.promotion_margin": config.register_.promotion_margin,
                    "register.baseline_margin": config.register_.baseline_margin,
                    "register.confidence": config.register_.confidence,
                    "seed": config.seed,
                }
            )
            # The model before the metrics: MLflow links every metric already on the run to a newly logged model,
            # one request each.
            model_version = model_version or self._log_model(mlflow_run_id, run)
            self._client.log_batch(
                mlflow_run_id,
                metrics=[Metric(name, value, 0, 0) for name, value in sorted(metrics.items())],
                params=[Param(name, str(value)[:6000]) for name, value in sorted(params.items())],
                tags=[RunTag(name, value) for name, value in tags.items()] if existing is not None else [],
            )
            if candidates:
                self._client.log_table(mlflow_run_id, data=_columns(candidates), artifact_file="tune_candidates.json")
            self._log_artifacts(mlflow_run_id, run)
            self._client.set_terminated(mlflow_run_id, "FINISHED")
        alias = ""
        if run.promoted and run.champion_version == run.version:
            self._client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, model_version.version)
            alias = f", alias {CHAMPION_ALIAS} moved to it"
        return (
            f"logged: MLflow run {mlflow_run_id} in experiment {EXPERIMENT}, "
            f"model {REGISTERED_MODEL} version {model_version.version}{alias}"
        )

    def _tags(self, run: TrainingRun, config: PipelineConfig) -> dict[str, str]:
        return {
            VERSION_TAG: run.version,
            "run_uri": run.run_uri,
            "registry_uri": run.registry_uri,
            "airflow_run_id": airflow_run_id(run.run_uri),
            "data_sha256": run.data_sha256 or "",
            "config_sha256": config_sha256(config),
            "image_tag": run.image_tag,
            "promoted": str(run.promoted).lower(),
            "decision_reason": run.decision_reason[:5000],
            **run.extra_tags,
        }

    def _log_artifacts(self, mlflow_run_id: str, run: TrainingRun) -> None:
        layout = RunLayout(run.run_uri)
        with tempfile.TemporaryDirectory(prefix="mlflow-artifacts-") as folder:
            plots = Path(folder, "plots")
            plots.mkdir()
            for uri in storage.list_uris(layout.path("evaluate")):
                if uri.endswith(".png"):
                    (plots / uri.rsplit("/", 1)[-1]).write_bytes(storage.read_bytes(uri))
            report = Path(folder, "report")
            report.mkdir()
            # The run's HTML report, when register wrote it before handing over.
            for uri in storage.list_uris(layout.path("report")):
                (report / uri.rsplit("/", 1)[-1]).write_bytes(storage.read_bytes(uri))
            (report / "metrics.json").write_bytes(storage.json_bytes(run.metrics))
            (report / "run_record.json").write_bytes(storage.json_bytes(run.run_record))
            self._client.log_artifacts(mlflow_run_id, folder)

    def _log_model(self, mlflow_run_id: str, run: TrainingRun) -> Any:
        import mlflow.sklearn

        model = model_io.loads(run.model_bytes, source=storage.join(run.run_uri, "train", "model.skops"))
        with self._mlflow.start_run(run_id=mlflow_run_id, nested=False):
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
                skops_trusted_types=list(model_io.TRUSTED_TYPES),
                registered_model_name=REGISTERED_MODEL,
                # Listed, not inferred: inferring loads the model in a subprocess that imports the whole package.
                pip_requirements=_model_requirements(),
                await_registration_for=0,
            )
        model_version = self._client.get_model_version(REGISTERED_MODEL, str(info.registered_model_version))
        self._client.set_model_version_tag(REGISTERED_MODEL, model_version.version, VERSION_TAG, run.version)
        self._client.set_model_version_tag(REGISTERED_MODEL, model_version.version, "run_uri", run.run_uri)
        return model_version

    def move_champion(self, registry_version: str | None) -> str:
        if registry_version is None:
            return "unchanged: no champion"
        model_version = self._model_version_of(registry_version)
        if model_version is None:
            # Registered before the mirror existed (or while it was down): MLflow cannot name it.
            self._client.delete_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
            return _skipped(f"{registry_version} has no MLflow model version; alias {CHAMPION_ALIAS} removed")
        self._client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, model_version.version)
        return f"alias {CHAMPION_ALIAS} of {REGISTERED_MODEL} moved to version {model_version.version}"


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows as the columns ``log_table`` takes; a key missing from a row is None there."""
    names = sorted({name for row in rows for name in row})
    return {name: [row.get(name) for row in rows] for name in names}


def _model_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "imbalanced-learn", "skops", "numpy", "scipy")]
