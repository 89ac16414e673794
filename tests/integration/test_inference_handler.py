"""The inference handler with its model in (moto) S3: answers, every bad input, failing closed."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.local.apigw import LambdaContext, proxy_event
from pipeline.local.emulation import MODEL_BUCKET, REGION, emulated_account, upload_bundle
from pipeline.local.server import load_inference_handler
from tests.conftest import examples


@pytest.fixture(scope="module")
def account() -> Iterator[Any]:
    with emulated_account():
        yield boto3.client("s3", region_name=REGION)


def _handler(account: Any, bundle: Path, **settings: str) -> ModuleType:
    return load_inference_handler(upload_bundle(account, bundle), **settings)


@pytest.fixture
def rf(account: Any, rf_bundle: Path) -> ModuleType:
    # The handler is a module singleton (one model per execution environment): reload it per test.
    return _handler(account, rf_bundle, MAX_ROWS="10000", MAX_BODY_BYTES=str(5 * 1024 * 1024))


def invoke(module: ModuleType, method: str, path: str, body: Any = None,
           content_type: str | None = "application/json") -> tuple[int, dict[str, Any]]:
    text = body if isinstance(body, str) or body is None else json.dumps(body)
    headers = {"Content-Type": content_type} if content_type else {}
    result = module.lambda_handler(proxy_event(method, path, text, headers), LambdaContext())
    return result["statusCode"], json.loads(result["body"])


def features(module: ModuleType) -> list[str]:
    return module.holder.load().manifest.feature_names


def test_predict_keyed_rows(rf: ModuleType) -> None:
    names = features(rf)
    status, body = invoke(rf, "POST", "/predict", {"instances": [dict.fromkeys(names, 1.0)], "id": "abc"})
    assert status == 200
    assert set(body) == {"predictions", "probabilities", "model_version", "request_id", "id"}
    assert body["predictions"][0] in (0, 1) and len(body["probabilities"][0]) == 2
    assert body["model_version"] == "v1" and body["id"] == "abc" and body["request_id"]


def test_ordered_arrays_answer_like_keyed_rows(rf: ModuleType) -> None:
    names = features(rf)
    rows = [[float(i + j) for j in range(len(names))] for i in range(5)]
    _, by_array = invoke(rf, "POST", "/predict", {"instances": rows})
    _, by_name = invoke(rf, "POST", "/predict", {"instances": [dict(zip(names, r, strict=True)) for r in rows]})
    assert by_array["probabilities"] == by_name["probabilities"]


def test_ten_thousand_rows_in_one_request(rf: ModuleType) -> None:
    rows = [[1.0] * len(features(rf))] * 10_000
    status, body = invoke(rf, "POST", "/predict", {"instances": rows})
    assert status == 200 and len(body["predictions"]) == 10_000


def test_regressor_answers_numbers_without_probabilities(account: Any, regression_bundle: Path) -> None:
    module = _handler(account, regression_bundle)
    status, body = invoke(module, "POST", "/predict", {"instances": [[0.0] * len(features(module))]})
    assert status == 200 and isinstance(body["predictions"][0], float) and "probabilities" not in body


def test_categorical_bundle_serves_strings_and_nulls(account: Any, mixed_bundle: Path) -> None:
    module = _handler(account, mixed_bundle)
    row = {"age": 70, "plan": "pro", "income": None, "region": "north"}
    status, body = invoke(module, "POST", "/predict", {"instances": [row]})
    assert status == 200 and body["predictions"][0] in ("yes", "no")
    status, body = invoke(module, "POST", "/predict", {"instances": [{**row, "plan": "gold"}]})
    assert status == 200  # the model's OneHotEncoder(handle_unknown="ignore") takes an unseen category
    status, body = invoke(module, "POST", "/predict", {"instances": [{**row, "plan": None}]})
    assert (status, body["error"]["code"], body["error"]["field"]) == (400, "null_value", "instances[0].plan")


BAD_INPUTS = [
    ("malformed JSON", '{"instances": [', "application/json", 400, "malformed_json", "body"),
    ("wrong content type", '{"instances": [[1]]}', "text/csv", 415, "unsupported_media_type", "content-type"),
    ("no content type", '{"instances": [[1]]}', None, 415, "unsupported_media_type", "content-type"),
    ("body not an object", "[1, 2]", "application/json", 400, "wrong_type", "body"),
    ("no instances", {"rows": []}, "application/json", 400, "missing_field", "instances"),
    ("extra top-level field", {"instances": [], "debug": True}, "application/json", 400, "unknown_field", "debug"),
    ("instances not a list", {"instances": "x"}, "application/json", 400, "wrong_type", "instances"),
    ("empty instances", {"instances": []}, "application/json", 400, "empty_instances", "instances"),
    ("row of wrong type", {"instances": [7]}, "application/json", 400, "wrong_type", "instances[0]"),
    ("NaN literal", '{"instances": [[NaN' + ", 1" * 29 + "]]}", "application/json", 400, "non_finite",
     "instances[0].mean radius"),
    ("Infinity literal", '{"instances": [[1' + ", 1" * 28 + ", -Infinity]]}", "application/json", 400,
     "non_finite", "instances[0].worst fractal dimension"),
    ("too few values", {"instances": [[1.0, 2.0]]}, "application/json", 400, "wrong_length", "instances[0]"),
]


@pytest.mark.parametrize(("label", "body", "content_type", "status", "code", "field"), BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_clear_4xx(rf: ModuleType, label: str, body: Any, content_type: str | None, status: int,
                                  code: str, field: str) -> None:
    got_status, got = invoke(rf, "POST", "/predict", body, content_type)
    assert (got_status, got["error"]["code"], got["error"].get("field")) == (status, code, field), label
    assert got["request_id"] and got["error"]["message"]


@pytest.mark.parametrize(("change", "code"), [
    (lambda r, n: {k: v for k, v in r.items() if k != n[0]}, "missing_feature"),
    (lambda r, n: {**r, "colour": 1.0}, "unknown_feature"),
    (lambda r, n: {**{k: v for k, v in r.items() if k != "mean radius"}, "mean radias": 1.0}, "misspelled_feature"),
    (lambda r, n: {**r, n[0]: "12.5"}, "wrong_type"),
    (lambda r, n: {**r, n[0]: None}, "null_value"),
    (lambda r, n: {**r, n[0]: 1e300}, "out_of_range"),
])
def test_feature_errors_name_the_field(rf: ModuleType, change: Any, code: str) -> None:
    names = features(rf)
    row = change(dict.fromkeys(names, 1.0), names)
    status, body = invoke(rf, "POST", "/predict", {"instances": [dict.fromkeys(names, 1.0), row]})
    assert status == 400 and body["error"]["code"] == code
    assert body["error"]["field"].startswith("instances[1].")


def test_too_many_rows(account: Any, rf_bundle: Path) -> None:
    module = _handler(account, rf_bundle, MAX_ROWS="10")
    status, body = invoke(module, "POST", "/predict", {"instances": [[1.0] * 30] * 11})
    assert (status, body["error"]["code"]) == (400, "too_many_rows")


def test_body_too_large_is_refused_before_parsing(account: Any, rf_bundle: Path) -> None:
    module = _handler(account, rf_bundle, MAX_BODY_BYTES="1000")
    status, body = invoke(module, "POST", "/predict", "x" * 1001)  # not even JSON: size is checked first
    assert (status, body["error"]["code"]) == (413, "payload_too_large")


def test_health_and_openapi(rf: ModuleType) -> None:
    status, body = invoke(rf, "GET", "/health", content_type=None)
    assert status == 200 and body == {"status": "ok", "model_name": "cancer", "model_version": "v1"}
    status, doc = invoke(rf, "GET", "/openapi.json", content_type=None)
    assert status == 200 and doc["openapi"].startswith("3.")
    assert "post" in doc["paths"]["/predict"] and "PredictRequest" in doc["components"]["schemas"]


def test_unknown_route_is_404(rf: ModuleType) -> None:
    status, _ = invoke(rf, "GET", "/nope", content_type=None)
    assert status == 404


def test_logs_never_contain_the_payload(rf: ModuleType) -> None:
    names = features(rf)
    secret = 987654.321
    out = io.StringIO()
    with redirect_stdout(out):
        invoke(rf, "POST", "/predict", {"instances": [dict.fromkeys(names, secret)]})
        invoke(rf, "POST", "/predict", {"instances": [{**dict.fromkeys(names, secret), names[0]: "leak-me"}]})
    logs = out.getvalue()
    assert "request refused" in logs or "PredictedRows" in logs  # something was logged
    assert "987654" not in logs and "leak-me" not in logs


def test_metrics_carry_the_model_version(rf: ModuleType) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        invoke(rf, "POST", "/predict", {"instances": [[1.0] * 30]})
    emf = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith('{"_aws"')]
    assert any(m.get("model_version") == "v1" and m.get("PredictedRows") in (1.0, [1.0]) for m in emf)


def test_tampered_model_in_s3_fails_closed(account: Any, rf_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(rf_bundle, tmp_path / "tampered"))
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[100] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    module = _handler(account, bundle)
    assert module.holder.last_error is not None and "sha256" in module.holder.last_error.message
    status, body = invoke(module, "POST", "/predict", {"instances": [[1.0] * 30]})
    assert (status, body["error"]["code"]) == (503, "model_unavailable")
    assert invoke(module, "GET", "/health", content_type=None)[0] == 503


def test_missing_model_fails_closed(account: Any) -> None:
    module = load_inference_handler(f"s3://{MODEL_BUCKET}/models/none/v0/")
    status, body = invoke(module, "POST", "/predict", {"instances": [[1.0]]})
    assert (status, body["error"]["code"]) == (503, "model_unavailable")
    assert MODEL_BUCKET not in body["error"]["message"]  # the reason is logged, not answered


def test_missing_setting_fails_at_cold_start_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.common.errors import ConfigurationError
    from functions.common.settings import InferenceSettings

    with pytest.raises(ConfigurationError, match="MODEL_URI"):
        InferenceSettings.from_env({})
    with pytest.raises(ConfigurationError, match="MAX_ROWS"):
        InferenceSettings.from_env({"MODEL_URI": "s3://b/p/", "MAX_ROWS": "lots"})


def test_debug_logging_never_contains_the_payload(account: Any, rf_bundle: Path) -> None:
    """Even with Powertools' debug logging on, no log record renders the request's rows."""
    import logging

    module = _handler(account, rf_bundle)
    secret = 123456.789
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    powertools = logging.getLogger("aws_lambda_powertools")
    capture, level = Capture(level=logging.DEBUG), powertools.level
    powertools.addHandler(capture)
    powertools.setLevel(logging.DEBUG)
    body = json.dumps({"instances": [[secret] * 30]})
    try:
        invoke(module, "POST", "/predict", body)
        invoke(module, "POST", "/predict", json.dumps({"instances": [[secret] * 29]}))  # refused: the row is wrong
    finally:
        powertools.removeHandler(capture)
        powertools.setLevel(level)
    assert any("Adding metric" in r for r in records)  # debug records were captured
    assert not any("123456" in r for r in records)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=40,
)
BODIES = st.one_of(
    st.builds(lambda rows: {"instances": rows}, st.lists(st.lists(JSON | st.floats(), max_size=31), max_size=4)),
    st.builds(lambda rows: {"instances": rows}, st.lists(st.dictionaries(
        st.sampled_from(["mean radius", "mean texture", "worst area", "x"]), JSON, max_size=4), max_size=3)),
    JSON,
)


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, raw=st.booleans())
def test_any_body_gets_an_answer_never_a_500(rf: ModuleType, body: Any, raw: bool) -> None:
    text = json.dumps(body) if not raw else json.dumps(body)[: max(1, len(json.dumps(body)) // 2)]
    status, answer = invoke(rf, "POST", "/predict", text)
    assert status in (200, 400, 413), answer
    if status != 200:
        assert answer["error"]["code"] and answer["error"]["message"] and answer["request_id"]


def test_an_unexpected_error_on_the_hot_route_is_a_bare_500(rf: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(instances: Any) -> Any:
        raise RuntimeError("internal detail")

    monkeypatch.setattr(rf.holder.load(), "predict", broken)
    with redirect_stdout(io.StringIO()):
        status, body = invoke(rf, "POST", "/predict", {"instances": [[1.0] * 30]})
    assert status == 500 and "internal detail" not in json.dumps(body) and body["request_id"]
