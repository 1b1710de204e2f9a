"""The run report: one self-contained HTML page per training run, written by ``register`` to the bucket.

``runs/<run_id>/report/index.html`` shows what a person asks of a run: how much
data came in and why rows were quarantined, the holdout metrics beside the
champion's and the baseline's with the promotion gate's interval, evaluate's
plots, the gate's decision in words, the lineage (data hash, config, image,
versions) and two monitoring charts drawn from the registry's run records
(macro-F1 per registered run, quarantine rate per run). Every image is inlined
as a PNG data URI, so the page needs nothing else from the bucket to render.
Each figure that comes from a JSON file carries it unrounded in ``data-value``.
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure

from privacy_pipeline import figures, registry, storage
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.run_layout import RunLayout

log = logging.getLogger(__name__)

REPORT_NAME = "index.html"
# The monitoring charts show this many of the most recent registered runs.
HISTORY_RUNS = 30
PLOT_TITLES = {"confusion_matrix": "Confusion matrix", "roc": "ROC, one-vs-rest", "pr": "Precision-recall, one-vs-rest"}


def report_uri(run_uri: str) -> str:
    return RunLayout(run_uri).path("report", REPORT_NAME)


@dataclass(frozen=True)
class HistoryPoint:
    """One registered run as the monitoring charts plot it."""

    version: str
    f1_macro: float
    promoted: bool
    quarantine_rate: float | None


@dataclass(frozen=True)
class ReportInputs:
    """Everything the page shows, already read from the run and the registry."""

    run_uri: str
    version: str
    metadata: dict[str, Any]
    run_record: dict[str, Any]
    validation: dict[str, Any] | None
    plots: dict[str, bytes]
    history: list[HistoryPoint] = field(default_factory=list)


def write_report(run_uri: str, registry_uri: str, version: str) -> str:
    """Read the run's and the registry's records, render the page, write it under the run; returns its URI."""
    inputs = read_inputs(run_uri, registry_uri, version)
    uri = report_uri(run_uri)
    storage.write_bytes(uri, render(inputs).encode("utf-8"), content_type="text/html; charset=utf-8")
    log.info("wrote the run report %s", uri)
    return uri


def read_inputs(run_uri: str, registry_uri: str, version: str) -> ReportInputs:
    layout, reg = RunLayout(run_uri), RegistryLayout(registry_uri)
    plots = {name: storage.read_bytes(layout.plot(name)) for name in PLOT_TITLES if storage.exists(layout.plot(name))}
    return ReportInputs(
        run_uri=run_uri,
        version=version,
        metadata=storage.read_json(reg.metadata(version)),
        run_record=storage.read_json(reg.run_record(version)),
        validation=_validation_report(run_uri),
        plots=plots,
        history=_history(registry_uri),
    )


def _validation_report(run_uri: str) -> dict[str, Any] | None:
    uri = RunLayout(run_uri).validation_report
    payload = storage.read_json(uri) if storage.exists(uri) else None
    return payload if isinstance(payload, dict) else None


def _history(registry_uri: str) -> list[HistoryPoint]:
    points = []
    for record in registry.list_runs(registry_uri)[-HISTORY_RUNS:]:
        validation = _validation_report(str(record.get("run_uri", ""))) if record.get("run_uri") else None
        rows_in = (validation or {}).get("rows_in")
        points.append(
            HistoryPoint(
                version=str(record["version"]),
                f1_macro=float(record["candidate_f1_macro"]),
                promoted=bool(record.get("promoted")),
                quarantine_rate=validation["rows_quarantined"] / rows_in if validation and rows_in else None,
            )
        )
    return points


# ---------------------------------------------------------------- rendering


def _element_id(name: str) -> str:
    """An HTML id from a name a record may hold (a quarantine reason, a label): only [A-Za-z0-9_-]."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _number(value: Any, name: str, digits: int = 3, *, signed: bool = False) -> str:
    """A figure as shown (rounded) with its exact value in data-value; an em dash where there is none."""
    element_id = _element_id(name)
    if value is None:
        return f'<span id="{element_id}" data-value="">—</span>'
    shown = f"{value:+.{digits}f}" if signed else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))
    return f'<span id="{element_id}" data-value="{html.escape(json.dumps(value))}">{shown}</span>'


