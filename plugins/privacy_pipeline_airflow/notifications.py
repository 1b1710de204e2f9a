"""Alerts people receive: one message per task that failed for good, and training's deadline alert.

Built on Airflow's own notifiers: the SMTP provider's ``SmtpNotifier`` (to
``PIPELINE_ALERT_EMAIL_TO`` through the ``smtp_default`` connection) and, when
``PIPELINE_SLACK_CONN_ID`` names a Slack API connection, the Slack provider's
``SlackNotifier``. They go into every DAG's ``default_args`` as
``on_failure_callback``. Airflow runs that callback only when a task fails for
good: a try that will be retried runs ``on_retry_callback`` instead, which stays
empty, so a retry that then succeeds sends nothing.

Each message names the DAG, task (and map index), run, try, why the stage pod
died (``OOMKilled``, ``Evicted``, ``DeadlineExceeded``, or ``Error`` with the
stage's one-line reason) and the task log's URL. The reason comes from the
exception the operator raised, else from the run's ``_pod_failures`` record
(pod_failures.py), else the exception's first line.

The training DAG also carries a deadline alert (``deadline_alert``): a
scheduled run not finished ``PIPELINE_TRAINING_DEADLINE_MINUTES`` after its
logical date (02:00 UTC) mails the same people, from the triggerer.
"""

from __future__ import annotations

import importlib
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

from privacy_pipeline_airflow.settings import PipelineSettings, get_settings

if TYPE_CHECKING:
    from privacy_pipeline_airflow.pod_failures import PodFailure

log = logging.getLogger(__name__)

FAILURE_SUBJECT = (
    "[privacy-intent] {{ ti.dag_id }}.{{ ti.task_id }}"
    "{% if ti.map_index is not none and ti.map_index >= 0 %}[{{ ti.map_index }}]{% endif %} failed: "
    "{{ failure.reason }} (run {{ ti.run_id }}, try {{ ti.try_number }})"
)
FAILURE_BODY = """<p>Task <b>{{ ti.task_id }}</b>{% if ti.map_index is not none and ti.map_index >= 0 %}
(map index {{ ti.map_index }}){% endif %} of DAG <b>{{ ti.dag_id }}</b> failed for good.</p>
<table>
<tr><th align="left">DAG</th><td>{{ ti.dag_id }}</td></tr>
<tr><th align="left">task</th><td>{{ ti.task_id }}</td></tr>
<tr><th align="left">run</th><td>{{ ti.run_id }}</td></tr>
<tr><th align="left">try</th><td>{{ ti.try_number }}</td></tr>
<tr><th align="left">reason</th><td>{{ failure.reason | e }}</td></tr>
<tr><th align="left">message</th><td>{{ failure.message | e }}</td></tr>
<tr><th align="left">log</th><td><a href="{{ ti.log_url }}">{{ ti.log_url }}</a></td></tr>
</table>
<p>Clear the task in the UI to rerun it: every stage replaces its own outputs under the run's prefix.</p>
"""
FAILURE_SLACK_TEXT = (
    ":red_circle: *{{ ti.dag_id }}.{{ ti.task_id }}* failed: *{{ failure.reason }}* {{ failure.message }}\n"
    "run `{{ ti.run_id }}`, try {{ ti.try_number }} <{{ ti.log_url }}|task log>"
)
DEADLINE_SUBJECT = (
    "[privacy-intent] {{ dag_run.dag_id }} run {{ dag_run.run_id }} has not finished by {{ deadline.deadline_time }}"
)
DEADLINE_BODY = """<p>The scheduled run <b>{{ dag_run.run_id }}</b> of <b>{{ dag_run.dag_id }}</b>
(logical date {{ dag_run.logical_date }}) was still <b>{{ dag_run.state }}</b> at its deadline,
{{ deadline.deadline_time }}.</p>
<p>Look at its tasks in the UI: <code>wait_for_data</code> still waiting means the day's data has not arrived.</p>
"""


def failure_reason(context: Any) -> dict[str, str]:
    """``{"reason", "message"}``: why the failed task's pod died, as precisely as the context tells."""
    exception = context.get("exception")
    reason = getattr(exception, "reason", None)
    if isinstance(reason, str) and reason:
        # The local runtimes raise PodFailed with Kubernetes' reason and the stage's one-line message.
        return {"reason": reason, "message": str(getattr(exception, "message", "") or exception)}
    recorded = _recorded_failure(context)
    if recorded is not None:
        return {"reason": recorded.reason, "message": recorded.message}
    if exception is None:
        # Failures decided outside the task's process reach the callback (run by the dag-processor) without one.
        return {
            "reason": "timed out or killed",
            "message": "no exception reached the callback: the task was failed outside its own process "
            "(a deferral timeout on the triggerer, a lost heartbeat); its log says which",
        }
    first_line = (str(exception).splitlines() or [""])[0]
    return {"reason": type(exception).__name__, "message": first_line[:500]}


