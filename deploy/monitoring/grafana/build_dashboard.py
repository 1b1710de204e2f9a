"""Build the pipeline's Grafana dashboard (dashboards/privacy-pipeline.json) with grafana-foundation-sdk.

Run ``.venv/airflow/bin/python deploy/monitoring/grafana/build_dashboard.py`` after changing a panel and commit the
JSON; tests/monitoring/test_dashboard.py checks the JSON is this script's output and that every panel's query
returns data from a real Prometheus. Grafana provisions the JSON from provisioning/dashboards/privacy-pipeline.yaml,
with the Prometheus data source of provisioning/datasources/prometheus.yaml (uid ``prometheus``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DASHBOARD_JSON = Path(__file__).resolve().parent / "dashboards" / "privacy-pipeline.json"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="prometheus")
TRAINING = 'dag="privacy_intent_training"'
# How far back the run table looks: a month of daily runs.
HISTORY = "30d"
# The alert rules' thresholds (alerts.yml), drawn on the panels they watch.
QUARANTINE_ALERT = 0.01
DRIFT_ALERT = 0.55
P99_TARGET_SECONDS = 0.25


def _query(expr: str, legend: str = "", ref_id: str = "A", *, instant: bool = False) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref_id).datasource(DATASOURCE)
    if instant:
        query = query.instant().format(PromQueryFormat.TABLE)
    return query


def _threshold_line(value: float) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=None, color="green"), model.Threshold(value=value, color="red")])
    )


def _timeseries(title: str, description: str, *queries: prometheus.Dataquery) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).datasource(DATASOURCE).height(8).span(12)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def _per_run(metric: str, ref_id: str) -> prometheus.Dataquery:
    """Each training run's last value of ``metric`` over the history: one table row per run."""
    return _query(f"max by (run) (last_over_time({metric}[{HISTORY}]))", ref_id=ref_id, instant=True)


def _training_runs() -> table.Panel:
    return (
        table.Panel()
        .title("Training runs: macro-F1, lead over the champion and the gate's decision")
        .description(
            "One row per training run of the last 30 days: the candidate's holdout macro-F1, the bootstrap interval "
            "of its lead over the champion, and 1 when the gate promoted it."
        )
        .datasource(DATASOURCE)
        .height(8)
        .span(24)
        .with_target(_per_run(f'privacy_pipeline_holdout_f1_macro{{{TRAINING},stage="register"}}', "A"))
        .with_target(_per_run(f"privacy_pipeline_f1_macro_lead_lower{{{TRAINING}}}", "B"))
        .with_target(_per_run(f"privacy_pipeline_f1_macro_lead_upper{{{TRAINING}}}", "C"))
        .with_target(_per_run(f"privacy_pipeline_model_promoted{{{TRAINING}}}", "D"))
        # The four queries' tables joined on run: one row per run.
        .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
    )


def _training_panels() -> list[timeseries.Panel | table.Panel]:
    return [
        _training_runs(),
        _timeseries(
            "Holdout macro-F1: candidate and champion",
            "The latest run's candidate and the champion it was judged against, on the rows the gate compared.",
            _query(f'max(privacy_pipeline_holdout_f1_macro{{{TRAINING},stage="register"}})', "candidate", "A"),
            _query(f"max(privacy_pipeline_champion_f1_macro{{{TRAINING}}})", "champion", "B"),
        ).unit("percentunit"),
        _timeseries(
            "Macro-F1 lead over the champion, with its interval",
            "Candidate minus champion and the gate's paired bootstrap interval; an upper bound below 0 alerts.",
            _query(f"max(privacy_pipeline_f1_macro_lead{{{TRAINING}}})", "lead", "A"),
            _query(f"max(privacy_pipeline_f1_macro_lead_lower{{{TRAINING}}})", "lower", "B"),
            _query(f"max(privacy_pipeline_f1_macro_lead_upper{{{TRAINING}}})", "upper", "C"),
        ).thresholds(_threshold_line(0.0)),
        _timeseries(
            "Stage durations",
            "Wall time of each stage's last run, from the CLI's start to its end.",
            _query("max by (dag, stage) (privacy_pipeline_stage_duration_seconds)", "{{dag}} {{stage}}"),
        ).unit("s"),
        _timeseries(
            "Failed stages",
            "Stages whose last try failed and no retry has yet succeeded (0 is good).",
            _query("sum by (dag) (1 - privacy_pipeline_stage_succeeded)", "{{dag}}"),
        ),
    ]


