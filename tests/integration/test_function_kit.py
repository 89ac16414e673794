"""What every function gets from the common kit, seen from outside: model_version on logs and
metrics, 503 answers that name no bundle internals, settings that fail at cold start."""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from functions.common.manifest import MANIFEST_FILE, MODEL_FILE, sha256_hex
from pipeline.local.apigw import LambdaContext, proxy_event
from pipeline.local.emulation import MODEL_BUCKET, REGION, emulated_account, upload_bundle
from pipeline.local.server import load_function, load_inference_handler

ONE_ROW = {"instances": [[1.0] * 30]}


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    with emulated_account():
        yield boto3.client("s3", region_name=REGION)


def invoke(module: ModuleType, body: Any, path: str = "/predict") -> tuple[int, str]:
    event = proxy_event("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    result = module.lambda_handler(event, LambdaContext())
    return result["statusCode"], result["body"]


@contextmanager
def log_lines(module: ModuleType) -> Iterator[list[dict[str, Any]]]:
    """Every record the function logs (INFO and up), rendered as the JSON Lambda would print."""
    lines: list[dict[str, Any]] = []
    formatter = module.logger.registered_formatter

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(formatter.format(record)))

    underlying = logging.getLogger(module.logger.service)
    capture, level = Capture(), underlying.level
    underlying.addHandler(capture)
    underlying.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        underlying.removeHandler(capture)
        underlying.setLevel(level)


def emf(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"_aws"')]


def test_log_lines_after_the_model_loads_carry_its_version(s3: Any, rf_bundle: Path) -> None:
    module = load_inference_handler(upload_bundle(s3, rf_bundle))
    with log_lines(module) as lines, redirect_stdout(io.StringIO()):
        for _ in range(2):  # each invocation starts a fresh logging context; the version stays
            assert invoke(module, {"instances": [{"no such feature": 1}]})[0] == 400
    refused = [line for line in lines if line["message"] == "request refused"]
    assert len(refused) == 2 and all(line.get("model_version") == "v1" for line in refused)


def test_invalid_requests_carry_the_model_version_dimension(s3: Any, rf_bundle: Path) -> None:
    module = load_inference_handler(upload_bundle(s3, rf_bundle))
    out = io.StringIO()
    with redirect_stdout(out):
        assert invoke(module, {"instances": [["not a number"] * 30]})[0] == 400
    invalid = [m for m in emf(out.getvalue()) if "InvalidRequests" in m]
    assert invalid and invalid[0]["model_version"] == "v1"
    assert any("model_version" in dims for dims in invalid[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"])


def _unloadable_onnx(bundle: Path) -> None:
    """A bundle whose hashes match but whose graph onnxruntime cannot load (its error text is long)."""
    (bundle / MODEL_FILE).write_bytes(b"\x08\x07garbage that is not an ONNX graph")
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["files"][MODEL_FILE] = sha256_hex((bundle / MODEL_FILE).read_bytes())
    manifest["sizes"][MODEL_FILE] = (bundle / MODEL_FILE).stat().st_size
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))


def _flipped_byte(bundle: Path) -> None:
    data = bytearray((bundle / MODEL_FILE).read_bytes())
    data[100] ^= 0x01
    (bundle / MODEL_FILE).write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["missing", "tampered", "unloadable"])
def test_no_model_answers_503_without_internals(s3: Any, rf_bundle: Path, tmp_path: Path, damage: str) -> None:
    if damage == "missing":
        uri, key_part = f"s3://{MODEL_BUCKET}/models/none/v0/", "models/none/v0"
    else:
        bundle = Path(shutil.copytree(rf_bundle, tmp_path / damage))
        (_flipped_byte if damage == "tampered" else _unloadable_onnx)(bundle)
        uri, key_part = upload_bundle(s3, bundle, bucket=f"{MODEL_BUCKET}-{damage}"), "models/"
    module = load_inference_handler(uri, RETRY_LOAD_SECONDS="0")  # every request tries (and logs) again
    with log_lines(module) as lines, redirect_stdout(io.StringIO()):
        status, text = invoke(module, ONE_ROW)
    body = json.loads(text)
    assert (status, body["error"]["code"]) == (503, "model_unavailable")
    for internal in (MODEL_BUCKET, key_part, "onnx", "ONNX", "sha256", "manifest"):
        assert internal not in text, internal
    reasons = [line["reason"] for line in lines if line["message"].startswith("model failed to load")]
    assert reasons and (MODEL_BUCKET in reasons[0] or "onnx" in reasons[0])  # the operator's log has the detail


def test_the_validation_function_refuses_to_start_without_its_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.common.errors import ConfigurationError

    monkeypatch.delenv("REGISTRY_TABLE", raising=False)
    with pytest.raises(ConfigurationError, match="REGISTRY_TABLE"):
        load_function("functions.validation.handler", "")
