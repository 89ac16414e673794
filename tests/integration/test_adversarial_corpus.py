"""The adversarial requests found by hand, replayed over a socket against the local server on every run.

Each one must get its expected status in the error shape, with a small body and small log lines, however
large or strange the request. Nothing here measures time: the cost caps have their own counting tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipeline.local.emulation import REGION, emulated_account, upload_bundle
from pipeline.local.server import load_inference_handler
from tests.integration.raw_http import RawClient, serving

MAX_ERROR_BODY = 2048
MAX_LOG_LINE = 4096
NAMES: list[str] = []  # the rf bundle's 30 features, filled in by the fixture


def row(**changes: Any) -> dict[str, Any]:
    return {**dict.fromkeys(NAMES, 1.0), **changes}


def post(body: str | bytes, content_type: str = "application/json") -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return (f"POST /predict HTTP/1.1\r\nHost: local\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def raw(head: str) -> bytes:
    return (head.replace("\n", "\r\n") + "\r\n\r\n").encode()


HUGE = 4 * 1024 * 1024
CORPUS: list[tuple[str, Callable[[], bytes], int, str]] = [
    ("unknown-key flood, 188,000 keys", lambda: post(json.dumps(
        {"instances": [{f"unknown_key_{i}": 1.0 for i in range(188_000)}]})), 400, "missing_feature"),
    ("unknown-key flood beside every feature", lambda: post(json.dumps(
        {"instances": [{**row(), **{f"k{i}": 1 for i in range(100_000)}}]})), 400, "unknown_feature"),
    ("4 MB unknown key", lambda: post(json.dumps({"instances": [{**row(), "k" * HUGE: 1.0}]})), 400,
     "unknown_feature"),
    ("4 MB misspelt-looking key", lambda: post(json.dumps({"instances": [{"mean radius" * (HUGE // 11): 1}]})),
     400, "missing_feature"),
    ("4 MB top-level field", lambda: post(json.dumps({"instances": [row()], "f" * HUGE: 1})), 400,
     "unknown_field"),
    ("4 MB string value", lambda: post(json.dumps({"instances": [row(**{"mean radius": "x" * HUGE})]})), 400,
     "wrong_type"),
    ("4 MB id", lambda: post(json.dumps({"instances": [row()], "id": "i" * HUGE})), 400, "wrong_type"),
    ("arrays nested 100,000 deep", lambda: post('{"instances": [' + "[" * 100_000 + "]" * 100_000 + "]}"), 400,
     "malformed_json"),
    ("objects nested 100,000 deep", lambda: post('{"instances": [' + '{"a":' * 100_000 + "1" + "}" * 100_000
                                                 + "]}"), 400, "malformed_json"),
    ("a cell nested 150 deep", lambda: post('{"instances": [[' + "[" * 150 + "]" * 150 + "]]}"), 400,
     "wrong_length"),
    ("5,000-digit integer", lambda: post('{"instances": [[' + "9" * 5000 + "]]}"), 400, "malformed_json"),
    ("400-digit integer", lambda: post('{"instances": [[' + "9" * 400 + ", 1" * 29 + "]]}"), 400, "out_of_range"),
    ("1e400", lambda: post('{"instances": [[1e400' + ", 1" * 29 + "]]}"), 400, "non_finite"),
    ("NaN literal", lambda: post('{"instances": [[NaN' + ", 1" * 29 + "]]}"), 400, "non_finite"),
    ("lone surrogate key", lambda: post('{"instances": [{"\\ud800": 1}]}'), 400, "malformed_json"),
    ("invalid UTF-8", lambda: post(b'{"instances": [[\xff\xfe]]}'), 400, "malformed_json"),
    ("100,000 values in a row", lambda: post(json.dumps({"instances": [[1.0] * 100_000]})), 400, "wrong_length"),
    ("10,001 rows", lambda: post(json.dumps({"instances": [[1.0] * 30] * 10_001})), 400, "too_many_rows"),
    ("body over the handler's limit", lambda: post(" " * (5 * 1024 * 1024 + 1)), 413, "payload_too_large"),
    ("empty body", lambda: post(""), 400, "malformed_json"),
    ("not JSON media type", lambda: post("{}", "text/plain"), 415, "unsupported_media_type"),
    ("DELETE /predict", lambda: raw("DELETE /predict HTTP/1.1\nHost: local"), 405, "method_not_allowed"),
    ("made-up method", lambda: raw("BREW /predict HTTP/1.1\nHost: local"), 405, "method_not_allowed"),
    ("POST /health", lambda: raw("POST /health HTTP/1.1\nHost: local\nContent-Length: 0"), 405,
     "method_not_allowed"),
    ("unknown path", lambda: raw("GET /../../etc/passwd HTTP/1.1\nHost: local"), 404, "not_found"),
    ("negative Content-Length", lambda: raw("POST /predict HTTP/1.1\nContent-Length: -1"), 400, "bad_request"),
    ("Content-Length not a number", lambda: raw("POST /predict HTTP/1.1\nContent-Length: 12abc"), 400,
     "bad_request"),
    ("Content-Length of a terabyte", lambda: raw("POST /predict HTTP/1.1\nContent-Length: 1099511627776"), 413,
     "payload_too_large"),
    ("conflicting Content-Length", lambda: raw("POST /predict HTTP/1.1\nContent-Length: 2\nContent-Length: 3"),
     400, "bad_request"),
    ("chunked body", lambda: raw("POST /predict HTTP/1.1\nTransfer-Encoding: chunked"), 411, "length_required"),
    ("200 headers", lambda: raw("GET /health HTTP/1.1\n" + "\n".join(f"X-{i}: y" for i in range(200))), 431,
     "headers_too_large"),
    ("binary request line", lambda: b"\x00\x01\x02\x03 \xff\xfe\r\n\r\n", 400, "bad_request"),
]


@pytest.fixture(scope="module")
def base(rf_bundle: Path) -> Iterator[int]:
    with emulated_account():
        module = load_inference_handler(upload_bundle(boto3.client("s3", region_name=REGION), rf_bundle))
        NAMES[:] = module.holder.load().manifest.feature_names
        with serving(module.lambda_handler) as server:
            yield server.server_address[1]


@pytest.mark.parametrize(("make", "status", "code"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_each_adversarial_request_gets_a_small_clear_refusal(base: int, capfd: pytest.CaptureFixture[str],
                                                             make: Callable[[], bytes], status: int,
                                                             code: str) -> None:
    client = RawClient(base)
    try:
        client.send(make())
        answer = client.read()
    finally:
        client.close()
    answer.assert_error_shape(status, code)
    assert len(answer.body) < MAX_ERROR_BODY
    logged = capfd.readouterr()
    assert max((len(line) for line in (logged.out + logged.err).splitlines()), default=0) < MAX_LOG_LINE


def test_the_server_still_answers_after_the_whole_corpus(base: int) -> None:
    client = RawClient(base)
    try:
        answer = client.request("POST", "/predict", json.dumps({"instances": [row()]}).encode(),
                                {"Content-Type": "application/json"})
    finally:
        client.close()
    assert answer.status == 200 and len(answer.json()["predictions"]) == 1