def _table(headers: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _data_section(inputs: ReportInputs) -> str:
    data = inputs.metadata.get("data", {})
    validation = inputs.validation or {}
    rows_in, quarantined = validation.get("rows_in"), validation.get("rows_quarantined")
    rate = quarantined / rows_in if rows_in and quarantined is not None else None
    counts = [
        ["rows ingested", _number(data.get("rows"), "rows-ingested")],
        ["rows valid", _number(validation.get("rows_valid"), "rows-valid")],
        ["rows quarantined", _number(quarantined, "rows-quarantined")],
        ["quarantine rate", _number(rate, "quarantine-rate", 4)],
        ["training rows", _number(data.get("train_rows"), "train-rows")],
        ["holdout rows", _number(data.get("holdout_rows"), "holdout-rows")],
    ]
    reasons = validation.get("reasons") or {}
    reason_rows = [
        [html.escape(reason), _number(count, f"quarantine-{reason}")] for reason, count in sorted(reasons.items())
    ]
    classes = validation.get("class_counts") or {}
    class_rows = [[html.escape(label), _number(count, f"class-{label}")] for label, count in classes.items()]
    return (
        "<h2>Data</h2>"
        + _table(["", "rows"], counts, "data-counts")
        + "<h3>Quarantine reasons</h3>"
        + (_table(["reason", "rows"], reason_rows, "quarantine-reasons") if reason_rows else "<p>None quarantined.</p>")
        + "<h3>Valid rows per class</h3>"
        + _table(["class", "rows"], class_rows, "class-counts")
    )


def _metrics_section(inputs: ReportInputs) -> str:
    metrics = inputs.metadata.get("metrics", {})
    record = inputs.run_record
    gate = record.get("gate") or {}
    phrasing = metrics.get("phrasing") or {}
    unseen, seen = phrasing.get("unseen") or {}, phrasing.get("seen") or {}
    baseline = metrics.get("baseline") or {}
    rows = [
        [
            "macro-F1, whole holdout",
            _number(metrics.get("f1_macro"), "candidate-f1-macro"),
            _number(record.get("champion_f1_macro"), "champion-f1-macro"),
            _number(baseline.get("f1_macro"), "baseline-f1-macro"),
        ],
        [
            "macro-F1, unseen phrasings",
            _number(unseen.get("f1_macro"), "candidate-f1-macro-unseen"),
            "—",
            _number(unseen.get("baseline_f1_macro"), "baseline-f1-macro-unseen"),
        ],
        [
            "macro-F1, seen phrasings",
            _number(seen.get("f1_macro"), "candidate-f1-macro-seen"),
            "—",
            _number(seen.get("baseline_f1_macro"), "baseline-f1-macro-seen"),
        ],
        [
            "accuracy",
            _number(metrics.get("accuracy"), "candidate-accuracy"),
            "—",
            _number(baseline.get("accuracy"), "baseline-accuracy"),
        ],
        ["ROC-AUC, one-vs-rest", _number(metrics.get("roc_auc_ovr"), "candidate-roc-auc"), "—", "—"],
    ]
    interval = gate.get("interval") or [None, None]
    comparison = (
        f"<p>The gate compared the candidate with <b>{html.escape(str(gate.get('against')))}</b> on "
        f"{_number(gate.get('rows'), 'gate-rows')} holdout rows: macro-F1 "
        f"{_number(gate.get('candidate_f1_macro'), 'gate-candidate-f1-macro')} against "
        f"{_number(gate.get('reference_f1_macro'), 'gate-reference-f1-macro')}, a difference of "
        f"{_number(gate.get('difference'), 'gate-difference', signed=True)} with a "
        f"{gate.get('confidence', 0.95):.0%} paired-bootstrap interval "
        f"[{_number(interval[0], 'gate-interval-low', signed=True)}, "
        f"{_number(interval[1], 'gate-interval-high', signed=True)}] "
        f"({gate.get('n_resamples')} resamples).</p>"
        if gate
        else "<p>No paired comparison was made (see the decision).</p>"
    )
    per_class = metrics.get("f1_per_class") or {}
    support = metrics.get("support_per_class") or {}
    class_rows = [
        [html.escape(label), _number(f1, f"f1-{label}"), _number(support.get(label), f"support-{label}")]
        for label, f1 in per_class.items()
    ]
    return (
        "<h2>Holdout metrics</h2>"
        + _table(
            ["", "candidate", f"champion {record.get('champion_before') or '(none)'}", "majority baseline"],
            rows,
            "metrics",
        )
        + comparison
        + (f"<p>{html.escape(phrasing['note'])}</p>" if phrasing.get("note") else "")
        + "<h3>Per class</h3>"
        + _table(["class", "F1", "holdout rows"], class_rows, "per-class")
    )


def _decision_section(inputs: ReportInputs) -> str:
    record = inputs.run_record
    verdict = "promoted to champion" if record.get("promoted") else "registered, not promoted"
    margins = (
        f"Promotion needs the interval wholly above {record.get('promotion_margin')} against a champion, or above "
        f"{record.get('baseline_margin')} against the baseline when there is no comparable champion."
    )
    return (
        "<h2>The gate's decision</h2>"
        f'<p id="decision" data-promoted="{json.dumps(bool(record.get("promoted")))}"><b>{html.escape(inputs.version)} '
        f"{verdict}</b>: {html.escape(str(record.get('decision_reason', '')))}.</p>"
        f"<p>{html.escape(margins)} Champion after this run: "
        f"<b>{html.escape(str(record.get('champion_version') or '(none)'))}</b>.</p>"
    )


def _plots_section(inputs: ReportInputs) -> str:
    embedded = "".join(
        f'<figure><img class="plot" id="plot-{name}" alt="{html.escape(PLOT_TITLES[name])}" '
        f'src="{figures.png_data_uri(png)}"><figcaption>{html.escape(PLOT_TITLES[name])}</figcaption></figure>'
        for name, png in inputs.plots.items()
    )
    return "<h2>Holdout plots</h2>" + (embedded or "<p>evaluate wrote no plots for this run.</p>")


def history_png(history: list[HistoryPoint], current_version: str) -> bytes:
    """Macro-F1 per registered run (promoted ones filled) and quarantine rate per run, oldest left."""
    figure = Figure(figsize=(9, 6))
    f1_axes, rate_axes = figure.subplots(2, 1, sharex=True)
    positions = list(range(len(history)))
    for promoted, marker_face, label in ((True, "tab:blue", "promoted"), (False, "white", "not promoted")):
        chosen = [i for i, point in enumerate(history) if point.promoted is promoted]
        f1_axes.scatter(
            chosen,
            [history[i].f1_macro for i in chosen],
            facecolors=marker_face,
            edgecolors="tab:blue",
            label=label,
            zorder=3,
        )
    f1_axes.plot(positions, [point.f1_macro for point in history], color="tab:blue", alpha=0.4)
    current = [i for i, point in enumerate(history) if point.version == current_version]
    for i in current:
        f1_axes.annotate("this run", (i, history[i].f1_macro), textcoords="offset points", xytext=(0, 8), ha="center")
    f1_axes.set_ylabel("holdout macro-F1")
    f1_axes.set_title(f"Training history: the last {len(history)} registered runs")
    f1_axes.legend(loc="lower right", fontsize="small")
    rated = [(i, point.quarantine_rate) for i, point in enumerate(history) if point.quarantine_rate is not None]
    rate_axes.bar([i for i, _ in rated], [100 * rate for _, rate in rated], color="tab:orange")
    rate_axes.set_ylabel("quarantined rows (%)")
    rate_axes.set_xticks(
        positions, [point.version[:15] for point in history], rotation=45, ha="right", fontsize="x-small"
    )
    rate_axes.set_xlabel("registered version")
    return figures.png_bytes(figure, dpi=100)


def _monitoring_section(inputs: ReportInputs) -> str:
    if not inputs.history:
        return "<h2>Monitoring</h2><p>The registry holds no run records yet.</p>"
    return (
        "<h2>Monitoring</h2>"
        '<figure><img class="plot" id="plot-history" alt="Training history and quarantine rate" '
        f'src="{figures.png_data_uri(history_png(inputs.history, inputs.version))}">'
        "<figcaption>Macro-F1 of each registered run (filled: promoted) and its quarantine rate, from the "
        "registry's run records</figcaption></figure>"
    )


def _lineage_section(inputs: ReportInputs) -> str:
    metadata = inputs.metadata
    data = metadata.get("data", {})
    rows = [
        ["run", html.escape(inputs.run_uri)],
        ["model version", f'<span id="model-version">{html.escape(inputs.version)}</span>'],
        ["model", html.escape(str(inputs.run_record.get("model_uri", "")))],
        ["data content SHA-256", f'<code id="data-sha256">{html.escape(str(data.get("content_sha256")))}</code>'],
        ["data source", html.escape(str(data.get("source")))],
        ["source objects", str(len(data.get("parts") or []))],
        ["image tag", f'<span id="image-tag">{html.escape(str(metadata.get("image_tag")))}</span>'],
        ["package version", html.escape(str(metadata.get("package_version")))],
        [
            "sentence model",
            html.escape(f"{metadata.get('sentence_model')} {metadata.get('sentence_model_version') or ''}"),
        ],
        ["hyperparameters", f"<code>{html.escape(json.dumps(metadata.get('params', {}), sort_keys=True))}</code>"],
    ]
    failures = inputs.run_record.get("pod_failures") or {}
    failure_note = (
        "<h3>Stage pods that died before their retry succeeded</h3><pre>"
        + html.escape(json.dumps(failures, indent=2))
        + "</pre>"
        if failures
        else ""
    )
    config = html.escape(json.dumps(metadata.get("config", {}), indent=2, sort_keys=True))
    return (
        "<h2>Lineage</h2>"
        + _table(["", ""], rows, "lineage")
        + failure_note
        + f'<details><summary>Pipeline config</summary><pre id="config">{config}</pre></details>'
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td span[data-value] { font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5em; } img.plot { max-width: 460px; }
#plot-history { max-width: 900px; }
"""


def render(inputs: ReportInputs) -> str:
    """The whole page as one HTML string."""
    run_id = inputs.run_uri.rstrip("/").rsplit("/", 1)[-1]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Training run {html.escape(run_id)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Training run <code>{html.escape(run_id)}</code></h1>"
        + _decision_section(inputs)
        + _data_section(inputs)
        + _metrics_section(inputs)
        + _plots_section(inputs)
        + _monitoring_section(inputs)
        + _lineage_section(inputs)
        + "</body></html>"
    )
