"""The run report register writes: where it goes, what it says, and that nothing in a record can inject markup.

The page in a real browser (every image loads, the numbers match the JSON) is
test_run_report_page.py, in the serving tier where selenium is installed.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from privacy_pipeline import model_io, run_report, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.run_report import HistoryPoint, ReportInputs
from privacy_pipeline.stages import register

COLUMNS = ["emb_0", "emb_1"]
LABELS = ["data_deletion", "none"]


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.array(LABELS * (n // 2))
    centres = np.where(labels == LABELS[0], 1.0, -1.0)
    return pd.DataFrame(
        {"emb_0": centres + rng.normal(0, 0.8, n), "emb_1": rng.normal(0, 1, n), "label": labels, "text": "t"}
    )


def _evaluated_run(root: Path) -> str:
    """A run as evaluate leaves it, with validate's report and one plot."""
    layout = RunLayout(str(root / "runs" / "manual__2026-11-20"))
    train, holdout = _rows(120, 1), _rows(80, 2)
    model = Pipeline(
        [("features", ColumnTransformer([("columns", "passthrough", COLUMNS)])), ("clf", LogisticRegression())]
    ).fit(train[COLUMNS], train["label"])
    for uri, rows in ((layout.train_split, train), (layout.holdout_split, holdout)):
        buffer = io.BytesIO()
        rows.to_parquet(buffer, index=False)
        storage.write_bytes(uri, buffer.getvalue())
    storage.write_bytes(layout.model, model_io.dumps(model))
    storage.write_json(layout.ingest_manifest, {"content_sha256": "ab" * 32, "source": "gs://b/raw/", "rows": 210})
    storage.write_json(
        layout.validation_report,
        {"rows_in": 210, "rows_valid": 200, "rows_quarantined": 10, "reasons": {"empty_text": 7, "unknown_label": 3}},
    )
    storage.write_json(layout.feature_spec, {"mode": "embedded", "text_column": None, "embedding_columns": COLUMNS})
    storage.write_json(layout.metrics, {"f1_macro": 0.8765432, "accuracy": 0.875, "baseline": {"f1_macro": 0.33}})
    storage.write_bytes(layout.plot("roc"), run_report.history_png([HistoryPoint("v1", 0.8, True, 0.1)], "v1"))
    for stage, payload in (("ingest", {}), ("train", {"params": {"clf__C": 1.0}, "train_rows": 120}), ("evaluate", {})):
        storage.write_json(layout.result(stage), {"stage": stage, **payload})
    return layout.run_uri


def test_register_writes_the_run_report_under_the_run_and_names_it_in_its_xcom(tmp_path: Path) -> None:
    run_uri = _evaluated_run(tmp_path)
    xcom = register.run(config=PipelineConfig(), run_uri=run_uri, registry_uri=str(tmp_path / "registry")).xcom

    assert xcom["report_uri"] == f"{run_uri}/report/index.html"
    page = storage.read_bytes(xcom["report_uri"]).decode("utf-8")
    assert f'<span id="model-version">{xcom["model_version"]}</span>' in page
    assert '<span id="candidate-f1-macro" data-value="0.8765432">0.877</span>' in page
    assert '<span id="rows-quarantined" data-value="10">10</span>' in page
    assert '<span id="quarantine-empty_text" data-value="7">7</span>' in page
    assert "promoted to champion" in page and "first model" in page
    assert "ab" * 32 in page
    # evaluate's plot and the monitoring chart, both inlined.
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2


def test_a_rerun_of_register_rewrites_the_same_report(tmp_path: Path) -> None:
    run_uri = _evaluated_run(tmp_path)
    registry_uri = str(tmp_path / "registry")
    first = register.run(config=PipelineConfig(), run_uri=run_uri, registry_uri=registry_uri).xcom
    second = register.run(config=PipelineConfig(), run_uri=run_uri, registry_uri=registry_uri).xcom

    assert first["report_uri"] == second["report_uri"]
    assert [uri for uri in storage.list_uris(f"{run_uri}/report")] == [first["report_uri"]]


@pytest.fixture
def hostile_inputs() -> ReportInputs:
    return ReportInputs(
        run_uri="gs://b/runs/manual__<script>",
        version="20261120T020000Z-deadbeef",
        metadata={"metrics": {"f1_macro": 0.5}, "data": {"source": "<img src=x onerror=alert(1)>"}},
        run_record={"promoted": False, "decision_reason": "not promoted: <b>interval</b> & more", "gate": None},
        validation={"rows_in": 4, "rows_quarantined": 1, "reasons": {"<evil>": 1}},
        plots={},
    )


def test_nothing_in_a_record_becomes_markup(hostile_inputs: ReportInputs) -> None:
    page = run_report.render(hostile_inputs)

    assert "<script>" not in page and "<img src=x" not in page and "<evil>" not in page
    assert "not promoted: &lt;b&gt;interval&lt;/b&gt; &amp; more" in page
    assert '<p id="decision" data-promoted="false">' in page
    assert "No paired comparison was made" in page


def test_history_points_come_from_the_registrys_run_records(tmp_path: Path) -> None:
    run_uri = _evaluated_run(tmp_path)
    registry_uri = str(tmp_path / "registry")
    register.run(config=PipelineConfig(), run_uri=run_uri, registry_uri=registry_uri)

    [point] = run_report.read_inputs(run_uri, registry_uri, _only_version(registry_uri)).history

    assert point.f1_macro == pytest.approx(0.8765432)
    assert point.promoted is True
    assert point.quarantine_rate == pytest.approx(10 / 210)


def _only_version(registry_uri: str) -> str:
    [record] = [storage.read_json(uri) for uri in storage.list_uris(f"{registry_uri}/runs")]
    return str(record["version"])
