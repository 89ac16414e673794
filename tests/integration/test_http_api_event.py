"""The HTTP API's payload format 1.0 event is answered exactly as the REST API's proxy event: one handler
serves both front doors (`-c slimserve:api=http`), whether IAM or a JWT authorizer let the caller in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from pipeline.local.apigw import LambdaContext, http_api_event, jwt_claims, proxy_event
from pipeline.local.emulation import REGION, emulated_account, upload_bundle
from pipeline.local.server import load_inference_handler

ROW = {"age": 41, "plan": "pro", "income": 52_000.0, "region": "north"}


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    with emulated_account():
        yield boto3.client("s3", region_name=REGION)


@pytest.fixture
def handler(s3: Any, mixed_bundle: Path) -> ModuleType:
    return load_inference_handler(upload_bundle(s3, mixed_bundle), MAX_ROWS="50")


def answer(module: ModuleType, event: dict[str, Any]) -> tuple[int, Any]:
    result = module.lambda_handler(event, LambdaContext())
    return result["statusCode"], json.loads(result["body"])


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/predict", json.dumps({"instances": [ROW, ROW]}), 200),
    ("POST", "/predict", json.dumps({"instances": []}), 400),  # the handler's error shape
    ("POST", "/predict", "{not json", 400),
    ("GET", "/health", None, 200),
    ("DELETE", "/predict", None, 405),
])
@pytest.mark.parametrize("auth", ["iam", "jwt"])
def test_a_payload_1_0_event_gets_the_rest_answer(handler: ModuleType, method: str, path: str,
                                                  body: str | None, status: int, auth: str) -> None:
    """With JWT the event carries claims and no IAM identity at all: the handler reads neither."""
    rest_status, rest_body = answer(handler, proxy_event(method, path, body, {"Content-Type": "application/json"}))
    http_status, http_body = answer(handler, http_api_event(method, path, body,
                                                            jwt_claims=jwt_claims() if auth == "jwt" else None))
    assert http_status == rest_status == status
    if isinstance(rest_body, dict):  # request ids differ per event; everything else is the same answer
        for shaped in (rest_body, http_body):
            shaped.pop("request_id", None)
            shaped.pop("id", None)
    assert http_body == rest_body
    if rest_status >= 400:
        assert set(http_body["error"]) >= {"code", "message"}
