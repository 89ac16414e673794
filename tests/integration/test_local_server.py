"""The local server over raw sockets: keep-alive, every status it makes itself in the API's error shape,
and a listen backlog that holds a burst of clients."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipeline.local.emulation import REGION, emulated_account, upload_bundle
from pipeline.local.server import LISTEN_BACKLOG, MAX_LOCAL_BODY, LocalApiServer, load_inference_handler, make_server
from tests.integration.raw_http import RawClient, serving

ROW = json.dumps({"instances": [[1.0] * 30]}).encode()


@pytest.fixture(scope="module")
def handler(rf_bundle: Path) -> Iterator[Any]:
    with emulated_account():
        module = load_inference_handler(upload_bundle(boto3.client("s3", region_name=REGION), rf_bundle))
        yield module.lambda_handler


@pytest.fixture
def server(handler: Any) -> Iterator[LocalApiServer]:
    with serving(handler) as srv:
        yield srv


@pytest.fixture
def client(server: LocalApiServer) -> Iterator[RawClient]:
    c = RawClient(server.server_address[1])
    yield c
    c.close()


def test_keep_alive_answers_many_requests_on_one_connection(client: RawClient) -> None:
    first = client.request("POST", "/predict", ROW, {"Content-Type": "application/json"})
    second = client.request("GET", "/health")
    third = client.request("POST", "/predict", b'{"instances": []}', {"Content-Type": "application/json"})
    assert first.version == "HTTP/1.1" and first.status == 200 and len(first.json()["predictions"]) == 1
    assert second.status == 200 and second.json()["status"] == "ok"
    third.assert_error_shape(400, "empty_instances")
    assert all("close" not in a.headers.get("connection", "") for a in (first, second, third))


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("BREW", "/predict", "POST"), ("DELETE", "/predict", "POST"), ("POST", "/health", "GET"),
    ("OPTIONS", "/openapi.json", "GET"), ("PUT", "/predict", "POST")])
def test_a_wrong_method_is_405_with_allow_and_the_connection_stays_open(client: RawClient, method: str, path: str,
                                                                        allow: str) -> None:
    answer = client.request(method, path)
    answer.assert_error_shape(405, "method_not_allowed")
    assert answer.headers["allow"] == allow
    assert client.request("GET", "/health").status == 200


def test_head_answers_headers_only_and_keeps_the_stream_in_step(client: RawClient) -> None:
    answer = client.request("HEAD", "/health")
    assert answer.status == 405 and answer.headers["allow"] == "GET" and int(answer.headers["content-length"]) > 0
    assert client.request("GET", "/health").json()["status"] == "ok"


def test_an_unknown_path_is_404_in_the_error_shape(client: RawClient) -> None:
    client.request("GET", "/nope").assert_error_shape(404, "not_found")


FRAMING = [
    ("letters", ["Content-Length: abc"], 400, "bad_request"),
    ("negative", ["Content-Length: -5"], 400, "bad_request"),
    ("exponent", ["Content-Length: 1e3"], 400, "bad_request"),
    ("plus sign", ["Content-Length: +5"], 400, "bad_request"),
    ("two different lengths", ["Content-Length: 5", "Content-Length: 6"], 400, "bad_request"),
    ("5,000 digits", ["Content-Length: " + "9" * 5000], 413, "payload_too_large"),
    ("over the server's limit", [f"Content-Length: {MAX_LOCAL_BODY + 1}"], 413, "payload_too_large"),
    ("chunked", ["Transfer-Encoding: chunked"], 411, "length_required"),
    ("101 headers", [f"X-Filler-{i}: x" for i in range(101)], 431, "headers_too_large"),
    ("a 70,000-byte header", ["X-Long: " + "x" * 70_000], 431, "headers_too_large"),
]


@pytest.mark.parametrize(("headers", "status", "code"), [f[1:] for f in FRAMING], ids=[f[0] for f in FRAMING])
def test_a_request_the_server_refuses_itself_gets_the_error_shape_then_close(client: RawClient, headers: list[str],
                                                                              status: int, code: str) -> None:
    client.send(("POST /predict HTTP/1.1\r\nHost: local\r\nContent-Type: application/json\r\n"
                 + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode())
    answer = client.read()
    answer.assert_error_shape(status, code)
    assert answer.headers["connection"] == "close" and client.closed_by_server()


@pytest.mark.parametrize(("request_line", "status", "code"), [
    (b"\x16\x03\x01\x02\x00 hello", 400, "bad_request"),
    (b"GET", 400, "bad_request"),
    (b"GET /health HTTP/2.0", 505, "http_version_not_supported"),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1", 414, "uri_too_long"),
], ids=["tls hello", "one word", "http/2", "70,000-byte path"])
def test_a_malformed_request_line_gets_the_error_shape(client: RawClient, request_line: bytes, status: int,
                                                       code: str) -> None:
    client.send(request_line + b"\r\n\r\n")
    client.read().assert_error_shape(status, code)
    assert client.closed_by_server()


def test_a_body_that_never_arrives_is_refused_when_the_connection_times_out(server: LocalApiServer,
                                                                            client: RawClient,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server.RequestHandlerClass, "timeout", 1)
    late = RawClient(server.server_address[1])  # opened after the change: its socket gets the short timeout
    try:
        late.send(b"POST /predict HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        late.read().assert_error_shape(408, "request_timeout")
        assert late.closed_by_server()
    finally:
        late.close()


def test_the_listen_backlog_holds_64_clients_that_arrive_before_any_is_accepted(handler: Any) -> None:
    srv = make_server(handler, port=0, quiet=True)
    assert srv.request_queue_size == LISTEN_BACKLOG == 64
    clients = []
    try:
        for _ in range(64):  # nothing accepts yet: every one of these waits in the kernel's queue
            c = RawClient(srv.server_address[1])
            c.send(b"GET /health HTTP/1.1\r\nHost: local\r\n\r\n")
            clients.append(c)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        answers = [c.read() for c in clients]
    finally:
        srv.shutdown()
        srv.server_close()
        for c in clients:
            c.close()
    assert [a.status for a in answers] == [200] * 64


def test_http_1_0_without_keep_alive_is_answered_then_closed(client: RawClient) -> None:
    client.send(b"GET /health HTTP/1.0\r\n\r\n")
    assert client.read().status == 200 and client.closed_by_server()
