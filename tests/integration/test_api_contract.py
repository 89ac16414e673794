"""The OpenAPI document and the handler agree: the rows it describes are the rows the model takes, every
status the handler answers is documented, and a documented path answers other methods with 405."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import jsonschema
import pytest

from pipeline.local.apigw import LambdaContext, proxy_event
from pipeline.local.emulation import MODEL_BUCKET, REGION, emulated_account, upload_bundle
from pipeline.local.server import load_inference_handler

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"]


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    with emulated_account():
        yield boto3.client("s3", region_name=REGION)


@pytest.fixture
def mixed(s3: Any, mixed_bundle: Path) -> ModuleType:
    return load_inference_handler(upload_bundle(s3, mixed_bundle), MAX_ROWS="50")


def call(module: ModuleType, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    text = body if isinstance(body, str) or body is None else json.dumps(body)
    result = module.lambda_handler(proxy_event(method, path, text, {"Content-Type": "application/json"}),
                                   LambdaContext())
    headers = {**(result.get("headers") or {}), **{k: v[0] for k, v in (result.get("multiValueHeaders") or {}).items()}}
    return result["statusCode"], headers, json.loads(result["body"])


def document(module: ModuleType) -> dict[str, Any]:
    status, _, doc = call(module, "GET", "/openapi.json")
    assert status == 200
    return doc


def validator(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component, with the document's other components reachable by $ref."""
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


def test_the_document_describes_each_feature_of_the_loaded_model(mixed: ModuleType) -> None:
    doc = document(mixed)
    instances = doc["components"]["schemas"]["PredictRequest"]["properties"]["instances"]
    keyed, ordered = instances["items"]["anyOf"]
    assert (instances["minItems"], instances["maxItems"]) == (1, 50)
    assert keyed["required"] == ["age", "plan", "income", "region"] and keyed["additionalProperties"] is False
    assert "basic, plus, pro; others accepted" in keyed["properties"]["plan"]["description"]  # an open encoder
    assert keyed["properties"]["income"]["type"] == ["number", "null"]
    age = keyed["properties"]["age"]
    assert age["type"] == ["number", "null"] and "seen in training" in age["description"]  # imputed
    assert [c["title"] for c in ordered["prefixItems"]] == ["age", "plan", "income", "region"]
    assert "churn v1" in doc["info"]["description"]


def test_without_a_model_the_document_still_describes_the_routes(s3: Any) -> None:
    module = load_inference_handler(f"s3://{MODEL_BUCKET}/models/none/v0/")
    doc = document(module)
    instances = doc["components"]["schemas"]["PredictRequest"]["properties"]["instances"]
    assert instances["minItems"] == 1 and "/predict" in doc["paths"]


def test_health_documents_its_200_and_the_answer_matches(mixed: ModuleType) -> None:
    doc = document(mixed)
    ok = doc["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    status, _, body = call(mixed, "GET", "/health")
    assert status == 200
    validator(doc, ok["$ref"].rsplit("/", 1)[1]).validate(body)


BODIES = [
    ({"instances": [{"age": 40, "plan": "pro", "income": None, "region": "north"}]}, 200),
    ({"instances": [[40, "basic", 52_000.5, "south"], [88, "plus", None, "west"]], "id": "r1"}, 200),
    ({"instances": []}, 400),
    ({"instances": [{"age": 40, "plan": "gold", "income": None, "region": "north"}]}, 200),  # encoder ignores it
    ({"instances": [{"age": 40, "plan": None, "income": None, "region": "north"}]}, 400),
    ({"instances": [{"age": 40, "plan": "pro", "income": None}]}, 400),
    ({"instances": [[40, "pro", None, "north", 1]]}, 400),
    ({"instances": [{"age": "40", "plan": "pro", "income": None, "region": "north"}]}, 400),
    ({"instances": [[40, "pro", None, "north"]] * 51}, 400),
    ({"instances": [[40, "pro", None, "north"]], "debug": True}, 400),
]


@pytest.mark.parametrize(("body", "status"), BODIES, ids=range(len(BODIES)))
def test_the_documented_request_schema_accepts_exactly_what_the_handler_accepts(mixed: ModuleType, body: Any,
                                                                                status: int) -> None:
    doc = document(mixed)
    request_ok = validator(doc, "PredictRequest").is_valid(body)
    got, _, answer = call(mixed, "POST", "/predict", body)
    assert (got, request_ok) == (status, status == 200)
    responses = doc["paths"]["/predict"]["post"]["responses"]
    schema = responses[str(got)]["content"]["application/json"]["schema"]
    validator(doc, schema["$ref"].rsplit("/", 1)[1]).validate(answer)


def test_an_empty_list_keeps_its_own_code(mixed: ModuleType) -> None:
    status, _, body = call(mixed, "POST", "/predict", {"instances": []})
    assert (status, body["error"]["code"], body["error"]["field"]) == (400, "empty_instances", "instances")


@pytest.mark.parametrize("method", METHODS)
def test_every_undocumented_method_on_a_documented_path_is_405_with_allow(mixed: ModuleType, method: str) -> None:
    doc = document(mixed)
    for path, operations in {**doc["paths"], "/openapi.json": {"get": {}}}.items():
        allowed = sorted(m.upper() for m in operations)
        status, headers, body = call(mixed, method, path)
        if method in allowed:
            assert status != 405
            continue
        assert (status, body["error"]["code"], headers["Allow"]) == (405, "method_not_allowed", ", ".join(allowed))


def test_a_huge_unknown_field_is_quoted_in_short_and_the_message_still_says_what_the_body_takes(
        mixed: ModuleType) -> None:
    status, _, body = call(mixed, "POST", "/predict", {"instances": [[40, "pro", None, "north"]], "f" * 1_000_000: 1})
    assert (status, body["error"]["code"]) == (400, "unknown_field")
    assert body["error"]["message"].endswith("the body takes 'instances' and an optional 'id'")
    assert len(json.dumps(body)) < 1024
