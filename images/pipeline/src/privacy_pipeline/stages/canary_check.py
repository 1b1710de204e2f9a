"""canary_check: judge the canary deploy rolled out against the previous version, then promote or roll back.

Three comparisons, thresholds in ``rollout``: the canary's error rate may
exceed the previous version's by at most ``max_error_rate_increase``; its p99
latency may exceed neither the previous p99 times ``max_p99_ratio`` nor it
plus ``p99_slack_seconds``; its predictions must agree with the previous
version's on at least ``min_agreement``; and it must have answered at least
``min_requests``. ``decide`` is that rule, a pure function of the evidence.

Where the evidence comes from:

- In the cluster (``rollout.prometheus_url`` set), the serving metrics of
  both versions' pods (told apart by their ``privacy-intent/model-version``
  label, which Prometheus's scrape config copies into
  ``rollout.prometheus_version_label``) over ``rollout.window_seconds`` after
  deploy applied the canary. Agreement there is the overlap of the two
  versions' predicted-intent distributions: they answer different requests.
- On the embedded default (no Prometheus), both versions run as real local
  model servers and the run's holdout texts are replayed to both, one message
  per request and alternating between them (a shadow comparison): errors are
  answers other than 200, p99 is over the requests' round trips, and agreement
  is per message.

Promote: the canary's InferenceService is rendered again without
``canaryTrafficPercent``, so it takes all traffic. Roll back: the registry's
champion goes back to the previous version through ``rollback`` (compare-and-
swap, history ``by: canary_check`` with the reason), only while the canary is
still champion, and the restored champion is rendered with all traffic. Either
way the canary's registry run record gets the decision and its reason.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from privacy_pipeline import registry, storage
from privacy_pipeline.config import PipelineConfig, RolloutConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.serving.contract import texts_to_request
from privacy_pipeline.serving.process import ServerNotReady, ServerProcess
from privacy_pipeline.stage_result import StageResult
from privacy_pipeline.stages import deploy, rollback

log = logging.getLogger(__name__)

STAGE = "canary_check"
# The interpreter the local servers run in: the model server has its own environment (kserve), which the
# embedded stack names here; unset, this one.
SERVING_PYTHON_ENV = "PIPELINE_SERVING_PYTHON"
# The serving metrics (serving/metrics.py; a test keeps the names in step).
REQUESTS_METRIC = "privacy_intent_serving_requests_total"
REQUEST_SECONDS_METRIC = "privacy_intent_serving_request_seconds"
PREDICTIONS_METRIC = "privacy_intent_serving_predictions_total"
SERVER_ERROR = "server_error"


@dataclass(frozen=True)
class VersionEvidence:
    """What one version did over the window: requests answered, errors among them, p99 latency."""

    version: str
    requests: int
    errors: int
    p99_seconds: float | None
    ready: bool = True
    not_ready_reason: str | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class CanaryEvidence:
    canary: VersionEvidence
    previous: VersionEvidence
    # Share of messages (shadow) or of predicted-intent mass (Prometheus) on which the two agree.
    agreement: float | None
    source: str


@dataclass(frozen=True)
class CanaryDecision:
    promote: bool
    reason: str


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f} s"


def _rate(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


def decide(evidence: CanaryEvidence, rollout: RolloutConfig) -> CanaryDecision:
    """Promote only when every check passes; otherwise roll back, naming each check that failed."""
    canary, previous = evidence.canary, evidence.previous
    if not canary.ready:
        return CanaryDecision(
            False, f"rolled back: canary {canary.version} never became ready ({canary.not_ready_reason})"
        )
    failures: list[str] = []
    if canary.requests < rollout.min_requests:
        failures.append(f"only {canary.requests} requests reached the canary (at least {rollout.min_requests} needed)")
    canary_rate, previous_rate = canary.error_rate, previous.error_rate or 0.0
    if canary_rate is not None and canary_rate > previous_rate + rollout.max_error_rate_increase:
        failures.append(
            f"error rate {canary_rate:.3f} against {previous_rate:.3f} "
            f"(at most +{rollout.max_error_rate_increase:.3f} allowed)"
        )
    if canary.requests and canary.p99_seconds is None:
        failures.append("no canary request succeeded, so it has no p99 latency")
    elif canary.p99_seconds is not None and previous.p99_seconds is not None:
        allowed = max(previous.p99_seconds * rollout.max_p99_ratio, previous.p99_seconds + rollout.p99_slack_seconds)
        if canary.p99_seconds > allowed:
            failures.append(
                f"p99 latency {_seconds(canary.p99_seconds)} against {_seconds(previous.p99_seconds)} "
                f"(at most {_seconds(allowed)} allowed)"
            )
    if evidence.agreement is None:
        failures.append("no message was answered by both versions, so their agreement is unknown")
    elif evidence.agreement < rollout.min_agreement:
        failures.append(
            f"the versions agree on {evidence.agreement:.1%} of predictions "
            f"(at least {rollout.min_agreement:.0%} needed)"
        )
    measured = (
        f"{canary.requests} requests each way ({evidence.source}); error rate {_rate(canary_rate)} vs "
        f"{_rate(previous.error_rate)}, p99 {_seconds(canary.p99_seconds)} vs {_seconds(previous.p99_seconds)}, "
        f"agreement {_rate(evidence.agreement)}"
    )
    if failures:
        return CanaryDecision(False, f"rolled back: {'; '.join(failures)} [{measured}]")
    return CanaryDecision(True, f"promoted to all traffic: {measured}")


# --- evidence on the embedded default: both versions as local servers ---------------------------------------------


def holdout_texts(run_uri: str, limit: int, seed: int) -> list[str] | None:
    """Up to ``limit`` of the run's holdout texts (a seeded sample, in holdout order); None without a text column."""
    holdout = pd.read_parquet(storage.open_bytes(RunLayout(run_uri).holdout_split))
    if "text" not in holdout.columns:
        return None
    texts = holdout["text"].astype(str).tolist()
    if len(texts) > limit:
        chosen = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
        texts = [texts[i] for i in chosen]
    return texts


