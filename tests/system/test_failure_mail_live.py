"""A stage that fails in the running Airflow sends exactly one mail, naming the task and why its pod died.

The session's Airflow (conftest.py) sends its alerts to the SMTP server that
embedded/services.py starts beside it on 127.0.0.1. Retries are off here
(PIPELINE_RETRIES=0); that a retry which then succeeds sends no mail is
tests/plugins/test_notifications.py's, through the task runner's own retry path.
"""

from __future__ import annotations

import time

from live_airflow import TRAINING, wait_for_run

from embedded.mail import ALERT_RECIPIENT, body_text
from embedded.services import RunningAirflow

MAIL_TIMEOUT = 60
# After the first mail, how long a second one (a duplicate) would have to arrive.
DUPLICATE_WINDOW = 10


def mails_about(airflow: RunningAirflow, run_id: str) -> list:
    return [message for message in airflow.mail.messages() if run_id in str(message["Subject"])]


def test_a_failing_stage_sends_one_mail_naming_the_task_and_the_reason(airflow, started_runs) -> None:
    # A CSV without the label column (conftest.started_runs): ingest refuses it with a one-line reason, in seconds.
    run_id = started_runs.unlabelled
    assert wait_for_run(airflow, TRAINING, run_id) == "failed"

    # The task's state is reported before its failure callback runs: the mail may come a little later.
    deadline = time.monotonic() + MAIL_TIMEOUT
    while not mails_about(airflow, run_id) and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(DUPLICATE_WINDOW)
    messages = mails_about(airflow, run_id)

    assert len(messages) == 1, [str(message["Subject"]) for message in messages]
    [message] = messages
    assert message["To"] == ALERT_RECIPIENT
    assert str(message["Subject"]) == f"[privacy-intent] {TRAINING}.ingest failed: Error (run {run_id}, try 1)"
    body = body_text(message)
    assert "has no &#39;label&#39; column (columns: message, channel)" in body
    assert f"{airflow.url}/dags/{TRAINING}/runs/" in body