def _recorded_failure(context: Any) -> PodFailure | None:
    """What StagePodOperator recorded for this try in ``<run>/_pod_failures/``, if it is a stage pod."""
    # Imported when a task fails, not when a DAG file is parsed: pod_failures loads the Kubernetes client,
    # which every DAG file that sets this callback would otherwise pay for on each parse.
    from privacy_pipeline_airflow import pod_failures

    task, ti = context.get("task"), context.get("ti")
    run_uri = pod_failures.run_uri_of(getattr(task, "arguments", None))
    if run_uri is None or ti is None:
        return None
    map_index = ti.map_index if ti.map_index is not None else -1
    try:
        failures = pod_failures.previous_failures(run_uri, ti.task_id, map_index, get_settings().gcp_conn_id)
    except Exception:  # an alert without the recorded reason beats no alert
        log.warning("Could not read the pod failure record under %s", run_uri, exc_info=True)
        return None
    this_try = [failure for failure in failures if failure.try_number == ti.try_number]
    return this_try[-1] if this_try else None


class _NamesTheFailure:
    """A provider's notifier, made when a task fails: puts ``failure`` (reason, message) into the context first.

    A DAG file holds only the notifier's arguments: the provider's module (the
    SMTP one loads aiosmtplib and the email package) is imported when a failure
    is sent, not on every parse of every DAG file. Rendering replaces a
    notifier's template fields with their values, and one instance of this
    serves every task of a DAG (default_args), so each failure renders a
    notifier of its own.
    """

    # "module.Class" of the provider's notifier.
    notifier: ClassVar[str]

    def __init__(self, **notifier_kwargs: Any) -> None:
        self.notifier_kwargs = notifier_kwargs

    def __call__(self, *args: Any) -> None:
        if len(args) == 1:
            args[0]["failure"] = failure_reason(args[0])
        module, _, name = self.notifier.rpartition(".")
        notifier = getattr(importlib.import_module(module), name)(**self.notifier_kwargs)
        notifier(*args)


class StageFailureMail(_NamesTheFailure):
    """The SMTP provider's notifier with the failure's reason in its context."""

    notifier = "airflow.providers.smtp.notifications.smtp.SmtpNotifier"


class StageFailureSlack(_NamesTheFailure):
    """The Slack provider's notifier with the failure's reason in its context."""

    notifier = "airflow.providers.slack.notifications.slack.SlackNotifier"


def failure_notifiers(settings: PipelineSettings | None = None) -> list[Any]:
    """The ``on_failure_callback`` list for a DAG's default_args: mail, and Slack when configured."""
    settings = settings or get_settings()
    notifiers: list[Any] = []
    if settings.alert_email_to:
        notifiers.append(
            StageFailureMail(
                to=settings.alert_email_to,
                subject=FAILURE_SUBJECT,
                html_content=FAILURE_BODY,
                smtp_conn_id=settings.smtp_conn_id,
            )
        )
    if settings.slack_conn_id:
        notifiers.append(
            StageFailureSlack(
                slack_conn_id=settings.slack_conn_id, channel=settings.slack_channel, text=FAILURE_SLACK_TEXT
            )
        )
    return notifiers


def deadline_alert(settings: PipelineSettings | None = None) -> DeadlineAlert | None:
    """Training's deadline: alert when a run is unfinished this long after its logical date (None: nobody to tell)."""
    settings = settings or get_settings()
    if not settings.alert_email_to and not settings.slack_conn_id:
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
        interval=timedelta(minutes=settings.training_deadline_minutes),
        callback=AsyncCallback(
            training_deadline_missed,
            kwargs={
                "to": settings.alert_email_to,
                "smtp_conn_id": settings.smtp_conn_id,
                "slack_conn_id": settings.slack_conn_id,
                "slack_channel": settings.slack_channel,
            },
        ),
    )


async def training_deadline_missed(
    context: dict[str, Any], to: str, smtp_conn_id: str, slack_conn_id: str = "", slack_channel: str = ""
) -> None:
    """Run by the triggerer when a training run misses its deadline; tells people about scheduled runs only.

    A backfill of past dates or a manual run with an old logical date misses
    the deadline the moment it is created: nobody is waiting for those by 06:00.
    """
    run_type = context.get("dag_run", {}).get("run_type")
    if run_type != "scheduled":
        log.info("Deadline missed by a %s run; alerts are for scheduled runs only", run_type)
        return
    if to:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        await SmtpNotifier(
            to=to, subject=DEADLINE_SUBJECT, html_content=DEADLINE_BODY, smtp_conn_id=smtp_conn_id, context=context
        )
    if slack_conn_id:
        from airflow.providers.slack.notifications.slack import SlackNotifier

        await SlackNotifier(
            slack_conn_id=slack_conn_id,
            channel=slack_channel,
            text=":alarm_clock: " + DEADLINE_SUBJECT.removeprefix("[privacy-intent] "),
            context=context,
        )
