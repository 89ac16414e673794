"""Every route of the inference function answers exactly as it did when the resolver and pydantic answered
them all: status, headers and body, for the request shapes that matter (tests/integration/data holds the
answers recorded then; SLIMSERVE_RECORD_ROUTES=1 writes them again)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipeline.local.apigw import LambdaContext, proxy_event
from pipeline.local.emulation import REGION, emulated_account, upload_bundle
from pipeline.local.server import load_inference_handler

RECORDED = Path(__file__).parent / "data" / "inference_routes.json"
ROW = [1.0] * 30
JSON = {"Content-Type": "application/json"}

# (name, method, path, body text or None, headers)
CASES: list[tuple[str, str, str, str | None, dict[str, str]]] = [
    ("health", "GET", "/health", None, {}),
    ("openapi", "GET", "/openapi.json", None, {}),
    ("unknown route", "GET", "/nope", None, {}),
    ("unknown route, POST", "POST", "/predict/x", "{}", JSON),
    ("GET /predict", "GET", "/predict", None, {}),
    ("DELETE /predict", "DELETE", "/predict", None, {}),
    ("POST /health", "POST", "/health", "{}", JSON),
    ("PUT /openapi.json", "PUT", "/openapi.json", "{}", JSON),
    ("no content type", "POST", "/predict", json.dumps({"instances": [ROW]}), {}),
    ("text/plain", "POST", "/predict", json.dumps({"instances": [ROW]}), {"Content-Type": "text/plain"}),
    ("charset", "POST", "/predict", json.dumps({"instances": [ROW]}),
     {"content-type": "application/json; charset=utf-8"}),
    ("empty body", "POST", "/predict", "", JSON),
    ("not json", "POST", "/predict", "{", JSON),
    ("json null", "POST", "/predict", "null", JSON),
    ("json list", "POST", "/predict", "[1]", JSON),
    ("json string", "POST", "/predict", '"x"', JSON),
    ("json number", "POST", "/predict", "3", JSON),
    ("no instances", "POST", "/predict", "{}", JSON),
    ("other key", "POST", "/predict", json.dumps({"rows": []}), JSON),
    ("extra key", "POST", "/predict", json.dumps({"instances": [ROW], "colour": 1}), JSON),
    ("two extra keys", "POST", "/predict", json.dumps({"instances": [ROW], "b": 1, "a": 2}), JSON),
    ("extra key and missing", "POST", "/predict", json.dumps({"b": 1}), JSON),
    ("instances null", "POST", "/predict", json.dumps({"instances": None}), JSON),
    ("instances string", "POST", "/predict", json.dumps({"instances": "x"}), JSON),
    ("instances object", "POST", "/predict", json.dumps({"instances": {"a": 1}}), JSON),
    ("instances number", "POST", "/predict", json.dumps({"instances": 1}), JSON),
    ("empty instances", "POST", "/predict", json.dumps({"instances": []}), JSON),
    ("empty instances and bad id", "POST", "/predict", json.dumps({"instances": [], "id": 1}), JSON),
    ("empty instances and extra", "POST", "/predict", json.dumps({"instances": [], "x": 1}), JSON),
    ("row number", "POST", "/predict", json.dumps({"instances": [7]}), JSON),
    ("row string", "POST", "/predict", json.dumps({"instances": ["x"]}), JSON),
    ("row null", "POST", "/predict", json.dumps({"instances": [None]}), JSON),
    ("second row bool", "POST", "/predict", json.dumps({"instances": [ROW, True]}), JSON),
    ("id number", "POST", "/predict", json.dumps({"instances": [ROW], "id": 5}), JSON),
    ("id list", "POST", "/predict", json.dumps({"instances": [ROW], "id": ["a"]}), JSON),
    ("id too long", "POST", "/predict", json.dumps({"instances": [ROW], "id": "x" * 257}), JSON),
    ("id null", "POST", "/predict", json.dumps({"instances": [ROW], "id": None}), JSON),
    ("explain string", "POST", "/predict", json.dumps({"instances": [ROW], "explain": "true"}), JSON),
    ("explain one", "POST", "/predict", json.dumps({"instances": [ROW], "explain": 1}), JSON),
    ("explain null", "POST", "/predict", json.dumps({"instances": [ROW], "explain": None}), JSON),
    ("bad id and bad explain", "POST", "/predict", json.dumps({"instances": [ROW], "id": 1, "explain": 0}), JSON),
    ("bad row and bad id", "POST", "/predict", json.dumps({"instances": [1], "id": 1}), JSON),
    ("short row", "POST", "/predict", json.dumps({"instances": [[1.0, 2.0]]}), JSON),
    ("string cell", "POST", "/predict", json.dumps({"instances": [["a"] * 30]}), JSON),
    ("NaN", "POST", "/predict", '{"instances": [[NaN' + ", 1" * 29 + "]]}", JSON),
    ("duplicate key", "POST", "/predict", '{"instances": [1], "instances": [' + json.dumps(ROW) + "]}", JSON),
    ("trailing garbage", "POST", "/predict", json.dumps({"instances": [ROW]}) + "x", JSON),
    ("keyed row, unknown feature", "POST", "/predict", json.dumps({"instances": [{"x": 1}]}), JSON),
    ("base64 body", "POST", "/predict", "e30=", JSON),
    ("one row", "POST", "/predict", json.dumps({"instances": [ROW], "id": "abc"}), JSON),
    ("two rows", "POST", "/predict", json.dumps({"instances": [ROW, [2.0] * 30]}), JSON),
    ("explain", "POST", "/predict", json.dumps({"instances": [ROW], "explain": True}), JSON),
    ("explain false", "POST", "/predict", json.dumps({"instances": [ROW], "explain": False}), JSON),
]


@pytest.fixture(scope="module")
def handler(rf_bundle: Path) -> Iterator[Any]:
    with emulated_account():
        uri = upload_bundle(boto3.client("s3", region_name=REGION), rf_bundle)
        yield load_inference_handler(uri, MAX_ROWS="10000", MAX_BODY_BYTES=str(5 * 1024 * 1024))


def answer(module: Any, method: str, path: str, body: str | None, headers: dict[str, str]) -> dict[str, Any]:
    event = proxy_event(method, path, body, headers)
    event["requestContext"]["requestId"] = "recorded"  # type: ignore[index]
    if path == "/predict" and body == "e30=":
        event["isBase64Encoded"] = True
    with redirect_stdout(io.StringIO()):
        result = module.lambda_handler(event, LambdaContext())
    headers = {k.lower(): v for k, v in (result.get("multiValueHeaders") or result.get("headers") or {}).items()}
    text = result["body"]
    return {"status": result["statusCode"], "headers": headers, "body": json.loads(text) if text else text}


def comparable(name: str, got: dict[str, Any]) -> dict[str, Any]:
    if name == "openapi":  # the rows' schema comes from the bundle's manifest, not from the handler
        del got["body"]["components"]["schemas"]["PredictRequest"]["properties"]["instances"]
        got["body"]["info"]["description"] = got["body"]["info"]["description"].split(":")[0]
    if got["status"] == 200 and "predictions" in got["body"]:  # the model's figures are the bundle's
        got["body"] = {k: len(v) if isinstance(v, list) else v for k, v in got["body"].items()}
    return got


def test_every_route_answers_as_recorded(handler: Any) -> None:
    answers = {name: comparable(name, answer(handler, *case)) for name, *case in CASES}
    if os.environ.get("SLIMSERVE_RECORD_ROUTES") == "1":
        RECORDED.write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(RECORDED.read_text())
    for name in answers:
        assert answers[name] == recorded[name], name
