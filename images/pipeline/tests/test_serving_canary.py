"""The rollout end to end on the embedded default: deploy a canary, then canary_check on two real local servers.

The previous version is the serving tests' champion (serving_runs: trained by
the pipeline's own stages). Each candidate is a run registered next to it and
promoted as a passing gate would (rollout_runs.promoted); deploy renders it as
a canary and canary_check starts both versions with ``privacy-pipeline serve``
and replays the run's holdout texts to both. A good candidate is promoted; one
that disagrees on most messages, or whose server never becomes ready, is
rolled back and the registry's champion is the previous version again. The disagreeing candidate is
test_serving_canary_disagreement.py's, a file of its own so that the serving tier's other xdist worker can run it
beside these.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("kserve", reason="the canary's local servers run in the serving environment (.venv/serving)")

from modeling_runs import commit
from rollout_runs import promoted
from serving_runs import OVERRIDES, TrainedRegistry

from privacy_pipeline import modeling, registry, storage, tabular
from privacy_pipeline.config import load_config
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stages import canary_check, deploy, evaluate, register, train

# 60 holdout messages each way: enough for rollout.min_requests (50), few enough to keep the tier cheap.
CONFIG = load_config(None, [*OVERRIDES, "rollout.shadow_texts=60"])


@pytest.fixture
def registry_uri(trained: TrainedRegistry, tmp_path: Path) -> str:
    """A copy of the serving tests' registry, so moving its champion leaves theirs alone."""
    return str(shutil.copytree(trained.registry_uri, tmp_path / "registry"))


def candidate_run(trained: TrainedRegistry, registry_uri: str, root: Path, relabel: dict[str, str] | None) -> str:
    """The champion's run copied up to split, retrained (on ``relabel``-ed labels), registered and promoted."""
    source = RunLayout(str(registry.champion(trained.registry_uri)["run_uri"]))
    run_uri = str(root / "candidate-run")
    for stage in ("ingest", "validate", "featurize", "split", "tune", "select", "train", "evaluate"):
        shutil.copytree(source.path(stage), RunLayout(run_uri).path(stage))
    if relabel is not None:
        layout = RunLayout(run_uri)
        table = modeling.read_table(layout.train_split)
        table["label"] = table["label"].map(relabel)
        storage.write_bytes(layout.train_split, tabular.parquet_bytes(table))
        for stage in (train, evaluate):
            commit(stage.run(config=CONFIG, run_uri=run_uri))
    registered = commit(register.run(config=CONFIG, run_uri=run_uri, registry_uri=registry_uri))
    promoted(registry_uri, run_uri, registered.xcom["model_version"])
    return run_uri


def roll_out(run_uri: str, registry_uri: str) -> tuple[dict, dict]:
    deployed = commit(deploy.run(config=CONFIG, run_uri=run_uri, registry_uri=registry_uri)).xcom
    checked = commit(canary_check.run(config=CONFIG, run_uri=run_uri, registry_uri=registry_uri)).xcom
    return deployed, checked


def test_a_good_candidate_is_canaried_against_the_previous_version_and_promoted(
    trained: TrainedRegistry, registry_uri: str, tmp_path: Path
) -> None:
    run_uri = candidate_run(trained, registry_uri, tmp_path, relabel=None)
    candidate = registry.champion(registry_uri)["version"]

    deployed, checked = roll_out(run_uri, registry_uri)

    assert (deployed["previous_version"], deployed["canary_traffic_percent"]) == (trained.version, 10)
    assert checked["decision"] == "promote", checked["reason"]
    assert (checked["canary"]["requests"], checked["canary"]["errors"], checked["previous"]["errors"]) == (60, 0, 0)
    assert checked["agreement"] == 1.0  # the same model, registered again
    assert registry.champion(registry_uri)["version"] == candidate
    final = storage.read_bytes(checked["manifest_uri"]).decode("utf-8")
    assert "canaryTrafficPercent" not in final and candidate in final


def test_a_candidate_whose_server_never_becomes_ready_is_rolled_back(
    trained: TrainedRegistry, registry_uri: str, tmp_path: Path
) -> None:
    run_uri = candidate_run(trained, registry_uri, tmp_path, relabel=None)
    broken = registry.champion(registry_uri)["version"]
    # The registered file damaged after the gate passed it: the server refuses it before it listens.
    model_uri = RegistryLayout(registry_uri).model(broken)
    storage.write_bytes(model_uri, storage.read_bytes(model_uri)[:100])

    _, checked = roll_out(run_uri, registry_uri)

    assert checked["decision"] == "rollback"
    assert checked["reason"].startswith(f"rolled back: canary {broken} never became ready")
    assert registry.champion(registry_uri)["version"] == trained.version