def _data_panels() -> list[timeseries.Panel | table.Panel]:
    return [
        _timeseries(
            "Quarantine rate",
            "Quarantined over read rows, per validating stage; the alert fires above 1 %.",
            _query(
                "max by (dag, stage) (privacy_pipeline_stage_quarantined_rows / privacy_pipeline_stage_input_rows)",
                "{{dag}} {{stage}}",
            ),
        )
        .unit("percentunit")
        .thresholds(_threshold_line(QUARANTINE_ALERT)),
        _timeseries(
            "Quarantined rows by reason",
            "Which check quarantined the rows of each validating stage's last run.",
            _query(
                "sum by (stage, reason) (privacy_pipeline_stage_quarantined_by_reason_rows)", "{{stage}} {{reason}}"
            ),
        ),
        _timeseries(
            "Rows written per stage",
            "Rows (or conversations) each stage wrote in its last run.",
            _query("max by (dag, stage) (privacy_pipeline_stage_output_rows)", "{{dag}} {{stage}}"),
        ),
    ]


def _conversations_panels() -> list[timeseries.Panel | table.Panel]:
    return [
        _timeseries(
            "Drift per day",
            "The drift stage's domain-classifier AUC of each day's conversations against earlier days (alert: > 0.55).",
            _query("max by (dag) (max_over_time(privacy_pipeline_drift_score[1d]))", "{{dag}}"),
        ).thresholds(_threshold_line(DRIFT_ALERT)),
        _timeseries(
            "Vector store: conversations and recall@10",
            "Conversations in the latest published store version, and its index's recall@10 against exact search.",
            _query('max(privacy_pipeline_index_conversations{kind="total"})', "conversations", "A"),
            _query("max(privacy_pipeline_index_recall_at_10)", "recall@10", "B"),
        ),
    ]


def _serving_panels() -> list[timeseries.Panel | table.Panel]:
    latency = "sum by (le) (rate(privacy_intent_serving_request_seconds_bucket[5m]))"
    return [
        _timeseries(
            "Inference requests by outcome",
            "Requests per second answered by the model server, by outcome (ok, client_error, server_error).",
            _query("sum by (outcome) (rate(privacy_intent_serving_requests_total[5m]))", "{{outcome}}"),
        ).unit("reqps"),
        _timeseries(
            "Inference latency",
            "Median and 99th percentile of request time; the target is a p99 under 250 ms.",
            _query(f"histogram_quantile(0.5, {latency})", "p50", "A"),
            _query(f"histogram_quantile(0.99, {latency})", "p99", "B"),
        )
        .unit("s")
        .thresholds(_threshold_line(P99_TARGET_SECONDS)),
        _timeseries(
            "Predicted intents",
            "Messages per second classified as each intent: a change of mix is the first sign of drift.",
            _query("sum by (intent) (rate(privacy_intent_serving_predictions_total[5m]))", "{{intent}}"),
        ),
    ]


def build() -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard("Privacy-intent pipeline")
        .uid("privacy-intent-pipeline")
        .tags(["privacy-intent", "airflow", "kserve"])
        .description("Training history, data quality, stage durations, drift and serving; alerts in alerts.yml")
        .time("now-7d", "now")
        .timezone("utc")
        .refresh("1m")
    )
    sections = [
        ("Training", _training_panels()),
        ("Data", _data_panels()),
        ("Conversations", _conversations_panels()),
        ("Serving", _serving_panels()),
    ]
    panel_id = 0
    for title, panels in sections:
        panel_id += 1
        board = board.with_row(dashboard.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    return board


def render() -> str:
    return json.dumps(build().build(), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def main() -> int:
    DASHBOARD_JSON.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD_JSON.write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
