"""Feedback Lambda: POST /feedback {"prediction_id", "label"} (API Gateway, IAM- or JWT-authorised on its own
resource) and feedback files under S3 feedback/ (`files_handler`, an S3 notification).

Thin by design: parse, call `Feedback.record`, answer in the project's one error shape.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from ..common.errors import INTERNAL_ERROR_BODY, InvalidInput, NotFound, SlimserveError
from ..common.prediction_ids import MAX_ID_CHARS, configured_key
from ..common.runtime import Runtime
from ..common.settings import FeedbackSettings
from .files import process_object
from .labels import Feedback, bucket_manifests

rt = Runtime.for_settings(FeedbackSettings)
logger, metrics = rt.logger, rt.metrics
app = APIGatewayRestResolver()
settings = FeedbackSettings.from_env()
feedback = Feedback(key=lambda: configured_key(settings.prediction_id_key, settings.prediction_id_secret_arn),
                    model_name=settings.model_name, manifests=bucket_manifests(settings.model_bucket),
                    table=settings.feedback_table, ttl_days=settings.label_ttl_days)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Longer ids are refused by the id check itself, with its own code; this bounds what is read at all.
    prediction_id: str = Field(max_length=4 * MAX_ID_CHARS, description="an id from a /predict answer")
    label: StrictBool | StrictInt | StrictFloat | StrictStr = Field(
        description="one of the model's classes, or the true value for a regressor")


@app.post("/feedback", summary="Label one prediction")
def post_feedback() -> Response[Any]:
    try:
        request = FeedbackRequest.model_validate_json(app.current_event.body or "")
    except ValidationError as exc:
        raise _shape_error(exc) from None
    stored = feedback.record(request.prediction_id, request.label, _caller())
    metrics.add_metric(name="LabelsStored", unit=MetricUnit.Count, value=1)
    body = {**stored.as_dict(), "request_id": _request_id()}
    return Response(status_code=201, content_type="application/json", body=json.dumps(body))


def _shape_error(exc: ValidationError) -> SlimserveError:
    first = exc.errors()[0] if exc.errors() else {"type": "", "loc": ()}
    field = ".".join(str(p) for p in first.get("loc", ())[:1]) or "body"
    if first["type"] == "json_invalid":
        return InvalidInput("request body is not valid JSON", code="malformed_json", field="body")
    if first["type"] == "missing":
        return InvalidInput(f"'{field}' is required", code="missing_field", field=field)
    if first["type"] == "extra_forbidden":
        return InvalidInput("the body takes 'prediction_id' and 'label' only", code="unknown_field", field=field)
    if field == "prediction_id" and first["type"] == "string_too_long":
        return InvalidInput(f"prediction_id is over {MAX_ID_CHARS} characters", code="invalid_prediction_id",
                            field=field)
    return InvalidInput(f"'{field}' has the wrong type", code="wrong_type", field=field)


def _caller() -> str:
    """Who labels: the identity API Gateway authenticated, a JWT's `<iss>#<sub>` or the IAM caller (never a value
    the body claims)."""
    context = app.current_event.request_context
    claims, identity = context.authorizer.claims, context.identity
    if claims.get("sub"):
        return f"{claims.get('iss', '')}#{claims['sub']}"
    return identity.user_arn or identity.caller or identity.account_id or "unknown"


def _request_id() -> str | None:
    try:
        return app.current_event.request_context.request_id
    except (AttributeError, KeyError, TypeError):
        return None


@app.exception_handler(SlimserveError)
def _known(exc: SlimserveError) -> Response[Any]:
    metrics.add_metric(name="LabelsRefused" if exc.status < 500 else "FeedbackErrors", unit=MetricUnit.Count, value=1)
    logger.info("feedback refused", extra={"code": exc.code, "field": exc.field})
    return Response(status_code=exc.status, content_type="application/json",
                    body=json.dumps(exc.to_body(_request_id())))


@app.not_found
def _no_route(exc: Exception) -> Response[Any]:
    return _known(NotFound("no such route: POST /feedback exists"))


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[Any]:
    logger.exception("unexpected error")
    return Response(status_code=500, content_type="application/json",
                    body=json.dumps({"error": INTERNAL_ERROR_BODY, "request_id": _request_id()}))


@rt.handler(correlation_id_path=correlation_paths.API_GATEWAY_REST)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)


@rt.handler()
def files_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """S3 notification of feedback files: each file's rows recorded, its outcome written back."""
    summaries = []
    for record in S3Event(event).records:
        key = unquote_plus(record.s3.get_object.key)
        summary = process_object(feedback, record.s3.bucket.name, key, settings.max_file_bytes,
                                 lambda message, extra: logger.info(message, extra=extra))
        metrics.add_metric(name="LabelsStored", unit=MetricUnit.Count, value=summary["stored"])
        summaries.append({"key": key, "stored": summary["stored"], "counts": summary["counts"]})
    return {"files": summaries}
