"""``make bench``: every side of the benchmark in one session, then ``bench/results.json``, ``bench/results.md``.

    .venv/pipeline/bin/python -m bench.run            # the full run (about 20 minutes on 2 idle cores)
    .venv/pipeline/bin/python -m bench.run --quick    # tiny sizes, same code paths (a few minutes)
    .venv/pipeline/bin/python -m bench.run --sections training,search   # a subset, written under bench/out/
    .venv/pipeline/bin/python -m bench.run --rerender   # redraw the tables from bench/results.json
    .venv/pipeline/bin/python -m bench.run --record --sections search   # re-measure one section into them

This module only orchestrates: ``bench/sections.py`` measures each section,
``bench/targets.py`` judges the numbers against the issue's targets,
``bench/report.py`` draws the Markdown and ``bench/readme.py`` puts it in
README.md's Performance section. The full run writes bench/results.{json,md}
and README's tables; a quick or partial run writes only under ``bench/out/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bench.measure import REPO, BenchFailure, load_average, machine

# Re-exported: bench/serving.py's record splices its block into README before README_END.
from bench.readme import README as README
from bench.readme import README_END as README_END
from bench.readme import update_readme
from bench.report import markdown
from bench.sections import AIRFLOW_PYTHON, FULL, QUICK, WORK, measure_section, tutorial_estimate, tutorial_fit_times
from bench.sections import run_stage as run_stage  # bench/serving.py trains its champion with it
from bench.targets import targets

log = logging.getLogger("bench")

SECTIONS = ("training", "featurize", "search", "dag_parse", "serving", "ablation", "demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; results under bench/out/ only")
    parser.add_argument(
        "--tutorial-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop the tutorial's real run after this long and estimate the rest (0: let it finish)",
    )
    parser.add_argument(
        "--rerender", action="store_true", help="redraw the tables from bench/results.json; measure nothing"
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="measure --sections at full size and merge them into bench/results.json, results.md and README's tables",
    )
    parser.add_argument(
        "--sections",
        default=None,
        help=f"comma-separated subset of {SECTIONS} (default: all; with --quick all but demo, which is `make demo`)",
    )
    args = parser.parse_args(argv)
    if args.rerender:
        return rerender()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    default = [s for s in SECTIONS if s != "demo"] if args.quick else list(SECTIONS)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()] if args.sections else default
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if args.record and (args.quick or not args.sections):
        parser.error("--record re-measures named --sections at full size (not --quick)")
    sizes = QUICK if args.quick else FULL
    if args.tutorial_budget is not None:
        sizes = dataclasses.replace(sizes, tutorial_budget_seconds=args.tutorial_budget or None)
    if ("dag_parse" in sections or "demo" in sections) and not AIRFLOW_PYTHON.exists():
        parser.error(f"{AIRFLOW_PYTHON} is missing; run `make setup` first")
    WORK.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "command": "make bench"
        if not args.quick and sections == list(SECTIONS)
        else "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "load_average_start": load_average(),
        "load_average_by_section": {},
    }
    for section in sections:
        results["load_average_by_section"][section] = load_average()
        try:
            measure_section(section, sizes, results)
        except BenchFailure as failure:
            # One broken side must not cost the others' numbers: recorded, shown, and the exit code says so.
            log.error("%s failed: %s", section, failure)
            results.setdefault("errors", {})[section] = str(failure)[-2000:]
    results["load_average_end"] = load_average()
    results["total_seconds"] = round(time.monotonic() - started, 1)
    if args.record:
        return record(results, sections)
    complete = not args.quick and sections == list(SECTIONS)
    publish(
        results,
        complete=complete,
        stem="results-quick" if args.quick else ("results" if complete else "results-partial"),
    )
    return 1 if results.get("errors") else 0


def publish(results: dict[str, Any], *, complete: bool, stem: str) -> None:
    """Targets, then the JSON and Markdown, and the table on stdout.

    Only a complete full-size run writes bench/results.{json,md} and README's
    tables; a quick or partial run writes under bench/out/.
    """
    results["targets"] = targets(results)
    out_dir = REPO / "bench" if complete else WORK
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")
    table = markdown(results)
    (out_dir / f"{stem}.md").write_text(table, encoding="utf-8")
    if complete and not update_readme(table):
        log.warning("README.md has no bench markers; the tables are in bench/results.md only")
    print(table)


def record(measured: dict[str, Any], sections: list[str]) -> int:
    """Merge freshly measured sections into bench/results.json, then redraw results.md and README's tables.

    The other sections keep the numbers of their last run; the Markdown says
    which sections were re-measured, when and under what load.
    """
    results = json.loads((REPO / "bench" / "results.json").read_text(encoding="utf-8"))
    for section in sections:
        if section in measured.get("errors", {}):
            log.error("%s failed; bench/results.json keeps its last numbers for it", section)
            continue
        results[section] = measured[section]
        results.setdefault("recorded", {})[section] = {
            "date": measured["date"],
            "load_average": measured["load_average_by_section"][section],
            "command": measured["command"],
        }
    publish(results, complete=results["command"] == "make bench", stem="results")
    return 1 if measured.get("errors") else 0


def rerender() -> int:
    """Redraw bench/results.md and README's tables from bench/results.json, re-reading the tutorial's log.

    For a change in how results are derived or drawn, without measuring again.
    """
    results = json.loads((REPO / "bench" / "results.json").read_text(encoding="utf-8"))
    training = results.get("training", {})
    if training:
        smallest = training[str(min(int(rows) for rows in training))]
        tutorial_log = WORK / f"training-{smallest['rows']}" / "logs" / "tutorial.log"
        if tutorial_log.is_file():
            smallest["tutorial"] = tutorial_fit_times(smallest["tutorial"], tutorial_log.read_text(encoding="utf-8"))
        for block in training.values():
            if block is not smallest:
                block["tutorial"] = tutorial_estimate(smallest["tutorial"], smallest["train_rows"], block["train_rows"])
    publish(results, complete=results["command"] == "make bench", stem="results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
