"""The server's Prometheus metrics and its one structured log line per inference request.

Exposed on the SDK's ``/metrics`` next to KServe's own histograms. Labels have
few values (outcome, intent); ids and text never become labels.
``privacy_intent_serving_predictions_total{intent}`` is the signal drift
alerts are built on.

The log line is JSON with the request id, status, latency and the sizes of
what was sent: message counts and lengths, never message text.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from prometheus_client import Counter, Histogram

log = logging.getLogger("privacy_pipeline.serving.requests")

REQUESTS = Counter(
    "privacy_intent_serving_requests_total",
    "Inference requests answered, by outcome (ok, client_error, server_error).",
    ["outcome"],
)
REQUEST_SECONDS = Histogram(
    "privacy_intent_serving_request_seconds",
    "Time from receiving an inference request to sending its response, by outcome.",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SIZE = Histogram(
    "privacy_intent_serving_batch_size",
    "Messages per micro-batch run through the model.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
PREDICTIONS = Counter(
    "privacy_intent_serving_predictions_total",
    "Messages classified, by predicted intent.",
    ["intent"],
)

# The inference routes: V2 (with or without a version) and V1's :predict.
INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$|^/v1/models/[^/]+:predict$")

_facts: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("request_facts", default=None)


def request_facts() -> dict[str, Any]:
    """The current request's log fields; the model adds message counts and lengths to it."""
    facts = _facts.get()
    return facts if facts is not None else {}


def outcome(status: int) -> str:
    if status < 400:
        return "ok"
    return "client_error" if status < 500 else "server_error"


class RequestMetricsMiddleware:
    """ASGI middleware: counts, times and logs every inference request, including those refused before the model."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not INFER_PATH.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope.get("headers", [])}
        # A mutable dict, so what the handler adds is seen here whatever context it runs in.
        facts: dict[str, Any] = {
            "event": "infer",
            "request_id": headers.get("x-request-id") or str(uuid.uuid4()),
            "path": scope["path"],
            "request_bytes": int(headers.get("content-length") or 0),
        }
        token = _facts.set(facts)
        status = 500
        started = time.perf_counter()

        async def send_and_record(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            seconds = time.perf_counter() - started
            result = outcome(status)
            REQUESTS.labels(outcome=result).inc()
            REQUEST_SECONDS.labels(outcome=result).observe(seconds)
            facts.update({"status": status, "outcome": result, "seconds": round(seconds, 6)})
            log.info("%s", json.dumps(facts, sort_keys=True))
            _facts.reset(token)
