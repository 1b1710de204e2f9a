"""The register task's "Run report" button: serialized with the DAG, and the URL a browser opens for report_uri."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization

from embedded.stack import REPO
from privacy_pipeline_airflow.stage_pod import RunReportLink, browser_url

REPORT = "gs://privacy-intent-data/runs/manual__2026-11-20T02:00:00+00:00/report/index.html"


def test_the_training_dags_register_task_carries_the_link_the_ui_reads_from_xcom() -> None:
    training = DagBag(dag_folder=str(REPO / "dags")).dags["privacy_intent_training"]
    tasks = DagSerialization.to_dict(training)["dag"]["tasks"]
    register = next(task["__var"] for task in tasks if task["__var"]["task_id"] == "register")

    assert register["_operator_extra_links"] == {"Run report": "_link_RunReportLink"}


@pytest.mark.parametrize(
    "xcom,emulator,url",
    [
        (
            {"report_uri": REPORT},
            None,
            "https://storage.cloud.google.com/privacy-intent-data/runs/manual__2026-11-20T02%3A00%3A00%2B00%3A00/report/index.html",
        ),
        (
            {"report_uri": REPORT},
            "http://127.0.0.1:9023",
            "http://127.0.0.1:9023/download/storage/v1/b/privacy-intent-data/o/"
            "runs%2Fmanual__2026-11-20T02%3A00%3A00%2B00%3A00%2Freport%2Findex.html?alt=media",
        ),
        # Every other stage's XCom has no report; a failed task has no XCom at all.
        ({"rows": 12}, None, ""),
        (None, None, ""),
    ],
    ids=["gcs", "emulator", "other-stage", "no-xcom"],
)
def test_the_link_opens_report_uri_in_a_browser(
    monkeypatch: pytest.MonkeyPatch, xcom: dict | None, emulator: str | None, url: str
) -> None:
    if emulator:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    else:
        monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    ti_key = mock.Mock(dag_id="privacy_intent_training", task_id="register", run_id="r", map_index=-1)
    with mock.patch("airflow.sdk.execution_time.xcom.XCom.get_value", return_value=xcom) as get_value:
        assert RunReportLink().get_link(mock.Mock(), ti_key=ti_key) == url
    get_value.assert_called_once_with(ti_key=ti_key, key="return_value")


def test_a_local_report_opens_as_a_file_url(tmp_path: Path) -> None:
    page = tmp_path / "runs" / "r1" / "report" / "index.html"
    assert browser_url(str(page)) == page.as_uri()
    assert browser_url(page.as_uri()) == page.as_uri()
