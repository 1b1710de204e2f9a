"""telemetry.py: a stage's XCom figures as Prometheus gauges, pushed through the CLI to a real Pushgateway.

The Pushgateway is Debian's ``prometheus-pushgateway`` (``make monitoring``),
started by embedded/monitoring.py on a free 127.0.0.1 port.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from embedded.monitoring import running_pushgateway
from embedded.stack import free_port
from privacy_pipeline import cli, telemetry
from privacy_pipeline.stage_result import StageResult

TRAINING = {"PIPELINE_DAG_ID": "privacy_intent_training", "PIPELINE_RUN_ID": "scheduled__2026-12-01T02:00:00+00:00"}


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float | None:
    matches = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(matches) <= 1, f"{name}{labels} matches {len(matches)} series"
    return matches[0] if matches else None


def _pushed(url: str) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return _samples(response.read().decode())


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_pushgateway(tmp_path_factory.mktemp("pushgateway")) as url:
        yield url


@pytest.fixture
def task_env(monkeypatch: pytest.MonkeyPatch, pushgateway: str, tmp_path: Path) -> dict[str, str]:
    env = {**TRAINING, "PIPELINE_TASK_ID": f"synth_{tmp_path.name}", "PIPELINE_PUSHGATEWAY_URL": pushgateway}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XCOM_RETURN_PATH", str(tmp_path / "return.json"))
    return env


def test_xcom_figures_become_gauges_labelled_by_run() -> None:
    identity = telemetry.TaskIdentity(dag="privacy_intent_training", run="r1", task="register")
    register = {
        "model_version": "v-20261201",
        "promoted": True,
        "candidate_f1_macro": 0.91,
        "champion_f1_macro": 0.88,
        "f1_macro_difference": 0.03,
        "difference_interval": [0.01, 0.05],
        "decision_reason": "lead above margin",
        "compared_rows": None,
    }
    samples = _samples(generate_latest(telemetry.xcom_samples(identity, register).registry).decode())
    assert _value(samples, "privacy_pipeline_model_promoted", run="r1") == 1.0
    assert _value(samples, "privacy_pipeline_holdout_f1_macro", run="r1") == 0.91
    assert _value(samples, "privacy_pipeline_champion_f1_macro", run="r1") == 0.88
    assert _value(samples, "privacy_pipeline_f1_macro_lead_lower", run="r1") == 0.01
    assert _value(samples, "privacy_pipeline_f1_macro_lead_upper", run="r1") == 0.05
    # Strings, None and unlisted keys are not metrics.
    assert {name for name, _ in samples} == {
        "privacy_pipeline_model_promoted",
        "privacy_pipeline_holdout_f1_macro",
        "privacy_pipeline_champion_f1_macro",
        "privacy_pipeline_f1_macro_lead",
        "privacy_pipeline_f1_macro_lead_lower",
        "privacy_pipeline_f1_macro_lead_upper",
    }


def test_quarantine_figures_give_input_rows_and_reasons() -> None:
    identity = telemetry.TaskIdentity(dag="daily_conversations", run="r1", task="validate")
    validate = {"conversations": 470, "quarantined": 30, "reasons": {"empty_user_text": 20, "bad_day": 10}}
    samples = _samples(generate_latest(telemetry.xcom_samples(identity, validate).registry).decode())
    assert _value(samples, "privacy_pipeline_stage_output_rows") == 470
    assert _value(samples, "privacy_pipeline_stage_quarantined_rows") == 30
    assert _value(samples, "privacy_pipeline_stage_input_rows") == 500
    assert _value(samples, "privacy_pipeline_stage_quarantined_by_reason_rows", reason="empty_user_text") == 20
    assert _value(samples, "privacy_pipeline_stage_quarantined_by_reason_rows", reason="bad_day") == 10


def test_a_generic_xcom_key_is_pushed_without_code_of_its_own() -> None:
    identity = telemetry.TaskIdentity(dag="daily_conversations", run="r1", task="drift")
    samples = _samples(
        generate_latest(telemetry.xcom_samples(identity, {"drift_score": 0.61, "drifted": True}).registry).decode()
    )
    assert _value(samples, "privacy_pipeline_drift_score") == 0.61
    assert _value(samples, "privacy_pipeline_drifted") == 1.0


def test_each_mapped_task_has_a_group_of_its_own() -> None:
    env = {**TRAINING, "PIPELINE_TASK_ID": "tune"}
    assert telemetry.TaskIdentity.from_env("tune", {**env, "PIPELINE_MAP_INDEX": "2"}).task == "tune-2"
    assert telemetry.TaskIdentity.from_env("tune", {**env, "PIPELINE_MAP_INDEX": "-1"}).task == "tune"
    assert telemetry.TaskIdentity.from_env("synth", {}) is None


def test_the_cli_pushes_a_stage_s_figures_labelled_by_dag_stage_task_and_run(
    task_env: dict[str, str], tmp_path: Path
) -> None:
    assert cli.main(["synth", "--out", str(tmp_path / "messages.csv"), "--rows", "60"]) == 0
    pushed = _pushed(task_env["PIPELINE_PUSHGATEWAY_URL"])
    labels = {
        "job": "privacy_pipeline",
        "dag": "privacy_intent_training",
        "stage": "synth",
        "task": task_env["PIPELINE_TASK_ID"],
        "run": TRAINING["PIPELINE_RUN_ID"],
    }
    assert _value(pushed, "privacy_pipeline_stage_output_rows", **labels) == 60
    assert _value(pushed, "privacy_pipeline_stage_succeeded", **labels) == 1
    assert 0 < _value(pushed, "privacy_pipeline_stage_duration_seconds", **labels) < 600
    assert _value(pushed, "privacy_pipeline_stage_last_success_timestamp_seconds", **labels) > 1.7e9


def test_a_failed_stage_pushes_its_failure_and_keeps_the_last_good_run_s_figures(
    task_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, task = task_env["PIPELINE_PUSHGATEWAY_URL"], task_env["PIPELINE_TASK_ID"]
    assert cli.main(["synth", "--out", str(tmp_path / "messages.csv"), "--rows", "60"]) == 0
    monkeypatch.setenv("PIPELINE_RUN_ID", "scheduled__2026-12-02T02:00:00+00:00")
    assert cli.main(["synth", "--out", str(tmp_path / "messages.csv"), "--rows", "0"]) == cli.EXIT_STAGE_ERROR
    pushed = _pushed(url)
    failed = {"task": task, "run": "scheduled__2026-12-02T02:00:00+00:00"}
    assert _value(pushed, "privacy_pipeline_stage_succeeded", task=task) == 0
    assert _value(pushed, "privacy_pipeline_stage_last_failure_timestamp_seconds", **failed) > 1.7e9
    # The last good run's figures and success time are still there, under their own run.
    good = {"task": task, "run": TRAINING["PIPELINE_RUN_ID"]}
    assert _value(pushed, "privacy_pipeline_stage_output_rows", **good) == 60
    assert _value(pushed, "privacy_pipeline_stage_last_success_timestamp_seconds", **good) > 1.7e9
    # A later success replaces the whole group: no failure left behind.
    assert cli.main(["synth", "--out", str(tmp_path / "messages.csv"), "--rows", "40"]) == 0
    pushed = _pushed(url)
    assert _value(pushed, "privacy_pipeline_stage_succeeded", task=task) == 1
    assert _value(pushed, "privacy_pipeline_stage_last_failure_timestamp_seconds", task=task) is None
    assert _value(pushed, "privacy_pipeline_stage_output_rows", task=task) == 40


def test_an_unreachable_pushgateway_never_fails_the_stage(
    task_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PIPELINE_PUSHGATEWAY_URL", closed)
    with caplog.at_level(logging.WARNING, logger="privacy_pipeline.telemetry"):
        assert cli.main(["synth", "--out", str(tmp_path / "messages.csv"), "--rows", "30"]) == 0
    assert (tmp_path / "messages.csv").exists() and (tmp_path / "return.json").exists()
    assert [r.getMessage() for r in caplog.records if closed in r.getMessage()], caplog.text


def test_without_a_pushgateway_or_an_airflow_task_one_line_says_nothing_is_pushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("PIPELINE_PUSHGATEWAY_URL", "PIPELINE_DAG_ID"):
        monkeypatch.delenv(name, raising=False)
    result = StageResult(stage="synth", summary="synth: 1 row", xcom={"rows": 1})
    with caplog.at_level(logging.INFO, logger="privacy_pipeline.telemetry"):
        telemetry.push_stage_result("synth", result, 0.1)
        telemetry.push_stage_result("synth", result, 0.1, env={"PIPELINE_PUSHGATEWAY_URL": "http://127.0.0.1:1"})
    assert [r.getMessage() for r in caplog.records] == [
        "PIPELINE_PUSHGATEWAY_URL is not set: synth's metrics are not pushed",
        "PIPELINE_DAG_ID is not set (not an Airflow task): synth's metrics are not pushed",
    ]
