"""What each part of the features buys: the sentence embedding, TF-IDF, the handcrafted features, and all three.

The demo's data (``synth``, the demo's rows and seed) goes through the real
stages once up to ``split``; then each feature set gets its own run prefix with
the same features, the same train/holdout split and a feature spec naming only
its columns, and runs tune -> select -> train -> evaluate with the default
config. The headline is macro-F1 on unseen phrasings (holdout rows whose
phrasing family never occurs in training), beside the seen ones; "all three" is
what the demo trains, so its row should match the demo's numbers.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from bench.measure import REPO
from privacy_pipeline import storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult
from privacy_pipeline.stages import evaluate, featurize, ingest, select, split, synth, train, tune, validate

log = logging.getLogger("bench.ablation")

WORK = REPO / "bench" / "out" / "ablation"
# The demo's defaults (embedded/demo.py --rows, --seed), so "all three" is the demo's model.
DEMO_ROWS = 5_000
# Below about this many rows split cannot hold phrasings out and still cross-validate the rarest class
# with SMOTE, so there would be no unseen-phrasing metric to compare.
MIN_ROWS = 2_000
DEMO_SEED = 7
VARIANTS = ("sentence", "tfidf", "handcrafted", "all")
VARIANT_NAMES = {
    "sentence": "sentence embedding alone (all-MiniLM-L6-v2, 384 dims)",
    "tfidf": "TF-IDF -> SVD alone (fitted on training rows)",
    "handcrafted": "handcrafted features alone",
    "all": "all three (what the demo trains)",
}


def _commit(result: StageResult) -> StageResult:
    if result.commit_uri:
        storage.write_json(result.commit_uri, result.payload())
    return result


def variant_spec(spec: dict[str, Any], variant: str) -> dict[str, Any]:
    """The text-mode feature spec narrowed to one feature set (the columns stay in the table, unread)."""
    if variant == "all":
        return spec
    if variant == "tfidf":
        return {**spec, "embedding_columns": [], "handcrafted_columns": []}
    # Without TF-IDF there is no text input: the spec's embedded mode reads plain numeric columns.
    columns = {
        "sentence": ("embedding_columns", "handcrafted_columns"),
        "handcrafted": ("handcrafted_columns", "embedding_columns"),
    }
    keep, drop = columns[variant]
    return {**spec, "mode": "embedded", "text_column": None, keep: spec[keep], drop: []}


def _prepared_run(root: Path, rows: int, config: PipelineConfig) -> str:
    """synth -> ingest -> validate -> featurize -> split, once, in text mode."""
    source = root / "source.parquet"
    synth.run(config=config, out=str(source), rows=rows, seed=DEMO_SEED)
    run_uri = str(root / "prepared")
    _commit(ingest.run(config=config, source=str(source), run_uri=run_uri))
    for stage in (validate, featurize, split):
        _commit(stage.run(config=config, run_uri=run_uri))
    return run_uri


def _variant_run(prepared: str, root: Path, variant: str, config: PipelineConfig) -> dict[str, Any]:
    run_uri = str(root / variant)
    shutil.copytree(prepared, run_uri)
    layout = RunLayout(run_uri)
    storage.write_json(layout.feature_spec, variant_spec(storage.read_json(layout.feature_spec), variant))
    started = time.monotonic()
    for stage in (tune, select, train):
        _commit(stage.run(config=config, run_uri=run_uri))
    _commit(evaluate.run(config=config, run_uri=run_uri))
    metrics = storage.read_json(layout.metrics)
    unseen = metrics["phrasing"].get("unseen") or {}
    seen = metrics["phrasing"].get("seen") or {}
    spec = storage.read_json(layout.feature_spec)
    return {
        "f1_macro_unseen": unseen.get("f1_macro"),
        "f1_macro_seen": seen.get("f1_macro"),
        "f1_macro_all": metrics["f1_macro"],
        "baseline_f1_macro_unseen": unseen.get("baseline_f1_macro"),
        "n_unseen": unseen.get("n_holdout", 0),
        "n_seen": seen.get("n_holdout", 0),
        "input_columns": len(spec["embedding_columns"]) + len(spec["handcrafted_columns"]),
        "seconds": round(time.monotonic() - started, 1),
    }


def ablation_section(sizes: Any) -> dict[str, Any]:
    """Runs every variant on the demo's data (the demo's 5,000 rows, or ``sizes.demo_rows`` down to MIN_ROWS)."""
    rows = max(sizes.demo_rows, MIN_ROWS) if sizes.demo_rows else DEMO_ROWS
    config = PipelineConfig()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    prepared = _prepared_run(WORK, rows, config)
    variants = {}
    for variant in VARIANTS:
        log.info("ablation: %s", VARIANT_NAMES[variant])
        variants[variant] = _variant_run(prepared, WORK, variant, config)
    return {"rows": rows, "seed": DEMO_SEED, "variants": variants}


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def ablation_table(results: dict[str, Any]) -> list[str]:
    if "ablation" not in results:
        return []
    ablation = results["ablation"]
    variants = ablation["variants"]
    first = next(iter(variants.values()))
    lines = [
        "",
        f"Feature ablation on the demo's data ({ablation['rows']:,} rows, seed {ablation['seed']}): holdout macro-F1 "
        f"on unseen phrasings ({first['n_unseen']} rows of families never in training; majority baseline "
        f"{_score(first['baseline_f1_macro_unseen'])}) and on seen ones ({first['n_seen']} rows, other texts of "
        "trained families).",
        "",
        "| features | macro-F1, unseen phrasings | macro-F1, seen phrasings | whole holdout | tune+train+evaluate |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for variant, row in variants.items():
        lines.append(
            f"| {VARIANT_NAMES[variant]} | {_score(row['f1_macro_unseen'])} | {_score(row['f1_macro_seen'])} | "
            f"{row['f1_macro_all']:.3f} | {row['seconds']:.0f}s |"
        )
    return lines
