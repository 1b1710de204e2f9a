"""A champion for the serving tests, trained and registered by the pipeline's own stages.

Not a test module: conftest's ``trained`` fixture calls it. synth ->
ingest -> validate -> featurize -> split -> tune -> select -> train ->
evaluate -> register, in this process, on a few hundred synthetic messages with
a small search, so the server under test loads exactly what a real run
registers. The registry is built once per test run and shared by every module
that asks for it (conftest's ``trained`` fixture), across pytest-xdist's
workers too: the first to need it trains it while the others wait on a lock.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from privacy_pipeline import registry
from privacy_pipeline.config import PipelineConfig, load_config
from privacy_pipeline.stage_result import StageResult
from privacy_pipeline.stages import evaluate, featurize, ingest, register, select, split, synth, train, tune, validate

ROWS = 1200
# Small enough to train in about a minute on two cores; the TF-IDF part gets 50 dims for 600 training rows.
OVERRIDES = [
    "tune.cv_folds=3",
    "smote.k_neighbors=2",
    "tune.c_grid=[1.0]",
    "featurize.tfidf_svd_dim=50",
]


@dataclass(frozen=True)
class TrainedRegistry:
    registry_uri: str
    version: str
    model_uri: str
    config: PipelineConfig


def _commit(result: StageResult) -> StageResult:
    """Write the commit marker as the CLI does after a stage returns."""
    from privacy_pipeline import storage

    if result.commit_uri:
        storage.write_json(result.commit_uri, result.payload())
    return result


def train_and_register(root: Path) -> TrainedRegistry:
    config = load_config(None, OVERRIDES)
    source = str(root / "messages.csv")
    run_uri = str(root / "run")
    registry_uri = str(root / "registry")
    synth.run(config=config, out=source, rows=ROWS, seed=5)
    _commit(ingest.run(config=config, source=source, run_uri=run_uri))
    for stage in (validate, featurize, split, tune, select, train, evaluate):
        _commit(stage.run(config=config, run_uri=run_uri))
    _commit(register.run(config=config, run_uri=run_uri, registry_uri=registry_uri))
    champion = registry.champion(registry_uri)
    assert champion is not None, "the first registered model becomes the champion"
    return TrainedRegistry(registry_uri, str(champion["version"]), str(champion["model_uri"]), config)


def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> TrainedRegistry:
    """The test run's registry with one champion, trained on first use."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Each xdist worker's base temp directory is a folder of the run's: the registry goes in the run's.
        base = base.parent
    root = base / "serving-registry"
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "trained.json"
    with (base / "serving-registry.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            trained = train_and_register(root)
            saved = {"registry_uri": trained.registry_uri, "version": trained.version, "model_uri": trained.model_uri}
            marker.write_text(json.dumps(saved), encoding="utf-8")
    saved = json.loads(marker.read_text(encoding="utf-8"))
    return TrainedRegistry(saved["registry_uri"], saved["version"], saved["model_uri"], load_config(None, OVERRIDES))
