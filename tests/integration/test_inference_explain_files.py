"""The inference function reads a bundle's explanation files on the first explain request: a tampered
one in S3 costs explanations (503, the reason logged), never predictions."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import boto3

from functions.common.explain import EXPLAIN_FILE
from pipeline.local.apigw import LambdaContext, proxy_event
from pipeline.local.emulation import REGION, emulated_account, upload_bundle
from pipeline.local.server import load_inference_handler

ROW = [1.0] * 30


def post(module: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    event = proxy_event("POST", "/predict", json.dumps(body), {"Content-Type": "application/json"})
    with redirect_stdout(io.StringIO()):
        result = module.lambda_handler(event, LambdaContext())
    return result["statusCode"], json.loads(result["body"])


def test_a_tampered_explanation_file_in_s3_refuses_explanations_not_predictions(rf_bundle: Path,
                                                                                tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(rf_bundle, tmp_path / "bundle"))
    document = json.loads((bundle / EXPLAIN_FILE).read_text())
    document["trees"][0]["value"][1] = [0.0, 1.0]
    (bundle / EXPLAIN_FILE).write_text(json.dumps(document))
    with emulated_account():
        module = load_inference_handler(upload_bundle(boto3.client("s3", region_name=REGION), bundle))
        status, body = post(module, {"instances": [ROW]})
        assert status == 200 and len(body["predictions"]) == 1
        status, body = post(module, {"instances": [ROW], "explain": True})
        assert status == 503 and body["error"]["code"] == "model_unavailable"
        assert "sha256" not in json.dumps(body) and EXPLAIN_FILE not in json.dumps(body)
        assert post(module, {"instances": [ROW]})[0] == 200  # predictions go on
