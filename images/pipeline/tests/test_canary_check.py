"""canary_check: the decision rule, the Prometheus queries and answers, and the stage around them.

The shadow comparison on real local servers needs the serving environment:
test_serving_canary.py runs it end to end. Here the cluster path runs against
a fake Prometheus (canned answers per query) on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from modeling_runs import commit
from rollout_runs import CANDIDATE, CHAMPION, promoted, registered

from privacy_pipeline import registry, storage
from privacy_pipeline.config import RolloutConfig, load_config
from privacy_pipeline.errors import StageError
from privacy_pipeline.stages import canary_check, deploy, rollback
from privacy_pipeline.stages.canary_check import CanaryEvidence, VersionEvidence, decide

ROLLOUT = RolloutConfig(
    min_requests=50, max_error_rate_increase=0.01, max_p99_ratio=2.0, p99_slack_seconds=0.25, min_agreement=0.8
)


def _evidence(**changes: Any) -> CanaryEvidence:
    """Evidence on which every check passes; ``changes`` replace canary (c_*) or previous (p_*) fields."""
    canary = VersionEvidence(CANDIDATE, 200, 0, 0.040)
    previous = VersionEvidence(CHAMPION, 200, 0, 0.035)
    canary = replace(canary, **{k[2:]: v for k, v in changes.items() if k.startswith("c_")})
    previous = replace(previous, **{k[2:]: v for k, v in changes.items() if k.startswith("p_")})
    return CanaryEvidence(canary, previous, changes.get("agreement", 0.95), "test")


# --- decide -------------------------------------------------------------------------------------------------------


def test_a_canary_that_passes_every_check_is_promoted() -> None:
    decision = decide(_evidence(), ROLLOUT)

    assert decision.promote
    assert decision.reason.startswith("promoted to all traffic: 200 requests each way")
    assert "agreement 0.950" in decision.reason


@pytest.mark.parametrize(
    "changes,why",
    [
        ({"c_errors": 5}, "error rate 0.025 against 0.000 (at most +0.010 allowed)"),
        ({"c_p99_seconds": 0.400}, "p99 latency 0.400 s against 0.035 s (at most 0.285 s allowed)"),
        ({"agreement": 0.3}, "the versions agree on 30.0% of predictions (at least 80% needed)"),
        ({"c_requests": 20, "c_errors": 0}, "only 20 requests reached the canary (at least 50 needed)"),
        ({"agreement": None}, "no message was answered by both versions"),
        ({"c_errors": 200, "c_p99_seconds": None}, "no canary request succeeded"),
        ({"c_ready": False, "c_not_ready_reason": "exit 2"}, f"canary {CANDIDATE} never became ready (exit 2)"),
    ],
    ids=["errors", "p99", "agreement", "too-little-traffic", "no-agreement", "nothing-succeeded", "not-ready"],
)
def test_a_canary_failing_any_check_is_rolled_back_saying_which(changes: dict[str, Any], why: str) -> None:
    decision = decide(_evidence(**changes), ROLLOUT)

    assert not decision.promote
    assert decision.reason.startswith("rolled back: ") and why in decision.reason


def test_the_thresholds_are_inclusive_and_relative_to_the_previous_version() -> None:
    # As many errors as the previous version plus the allowance, at exactly twice its p99 and 80% agreement.
    at_the_limits = _evidence(c_errors=12, p_errors=10, c_p99_seconds=1.0, p_p99_seconds=0.5, agreement=0.8)

    assert decide(at_the_limits, ROLLOUT).promote
    assert not decide(replace(at_the_limits, agreement=0.79), ROLLOUT).promote


def test_a_fast_p99_is_judged_with_the_slack_not_only_the_ratio() -> None:
    # 0.02 s against 0.005 s is four times slower but 15 ms: scheduler noise, within the 0.25 s slack.
    assert decide(_evidence(c_p99_seconds=0.020, p_p99_seconds=0.005), ROLLOUT).promote


# --- Prometheus ---------------------------------------------------------------------------------------------------


def test_the_queries_select_one_versions_series_over_the_window() -> None:
    queries = canary_check.prometheus_queries(CANDIDATE, ROLLOUT, 600)

    selector = f'model_version="{CANDIDATE}"'
    assert queries.requests == f"sum(increase(privacy_intent_serving_requests_total{{{selector}}}[600s]))"
    assert queries.errors == (
        f'sum(increase(privacy_intent_serving_requests_total{{{selector},outcome="server_error"}}[600s]))'
    )
    assert queries.p99_seconds == (
        "histogram_quantile(0.99, sum by (le) "
        f'(rate(privacy_intent_serving_request_seconds_bucket{{{selector},outcome="ok"}}[600s])))'
    )
    assert queries.predictions_by_intent == (
        f"sum by (intent) (increase(privacy_intent_serving_predictions_total{{{selector}}}[600s]))"
    )


def test_a_version_name_that_could_break_out_of_the_selector_is_refused() -> None:
    with pytest.raises(StageError, match="not a registered model version name"):
        canary_check.prometheus_queries('x"} or vector(1) #', ROLLOUT, 600)


def test_the_metric_names_are_the_servers() -> None:
    metrics = pytest.importorskip("privacy_pipeline.serving.metrics")

    assert metrics.REQUESTS._name + "_total" == canary_check.REQUESTS_METRIC
    assert metrics.REQUEST_SECONDS._name == canary_check.REQUEST_SECONDS_METRIC
    assert metrics.PREDICTIONS._name + "_total" == canary_check.PREDICTIONS_METRIC
    assert metrics.outcome(503) == canary_check.SERVER_ERROR


def test_answers_are_read_as_numbers_and_nan_is_left_out() -> None:
    answer = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"intent": "data_access"}, "value": [1, "3"]},
                {"metric": {"intent": "opt_out"}, "value": [1, "NaN"]},
            ],
        },
    }

    assert canary_check.vector_values(answer, label="intent") == {"data_access": 3.0}
    with pytest.raises(StageError, match="Prometheus answered bad_data: parse error"):
        canary_check.vector_values({"status": "error", "errorType": "bad_data", "error": "parse error"})


def test_distribution_overlap_is_one_minus_the_total_variation_distance() -> None:
    assert canary_check.distribution_overlap({"a": 50, "b": 50}, {"a": 5, "b": 5}) == pytest.approx(1.0)
    assert canary_check.distribution_overlap({"a": 90, "b": 10}, {"a": 10, "b": 90}) == pytest.approx(0.2)
    assert canary_check.distribution_overlap({"a": 1}, {}) is None


class _FakePrometheus(BaseHTTPRequestHandler):
    """Answers /api/v1/query from ``answers``: one metric name (+ version) -> its instant vector."""

    answers: dict[str, list[dict[str, Any]]] = {}

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
        key = next(k for k in self.answers if all(part in query for part in k.split("|")))
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": self.answers[key]}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode("utf-8"))

    def log_message(self, *args: Any) -> None:
        pass


def _vector(value: float, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [0, str(value)]}


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def _serving_metrics(version: str, requests: int, errors: int, p99: float, intents: dict[str, int]) -> dict:
    return {
        f'{version}|outcome="server_error"': [_vector(errors)],
        f"{version}|histogram_quantile": [_vector(p99)],
        f"{version}|sum by (intent)": [_vector(count, intent=intent) for intent, count in intents.items()],
        f"{version}|requests_total": [_vector(requests)],
    }


@pytest.fixture
def canary_run(tmp_path: Path) -> tuple[str, str]:
    """A run whose version was promoted over the champion and rolled out as a canary an hour ago."""
    registry_uri, run_uri = str(tmp_path / "registry"), str(tmp_path / "run")
    registered(registry_uri, CHAMPION)
    registered(registry_uri, CANDIDATE)
    promoted(registry_uri, str(tmp_path / "first"), CHAMPION)
    promoted(registry_uri, run_uri, CANDIDATE)
    deployed = commit(deploy.run(config=load_config(), run_uri=run_uri, registry_uri=registry_uri))
    an_hour_ago = registry.timestamp(datetime.now(UTC) - timedelta(hours=1))
    storage.write_json(deployed.commit_uri, {**deployed.payload(), "applied_at": an_hour_ago})
    return registry_uri, run_uri


def test_in_the_cluster_a_canary_with_more_errors_is_rolled_back_from_prometheus(
    prometheus: str, canary_run: tuple[str, str]
) -> None:
    registry_uri, run_uri = canary_run
    _FakePrometheus.answers = {
        **_serving_metrics(CANDIDATE, 400, 40, 0.05, {"data_access": 40, "no_privacy_intent": 360}),
        **_serving_metrics(CHAMPION, 3600, 3, 0.05, {"data_access": 350, "no_privacy_intent": 3250}),
    }
    config = load_config(None, [f"rollout.prometheus_url={prometheus}"])

    result = canary_check.run(config=config, run_uri=run_uri, registry_uri=registry_uri)

    assert result.xcom["decision"] == "rollback" and result.xcom["rolled_back"] is True
    assert "error rate 0.100 against 0.001" in result.xcom["reason"]
    assert result.xcom["agreement"] == pytest.approx(350 / 3600 + 0.9)
    champion = registry.champion(registry_uri)
    assert champion is not None and champion["version"] == CHAMPION
    assert (champion["by"], champion["reason"]) == ("canary_check", result.xcom["reason"])
    assert registry.read_run_record(registry_uri, CANDIDATE)["canary"]["decision"] == "rollback"


def test_in_the_cluster_a_healthy_canary_is_promoted_to_all_traffic(
    prometheus: str, canary_run: tuple[str, str]
) -> None:
    registry_uri, run_uri = canary_run
    intents = {"data_access": 40, "no_privacy_intent": 360}
    _FakePrometheus.answers = {
        **_serving_metrics(CANDIDATE, 400, 0, 0.05, intents),
        **_serving_metrics(CHAMPION, 3600, 1, 0.05, {k: 9 * v for k, v in intents.items()}),
    }
    config = load_config(None, [f"rollout.prometheus_url={prometheus}"])

    result = canary_check.run(config=config, run_uri=run_uri, registry_uri=registry_uri)

    assert result.xcom["decision"] == "promote" and result.xcom["champion_version"] == CANDIDATE
    predictor = yaml.safe_load(storage.read_bytes(result.xcom["manifest_uri"]))["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor and predictor["model"]["args"] == ["--version", CANDIDATE]
    assert registry.champion(registry_uri)["version"] == CANDIDATE


def test_a_canary_replaced_by_a_newer_champion_is_not_judged(canary_run: tuple[str, str], tmp_path: Path) -> None:
    registry_uri, run_uri = canary_run
    newer = "20261122T020000Z-cccccccc"
    registered(registry_uri, newer)
    promoted(registry_uri, str(tmp_path / "newer"), newer)

    result = canary_check.run(config=load_config(), run_uri=run_uri, registry_uri=registry_uri)

    assert result.xcom["checked"] is False and f"the champion is now {newer}" in result.xcom["reason"]
    assert registry.champion(registry_uri)["version"] == newer


def test_without_a_canary_there_is_nothing_to_judge(tmp_path: Path) -> None:
    registry_uri, run_uri = str(tmp_path / "registry"), str(tmp_path / "run")
    registered(registry_uri, CHAMPION)
    promoted(registry_uri, run_uri, CHAMPION)
    commit(deploy.run(config=load_config(), run_uri=run_uri, registry_uri=registry_uri))

    result = canary_check.run(config=load_config(), run_uri=run_uri, registry_uri=registry_uri)

    assert result.xcom["checked"] is False
    assert result.xcom["reason"].startswith(f"no canary: {CHAMPION} is the first champion")


def test_the_rollback_moves_nothing_once_another_version_replaced_the_canary(tmp_path: Path) -> None:
    # Between canary_check's judging and its rollback another run may promote: that champion must stay.
    registry_uri = str(tmp_path / "registry")
    newer = "20261122T020000Z-cccccccc"
    for version in (CHAMPION, CANDIDATE, newer):
        registered(registry_uri, version)
        promoted(registry_uri, str(tmp_path / version), version)

    result = rollback.run(
        config=load_config(), registry_uri=registry_uri, to=CHAMPION, by="canary_check", expected_champion=CANDIDATE
    )

    assert result.xcom["moved"] is False and f"the champion is now {newer}" in result.xcom["note"]
    assert registry.champion(registry_uri)["version"] == newer
