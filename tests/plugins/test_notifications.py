"""Failure alerts: one mail per task that fails for good, none for a retry that then succeeds, with the reason.

Each try runs through the task SDK's own ``run`` and ``finalize`` (what a
worker's task process does), with the API server's retry decision
(``should_retry``: tries left) given as the server would give it, and the mail
goes through the SMTP provider to a real SMTP server on 127.0.0.1
(embedded/mail.py). The live version, a stage pod failing in a running Airflow,
is tests/system/test_failure_mail_live.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import structlog
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, DeadlineReference
from airflow.sdk.api.datamodels._generated import DagRun, DagRunState, DagRunType, TIRunContext
from airflow.sdk.execution_time import task_runner
from airflow.serialization.serialized_objects import DagSerialization

from embedded.mail import ALERT_RECIPIENT, MailServer, body_text, mail_server
from embedded.stack import REPO
from privacy_pipeline_airflow import notifications, pod_failures
from privacy_pipeline_airflow.local_runtime import PodFailed
from privacy_pipeline_airflow.settings import PipelineSettings, get_settings

ALERTS = PipelineSettings(alert_email_to=ALERT_RECIPIENT)


@pytest.fixture()
def mail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MailServer]:
    with mail_server(tmp_path / "mail") as server:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", server.airflow_connection())
        yield server


def run_try(task: Any, try_number: int, *, max_tries: int) -> task_runner.TaskInstanceState:
    """One try of ``task`` as a worker runs it, the server allowing a retry while tries are left."""
    now = datetime.now(UTC)
    dag_run = DagRun(
        dag_id=task.dag_id,
        run_id="manual__alerts",
        logical_date=now,
        data_interval_start=now,
        data_interval_end=now,
        run_after=now,
        start_date=now,
        end_date=None,
        run_type=DagRunType.MANUAL,
        state=DagRunState.RUNNING,
        conf={},
        consumed_asset_events=[],
        partition_key=None,
    )
    ti = task_runner.RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(),
        task_id=task.task_id,
        dag_id=task.dag_id,
        run_id=dag_run.run_id,
        try_number=try_number,
        map_index=-1,
        task=task,
        start_date=now,
        max_tries=max_tries,
        # The API server's answer: retry while try_number <= max_tries.
        _ti_context_from_server=TIRunContext(
            dag_run=dag_run, max_tries=max_tries, should_retry=try_number <= max_tries
        ),
        bundle_instance=mock.MagicMock(),
        dag_version_id=uuid.uuid4(),
    )
    log = structlog.get_logger()
    # The supervisor's side of the pipe (state reports, XCom pushes) is not under test.
    with mock.patch.object(task_runner, "SUPERVISOR_COMMS", create=True):
        context = ti.get_template_context()
        state, _, error = task_runner.run(ti, context, log)
        context["exception"] = error
        task_runner.finalize(ti, state, context, log, error)
    return state


def alerting_task(dag_id: str, python_callable: Any, retries: int) -> PythonOperator:
    """A task of a DAG whose default_args are what every DAG file here gets."""
    with DAG(
        dag_id,
        schedule=None,
        default_args={"retries": retries, "on_failure_callback": notifications.failure_notifiers(ALERTS)},
    ):
        return PythonOperator(task_id="stage", python_callable=python_callable)


def test_a_retry_that_then_succeeds_sends_no_mail(mail: MailServer) -> None:
    def fails_once(ti: Any) -> str:
        if ti.try_number == 1:
            raise PodFailed("privacy-train-x", 137, "OOMKilled", "used more than the memory limit")
        return "trained"

    task = alerting_task("alerts_retry", fails_once, retries=1)

    assert run_try(task, 1, max_tries=1) == "up_for_retry"
    assert run_try(task, 2, max_tries=1) == "success"
    assert mail.messages() == []


def test_a_task_that_fails_for_good_sends_one_mail_with_dag_task_run_try_reason_and_log(mail: MailServer) -> None:
    def killed(ti: Any) -> None:
        raise PodFailed("privacy-train-x", 137, "OOMKilled", "OOMKilled: used more than the memory limit of 2Gi")

    task = alerting_task("alerts_final", killed, retries=1)

    assert run_try(task, 1, max_tries=1) == "up_for_retry"
    assert mail.messages() == []
    assert run_try(task, 2, max_tries=1) == "failed"

    [message] = mail.messages()
    assert message["To"] == ALERT_RECIPIENT
    assert message["Subject"] == ("[privacy-intent] alerts_final.stage failed: OOMKilled (run manual__alerts, try 2)")
    body = body_text(message)
    for shown in ("alerts_final", "manual__alerts", "OOMKilled: used more than the memory limit of 2Gi"):
        assert shown in body
    assert "/dags/alerts_final/runs/manual__alerts/tasks/stage?try_number=2" in body


def test_the_reason_comes_from_the_runs_pod_failure_record_when_the_exception_has_none(tmp_path: Path) -> None:
    run_uri = str(tmp_path / "runs" / "r1")
    failure = pod_failures.PodFailure(
        try_number=3, reason="Evicted", message="node low on memory", memory_limit="2Gi", at=""
    )
    pod_failures.record_failure(run_uri, "featurize", -1, failure, "google_cloud_default")
    task = mock.Mock(arguments=["featurize", "--run", run_uri])
    ti = mock.Mock(task_id="featurize", map_index=-1, try_number=3)

    found = notifications.failure_reason({"task": task, "ti": ti, "exception": RuntimeError("Pod returned a failure")})
    unrecorded_try = notifications.failure_reason(
        {"task": task, "ti": mock.Mock(task_id="featurize", map_index=-1, try_number=4), "exception": KeyError("x")}
    )

    assert found == {"reason": "Evicted", "message": "node low on memory"}
    assert unrecorded_try == {"reason": "KeyError", "message": "'x'"}


@pytest.fixture()
def alerting_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[PipelineSettings]:
    """DAG files parsed with alerts configured, as PIPELINE_ALERT_EMAIL_TO does in a deployment."""
    monkeypatch.setenv("PIPELINE_ALERT_EMAIL_TO", ALERT_RECIPIENT)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_every_task_of_every_dag_mails_on_final_failure_and_never_on_retry(alerting_settings) -> None:
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert len(bag.dags) >= 4
    for dag in bag.dags.values():
        for task in dag.tasks:
            assert any(isinstance(cb, notifications.StageFailureMail) for cb in task.on_failure_callback), (
                f"{dag.dag_id}.{task.task_id} sends no failure mail"
            )
            assert not task.on_retry_callback, f"{dag.dag_id}.{task.task_id} would alert on a retry"


def test_training_carries_a_deadline_on_its_logical_date_that_serializes(alerting_settings) -> None:
    bag = DagBag(dag_folder=str(REPO / "dags"))
    training = bag.dags["privacy_intent_training"]
    [deadline] = training.deadline if isinstance(training.deadline, list) else [training.deadline]

    assert deadline.reference == DeadlineReference.DAGRUN_LOGICAL_DATE
    assert deadline.interval.total_seconds() == alerting_settings.training_deadline_minutes * 60
    assert deadline.callback.path == "privacy_pipeline_airflow.notifications.training_deadline_missed"
    assert deadline.callback.kwargs["to"] == ALERT_RECIPIENT
    # What the scheduler stores and the triggerer runs from.
    assert "deadline" in json.dumps(DagSerialization.to_dict(training)["dag"])


def test_no_alert_setting_means_no_notifier_and_no_deadline() -> None:
    quiet = PipelineSettings(alert_email_to="", slack_conn_id="")
    assert notifications.failure_notifiers(quiet) == []
    assert notifications.deadline_alert(quiet) is None


def deadline_context(run_type: str) -> dict[str, Any]:
    # The context the scheduler hands the triggerer (models/deadline.py's get_simple_context).
    return {
        "dag_run": {
            "dag_id": "privacy_intent_training",
            "run_id": f"{run_type}__2026-11-20T02:00:00+00:00",
            "run_type": run_type,
            "state": "running",
            "logical_date": "2026-11-20T02:00:00Z",
        },
        "deadline": {"id": "d1", "deadline_time": "2026-11-20T06:00:00+00:00"},
    }


@pytest.mark.parametrize("run_type,mails", [("scheduled", 1), ("backfill", 0), ("manual", 0)])
def test_a_missed_deadline_mails_for_scheduled_runs_only(mail: MailServer, run_type: str, mails: int) -> None:
    asyncio.run(
        notifications.training_deadline_missed(
            deadline_context(run_type), to=ALERT_RECIPIENT, smtp_conn_id="smtp_default"
        )
    )

    messages = mail.messages()
    assert len(messages) == mails
    if mails:
        assert messages[0]["Subject"] == (
            "[privacy-intent] privacy_intent_training run scheduled__2026-11-20T02:00:00+00:00 "
            "has not finished by 2026-11-20T06:00:00+00:00"
        )
        assert "wait_for_data" in body_text(messages[0])


class _SlackApi(BaseHTTPRequestHandler):
    """Slack's Web API as far as chat.postMessage goes; remembers each posted message."""

    posted: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.posted.append({"path": self.path, "auth": self.headers["Authorization"], **json.loads(body)})
        reply = json.dumps({"ok": True, "channel": "C1", "ts": "1.0"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


def test_slack_is_an_option_set_by_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    server = HTTPServer(("127.0.0.1", 0), _SlackApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _SlackApi.posted = []
    try:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SLACK_ALERTS",
            json.dumps(
                {
                    "conn_type": "slack",
                    "password": "xoxb-test-token",
                    "extra": {"base_url": f"http://127.0.0.1:{server.server_port}/api/"},
                }
            ),
        )
        settings = PipelineSettings(slack_conn_id="slack_alerts", slack_channel="#ml-alerts")

        def evicted(ti: Any) -> None:
            raise PodFailed("privacy-tune-x", 1, "Evicted", "The node was low on resource: memory")

        with DAG("alerts_slack", schedule=None, default_args={"retries": 0}):
            tune = PythonOperator(
                task_id="tune",
                python_callable=evicted,
                on_failure_callback=notifications.failure_notifiers(settings),
            )
        assert run_try(tune, 1, max_tries=0) == "failed"
    finally:
        server.shutdown()

    [posted] = _SlackApi.posted
    assert posted["path"] == "/api/chat.postMessage"
    assert posted["auth"] == "Bearer xoxb-test-token"
    assert posted["channel"] == "#ml-alerts"
    assert "alerts_slack.tune" in posted["text"] and "Evicted" in posted["text"]


def test_a_failure_decided_outside_the_task_is_named_as_such() -> None:
    # The dag-processor runs the callback of a deferral timeout or a lost heartbeat with no exception in the context.
    ti = mock.Mock(task_id="wait_for_data", map_index=-1, try_number=1)
    assert (
        notifications.failure_reason({"task": mock.Mock(arguments=None), "ti": ti})["reason"] == "timed out or killed"
    )
