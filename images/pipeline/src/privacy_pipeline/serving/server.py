"""``privacy-pipeline serve``: the registry's champion (or ``--version``) on KServe's ``ModelServer``.

The SDK provides the routes: V2 (``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}``, ``/v2/models/{name}/infer``), V1, ``/metrics`` and,
with ``--grpc-port``, gRPC. This module adds three things around them: the
try-it page at ``/try``; versioned V2 routes that answer for the version being
served and 404 for any other (the SDK answers 501 to every version); and the
request metrics and log line (``metrics.RequestMetricsMiddleware``).

The model is loaded before the server starts: a version that is missing,
corrupt or refused by the skops trust check ends the command with one line and
exit code 2, and nothing ever listens with a half-loaded model.
"""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any

from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.serving.page import PAGE_PATH, page_html
from privacy_pipeline.stage_result import StageResult

try:
    import kserve
    from fastapi import Request, Response
    from fastapi.responses import HTMLResponse
    from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
    from kserve.errors import InferenceError, InvalidInput, ModelNotFound
    from kserve.model_server import app
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.infer_type import deserialize_bytes_tensor
    from kserve.protocol.rest.v2_datamodels import InferenceRequest
    from kserve.protocol.rest.v2_endpoints import V2Endpoints

    from privacy_pipeline.serving.metrics import INFER_PATH, RequestMetricsMiddleware
    from privacy_pipeline.serving.model import PrivacyIntentModel
except ModuleNotFoundError as missing:
    # `privacy-pipeline serve` from the stage environment: say where the server runs instead of a traceback.
    raise StageError(
        f"serve: {missing.name} is not installed in this environment; the model server has its own: "
        "run .venv/serving/bin/privacy-pipeline serve ... here (make serving-env), "
        "/opt/serving/bin/python -m privacy_pipeline.cli serve ... in the image"
    ) from missing

log = logging.getLogger(__name__)

STAGE = "serve"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_BATCH_WAIT_MS = 5.0


class VersionNotServed(ModelNotFound):  # type: ignore[misc]
    """A V2 request for a version other than the one loaded: the SDK's 404, with what to send instead."""

    def __init__(self, model_name: str, requested: str, served: str | None) -> None:
        super().__init__(model_name)
        self.reason = (
            f"model {model_name} version {requested} is not served here; this server serves version {served} "
            f"(or leave the version out: /v2/models/{model_name}/infer)"
        )


def first_non_utf8_element(body: bytes, json_length: int) -> tuple[str, int] | None:
    """(input name, element index) of the first binary BYTES element that is not UTF-8, if any.

    The binary extension of the protocol: a JSON header of ``json_length``
    bytes, then each input's ``binary_data_size`` bytes in order, a BYTES
    tensor being length-prefixed elements (the SDK's own deserializer reads them).
    """
    header = json.loads(body[:json_length])
    start = json_length
    for tensor in header.get("inputs", []):
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        raw, start = body[start : start + size], start + size
        if tensor.get("datatype") != "BYTES":
            continue
        for index, element in enumerate(deserialize_bytes_tensor(raw)):
            try:
                element.decode("utf-8")
            except UnicodeDecodeError:
                return str(tensor.get("name")), index
    return None


class TextCheckingDataPlane(DataPlane):  # type: ignore[misc]
    """kserve's DataPlane, answering a binary BYTES element that is not UTF-8 with a 400 that names it.

    kserve 0.21 turns binary BYTES elements into ``str`` while it parses the
    request, before any model code runs, and reports one that is not UTF-8 as
    a 500 whose message (and so its logged traceback) holds the element's raw
    bytes: nothing a caller can act on, and message content in the log.
    """

    def decode_inference_request(self, body: Any, headers: dict[str, str], model_name: str) -> Any:
        try:
            return super().decode_inference_request(body, headers, model_name)
        except InferenceError as error:
            if not isinstance(error.__context__, UnicodeDecodeError):
                raise
        # Raised outside the except block, so neither the SDK's error nor its bytes are chained into the log.
        found = first_non_utf8_element(body, int(headers[INFERENCE_CONTENT_LENGTH_HEADER]))
        where = f'message {found[1]} of input "{found[0]}"' if found else "a message"
        raise InvalidInput(f"{where} is not UTF-8 text; send each message encoded as UTF-8")


class LoopbackModelServer(kserve.ModelServer):  # type: ignore[misc]
    """``kserve.ModelServer`` listening on ``host``, with ``TextCheckingDataPlane`` as its data plane.

    kserve 0.21's REST server always binds 0.0.0.0. That is right in a pod,
    where the pod's network is the boundary; on a workstation the server must
    stay on loopback unless asked otherwise.
    """

    def __init__(self, *, host: str, **kwargs: Any) -> None:
        self.host = host
        super().__init__(**kwargs)
        # Before start() hands the data plane to the REST (and gRPC) endpoints.
        self.dataplane = TextCheckingDataPlane(model_registry=self.registered_models)

    def setup_event_loop(self) -> None:
        # Called by start() after the REST server is built and before it listens.
        if self._rest_server is not None:
            self._rest_server.config.host = self.host
        super().setup_event_loop()