def _classify(server: ServerProcess, text: str) -> tuple[str | None, float]:
    """One message to one server: its intent (None on any failure) and the round trip in seconds."""
    body = json.dumps(texts_to_request([text])).encode("utf-8")
    request = urllib.request.Request(
        server.infer_url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return None, time.perf_counter() - started
    seconds = time.perf_counter() - started
    intents = next((output["data"] for output in answer.get("outputs", []) if output.get("name") == "intent"), None)
    return (str(intents[0]) if intents else None), seconds


def p99(latencies: Sequence[float]) -> float | None:
    return float(np.percentile(latencies, 99)) if latencies else None


def shadow_evidence(
    registry_uri: str,
    canary_version: str,
    previous_version: str,
    texts: Sequence[str],
    rollout: RolloutConfig,
    log_dir: Path,
) -> CanaryEvidence:
    """Start both versions as local servers and replay ``texts`` to both, alternating, one message per request."""
    python = os.environ.get(SERVING_PYTHON_ENV) or sys.executable
    if not Path(python).is_file():
        raise StageError(
            f"{STAGE}: {SERVING_PYTHON_ENV}={python} does not exist (the model server's environment: make serving-env)"
        )
    servers = {
        version: ServerProcess(
            registry_uri,
            version=version,
            python=python,
            log_path=log_dir / f"serve-{version}.log",
            ready_timeout=rollout.server_ready_timeout_seconds,
        )
        for version in (canary_version, previous_version)
    }
    try:
        # Both load at once: the wait is the slower of the two, not their sum.
        for server in servers.values():
            server.start()
        not_ready: dict[str, str] = {}
        for version, server in servers.items():
            try:
                server.wait_ready()
            except ServerNotReady as exc:
                lines = [line for line in str(exc).splitlines() if line.strip()]
                not_ready[version] = lines[-1] if lines else str(exc)
        if previous_version in not_ready:
            raise StageError(
                f"{STAGE}: the previous version {previous_version} did not start as a local server, so there is "
                f"nothing to compare the canary with: {not_ready[previous_version]}"
            )
        if canary_version in not_ready:
            return CanaryEvidence(
                canary=VersionEvidence(
                    canary_version, 0, 0, None, ready=False, not_ready_reason=not_ready[canary_version]
                ),
                previous=VersionEvidence(previous_version, 0, 0, None),
                agreement=None,
                source="shadow replay of the run's holdout on local servers",
            )
        answers: dict[str, list[str | None]] = {version: [] for version in servers}
        latencies: dict[str, list[float]] = {version: [] for version in servers}
        for index, text in enumerate(texts):
            # Alternate who goes first, so neither version always meets the warmer cache.
            order = list(servers.items()) if index % 2 == 0 else list(reversed(servers.items()))
            for version, server in order:
                intent, seconds = _classify(server, text)
                answers[version].append(intent)
                if intent is not None:
                    latencies[version].append(seconds)
    finally:
        for server in servers.values():
            server.stop()
    both = [(c, p) for c, p in zip(answers[canary_version], answers[previous_version], strict=True) if c and p]
    agreement = sum(c == p for c, p in both) / len(both) if both else None

    def evidence(version: str) -> VersionEvidence:
        errors = sum(answer is None for answer in answers[version])
        return VersionEvidence(version, len(texts), errors, p99(latencies[version]))

    return CanaryEvidence(
        canary=evidence(canary_version),
        previous=evidence(previous_version),
        agreement=agreement,
        source="shadow replay of the run's holdout on local servers",
    )


# --- evidence in the cluster: the serving metrics in Prometheus ---------------------------------------------------


@dataclass(frozen=True)
class VersionQueries:
    requests: str
    errors: str
    p99_seconds: str
    predictions_by_intent: str


def prometheus_queries(version: str, rollout: RolloutConfig, window_seconds: int) -> VersionQueries:
    """The PromQL for one version's series over the window."""
    if not registry.VERSION_PATTERN.fullmatch(version):
        raise StageError(f"{STAGE}: {version!r} is not a registered model version name")
    label = rollout.prometheus_version_label
    selector = f'{label}="{version}"'
    window = f"{window_seconds}s"
    return VersionQueries(
        requests=f"sum(increase({REQUESTS_METRIC}{{{selector}}}[{window}]))",
        errors=f'sum(increase({REQUESTS_METRIC}{{{selector},outcome="{SERVER_ERROR}"}}[{window}]))',
        p99_seconds=(
            f"histogram_quantile(0.99, sum by (le) "
            f'(rate({REQUEST_SECONDS_METRIC}_bucket{{{selector},outcome="ok"}}[{window}])))'
        ),
        predictions_by_intent=f"sum by (intent) (increase({PREDICTIONS_METRIC}{{{selector}}}[{window}]))",
    )


def query_url(prometheus_url: str, query: str, at: float) -> str:
    return f"{prometheus_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})


def vector_values(response: dict[str, Any], label: str | None = None) -> dict[str, float]:
    """An instant-vector answer as {label value (or ''): number}; NaN (nothing to divide) is left out."""
    if response.get("status") != "success":
        raise StageError(f"{STAGE}: Prometheus answered {response.get('errorType')}: {response.get('error')}")
    data = response.get("data") or {}
    if data.get("resultType") != "vector":
        raise StageError(f"{STAGE}: Prometheus answered a {data.get('resultType')}, not an instant vector")
    values = {}
    for sample in data.get("result", []):
        number = float(sample["value"][1])
        if not math.isnan(number):
            values[(sample.get("metric") or {}).get(label, "") if label else ""] = number
    return values


def distribution_overlap(first: dict[str, float], second: dict[str, float]) -> float | None:
    """Sum over intents of the smaller of the two shares (1 - total variation distance); None if either is empty."""
    first_total, second_total = sum(first.values()), sum(second.values())
    if first_total <= 0 or second_total <= 0:
        return None
    return sum(
        min(first.get(k, 0.0) / first_total, second.get(k, 0.0) / second_total) for k in first.keys() | second.keys()
    )


def _prometheus(prometheus_url: str, query: str, at: float) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(query_url(prometheus_url, query, at), timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise StageError(f"{STAGE}: Prometheus at {prometheus_url} refused {query!r}: HTTP {error.code}") from error
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        raise StageError(f"{STAGE}: could not reach Prometheus at {prometheus_url}: {error}") from error
    if not isinstance(answer, dict):
        raise StageError(f"{STAGE}: Prometheus at {prometheus_url} answered something other than a JSON object")
    return answer


def prometheus_evidence(
    canary_version: str, previous_version: str, rollout: RolloutConfig, applied_at: datetime
) -> CanaryEvidence:
    """Wait out the window after the canary was applied, then read both versions' serving metrics over it."""
    judged_at = applied_at.timestamp() + rollout.window_seconds
    wait = judged_at - time.time()
    if wait > 0:
        log.info("%s: the canary takes traffic until %s; waiting %.0f s", STAGE, registry.timestamp(applied_at), wait)
        time.sleep(wait)

    def measured(version: str) -> tuple[VersionEvidence, dict[str, float]]:
        queries = prometheus_queries(version, rollout, rollout.window_seconds)
        url = rollout.prometheus_url
        requests = vector_values(_prometheus(url, queries.requests, judged_at)).get("", 0.0)
        errors = vector_values(_prometheus(url, queries.errors, judged_at)).get("", 0.0)
        p99_value = vector_values(_prometheus(url, queries.p99_seconds, judged_at)).get("")
        by_intent = vector_values(_prometheus(url, queries.predictions_by_intent, judged_at), label="intent")
        return VersionEvidence(version, round(requests), round(errors), p99_value), by_intent

    canary, canary_intents = measured(canary_version)
    previous, previous_intents = measured(previous_version)
    return CanaryEvidence(
        canary=canary,
        previous=previous,
        agreement=distribution_overlap(canary_intents, previous_intents),
        source=f"Prometheus, {rollout.window_seconds} s window",
    )


# --- the stage ----------------------------------------------------------------------------------------------------


def _no_check(layout: RunLayout, reason: str, **fields: Any) -> StageResult:
    log.info("%s: nothing to judge: %s", STAGE, reason)
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: nothing to judge ({reason})",
        xcom={"checked": False, "decision": None, "reason": reason, **fields},
        commit_uri=layout.result(STAGE),
    )


def _record_decision(registry_uri: str, version: str, record: dict[str, Any]) -> None:
    """The canary's decision and why, in its registry run record (what `registry show` prints)."""
    run_record = registry.read_run_record(registry_uri, version)
    if run_record is not None:
        storage.write_json(RegistryLayout(registry_uri).run_record(version), {**run_record, "canary": record})


def run(*, config: PipelineConfig, run_uri: str, registry_uri: str) -> StageResult:
    layout = RunLayout(run_uri)
    deployed = layout.require(deploy.STAGE, needed_by=STAGE)
    canary_version, previous_version = deployed.get("model_version"), deployed.get("previous_version")
    if not deployed.get("deployed"):
        return _no_check(layout, f"deploy rolled nothing out: {deployed.get('reason')}", model_version=canary_version)
    if deployed.get("canary_traffic_percent") is None:
        return _no_check(layout, f"no canary: {deployed.get('reason')}", model_version=canary_version)
    champion = registry.champion(registry_uri)
    champion_version = champion.get("version") if champion else None
    if champion_version != canary_version:
        return _no_check(
            layout,
            f"the champion is now {champion_version}, not the canary {canary_version}; whoever moved it rolls it out",
            model_version=canary_version,
        )
    assert isinstance(canary_version, str) and isinstance(previous_version, str)
    rollout = config.rollout
    if rollout.prometheus_url:
        applied_at = datetime.strptime(str(deployed["applied_at"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        evidence = prometheus_evidence(canary_version, previous_version, rollout, applied_at)
    else:
        texts = holdout_texts(run_uri, rollout.shadow_texts, config.seed)
        if texts is None:
            return _no_check(
                layout,
                "the run's holdout has no text column (production embeddings), so there is nothing to replay "
                "to the model servers; the canary keeps its share until promoted or rolled back by hand",
                model_version=canary_version,
            )
        with tempfile.TemporaryDirectory(prefix="canary-check-") as log_dir:
            evidence = shadow_evidence(registry_uri, canary_version, previous_version, texts, rollout, Path(log_dir))
    decision = decide(evidence, rollout)
    log.info("%s: %s", STAGE, decision.reason)

    rolled_back: dict[str, Any] | None = None
    if decision.promote:
        serving_version = canary_version
    else:
        rolled_back = rollback.run(
            config=config,
            registry_uri=registry_uri,
            to=previous_version,
            by=STAGE,
            reason=decision.reason,
            expected_champion=canary_version,
        ).xcom
        serving_version = str(rolled_back["champion_version"])
    manifest = deploy.render_inference_service(serving_version, None)
    rolled = deploy.roll_out(manifest, layout.path(STAGE, deploy.MANIFEST_NAME), config, STAGE)
    evidence_fields = {
        "source": evidence.source,
        "agreement": evidence.agreement,
        "canary": asdict(evidence.canary),
        "previous": asdict(evidence.previous),
    }
    _record_decision(
        registry_uri,
        canary_version,
        {
            "decision": "promote" if decision.promote else "rollback",
            "reason": decision.reason,
            "judged_at": registry.timestamp(datetime.now(UTC)),
            **evidence_fields,
        },
    )
    verdict = "promoted" if decision.promote else f"rolled back to {serving_version}"
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: canary {canary_version} {verdict}: {decision.reason}",
        xcom={
            "checked": True,
            "decision": "promote" if decision.promote else "rollback",
            "reason": decision.reason,
            "model_version": canary_version,
            "previous_version": previous_version,
            "champion_version": serving_version,
            "rolled_back": bool(rolled_back and rolled_back.get("moved")),
            "rollback_note": rolled_back.get("note") if rolled_back else None,
            **evidence_fields,
            **{key: value for key, value in rolled.items() if key != "manifest"},
        },
        commit_uri=layout.result(STAGE),
    )
