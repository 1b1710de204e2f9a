"""A stage's figures in Prometheus: pushed to a Pushgateway when the stage ends.

``cli.py`` runs every stage inside :func:`stage_telemetry`, which times it and
then pushes, for the stage that succeeded, its duration, its success and every
XCom key named in :data:`XCOM_METRICS` (so a new stage's figures reach
Prometheus by naming its XCom keys there, with no other code); for the stage
that failed, its duration and its failure.

Where and who, from the pod's environment (stage_pod.py sets them):

- ``PIPELINE_PUSHGATEWAY_URL``: the Pushgateway.
- ``PIPELINE_DAG_ID``, ``PIPELINE_RUN_ID``, ``PIPELINE_TASK_ID``,
  ``PIPELINE_MAP_INDEX``: the Airflow task this pod runs.

Without a URL, or outside an Airflow task (a stage run by hand, the model
server, which shares the stage pods' ConfigMap), nothing is pushed and one
line is logged.

The Pushgateway group is (job, dag, stage, task): a push replaces the task's
previous one, so the Pushgateway holds each task's latest run, an alert sees
one series per task, and Prometheus keeps the history. The run id is a label
of every sample, not part of the group, so a run's figures can still be told
apart in Prometheus (one series per run of a daily DAG: bounded) while old
runs do not stay in the Pushgateway forever. A success replaces the whole
group; a failure replaces only the status metrics, so the figures and the
success time of the last good run stay visible beside the failure.

Telemetry never fails a stage: an unreachable Pushgateway is logged and the
stage's own outcome stands.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, pushadd_to_gateway

from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

PUSHGATEWAY_URL_ENV = "PIPELINE_PUSHGATEWAY_URL"
DAG_ID_ENV = "PIPELINE_DAG_ID"
RUN_ID_ENV = "PIPELINE_RUN_ID"
TASK_ID_ENV = "PIPELINE_TASK_ID"
MAP_INDEX_ENV = "PIPELINE_MAP_INDEX"

JOB = "privacy_pipeline"
PREFIX = "privacy_pipeline_"
PUSH_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class XcomMetric:
    """How one XCom key becomes a gauge.

    A number (or bool) is one sample; a dict of numbers is one sample per
    key, under the label ``label``; a two-number list (an interval) is two
    gauges, ``<name>_lower`` and ``<name>_upper``.
    """

    name: str
    help: str
    label: str | None = None


# XCom key -> metric (the name without the ``privacy_pipeline_`` prefix). A
# stage that returns one of these keys has it pushed; keys not listed, and
# values that are not numbers, are ignored. Several keys may feed one metric
# (each stage names its row count its own way).
XCOM_METRICS: dict[str, XcomMetric] = {
    "rows": XcomMetric("stage_output_rows", "Rows (or conversations) the stage wrote."),
    "rows_valid": XcomMetric("stage_output_rows", "Rows (or conversations) the stage wrote."),
    "conversations": XcomMetric("stage_output_rows", "Rows (or conversations) the stage wrote."),
    "rows_quarantined": XcomMetric("stage_quarantined_rows", "Rows (or conversations) the stage quarantined."),
    "quarantined": XcomMetric("stage_quarantined_rows", "Rows (or conversations) the stage quarantined."),
    "reasons": XcomMetric(
        "stage_quarantined_by_reason_rows", "Quarantined rows (or conversations) by reason.", label="reason"
    ),
    "train_rows": XcomMetric("split_train_rows", "Rows in the training split."),
    "holdout_rows": XcomMetric("split_holdout_rows", "Rows in the holdout split (never resampled)."),
    "cv_f1_macro": XcomMetric("cv_f1_macro", "Cross-validated macro-F1 of the selected candidate."),
    "f1_macro": XcomMetric("holdout_f1_macro", "The candidate's macro-F1 on the holdout."),
    "candidate_f1_macro": XcomMetric("holdout_f1_macro", "The candidate's macro-F1 on the holdout."),
    "champion_f1_macro": XcomMetric("champion_f1_macro", "The champion's macro-F1 on the rows the gate compared."),
    "f1_macro_difference": XcomMetric("f1_macro_lead", "Candidate minus champion macro-F1 on the compared rows."),
    "difference_interval": XcomMetric(
        "f1_macro_lead", "Paired bootstrap interval of the candidate's macro-F1 lead over the champion."
    ),
    "promoted": XcomMetric("model_promoted", "1 when the gate made the candidate champion, else 0."),
    "counts": XcomMetric("index_conversations", "Conversations in the vector store version, by kind.", label="kind"),
    "recall_at_10": XcomMetric("index_recall_at_10", "Recall@10 of the published index against exact search."),
    "drift_score": XcomMetric("drift_score", "The drift stage's domain-classifier ROC AUC (0.5: no drift)."),
    "drifted": XcomMetric("drifted", "1 when the drift stage judged the day drifted, else 0."),
}

INPUT_ROWS = XcomMetric("stage_input_rows", "Rows (or conversations) the stage read: written plus quarantined.")
DURATION = XcomMetric("stage_duration_seconds", "Wall time of the stage's run, from the CLI's start to its end.")
SUCCEEDED = XcomMetric("stage_succeeded", "1 when the stage's last try succeeded, 0 when it failed.")
LAST_SUCCESS = XcomMetric("stage_last_success_timestamp_seconds", "When the stage last succeeded (Unix time).")
LAST_FAILURE = XcomMetric("stage_last_failure_timestamp_seconds", "When the stage last failed (Unix time).")


@dataclass(frozen=True)
class TaskIdentity:
    """Who pushes: the Airflow task around this stage run."""

    dag: str
    run: str
    task: str

    @classmethod
    def from_env(cls, stage: str, env: Mapping[str, str]) -> TaskIdentity | None:
        """None outside an Airflow task."""
        dag = env.get(DAG_ID_ENV)
        if not dag:
            return None
        task = env.get(TASK_ID_ENV) or stage
        map_index = env.get(MAP_INDEX_ENV, "")
        # Mapped tasks (tune's shards) each need a group of their own or they would replace each other.
        if map_index not in ("", "-1", "None"):
            task = f"{task}-{map_index}"
        return cls(dag=dag, run=env.get(RUN_ID_ENV, ""), task=task)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class _Samples:
    """The gauges of one push, in a registry of their own."""

    def __init__(self, identity: TaskIdentity) -> None:
        self.registry = CollectorRegistry()
        self.run = identity.run
        self._gauges: dict[tuple[str, str | None], Gauge] = {}
        # Unlabelled values by metric name, for the figures derived from others.
        self.values: dict[str, float] = {}

    def set(self, metric: XcomMetric, value: float, *, suffix: str = "", label_value: str | None = None) -> None:
        name = f"{PREFIX}{metric.name}{suffix}"
        labels = ["run"] + ([metric.label] if metric.label else [])
        gauge = self._gauges.get((name, metric.label))
        if gauge is None:
            gauge = Gauge(name, metric.help, labels, registry=self.registry)
            self._gauges[(name, metric.label)] = gauge
        values = [self.run] + ([label_value or ""] if metric.label else [])
        gauge.labels(*values).set(value)
        if not metric.label:
            self.values[name] = value


def xcom_samples(identity: TaskIdentity, xcom: Mapping[str, Any]) -> _Samples:
    """The XCom keys of :data:`XCOM_METRICS` as gauges, plus input rows where a quarantine count says them."""
    samples = _Samples(identity)
    for key, metric in XCOM_METRICS.items():
        value = xcom.get(key)
        if metric.label and isinstance(value, Mapping):
            for label_value, item in value.items():
                number = _number(item)
                if number is not None:
                    samples.set(metric, number, label_value=str(label_value))
        elif isinstance(value, list | tuple) and len(value) == 2:
            bounds = [_number(v) for v in value]
            for suffix, bound in zip(("_lower", "_upper"), bounds, strict=True):
                if bound is not None:
                    samples.set(metric, bound, suffix=suffix)
        else:
            number = _number(value)
            if number is not None:
                samples.set(metric, number)
    written = samples.values.get(PREFIX + XCOM_METRICS["rows_valid"].name)
    quarantined = samples.values.get(PREFIX + XCOM_METRICS["rows_quarantined"].name)
    if written is not None and quarantined is not None:
        samples.set(INPUT_ROWS, written + quarantined)
    return samples


def _push_target(stage: str, env: Mapping[str, str]) -> tuple[str, TaskIdentity] | None:
    url = env.get(PUSHGATEWAY_URL_ENV)
    identity = TaskIdentity.from_env(stage, env)
    if not url:
        log.info("%s is not set: %s's metrics are not pushed", PUSHGATEWAY_URL_ENV, stage)
        return None
    if identity is None:
        log.info("%s is not set (not an Airflow task): %s's metrics are not pushed", DAG_ID_ENV, stage)
        return None
    return url, identity


def _push(url: str, identity: TaskIdentity, stage: str, samples: _Samples, *, replace_group: bool) -> None:
    grouping_key = {"dag": identity.dag, "stage": stage, "task": identity.task}
    push = push_to_gateway if replace_group else pushadd_to_gateway
    try:
        push(url, job=JOB, registry=samples.registry, grouping_key=grouping_key, timeout=PUSH_TIMEOUT_SECONDS)
    except Exception as exc:  # telemetry must never fail the stage it reports on
        log.warning("Could not push %s's metrics to the Pushgateway at %s: %s", stage, url, exc)
    else:
        log.info("Pushed %s's metrics to %s (dag %s, run %s)", stage, url, identity.dag, identity.run)


def push_stage_result(stage: str, result: StageResult, seconds: float, env: Mapping[str, str] | None = None) -> None:
    """Push a successful stage's figures, replacing its task's previous group."""
    target = _push_target(stage, os.environ if env is None else env)
    if target is None:
        return
    url, identity = target
    samples = xcom_samples(identity, result.xcom)
    samples.set(DURATION, seconds)
    samples.set(SUCCEEDED, 1.0)
    samples.set(LAST_SUCCESS, time.time())
    _push(url, identity, stage, samples, replace_group=True)


def push_stage_failure(stage: str, seconds: float, env: Mapping[str, str] | None = None) -> None:
    """Push a failed stage's status only, keeping the figures and success time of its last good run."""
    target = _push_target(stage, os.environ if env is None else env)
    if target is None:
        return
    url, identity = target
    samples = _Samples(identity)
    samples.set(DURATION, seconds)
    samples.set(SUCCEEDED, 0.0)
    samples.set(LAST_FAILURE, time.time())
    _push(url, identity, stage, samples, replace_group=False)


class StageOutcome:
    """What the CLI hands back from inside :func:`stage_telemetry`: the stage's result, once it has one."""

    result: StageResult | None = None


@contextmanager
def stage_telemetry(stage: str) -> Iterator[StageOutcome]:
    """Time the stage run inside; push its figures when ``outcome.result`` is set, its failure when it raises."""
    started = time.monotonic()
    outcome = StageOutcome()
    try:
        yield outcome
    except Exception:
        push_stage_failure(stage, time.monotonic() - started)
        raise
    if outcome.result is not None:
        push_stage_result(stage, outcome.result, time.monotonic() - started)
