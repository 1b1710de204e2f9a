"""Stages killed with SIGKILL mid-flight (spot nodes, OOM kills) leave nothing half-written, and the retry
produces the same outputs as an undisturbed run.

Each stage runs as its own process, as in a pod, on the bucket state an undisturbed reference run had
before it, and is killed at several points of its run: early (imports, reads), midway and near the end,
which for most stages is while it writes. After every kill: every visible object parses (no partial
object) and the registry references no missing artifact. Then the retry runs to completion and writes
what the reference run wrote (frames equal, models predicting the same, JSON equal but for timings).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privacy_pipeline import model_io
from privacy_pipeline.config import EMBEDDING_DIM

CLI = [sys.executable, "-m", "privacy_pipeline.cli", "--set", "tune.c_grid=[0.01,0.1,1.0]", "--set", "tune.cv_folds=3"]
# Fractions of a stage's undisturbed run time at which it is killed.
KILL_POINTS = (0.2, 0.6, 0.95)
STAGES = ["ingest", "validate", "featurize", "split", "tune", "select", "train", "evaluate", "register"]


def _dataset(path: Path) -> None:
    rng = np.random.default_rng(5)
    labels = np.array(["no_privacy_intent"] * 270 + ["data_deletion"] * 30 + ["opt_out"] * 30)
    centres = {label: rng.normal(size=EMBEDDING_DIM) for label in set(labels)}
    vectors = np.stack([centres[label] + rng.normal(scale=3.0, size=EMBEDDING_DIM) for label in labels])
    frame = pd.DataFrame(vectors.astype("float32"), columns=[f"emb_{i:03d}" for i in range(EMBEDDING_DIM)])
    frame.insert(0, "label", labels)
    frame.insert(0, "id", [f"row-{i}" for i in range(len(labels))])
    path.parent.mkdir(parents=True)
    frame.to_parquet(path, index=False)


def _args(stage: str, source: Path, run: Path, registry: Path) -> list[str]:
    config = ["--set", "labels=[no_privacy_intent,data_deletion,opt_out]"]
    if stage == "ingest":
        return [*CLI, *config, stage, "--source", str(source), "--run", str(run)]
    if stage == "register":
        return [*CLI, *config, stage, "--run", str(run), "--registry", str(registry)]
    return [*CLI, *config, stage, "--run", str(run)]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "XCOM_RETURN_PATH": str(tmp / "xcom.json"), "PIPELINE_LOG_LEVEL": "WARNING"}


def _run(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(args, env=env, check=True, capture_output=True)
    return time.monotonic() - started


def _visible_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


def _assert_nothing_partial(run: Path, registry: Path) -> None:
    for path in _visible_files(run) + _visible_files(registry):
        data = path.read_bytes()
        if path.suffix == ".json":
            json.loads(data)
        elif path.suffix == ".parquet":
            pd.read_parquet(io.BytesIO(data))
        elif path.suffix == ".skops":
            model_io.loads(data, source=str(path))
    for record in (registry / "runs").glob("*.json") if (registry / "runs").exists() else []:
        version = json.loads(record.read_text())["version"]
        assert (registry / "models" / version / "model.skops").is_file(), f"{record} names a missing model"
    champion = registry / "champion.json"
    if champion.exists():
        pointer = json.loads(champion.read_text())
        assert Path(pointer["model_uri"]).is_file(), "the champion names a missing model"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An undisturbed run, with the bucket's state saved after every stage and each stage's run time."""
    root = tmp_path_factory.mktemp("reference")
    source = root / "raw" / "part-0000.parquet"
    _dataset(source)
    state, seconds = root / "state", {}
    (state / "run").mkdir(parents=True)
    (state / "registry").mkdir()
    for stage in STAGES:
        seconds[stage] = _run(_args(stage, source, state / "run", state / "registry"), _env(root))
        shutil.copytree(state, root / f"after-{stage}")
    return {"root": root, "source": source, "seconds": seconds}


# Fields that measure the run itself (how long, when), not what it computed.
_VOLATILE = ("seconds", "written_at_ns", "texts_per_second")


def _stable_json(path: Path, root: Path) -> object:
    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items() if not key.endswith(_VOLATILE)}
        if isinstance(value, list):
            return [strip(item) for item in value]
        return value

    return strip(json.loads(path.read_text().replace(str(root), "<state>")))


def _assert_same_outputs(stage: str, actual_state: Path, expected_state: Path, expected_written_at: Path) -> None:
    """What the retried stage wrote equals what the undisturbed one wrote (timings aside).

    ``expected_written_at`` is where the reference stage ran (its JSON names URIs there).
    """
    actual, expected = actual_state / "run" / stage, expected_state / "run" / stage
    names = sorted(p.relative_to(expected).as_posix() for p in _visible_files(expected))
    assert sorted(p.relative_to(actual).as_posix() for p in _visible_files(actual)) == names
    for name in names:
        mine, theirs = actual / name, expected / name
        if name.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(mine), pd.read_parquet(theirs), obj=f"{stage}/{name}")
        elif name.endswith(".skops"):
            holdout = pd.read_parquet(expected_state / "run" / "split" / "holdout.parquet")
            predicted = model_io.load_model(str(mine)).predict(holdout)
            np.testing.assert_array_equal(predicted, model_io.load_model(str(theirs)).predict(holdout))
        elif name.endswith(".json") and stage != "register":
            assert _stable_json(mine, actual_state) == _stable_json(theirs, expected_written_at), f"{stage}/{name}"


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_killed_anywhere_leaves_nothing_partial_and_the_retry_matches(stage, reference, tmp_path) -> None:
    root, source = reference["root"], reference["source"]
    before = root / f"after-{STAGES[STAGES.index(stage) - 1]}" if stage != STAGES[0] else None
    state = tmp_path / "state"
    if before is None:
        (state / "run").mkdir(parents=True)
        (state / "registry").mkdir()
    else:
        shutil.copytree(before, state)
    run, registry = state / "run", state / "registry"

    for point in KILL_POINTS:
        process = subprocess.Popen(
            _args(stage, source, run, registry), env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(reference["seconds"][stage] * point)
        process.send_signal(signal.SIGKILL)
        process.wait()
        _assert_nothing_partial(run, registry)

    _run(_args(stage, source, run, registry), _env(tmp_path))
    _assert_nothing_partial(run, registry)
    _assert_same_outputs(stage, state, root / f"after-{stage}", root / "state")
    if stage == "register":
        records = list((registry / "runs").glob("*.json"))
        assert len(records) == 1, "a killed register left a second run record"
        result = json.loads((run / "register" / "_result.json").read_text())
        assert result["promoted"] is True and result["model_version"] == json.loads(records[0].read_text())["version"]
