"""The inference API's OpenAPI document, built on the first GET /openapi.json and never before.

It is the one place the inference function uses pydantic and Powertools' event handler: both only
describe the routes here (the handler answers them itself), and importing them costs a cold start
about 100 ms that the first prediction does not need.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from pydantic import BaseModel, ConfigDict, Field

from ..common.bundle import Model
from ..common.explain import MAX_EXPLAIN_ROWS
from .request import MAX_ID_LENGTH


# What functions/inference/request.py reads, described for clients (a docstring would enter the document).
class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[dict[str, Any] | list[Any]] = Field(
        min_length=1, description="Rows to score: objects keyed by feature name, or arrays in the feature order")
    id: str | None = Field(default=None, max_length=MAX_ID_LENGTH, description="Optional caller id, echoed back")
    explain: bool = Field(default=False, strict=True, description=(
        f"Per-feature contributions for each row (at most {MAX_EXPLAIN_ROWS} rows; linear and tree models)"))


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


def _routes() -> APIGatewayRestResolver:
    """The routes as the document lists them; the resolver never answers a request."""
    app = APIGatewayRestResolver()

    @app.post("/predict", summary="Score rows", responses={
        200: {"description": "Predictions", "content": {"application/json": {"model": PredictResponse}}},
        **_error_responses()})
    def predict() -> Response[Any]:
        raise NotImplementedError  # answered by functions/inference/handler.py

    @app.get("/health", summary="Liveness and model status", responses={
        200: {"description": "A verified model is loaded",
              "content": {"application/json": {"model": HealthResponse}}},
        503: {"description": "No verified model loaded", "content": {"application/json": {"model": ErrorResponse}}}})
    def health() -> Response[Any]:
        raise NotImplementedError

    @app.get("/openapi.json", summary="This API's OpenAPI document", include_in_schema=False)
    def openapi() -> Response[Any]:
        raise NotImplementedError

    return app


def document(model: Model | None, max_body_bytes: int) -> str:
    """The document as JSON text: the rows the loaded model takes, from its manifest, when one is loaded."""
    doc = json.loads(_routes().get_openapi_json_schema(
        title="slimserve inference API", version="1",
        description="Real-time predictions from a verified ONNX model bundle"))
    schema = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    if model is not None:
        # The rows the loaded model takes, from its manifest: clients and fuzzers see each feature.
        schema["properties"]["instances"] = model.schema.json_schema()
        doc["info"]["description"] += f": {model.manifest.name} {model.version}"
    doc.setdefault("components", {}).setdefault("schemas", {})["PredictRequest"] = schema
    doc["paths"]["/predict"]["post"]["requestBody"] = {
        "required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
        "description": f"A body over {max_body_bytes} bytes is refused with 413 before it is read, "
                       "whatever its rows"}
    return json.dumps(doc)
