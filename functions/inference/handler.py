"""Inference Lambda: API Gateway (REST, proxy) -> validated rows -> onnxruntime -> JSON.

Thin by design: parse, call the model, shape the answer. The model loads at import time (the
Lambda init phase), verified against its manifest, and fails closed with 503 if anything is off.
With MODEL_NAME + REGISTRY_TABLE (and no MODEL_URI) each request is routed to the registry's
champion or canary, and per-role metrics say how each did.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
from .review import FeedbackLoop

rt = Runtime.for_settings(InferenceSettings)
logger, metrics = rt.logger, rt.metrics
# Request bodies are validated in the route with pydantic's JSON parser (one pass in Rust); the
# resolver's own validation middleware cost ~150 us of introspection per call on a single row.
app = APIGatewayRestResolver()

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


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[dict[str, Any] | list[Any]] = Field(
        min_length=1, description="Rows to score: objects keyed by feature name, or arrays in the feature order")
    id: str | None = Field(default=None, max_length=256, description="Optional caller id, echoed back")
    explain: bool = Field(default=False, strict=True, description=(
        f"Per-feature contributions for each row (at most {MAX_EXPLAIN_ROWS} rows; linear and tree models)"))

    # A short repr keeps payloads out of any log or debug message that formats the request.
    def __repr__(self) -> str:
        return f"PredictRequest(<{len(self.instances)} rows>)"

    __str__ = __repr__


class HealthResponse(BaseModel):
    status: str = Field(description="'ok' once a verified model is loaded")
    model_name: str
    model_version: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str | None


class Explanation(BaseModel):
    base_value: float = Field(description="The model's output with no feature known (its average over training)")
    contributions: dict[str, float] = Field(description="Per request feature: base_value plus these is the output")
    output: str = Field(description="value, log_odds (of the second class), margin (before the softmax) or "
                                    "probability: what base_value and the contributions add up to")
    class_: Any = Field(default=None, alias="class", description="Classifiers: the class the output belongs to")


class PredictResponse(BaseModel):
    predictions: list[Any]
    probabilities: list[list[float]] | None = Field(default=None, description="Classifiers: per class, in "
                                                                              "the order of the manifest's classes")
    model_version: str
    request_id: str | None
    id: str | None = None
    prediction_ids: list[str | None] | None = Field(default=None, description=(
        "One per row, in row order, when prediction ids are configured: POST one with its label to /feedback"))
    explanations: list[Explanation] | None = Field(default=None, description="One per row when 'explain' is true")


def _error_responses() -> dict[int, Any]:
    content = {"application/json": {"model": ErrorResponse}}
    return {code: {"description": text, "content": content} for code, text in
            [(400, "Invalid input"), (413, "Body too large"), (415, "Not JSON"), (503, "No verified model loaded")]}


@app.post("/predict", summary="Score rows", responses={
    200: {"description": "Predictions", "content": {"application/json": {"model": PredictResponse}}},
    **_error_responses()})
def predict() -> Response[Any]:
    return answer_predict(app.current_event)


def answer_predict(event: APIGatewayProxyEvent) -> Response[Any]:
    """POST /predict. lambda_handler calls it without the resolver (see there); the route above is its
    entry in the OpenAPI document and for callers of app.resolve."""
    try:
        request = PredictRequest.model_validate_json(event.body or "")
    except ValidationError as exc:
        raise request_shape_error(exc.errors()) from None
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
    capture.record(body["request_id"], routed, request.instances, result, ids)
    response = Response(status_code=200, content_type="application/json", body=json.dumps(body))
    # The routing item's shadow, on its share of requests: measured against the answer above, never returned.
    draw = holder.shadow_for(body["request_id"], model.version) if isinstance(holder, RoutingSource) else None
    if draw is not None:
        run_shadow(draw, request.instances, model, result, clock=clock, log=logger)
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


@app.get("/health", summary="Liveness and model status", responses={
    200: {"description": "A verified model is loaded", "content": {"application/json": {"model": HealthResponse}}},
    503: {"description": "No verified model loaded", "content": {"application/json": {"model": ErrorResponse}}}})
def health() -> Response[Any]:
    model = holder.load()
    body = {"status": "ok", "model_name": model.manifest.name, "model_version": model.version}
    return Response(status_code=200, content_type="application/json", body=json.dumps(body))


@app.get("/openapi.json", summary="This API's OpenAPI document", include_in_schema=False)
def openapi() -> Response[Any]:
    try:
        model: Model | None = holder.load()
    except ModelUnavailable:
        model = None  # the generic document still describes the routes; features appear once a model loads
    return Response(status_code=200, content_type="application/json", body=_openapi_document(model))


@functools.lru_cache(maxsize=2)
def _openapi_document(model: Model | None) -> str:
    document = json.loads(app.get_openapi_json_schema(
        title="slimserve inference API", version="1",
        description="Real-time predictions from a verified ONNX model bundle"))
    schema = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    if model is not None:
        # The rows the loaded model takes, from its manifest: clients and fuzzers see each feature.
        schema["properties"]["instances"] = model.schema.json_schema()
        document["info"]["description"] += f": {model.manifest.name} {model.version}"
    document.setdefault("components", {}).setdefault("schemas", {})["PredictRequest"] = schema
    document["paths"]["/predict"]["post"]["requestBody"] = {
        "required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
        "description": f"A body over {settings.max_body_bytes} bytes is refused with 413 before it is read, "
                       "whatever its rows"}
    return json.dumps(document)


@app.exception_handler(SlimserveError)
def _handle_known(exc: SlimserveError) -> Response[Any]:
    if exc.status >= 500:
        logger.error("request refused", extra={"code": exc.code, "reason": exc.message})
    else:
        metrics.add_metric(name="InvalidRequests", unit=MetricUnit.Count, value=1)
        logger.info("request refused", extra={"code": exc.code, "field": exc.field})
    return _error(exc)


ROUTES = {"/predict": ("POST",), "/health": ("GET",), "/openapi.json": ("GET",)}


@app.not_found
def _handle_not_found(exc: Exception) -> Response[Any]:
    event = app.current_event
    allow = ROUTES.get(event.path)
    if allow is None:
        return _error(NotFound("no such route: POST /predict, GET /health and GET /openapi.json exist"))
    return _error(MethodNotAllowed(f"{echo(event.http_method, 16)} is not allowed on {event.path}: use "
                                   f"{' or '.join(allow)}", allow=allow))


@app.exception_handler(Exception)
def _handle_unexpected(exc: Exception) -> Response[Any]:
    logger.exception("unexpected error")
    body = {"error": INTERNAL_ERROR_BODY, "request_id": _request_id()}
    return Response(status_code=500, content_type="application/json", body=json.dumps(body))


def request_shape_error(errors: Any) -> SlimserveError:
    """Map pydantic's first complaint about the request body to one of our error codes."""
    errors = list(errors)
    # An empty 'instances' is named only when nothing else is wrong, as the row validator would name it.
    first = next((e for e in errors if e.get("type") != "too_short"), errors[0] if errors else {"type": "", "loc": ()})
    kind = first.get("type", "")
    loc = list(first.get("loc", ()))
    # Union members show up in the location (e.g. 'dict[str,any]'); they name no field.
    loc = [p for p in loc if not (isinstance(p, str) and "[" in p)]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "body"
    if kind == "json_invalid":
        return InvalidInput("request body is not valid JSON", code="malformed_json", field="body")
    if kind == "too_short" and field == "instances":
        return InvalidInput("'instances' is empty: send at least one row", code="empty_instances", field=field)
    if kind == "missing":
        return InvalidInput(f"'{field}' is required", code="missing_field", field=field)
    if kind == "extra_forbidden":
        return InvalidInput(f"unknown field {echo(field)}: the body takes 'instances' and an optional 'id'",
                            code="unknown_field", field=field)
    if field == "body":
        return InvalidInput("request body must be a JSON object with 'instances'", code="wrong_type", field=field)
    return InvalidInput(f"'{field}' has the wrong type: {first.get('msg', '')}", code="wrong_type", field=field)