class JsonBodyMiddleware:
    """An infer body without ``Inference-Header-Content-Length`` is JSON, as the protocol says.

    kserve 0.21 parses it as JSON only when ``Content-Type`` says so; curl's
    ``-d`` sends a form type and Triton's client sends none, and both would get
    a 400 about binary inputs. This sets the type; the SDK still parses.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and INFER_PATH.match(scope.get("path", "")):
            headers = scope.get("headers", [])
            if not any(key.lower() == b"inference-header-content-length" for key, _ in headers):
                kept = [(key, value) for key, value in headers if key.lower() != b"content-type"]
                scope = {**scope, "headers": [*kept, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def _add_routes(server: kserve.ModelServer, model: PrivacyIntentModel) -> None:
    """The page and the versioned V2 routes, ahead of the SDK's (which start() adds after these)."""
    if any(getattr(route, "path", None) == PAGE_PATH for route in app.router.routes):
        return
    endpoints = V2Endpoints(server.dataplane, server.model_repository_extension)

    def served(model_name: str, model_version: str) -> None:
        if model_name == model.name and model_version != model.version:
            raise VersionNotServed(model_name, model_version, model.version)

    async def try_it_page() -> HTMLResponse:
        return HTMLResponse(page_html(model.name))

    async def versioned_metadata(model_name: str, model_version: str) -> Any:
        served(model_name, model_version)
        return await endpoints.model_metadata(model_name)

    async def versioned_ready(model_name: str, model_version: str) -> Any:
        served(model_name, model_version)
        return await endpoints.model_ready(model_name)

    async def versioned_infer(
        raw_request: Request,
        raw_response: Response,
        model_name: str,
        model_version: str,
        request_body: InferenceRequest | bytes,
    ) -> Any:
        served(model_name, model_version)
        return await endpoints.infer(raw_request, raw_response, model_name, request_body)

    app.add_api_route(PAGE_PATH, try_it_page, methods=["GET"], response_class=HTMLResponse)
    versions = "/v2/models/{model_name}/versions/{model_version}"
    app.add_api_route(versions, versioned_metadata, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{versions}/ready", versioned_ready, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{versions}/infer", versioned_infer, methods=["POST"], response_model=None)
    app.add_middleware(JsonBodyMiddleware)
    # Added last, so outermost: it also counts what the JSON middleware and the SDK refuse.
    app.add_middleware(RequestMetricsMiddleware)


def serve(
    model: PrivacyIntentModel,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    grpc_port: int | None = None,
) -> None:
    """Serve a loaded ``model`` until SIGINT/SIGTERM (blocks)."""
    if not model.ready:
        raise RuntimeError("serve() needs a loaded model: call model.load() first")
    # One JSON line per request comes from RequestMetricsMiddleware; the SDK's
    # per-request timing lines and uvicorn's access lines would repeat it.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # featurize logs every encode call at INFO, which here is every batch.
    logging.getLogger("privacy_pipeline.stages.featurize").setLevel(logging.WARNING)
    # kserve 0.21 still answers with FastAPI's ORJSONResponse, which warns on every request.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    server = LoopbackModelServer(
        host=host,
        http_port=port,
        # kserve's gRPC server binds every interface ([::]); only on request.
        grpc_port=grpc_port or 0,
        enable_grpc=grpc_port is not None,
        workers=1,
        enable_docs_url=False,
        enable_latency_logging=False,
    )
    _add_routes(server, model)
    log.info(
        "serving %s version %s on http://%s:%d (V2: /v2/models/%s/infer, page: %s, metrics: /metrics)",
        model.name,
        model.version,
        host,
        port,
        model.name,
        PAGE_PATH,
    )
    server.start([model])


def run(
    *,
    config: PipelineConfig,
    registry_uri: str,
    version: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    grpc_port: int | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_batch_wait_ms: float = DEFAULT_MAX_BATCH_WAIT_MS,
) -> StageResult:
    """The CLI's entry: load (StageError on a bad version), then serve until stopped."""
    model = PrivacyIntentModel(
        registry_uri,
        version=version,
        config=config,
        max_batch_size=max_batch_size,
        max_batch_wait_seconds=max_batch_wait_ms / 1000.0,
    )
    model.load()
    serve(model, host=host, port=port, grpc_port=grpc_port)
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: stopped serving {model.name} version {model.version} from {registry_uri}",
        xcom={"model_version": model.version, "registry_uri": registry_uri},
    )
