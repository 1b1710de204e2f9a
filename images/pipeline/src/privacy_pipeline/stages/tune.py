"""``tune``: cross-validate one shard of the hyperparameter candidates on the training split.

The search can be cut into ``--num-shards`` pods; each writes its own
``tune/shard-I-of-N.json`` in one atomic write, which is its commit: there is
no shared ``tune/_result.json`` for parallel shards to overwrite. ``select``
checks that every shard of the search is there.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from privacy_pipeline import modeling, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "tune"


def shard_record(
    config: PipelineConfig, shard: int, num_shards: int, results: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """What a shard file holds: its results plus what select needs to check the search is complete and current."""
    all_candidates = modeling.candidates(config)
    return {
        "shard": shard,
        "num_shards": num_shards,
        "search": config.tune.search,
        "candidate_ids_all": [c["candidate_id"] for c in all_candidates],
        "candidates_fingerprint": modeling.candidates_fingerprint(all_candidates),
        # select uses this to tell the latest tune attempt from a stale one with another shard count.
        "written_at_ns": time.time_ns(),
        "seconds": seconds,
        "results": results,
    }


def run(*, config: PipelineConfig, run_uri: str, shard: int = 0, num_shards: int = 1) -> StageResult:
    layout = RunLayout(run_uri)
    all_candidates = modeling.candidates(config)
    share = modeling.shard_candidates(all_candidates, shard, num_shards)
    layout.require("split", needed_by=STAGE)
    spec = modeling.check_feature_spec(storage.read_json(layout.feature_spec), layout.feature_spec, STAGE)
    train = modeling.read_table(layout.train_split)
    if "label" not in train.columns:
        raise StageError(f"{STAGE}: {layout.train_split} has no label column")
    inputs = modeling.model_inputs(train, spec, layout.train_split, STAGE)
    log.info(
        "shard %d of %d: %d of %d candidates (%s search), %d-fold CV on %d rows",
        shard,
        num_shards,
        len(share),
        len(all_candidates),
        config.tune.search,
        config.tune.cv_folds,
        len(train),
    )

    started = time.perf_counter()
    results = modeling.cross_validate_candidates(inputs, train["label"].to_numpy(), spec, share, config)
    seconds = round(time.perf_counter() - started, 3)
    shard_uri = layout.tune_shard(shard, num_shards)
    storage.write_json(shard_uri, shard_record(config, shard, num_shards, results, seconds))

    best = modeling.ranked(results)[0] if results else None
    iterations = sum(r["n_iter"] for r in results)
    summary = f"{STAGE}: shard {shard} of {num_shards}: {len(results)} candidates in {seconds:.1f}s"
    if best is not None:
        summary += f", best {best['candidate_id']} CV macro-F1 {best['mean_score']:.3f}"
    return StageResult(
        stage=STAGE,
        summary=summary,
        xcom={
            "shard": shard,
            "num_shards": num_shards,
            "candidates": len(results),
            "best_candidate_id": best["candidate_id"] if best else None,
            "best_score": best["mean_score"] if best else None,
            "shard_uri": shard_uri,
            "total_lbfgs_iterations": iterations,
            # Rows each fold's classifier was fitted on (after SMOTE): what one gradient pass covers.
            "fitted_rows_per_fold": results[0]["fold_fitted_rows"] if results else [],
            "seconds": seconds,
        },
        commit_uri=None,
    )
