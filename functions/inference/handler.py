"""Inference Lambda: API Gateway (REST, or HTTP API payload 1.0; proxy) -> validated rows -> onnxruntime -> JSON.

Thin by design: parse, call the model, shape the answer. The model loads at import time (the
Lambda init phase), verified against its manifest, and fails closed with 503 if anything is off.
With MODEL_NAME + REGISTRY_TABLE (and no MODEL_URI) each request is routed to the registry's
champion or canary, and per-role metrics say how each did.

The three routes are answered here, without Powertools' event handler: importing it costs a cold
start ~40 ms (its package imports every resolver it has), and pydantic's import and models ~100 ms
more. Both are imported only by the first GET /openapi.json (functions/inference/openapi.py).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from ..common.bundle import Model
from ..common.capture import Capture
from ..common.errors import (
    INTERNAL_ERROR_BODY,
    InvalidInput,
    MethodNotAllowed,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    SlimserveError,
    UnsupportedMediaType,
    echo,
)
from ..common.explain import MAX_EXPLAIN_ROWS
from ..common.routing import Routed, RoutingSource, emit_request_metrics, prediction_counts
from ..common.runtime import Runtime
from ..common.settings import InferenceSettings
from ..common.shadow import run_shadow
from .request import parse_request
from .review import FeedbackLoop

rt = Runtime.for_settings(InferenceSettings)
logger, metrics = rt.logger, rt.metrics

settings = InferenceSettings.from_env()
holder = rt.serving_models(settings)
holder.preload()  # in Lambda's init phase; a failure is logged and answered 503 until a load succeeds
# Sampled rows and answers to s3://MODEL_BUCKET/capture/, flushed inline and on SIGTERM (CAPTURE_SAMPLE_RATE > 0).
capture = Capture.from_settings(settings, logger=logger)
capture.install_shutdown_flush()


def _feedback_error(exc: Exception) -> None:
    metrics.add_metric(name="FeedbackLoopErrors", unit=MetricUnit.Count, value=1)
    logger.warning("prediction ids or review queue unavailable", extra={"reason": str(exc)})


# Captured rows may go to the review queue only where capture keeps rows at all.
feedback = FeedbackLoop(settings.prediction_id_key, settings.prediction_id_secret_arn,
                        review_below=settings.review_confidence_below, queue_url=settings.review_queue_url,
                        keep_row=None, on_error=_feedback_error)


@dataclass(frozen=True)
class ProxyRequest:
    """What the handler reads of an API Gateway proxy event (REST, or HTTP API payload format 1.0)."""

    method: str
    path: str
    body: str | None
    headers: dict[str, str]
    is_base64_encoded: bool
    request_id: str | None

    @property
    def route(self) -> str:
        """The path a route is matched on: trailing slashes do not count (as in Powertools' REST resolver)."""
        return self.path.rstrip("/") or self.path

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> ProxyRequest:
        context = event.get("requestContext")
        request_id = context.get("requestId") if isinstance(context, dict) else None
        return cls(method=event.get("httpMethod") or "", path=event.get("path") or "", body=event.get("body"),
                   headers=event.get("headers") or {}, is_base64_encoded=bool(event.get("isBase64Encoded")),
                   request_id=request_id)


@dataclass(frozen=True)
class Response:
    """One answer: a status, a JSON body and any headers besides its Content-Type."""

    status_code: int
    body: str
    headers: dict[str, str] | None = None

    def proxy(self) -> dict[str, Any]:
        """The proxy answer, headers as lists (multiValueHeaders), as Powertools' resolver builds it."""
        headers = {"Content-Type": ["application/json"], **{k: [v] for k, v in (self.headers or {}).items()}}
        return {"statusCode": self.status_code, "body": self.body, "isBase64Encoded": False,
                "multiValueHeaders": headers}


def answer_predict(event: ProxyRequest) -> Response:
    """POST /predict."""
    request = parse_request(event.body or "")
    routed = route()
    try:
        with rt.subsegment("## model", model_version=routed.version, model_role=routed.role):
            if request.explain:
                explainable(routed.model, request.instances)
            started = clock()
            result = routed.model.predict(request.instances)
            latency_ms = (clock() - started) * 1e3
    except SlimserveError as exc:
        emit_request_metrics(routed.model.manifest.name, routed.role, routed.version, status=exc.status)
        raise
    except Exception:
        emit_request_metrics(routed.model.manifest.name, routed.role, routed.version, status=500)
        raise
    # One EMF record: the per-role metrics, and PredictedRows and ModelLatency under the function's dimensions.
    function_metrics = {"PredictedRows": (len(result.predictions), "Count"),
                        "ModelLatency": (latency_ms, "Milliseconds")}
    emit_request_metrics(routed.model.manifest.name, routed.role, routed.version, status=200,
                         latency_ms=latency_ms, counts=prediction_counts(routed.model, result.predictions),
                         function_metrics=(rt.metric_dimensions, function_metrics))
    model = routed.model
    body: dict[str, Any] = {"predictions": result.predictions}
    if result.probabilities is not None:
        body["probabilities"] = result.probabilities
    body["model_version"] = model.version
    body["request_id"] = _request_id()
    if request.id is not None:
        body["id"] = request.id
    if request.explain:
        body["explanations"] = model.explain(request.instances, result.predictions)
    ids = feedback.answer(model.manifest.name, model.version, body["request_id"] or "", request.instances,
                          result.predictions, result.probabilities)
    if ids is not None:
        body["prediction_ids"] = ids
    response = Response(200, json.dumps(body))
    # The routing item's shadow, on its share of requests: measured against the answer above, never returned.
    draw = holder.shadow_for(body["request_id"], model.version) if isinstance(holder, RoutingSource) else None
    shadow = run_shadow(draw, request.instances, model, result, clock=clock, log=logger) if draw is not None else None
    capture.record(body["request_id"], routed, request.instances, result, ids, shadow)  # the shadow's answer too
    return response


def explainable(model: Model, instances: list[Any]) -> None:
    """Refuse an explanation the model cannot give, or one too large, before any row is scored."""
    if len(instances) > MAX_EXPLAIN_ROWS:
        raise InvalidInput(f"{len(instances)} rows sent with 'explain'; at most {MAX_EXPLAIN_ROWS} are explained per "
                           "request", code="explain_too_many_rows", field="instances")
    model.explainer()


clock = time.perf_counter  # what model latency is measured with (tests advance a clock of their own)


def route() -> Routed:
    """The model that answers this request and its role; logs carry both from here on."""
    if isinstance(holder, RoutingSource):
        routed = holder.route(_request_id())
        logger.append_keys(model_version=routed.version, model_role=routed.role)
        return routed
    return Routed(holder.load(), "champion")


def health(event: ProxyRequest) -> Response:
    """GET /health."""
    model = holder.load()
    return Response(200, json.dumps({"status": "ok", "model_name": model.manifest.name,
                                     "model_version": model.version}))


def openapi(event: ProxyRequest) -> Response:
    """GET /openapi.json."""
    try:
        model: Model | None = holder.load()
    except ModelUnavailable:
        model = None  # the generic document still describes the routes; features appear once a model loads
    return Response(200, _openapi_document(model))


@functools.lru_cache(maxsize=2)
def _openapi_document(model: Model | None) -> str:
    from .openapi import document  # pydantic and Powertools' resolver: imported by the first ask, never before

    return document(model, settings.max_body_bytes)


ROUTES: dict[str, dict[str, Callable[[ProxyRequest], Response]]] = {
    "/predict": {"POST": answer_predict}, "/health": {"GET": health}, "/openapi.json": {"GET": openapi}}


def answer(event: ProxyRequest) -> Response:
    """The route's answer; one mapping from our errors to statuses, and a bare 500 for anything else."""
    methods = ROUTES.get(event.route)
    try:
        if methods is None:
            raise NotFound("no such route: POST /predict, GET /health and GET /openapi.json exist")
        route_answer = methods.get(event.method.upper())
        if route_answer is None:
            raise MethodNotAllowed(f"{echo(event.method, 16)} is not allowed on {event.path}: use "
                                   f"{' or '.join(methods)}", allow=tuple(methods))
        return route_answer(event)
    except SlimserveError as exc:
        return _handle_known(exc)
    except Exception:
        logger.exception("unexpected error")
        return Response(500, json.dumps({"error": INTERNAL_ERROR_BODY, "request_id": _request_id()}))


def _handle_known(exc: SlimserveError) -> Response:
    if exc.status >= 500:
        logger.error("request refused", extra={"code": exc.code, "reason": exc.message})
    elif not isinstance(exc, (NotFound, MethodNotAllowed)):  # a wrong route is no invalid request
        metrics.add_metric(name="InvalidRequests", unit=MetricUnit.Count, value=1)
        logger.info("request refused", extra={"code": exc.code, "field": exc.field})
    headers = {"Allow": ", ".join(exc.allow)} if isinstance(exc, MethodNotAllowed) else None
    return Response(exc.status, json.dumps(exc.to_body(_request_id())), headers)


def guard(event: ProxyRequest, max_body_bytes: int) -> SlimserveError | None:
    """Checks made before the body is parsed at all: size and media type (a wrong route gets 404 or 405 first)."""
    if event.method.upper() != "POST" or event.route != "/predict":
        return None
    body = event.body or ""
    size = len(body) if event.is_base64_encoded else len(body.encode("utf-8"))
    if size > max_body_bytes:
        return PayloadTooLarge(f"request body is {size} bytes; the limit is {max_body_bytes}", field="body")
    content_type = next((v for k, v in event.headers.items() if k.lower() == "content-type"), "") or ""
    if content_type.split(";")[0].strip().lower() != "application/json":
        return UnsupportedMediaType("send the body as application/json", field="content-type")
    if event.is_base64_encoded:
        return UnsupportedMediaType("binary bodies are not accepted; send JSON text", field="body")
    return None


_invocation = threading.local()  # the event this thread answers, set first thing in each invocation


def _request_id() -> str | None:
    event = getattr(_invocation, "event", None)
    return None if event is None else event.request_id


# The model call opens its own subsegment (rt.subsegment): unsampled requests pay nothing for tracing.
@rt.handler(correlation_id_path=correlation_paths.API_GATEWAY_REST, cold_start_metric=True, trace=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = _invocation.event = ProxyRequest.from_event(event)
    refused = guard(request, settings.max_body_bytes)
    if refused is not None:
        metrics.add_metric(name="InvalidRequests", unit=MetricUnit.Count, value=1)
        logger.info("request refused", extra={"code": refused.code})
        return {"statusCode": refused.status, "headers": {"Content-Type": "application/json"},
                "body": json.dumps(refused.to_body(request.request_id))}
    return answer(request).proxy()
