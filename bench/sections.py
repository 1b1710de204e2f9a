"""What each ``make bench`` section measures: our stages and the baselines as measured child processes.

Each side runs as its own child process (``measure.run_measured``): wall
time and the peak RSS of its whole process tree. Our side is the real stage
CLI (``privacy-pipeline ingest ... evaluate``) on synthetic data; the
baselines (``bench/worker.py``) read the training split and holdout that our
``split`` stage wrote, so every clean score is on the same untouched rows.
A section returns plain JSON-able results; ``bench/targets.py`` judges them
and ``bench/report.py`` draws them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import dag_parse
from bench.ablation import ablation_section
from bench.datasets import embedded_dataset, write_parquet
from bench.measure import REPO, Measured, run_measured, worker_command
from bench.serving import serving_section
from bench.worker import BASELINE_JOBS, TUTORIAL_FOLDS, tutorial_fits

log = logging.getLogger("bench")

WORK = REPO / "bench" / "out"
AIRFLOW_PYTHON = REPO / ".venv" / "airflow" / "bin" / "python"
DATASET_SEED = 20_261
# The DAG's default number of tune pods (the num_shards Param); they run side by side.
DAG_TUNE_SHARDS = 2
STAGE_NAMES = frozenset(
    {"synth", "ingest", "validate", "featurize", "split", "tune", "select", "train", "evaluate", "register"}
)
# Generous per-child limits: a side that runs past them is reported as failed, not silently cut short.
CHILD_TIMEOUT_SECONDS = 3_600
NO_GPU_NOTE = "not measured: no GPU device was lent to this session (the GPU target is open)"


@dataclass(frozen=True)
class Sizes:
    training_rows: tuple[int, ...]
    # The tutorial runs for real at the smallest size and is stopped after this
    # long (None: never); at the larger sizes it is estimated from its fit times.
    tutorial_budget_seconds: float | None
    featurize_texts: int
    search_base: int
    search_queries: int
    parse_repeats: int
    # None: the demo's own default.
    demo_rows: int | None


FULL = Sizes((10_000, 50_000), 300.0, 2_000, 100_000, 1_000, 5, None)
QUICK = Sizes((600,), 20.0, 300, 10_000, 200, 1, 1_200)


def _stage_env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLCONFIGDIR": str(work / "matplotlib"),
        "PYTHONUNBUFFERED": "1",
    }


def _pipeline_cli() -> str:
    return str(Path(sys.executable).with_name("privacy-pipeline"))


def run_stage(stage: str, args: list[str], work: Path, logs: Path, overrides: tuple[str, ...] = ()) -> Measured:
    """One ``privacy-pipeline`` stage as a measured child; its XCom JSON becomes the report.

    ``overrides`` are ``--set KEY=VALUE`` config overrides.
    """
    xcom = work / "xcom" / f"{stage}.json"
    xcom.parent.mkdir(parents=True, exist_ok=True)
    env = {**_stage_env(work), "XCOM_RETURN_PATH": str(xcom)}
    measured = run_measured(
        [_pipeline_cli(), *(f"--set={o}" for o in overrides), stage, *args],
        env=env,
        timeout=CHILD_TIMEOUT_SECONDS,
        log_path=logs / f"{stage}.log",
    )
    measured.report = json.loads(xcom.read_text(encoding="utf-8"))
    log.info("  %-10s %7.1fs %7.0f MiB", stage, measured.wall_seconds, measured.peak_rss_mib)
    return measured


def run_worker(name: str, args: list[str], logs: Path, env: dict[str, str] | None = None) -> Measured:
    measured = run_measured(
        worker_command(*args), env=env, timeout=CHILD_TIMEOUT_SECONDS, log_path=logs / f"{name}.log"
    )
    log.info("  %-22s %7.1fs %7.0f MiB", name, measured.wall_seconds, measured.peak_rss_mib)
    return measured


def run_tune_pods(run: str, num_shards: int, work: Path, logs: Path) -> Measured:
    """``privacy-pipeline tune`` for each of ``num_shards`` shards, side by side, under a stdlib-only launcher."""
    name = f"tune-{num_shards}-pods"
    measured = run_measured(
        [
            sys.executable,
            str(REPO / "bench" / "tune_pods.py"),
            "--run",
            run,
            "--num-shards",
            str(num_shards),
            "--xcom-dir",
            str(work / "xcom" / name),
        ],
        env=_stage_env(work),
        timeout=CHILD_TIMEOUT_SECONDS,
        log_path=logs / f"{name}.log",
    )
    log.info("  %-22s %7.1fs %7.0f MiB", name, measured.wall_seconds, measured.peak_rss_mib)
    return measured


def _side(measured: Measured) -> dict[str, Any]:
    return {"wall_s": measured.wall_seconds, "peak_rss_mib": measured.peak_rss_mib, "report": measured.report}


# --- training -----------------------------------------------------------------------------------------------------


def training_at(rows: int, sizes: Sizes) -> dict[str, Any]:
    """Our stages and every baseline on one dataset of ``rows`` rows."""
    work = WORK / f"training-{rows}"
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    source = write_parquet(embedded_dataset(rows, DATASET_SEED), work / "data" / "part-0000.parquet")
    run = str(work / "run")
    log.info("training at %d rows", rows)
    stages: dict[str, Measured] = {}
    stages["ingest"] = run_stage("ingest", ["--source", str(source), "--run", run], work, logs)
    for stage in ("validate", "featurize", "split"):
        stages[stage] = run_stage(stage, ["--run", run], work, logs)
    # One tune pod first (written over by the DAG-default search right after; select takes the latest).
    tune_one = run_tune_pods(run, 1, work, logs)
    stages["tune"] = run_tune_pods(run, DAG_TUNE_SHARDS, work, logs)
    for stage in ("select", "train", "evaluate"):
        stages[stage] = run_stage(stage, ["--run", run], work, logs)

    tune_train = [stages[s] for s in ("tune", "select", "train")]
    ours = {
        "wall_s": round(sum(m.wall_seconds for m in tune_train), 3),
        "peak_rss_mib": max(m.peak_rss_mib for m in tune_train),
        "clean_f1": stages["evaluate"].report["f1_macro"],
        "tune_shards": DAG_TUNE_SHARDS,
        "stages": {name: _side(m) for name, m in stages.items()},
        "tune_1_shard": _side(tune_one),
    }

    train_split, holdout_split = (
        str(work / "run" / "split" / "train.parquet"),
        str(work / "run" / "split" / "holdout.parquet"),
    )
    splits = ["--train", train_split, "--holdout", holdout_split]
    if rows == min(sizes.training_rows):
        tutorial = tutorial_side(splits, logs, sizes.tutorial_budget_seconds)
    expert_grid = run_worker("expert-grid", ["expert-grid", *splits], logs)
    expert_lrcv = run_worker("expert-lrcv", ["expert-lrcv", *splits], logs)
    result = {
        "rows": rows,
        "train_rows": stages["split"].report["train_rows"],
        "holdout_rows": stages["split"].report["holdout_rows"],
        "ours": ours,
        "expert_grid": _side(expert_grid),
        "expert_lrcv": _side(expert_lrcv),
    }
    if rows == min(sizes.training_rows):
        result["tutorial"] = tutorial
    if rows == max(sizes.training_rows):
        # The floor counts what the search fits: every lbfgs iteration is one pass over a CV fold after SMOTE.
        fitted = stages["tune"].report["fitted_rows_per_fold"]
        fitted_rows = round(statistics.mean(fitted))
        floor = run_worker("floor", ["floor", "--train", train_split, "--fitted-rows", str(fitted_rows)], logs)
        iterations = stages["tune"].report["total_lbfgs_iterations"]
        result["floor"] = {
            **_side(floor),
            "total_lbfgs_iterations": iterations,
            "fitted_rows_per_fold": fitted,
            "floor_s": floor.report["resampled_pass_seconds"] * iterations,
            # The same iterations over the fold's own rows, and the first count (the split, one column).
            "fold_floor_s": floor.report["fold_pass_seconds"] * iterations,
            "literal_floor_s": floor.report["pass_seconds"] * iterations,
        }
    return result


# One finished fit in GridSearchCV's verbose=2 log; the estimator's repr in it can wrap over several lines.
FIT_LINE = re.compile(r"\[CV\] END .*?total time=\s*([\d.]+)(s|min)", re.DOTALL)


def tutorial_side(splits: list[str], logs: Path, budget: float | None) -> dict[str, Any]:
    """The tutorial's GridSearchCV for real, stopped at ``budget``; then its time is estimated from its fits.

    The estimate is conservative: the budget, plus the fits not yet finished
    (less the ones in flight) at the mean time of the finished ones, over
    BASELINE_JOBS workers, plus a refit on 5/4 of a fold's rows.
    """
    # Unbuffered, so the pool's workers have printed every finished fit when the budget stops them.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    measured = run_measured(
        worker_command("tutorial", *splits),
        env=env,
        timeout=CHILD_TIMEOUT_SECONDS,
        budget=budget,
        log_path=logs / "tutorial.log",
    )
    side = tutorial_fit_times({**_side(measured), "stopped": measured.stopped, "budget_s": budget}, measured.output)
    state = f"stopped at its {budget:.0f}s budget" if measured.stopped else "finished"
    log.info("  tutorial %s after %d of %d fits", state, side["fits_done"], side["fits"])
    return side


def tutorial_fit_times(side: dict[str, Any], output: str) -> dict[str, Any]:
    """``side`` with the fit times its log shows and, if it was stopped, the estimate of its whole run."""
    fit_seconds = [float(value) * (60.0 if unit == "min" else 1.0) for value, unit in FIT_LINE.findall(output)]
    side = {**side, "fits": tutorial_fits(), "fits_done": len(fit_seconds), "fit_seconds": fit_seconds}
    mean_fit = side["report"].get("mean_fit_seconds") or (statistics.mean(fit_seconds) if fit_seconds else None)
    side["mean_fit_s"] = mean_fit
    if side["stopped"] and mean_fit is not None:
        remaining = max(0, tutorial_fits() - len(fit_seconds) - BASELINE_JOBS)
        refit = mean_fit * TUTORIAL_FOLDS / (TUTORIAL_FOLDS - 1)
        side["estimated_wall_s"] = side["wall_s"] + remaining * mean_fit / BASELINE_JOBS + refit
    return side


def tutorial_estimate(measured: dict[str, Any], measured_train_rows: int, train_rows: int) -> dict[str, Any]:
    """The tutorial at a size where it is not run: its measured mean fit time scaled by rows.

    saga stops at max_iter (100 epochs) on this data and liblinear's cost
    grows at least with the rows, so time linear in rows is a floor-ish guess.
    """
    scale = train_rows / measured_train_rows
    mean_fit = measured["mean_fit_s"] * scale if measured.get("mean_fit_s") else None
    estimate = None
    if mean_fit is not None:
        estimate = tutorial_fits() * mean_fit / BASELINE_JOBS + mean_fit * TUTORIAL_FOLDS / (TUTORIAL_FOLDS - 1)
    return {"estimated": True, "estimated_wall_s": estimate, "mean_fit_s": mean_fit, "row_scale": scale}


# --- featurize ----------------------------------------------------------------------------------------------------


# This run stops after featurize: the rows per class that validate demands for
# 5-fold CV with SMOTE do not apply, and without them a few hundred texts do.
FEATURIZE_ONLY = ("tune.cv_folds=2", "smote.enabled=false")


def featurize_section(sizes: Sizes) -> dict[str, Any]:
    """Our featurize stage (text mode) against a bare ``encode()`` on the same validated texts, on CPU."""
    work = WORK / "featurize"
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    run = str(work / "run")
    source = str(work / "data" / "part-0000.csv")
    log.info("featurize: %d texts", sizes.featurize_texts)
    subprocess.run(
        [_pipeline_cli(), "synth", "--out", source, "--rows", str(sizes.featurize_texts), "--seed", "11"],
        env=_stage_env(work),
        check=True,
        capture_output=True,
    )
    run_stage("ingest", ["--source", source, "--run", run], work, logs, FEATURIZE_ONLY)
    run_stage("validate", ["--run", run], work, logs, FEATURIZE_ONLY)
    ours = run_stage("featurize", ["--run", run], work, logs, FEATURIZE_ONLY)
    bare = run_worker(
        "bare-encode",
        [
            "encode",
            "--validated",
            str(work / "run" / "validate" / "validated.parquet"),
            "--features",
            str(work / "run" / "featurize" / "features.parquet"),
        ],
        logs,
    )
    return {"texts": sizes.featurize_texts, "ours": _side(ours), "bare_encode": _side(bare), "gpu": NO_GPU_NOTE}


# --- vector search ------------------------------------------------------------------------------------------------


def search_section(sizes: Sizes) -> dict[str, Any]:
    """numpy exact, our published index (efSearch tuned as publish tunes it), and the best hand-configured HNSW.

    Ours and the hand builds run in one process: each hand build must reach the recall@10 ours reached,
    on the same base and queries, and the searches of ours and of every build that reached it are timed
    in alternating rounds (bench/worker.py), so the machine's load hits both sides alike.
    """
    work = WORK / "search"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    logs = work / "logs"
    log.info("vector search: %d x 384, %d queries", sizes.search_base, sizes.search_queries)
    result: dict[str, Any] = {"base": sizes.search_base, "queries": sizes.search_queries, "dim": 384}
    common = ["search", "--base", str(sizes.search_base), "--queries", str(sizes.search_queries), "--work", str(work)]
    result["numpy"] = _side(run_worker("search-numpy", [*common, "--side", "numpy"], logs))
    paired = run_worker("search-ours-vs-hand", [*common, "--side", "ours-vs-hand"], logs)
    # One process for both sides: its wall time and peak RSS are theirs together.
    for side in ("ours", "hnsw"):
        result[side] = {
            "wall_s": paired.wall_seconds,
            "peak_rss_mib": paired.peak_rss_mib,
            "report": paired.report[side],
        }
    return result


# --- DAG parse ----------------------------------------------------------------------------------------------------


def dag_parse_section(sizes: Sizes) -> dict[str, Any]:
    """Each ``dags/*.py`` beside its plain-operator anchor, parsed as the dag-processor does (bench/dag_parse.py)."""
    work = WORK / "dag_parse"
    shutil.rmtree(work, ignore_errors=True)
    return dag_parse.measure(AIRFLOW_PYTHON, work, sizes.parse_repeats)


# --- end to end ---------------------------------------------------------------------------------------------------


class StagePeaks:
    """Attributes the demo's process tree to pipeline stages: each stage's peak RSS and when it ran.

    A stage is a ``privacy-pipeline <stage>`` process (the local pod runtime
    starts one per pod) plus its descendants; parallel pods of one stage
    (tune shards) add up.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.peak_bytes: dict[str, int] = defaultdict(int)
        self.first_seen: dict[str, float] = {}
        self.last_seen: dict[str, float] = {}
        self._names: dict[tuple[int, float], str | None] = {}

    def _stage_of(self, process: psutil.Process) -> str | None:
        try:
            key = (process.pid, process.create_time())
            if key not in self._names:
                command = process.cmdline()
                self._names[key] = None
                for position, part in enumerate(command):
                    if Path(part).name == "privacy-pipeline":
                        self._names[key] = next((a for a in command[position + 1 :] if a in STAGE_NAMES), None)
                        break
            return self._names[key]
        except psutil.Error:
            return None

    def observe(self, members: list[tuple[psutil.Process, int]]) -> None:
        now = time.monotonic() - self.started
        by_pid = {process.pid: (process, rss) for process, rss in members}
        totals: dict[str, int] = defaultdict(int)
        for process, rss in members:
            # Walk up to the nearest stage process, so a stage's children count towards it.
            current: psutil.Process | None = process
            stage = None
            while current is not None and current.pid in by_pid:
                stage = self._stage_of(current)
                if stage is not None:
                    break
                try:
                    current = current.parent()
                except psutil.Error:
                    current = None
            if stage is not None:
                totals[stage] += rss
        for stage, total in totals.items():
            self.peak_bytes[stage] = max(self.peak_bytes[stage], total)
            self.first_seen.setdefault(stage, now)
            self.last_seen[stage] = now

    def stages(self) -> dict[str, dict[str, float]]:
        return {
            stage: {
                "peak_rss_mib": round(self.peak_bytes[stage] / 1024**2, 1),
                "seconds": round(self.last_seen[stage] - self.first_seen[stage], 1),
            }
            for stage in sorted(self.first_seen, key=self.first_seen.__getitem__)
        }


def demo_section(sizes: Sizes) -> dict[str, Any]:
    """``make demo``'s command on a fresh home (a first demo, as on a clean clone after set-up)."""
    work = WORK / "demo"
    shutil.rmtree(work, ignore_errors=True)
    command = [str(AIRFLOW_PYTHON), "-m", "embedded.demo", "--home", str(work / "home")]
    if sizes.demo_rows is not None:
        command += ["--rows", str(sizes.demo_rows)]
    log.info("end to end: %s", " ".join(command))
    peaks = StagePeaks()
    measured = run_measured(
        command, timeout=CHILD_TIMEOUT_SECONDS, interval=0.05, observe=peaks.observe, log_path=work / "demo.log"
    )
    log.info("  demo %7.1fs %7.0f MiB", measured.wall_seconds, measured.peak_rss_mib)
    return {
        "command": "make demo (" + " ".join(command[1:]).replace(str(REPO) + "/", "") + ")",
        "rows": sizes.demo_rows or 5000,
        "wall_s": measured.wall_seconds,
        "peak_rss_mib": measured.peak_rss_mib,
        "stages": peaks.stages(),
    }


SECTION_RUNNERS = {
    "featurize": featurize_section,
    "search": search_section,
    "dag_parse": dag_parse_section,
    "serving": serving_section,
    "ablation": ablation_section,
    "demo": demo_section,
}


def measure_section(section: str, sizes: Sizes, results: dict[str, Any]) -> None:
    """Run ``section`` and put what it measured in ``results``."""
    if section == "training":
        training = {str(rows): training_at(rows, sizes) for rows in sizes.training_rows}
        smallest = training[str(min(sizes.training_rows))]
        for block in training.values():
            if block is not smallest:
                block["tutorial"] = tutorial_estimate(smallest["tutorial"], smallest["train_rows"], block["train_rows"])
        results["training"] = training
    else:
        results[section] = SECTION_RUNNERS[section](sizes)
