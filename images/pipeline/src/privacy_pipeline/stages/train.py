"""``train``: fit the selected candidate on the whole training split and save the pipeline.

The saved model is the full pipeline (feature assembly, scaler, classifier),
so whoever loads it scores raw feature rows. A pure-L2 candidate is fitted as
tune fits it (``modeling.fit_through_resampling``): the objective and solver
call of ``pipeline.fit``, with its passes over the split's own rows instead of
SMOTE's ~5x as many; one with an L1 share (saga) goes through ``pipeline.fit``.
Either way the SMOTE step is "passthrough" in the saved model:
imbalanced-learn skips samplers at predict time anyway, and a fitted SMOTE's
neighbour search holds a copy of the training rows' embeddings, which have no
business in the model registry.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from privacy_pipeline import model_io, modeling, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "train"


def _best_params(layout: RunLayout) -> dict[str, Any]:
    best = storage.read_json(layout.best_candidate)
    params = best.get("params") if isinstance(best, dict) else None
    if not isinstance(params, dict) or set(params) != set(modeling.CANDIDATE_PARAMS):
        raise StageError(
            f"{STAGE}: {layout.best_candidate} holds no params with {list(modeling.CANDIDATE_PARAMS)}; rerun select"
        )
    return params


def run(*, config: PipelineConfig, run_uri: str) -> StageResult:
    layout = RunLayout(run_uri)
    layout.require("split", needed_by=STAGE)
    layout.require("select", needed_by=STAGE)
    params = _best_params(layout)
    spec = modeling.check_feature_spec(storage.read_json(layout.feature_spec), layout.feature_spec, STAGE)
    train = modeling.read_table(layout.train_split)
    if "label" not in train.columns:
        raise StageError(f"{STAGE}: {layout.train_split} has no label column")
    inputs = modeling.model_inputs(train, spec, layout.train_split, STAGE)
    labels = train["label"].to_numpy()
    resample = config.train.smote
    if resample:
        modeling.check_resampling_possible(labels, config, f"{STAGE}: {layout.train_split}")

    pipeline = modeling.build_pipeline(spec, params, config, resample=resample)
    started = time.perf_counter()
    with modeling.solver_threads(config):
        if modeling.multinomial_lbfgs(pipeline, labels):
            fitted_rows = modeling.fit_through_resampling(pipeline, inputs, labels, config).fitted_rows
        else:
            pipeline.fit(inputs, labels)
            fitted_rows = modeling.resampled_rows(pipeline, len(train))
    fit_seconds = round(time.perf_counter() - started, 3)
    iterations = modeling.lbfgs_iterations(pipeline)
    if iterations >= config.tune.max_iter:
        log.warning("the final fit stopped at tune.max_iter=%d without converging", config.tune.max_iter)
    pipeline.set_params(smote="passthrough")
    model_io.save_model(pipeline, layout.model)

    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: fitted C={params['clf__C']:g}, l1_ratio={params['clf__l1_ratio']:g} on {len(train)} rows "
        f"({fitted_rows} after resampling) in {fit_seconds:.1f}s",
        xcom={
            "model_uri": layout.model,
            "params": params,
            "train_rows": len(train),
            "resampled_rows": fitted_rows,
            "fit_seconds": fit_seconds,
            "lbfgs_iterations": iterations,
        },
        commit_uri=layout.result(STAGE),
    )
