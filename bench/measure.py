"""Wall time and peak memory of whole process trees, and the machine they ran on.

Every measured side runs as its own child process (``python -m bench.worker
...``), so one side's imports, caches and freed-but-kept heap never count
against another's. A sampler thread sums the resident set size (RSS) of the
child and all its descendants every ``SAMPLE_SECONDS``; the peak of that sum
is the side's peak RSS. RSS counts pages shared between processes once per
process, so a pool of workers that share read-only pages is counted at its
worst, the same way for every side.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
# Often enough to catch a stage's peak, rarely enough that sampling a large
# tree (psutil walks /proc) takes little of the 2 cores being measured.
SAMPLE_SECONDS = 0.05
MIB = 1024 * 1024
LIBRARIES = ("numpy", "scikit-learn", "imbalanced-learn", "faiss-cpu", "torch", "sentence-transformers")


def tree_rss(process: psutil.Process) -> tuple[int, list[tuple[psutil.Process, int]]]:
    """RSS of ``process`` plus every descendant alive right now, and each one's own RSS."""
    members: list[tuple[psutil.Process, int]] = []
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, members
    for member in family:
        try:
            members.append((member, member.memory_info().rss))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return sum(rss for _, rss in members), members


class PeakRssSampler:
    """Samples a process tree's total RSS in a background thread until stopped.

    ``observe`` (optional) sees every sample's members, e.g. to attribute
    memory to the pipeline stages running inside a larger tree.
    """

    def __init__(
        self,
        pid: int,
        interval: float = SAMPLE_SECONDS,
        observe: Callable[[list[tuple[psutil.Process, int]]], None] | None = None,
    ) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.observe = observe
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            total, members = tree_rss(self.process)
            self.peak_bytes = max(self.peak_bytes, total)
            self.samples += 1
            if self.observe is not None:
                self.observe(members)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return round(self.peak_bytes / MIB, 1)


@dataclass
class Measured:
    """One child process: its wall time, its tree's peak RSS and the JSON it reported.

    ``stopped`` is True when the child ran into its budget and was ended
    there: then ``wall_seconds`` is the budget, a lower bound of its time,
    ``report`` is empty and ``output`` is what it printed until then.
    """

    command: list[str]
    wall_seconds: float
    peak_rss_mib: float
    report: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False
    output: str = ""


class BenchFailure(RuntimeError):
    """A measured child failed; the message carries the tail of its output."""


def kill_tree(process: psutil.Process) -> None:
    """Kill ``process`` and every descendant (a pool's workers hold the output pipe open otherwise)."""
    try:
        family = [*process.children(recursive=True), process]
    except psutil.NoSuchProcess:
        return
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(family, timeout=10)


def run_measured(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float | None = None,
    budget: float | None = None,
    interval: float = SAMPLE_SECONDS,
    observe: Callable[[list[tuple[psutil.Process, int]]], None] | None = None,
    log_path: Path | None = None,
) -> Measured:
    """Run ``command``, sampling its tree's RSS; its last stdout line, if JSON, becomes ``report``.

    Past ``timeout`` the child is killed and this raises; past ``budget`` it
    is killed and its measurement comes back with ``stopped=True``.
    """
    started = time.perf_counter()
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    limit = budget if budget is not None else timeout
    stopped = False
    with PeakRssSampler(process.pid, interval=interval, observe=observe) as sampler:
        try:
            output, _ = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            kill_tree(sampler.process)
            output, _ = process.communicate()
            if budget is None:
                raise BenchFailure(
                    f"{' '.join(command)} ran past {timeout:.0f}s; last output:\n{output[-3000:]}"
                ) from None
            stopped = True
    wall = time.perf_counter() - started
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(output, encoding="utf-8")
    if stopped:
        return Measured(list(command), round(float(budget or wall), 3), sampler.peak_mib, stopped=True, output=output)
    if process.returncode != 0:
        raise BenchFailure(f"{' '.join(command)} exited {process.returncode}; last output:\n{output[-3000:]}")
    report: dict[str, Any] = {}
    lines = output.strip().splitlines()
    if lines:
        try:
            parsed = json.loads(lines[-1])
            report = parsed if isinstance(parsed, dict) else {}
        except json.JSONDecodeError:
            report = {}
    return Measured(list(command), round(wall, 3), sampler.peak_mib, report, output=output)


def worker_command(*args: str) -> list[str]:
    """``python -m bench.worker ARGS`` in this interpreter (the pipeline venv)."""
    return [sys.executable, "-m", "bench.worker", *args]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict[str, Any]:
    """What the numbers were measured on: cores, CPU model, RAM, OS and library versions."""
    cpu_model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
