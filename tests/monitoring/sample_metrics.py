"""Sample figures for tests/monitoring/test_dashboard.py, through the pipeline's real metric code.

Run in the stage package's venv: ``sample_metrics.py PUSHGATEWAY_URL PORT``. Pushes a training run through
telemetry.py, as the CLI would after each stage, prints ``pushed`` and waits for a line on stdin (the caller lets
Prometheus scrape it: the next run replaces it in the Pushgateway, as a day later); then pushes a second training
run and a conversations run, serves the model server's own metrics (serving/metrics.py) on 127.0.0.1:PORT with
requests flowing, prints ``ready`` and runs until killed.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from prometheus_client import start_http_server

from privacy_pipeline import telemetry
from privacy_pipeline.serving import metrics
from privacy_pipeline.stage_result import StageResult

TRAINING_RUNS = ("scheduled__2026-11-30T02:00:00+00:00", "scheduled__2026-12-01T02:00:00+00:00")


def _training_stages(run_number: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(stage, task, XCom) of one training run, shaped like the stages' own XComs."""
    return [
        ("ingest", "ingest", {"rows": 5000, "parts": 1}),
        ("validate", "validate", {"rows_valid": 4930, "rows_quarantined": 70, "reasons": {"empty_text": 70}}),
        ("evaluate", "evaluate", {"f1_macro": 0.84 + run_number / 100, "accuracy": 0.9}),
        (
            "register",
            "register",
            {
                "promoted": run_number == 1,
                "candidate_f1_macro": 0.84 + run_number / 100,
                "champion_f1_macro": 0.84,
                "f1_macro_difference": run_number / 100,
                "difference_interval": [-0.01 + run_number / 100, 0.01 + run_number / 100],
            },
        ),
    ]


CONVERSATIONS = [
    ("conversations-validate", "validate", {"conversations": 490, "quarantined": 10, "reasons": {"empty": 10}}),
    ("conversations-publish", "publish", {"counts": {"total": 980, "added": 490}, "recall_at_10": 0.97}),
    ("drift", "drift", {"drift_score": 0.61, "drifted": True}),
]


def _push(pushgateway: str, dag: str, run: str, stages: list[tuple[str, str, dict[str, Any]]]) -> None:
    for stage, task, xcom in stages:
        env = {"PIPELINE_PUSHGATEWAY_URL": pushgateway, "PIPELINE_DAG_ID": dag, "PIPELINE_RUN_ID": run}
        result = StageResult(stage=stage, summary=f"{stage}: sample", xcom=xcom)
        telemetry.push_stage_result(stage, result, seconds=12.5, env={**env, "PIPELINE_TASK_ID": task})


def main(argv: list[str]) -> int:
    pushgateway, port = argv[0], int(argv[1])
    for run_number, run in enumerate(TRAINING_RUNS):
        _push(pushgateway, "privacy_intent_training", run, _training_stages(run_number))
        if run_number == 0:
            print("pushed", flush=True)
            sys.stdin.readline()
    _push(pushgateway, "daily_conversations", "scheduled__2026-12-01T03:00:00+00:00", CONVERSATIONS)
    start_http_server(port, addr="127.0.0.1")
    print("ready", flush=True)
    while True:
        metrics.REQUESTS.labels(outcome="ok").inc()
        metrics.REQUEST_SECONDS.labels(outcome="ok").observe(0.03)
        metrics.PREDICTIONS.labels(intent="no_privacy_intent").inc()
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