def guard(event: APIGatewayProxyEvent, max_body_bytes: int) -> SlimserveError | None:
    """Checks made before the body is parsed at all: size and media type (a wrong route gets 404 or 405 first)."""
    if event.http_method != "POST" or event.path != "/predict":
        return None
    body = event.body or ""
    size = len(body) if event.is_base64_encoded else len(body.encode("utf-8"))
    if size > max_body_bytes:
        return PayloadTooLarge(f"request body is {size} bytes; the limit is {max_body_bytes}", field="body")
    content_type = next((v for k, v in (event.headers or {}).items() if k.lower() == "content-type"), "") or ""
    if content_type.split(";")[0].strip().lower() != "application/json":
        return UnsupportedMediaType("send the body as application/json", field="content-type")
    if event.is_base64_encoded:
        return UnsupportedMediaType("binary bodies are not accepted; send JSON text", field="body")
    return None


_invocation = threading.local()  # the event this thread answers, set first thing in each invocation


def _request_id() -> str | None:
    event = getattr(_invocation, "event", None)
    try:
        return (app.current_event if event is None else event).request_context.request_id
    except (AttributeError, KeyError, TypeError):
        return None


def _error(exc: SlimserveError) -> Response[Any]:
    headers = {"Allow": ", ".join(exc.allow)} if isinstance(exc, MethodNotAllowed) else None
    return Response(status_code=exc.status, content_type="application/json",
                    body=json.dumps(exc.to_body(_request_id())), headers=headers)


# The model call opens its own subsegment (rt.subsegment): unsampled requests pay nothing for tracing.
@rt.handler(correlation_id_path=correlation_paths.API_GATEWAY_REST, cold_start_metric=True, trace=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    proxy_event = _invocation.event = APIGatewayProxyEvent(event)
    refused = guard(proxy_event, settings.max_body_bytes)
    if refused is not None:
        metrics.add_metric(name="InvalidRequests", unit=MetricUnit.Count, value=1)
        logger.info("request refused", extra={"code": refused.code})
        return {"statusCode": refused.status, "headers": {"Content-Type": "application/json"},
                "body": json.dumps(refused.to_body(proxy_event.request_context.request_id))}
    if proxy_event.http_method == "POST" and proxy_event.path == "/predict":
        # The hot route skips the resolver's per-call work (route matching, middleware stack, response
        # builder: ~20 us of a ~75 us answer); its errors go through the handlers the resolver calls.
        return proxy_response(_answer_or_error(proxy_event))
    return app.resolve(event, context)


def _answer_or_error(event: APIGatewayProxyEvent) -> Response[Any]:
    try:
        return answer_predict(event)
    except SlimserveError as exc:
        return _handle_known(exc)
    except Exception as exc:  # as the resolver would: the one handler of unexpected errors
        return _handle_unexpected(exc)


def proxy_response(response: Response[Any]) -> dict[str, Any]:
    """The proxy answer APIGatewayRestResolver builds from a Response (no cookies, compression or CORS here)."""
    headers = {k: v if isinstance(v, list) else [v] for k, v in response.headers.items()}
    return {"statusCode": response.status_code, "body": response.body, "isBase64Encoded": False,
            "multiValueHeaders": headers}
