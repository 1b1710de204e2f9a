"""Stages killed with SIGKILL mid-write (spot nodes, OOM kills) leave nothing half-written, and the retry
produces the same outputs as an undisturbed run.

Each stage runs as its own process, as in a pod, on the bucket state an undisturbed reference run had
before it, and is killed by storage's fault injection (``PRIVACY_PIPELINE_KILL_AT_COMMIT``) at its first,
middle and last commit point: the moment a write's bytes are complete but not yet visible. After every
kill: the process died of SIGKILL at that write, the object it was writing is unchanged (absent, or
its old bytes), every visible object parses, and the registry references no missing artifact. Then
the retry runs to completion and writes what the reference run wrote (frames equal, models predicting
the same, JSON equal but for timings).

The processes are forked from this one after it has imported every stage, so each run skips the
seconds of imports a fresh interpreter pays; one test runs the CLI as a fresh process with the
environment variable set, as a pod would.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privacy_pipeline import cli, model_io, storage
from privacy_pipeline.config import EMBEDDING_DIM

OVERRIDES = [
    "--set", "tune.c_grid=[0.01,0.1,1.0]", "--set", "tune.cv_folds=3",
    "--set", "labels=[no_privacy_intent,data_deletion,opt_out]",
]  # fmt: skip
STAGES = ["ingest", "validate", "featurize", "split", "tune", "select", "train", "evaluate", "register"]
# A forked stage that neither finishes nor dies in this long has hung.
STAGE_TIMEOUT_SECONDS = 600
KILLED_AT = re.compile(rf"{storage.KILL_AT_COMMIT_ENV}: killed at commit point (\d+), (.+)")


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
    if stage == "ingest":
        return [*OVERRIDES, stage, "--source", str(source), "--run", str(run)]
    if stage == "register":
        return [*OVERRIDES, stage, "--run", str(run), "--registry", str(registry)]
    return [*OVERRIDES, stage, "--run", str(run)]


def _run_forked(args: list[str], log: Path, kill_at_commit: str | None = None) -> tuple[int, str]:
    """Run the CLI in a child forked from this process; its wait status and its stdout+stderr."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with open(log, "w", buffering=1) as out:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                sys.stdout = sys.stderr = out
                os.environ.update({"XCOM_RETURN_PATH": str(log.with_suffix(".xcom.json"))})
                os.environ.pop(storage.KILL_AT_COMMIT_ENV, None)
                if kill_at_commit is not None:
                    os.environ[storage.KILL_AT_COMMIT_ENV] = kill_at_commit
                try:
                    code = cli.main(["--log-level", "WARNING", *args])
                except BaseException:
                    traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + STAGE_TIMEOUT_SECONDS
    while True:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            return status, log.read_text(errors="replace")
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"{args} hung for {STAGE_TIMEOUT_SECONDS}s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.02)


def _run(args: list[str], log: Path) -> None:
    status, output = _run_forked(args, log)
    assert os.waitstatus_to_exitcode(status) == 0, output[-3000:]


def _visible_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in _visible_files(root)}


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
    """An undisturbed run, with the bucket's state saved after every stage and each stage's commit count."""
    for stage in STAGES:
        # Imported here once, so every forked run starts with them loaded.
        importlib.import_module(f"privacy_pipeline.stages.{stage}")
    root = tmp_path_factory.mktemp("reference")
    source = root / "raw" / "part-0000.parquet"
    _dataset(source)
    state, commits = root / "state", {}
    (state / "run").mkdir(parents=True)
    (state / "registry").mkdir()
    before = _contents(state)
    for stage in STAGES:
        _run(_args(stage, source, state / "run", state / "registry"), root / f"{stage}.log")
        after = _contents(state)
        # Every object a stage writes is new or changed (fresh folders, a new registry version), so
        # counting them counts its commit points.
        commits[stage] = sum(1 for name, data in after.items() if before.get(name) != data)
        shutil.copytree(state, root / f"after-{stage}")
        before = after
    return {"root": root, "source": source, "commits": commits}


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


def _state_before(stage: str, reference: dict, tmp_path: Path) -> Path:
    state = tmp_path / "state"
    if stage == STAGES[0]:
        (state / "run").mkdir(parents=True)
        (state / "registry").mkdir()
    else:
        shutil.copytree(reference["root"] / f"after-{STAGES[STAGES.index(stage) - 1]}", state)
    return state


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_killed_at_any_commit_leaves_nothing_partial_and_the_retry_matches(stage, reference, tmp_path) -> None:
    root, source, commits = reference["root"], reference["source"], reference["commits"][stage]
    state = _state_before(stage, reference, tmp_path)
    run, registry = state / "run", state / "registry"
    # Each attempt retries the one before. The last commit point is named by its object, the stage's
    # commit marker (tune has none, and one write): a retry of register reuses the registry claim the
    # attempt before made, so it has one commit point fewer than the reference.
    has_marker = (root / f"after-{stage}" / "run" / stage / "_result.json").is_file()
    last = f"1:*/{stage}/_result.json" if has_marker else str(commits)
    for attempt, kill_at in enumerate(dict.fromkeys(["1", str((commits + 1) // 2), last])):
        before = _contents(state)
        status, output = _run_forked(_args(stage, source, run, registry), tmp_path / f"kill-{attempt}.log", kill_at)
        killed = KILLED_AT.search(output)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and killed, (
            f"{stage} was not killed at commit point {kill_at}:\n{output[-3000:]}"
        )
        target = killed.group(2)
        assert _contents(state).get(target) == before.get(target), f"{target} changed although its write was killed"
        _assert_nothing_partial(run, registry)

    _run(_args(stage, source, run, registry), tmp_path / "retry.log")
    _assert_nothing_partial(run, registry)
    _assert_same_outputs(stage, state, root / f"after-{stage}", root / "state")
    if stage == "register":
        records = list((registry / "runs").glob("*.json"))
        assert len(records) == 1, "a killed register left a second run record"
        result = json.loads((run / "register" / "_result.json").read_text())
        assert result["promoted"] is True and result["model_version"] == json.loads(records[0].read_text())["version"]


@pytest.mark.slow
def test_the_environment_variable_kills_a_fresh_cli_process_at_the_matching_write(reference, tmp_path) -> None:
    """As a pod would run it: a new interpreter, the variable in its environment, a glob picking the write."""
    state = _state_before("register", reference, tmp_path)
    env = {**os.environ, storage.KILL_AT_COMMIT_ENV: "1:*/champion.json", "XCOM_RETURN_PATH": str(tmp_path / "x.json")}
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "privacy_pipeline.cli",
            *_args("register", reference["source"], state / "run", state / "registry"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    assert KILLED_AT.search(process.stderr).group(2) == str(state / "registry" / "champion.json")
    assert not (state / "registry" / "champion.json").exists()
    _assert_nothing_partial(state / "run", state / "registry")
