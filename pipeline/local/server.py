"""A local HTTP endpoint in front of the real handlers.

Each HTTP request becomes the event the Lambda receives from the stack's front door (the REST API's proxy
event, or the HTTP API's payload 1.0 event), and the handler's proxy response becomes the HTTP response:
one code path, locally and on AWS.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from functions.common.errors import ECHO_LIMIT, INTERNAL_ERROR_BODY, clip

from .apigw import FrontDoor, GatewayAnswer, LambdaContext

MAX_LOCAL_BODY = 64 * 1024 * 1024  # far above the handler's own limit, so the handler decides
LISTEN_BACKLOG = 64  # connections the kernel holds while every thread is busy
IDLE_TIMEOUT_SECONDS = 60  # a kept-alive connection idle this long is closed; so is a body that stalls
Handler = Callable[[dict[str, Any], Any], Any]
_DIGITS = re.compile(r"[0-9]+")
_SERVER_ERROR_CODES = {400: "bad_request", 408: "request_timeout", 411: "length_required",
                       413: "payload_too_large", 414: "uri_too_long", 431: "headers_too_large",
                       501: "not_implemented", 505: "http_version_not_supported"}


def load_inference_handler(model_uri: str, **settings: str) -> ModuleType:
    """Import (or re-import) the inference handler with its settings in the environment."""
    return load_function("functions.inference.handler", model_uri, **settings)


def load_function(name: str, model_uri: str, **settings: str) -> ModuleType:
    """Import (or re-import: a fresh execution environment) a function's handler module with its
    settings in the environment, as Lambda does at cold start."""
    os.environ["MODEL_URI"] = model_uri
    for key, value in settings.items():
        os.environ[key.upper()] = value
    if name in sys.modules:
        return importlib.reload(sys.modules[name])
    return importlib.import_module(name)


class LocalApiServer(ThreadingHTTPServer):
    """One thread per connection; a listen backlog that holds a burst of clients."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True


class _RequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; every answer, the server's own refusals included, in the API's error shape."""

    lambda_handler: Any = None
    routes: Mapping[tuple[str, str], Handler] = {}
    """(method, path) -> the route's handler; a request on no route goes to lambda_handler (REST API) or is the
    HTTP API's own 404."""
    front_door = FrontDoor()
    quiet = False
    server_version = "slimserve-local"
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # a malformed request line still gets a status line and headers
    timeout = IDLE_TIMEOUT_SECONDS
    disable_nagle_algorithm = True  # headers and body leave at once: no delayed-ACK stall on kept-alive connections

    def __getattr__(self, name: str) -> Any:
        # Every method reaches the handler, which answers 405 with an Allow header where a path lacks it.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        length = self._content_length()
        if length is None:
            return
        try:
            raw = self.rfile.read(length) if length else b""
        except TimeoutError:
            self.send_error(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within {self.timeout} s")
            return
        if len(raw) < length:  # the client closed before sending the body it announced
            self.close_connection = True
            return
        handler, event = self._route(raw.decode("utf-8", errors="replace") if raw else None)
        if isinstance(event, GatewayAnswer):
            self._send_json(event.status, event.body, extra=list(event.headers.items()))
            return
        try:
            result = handler(event, LambdaContext())
        except Exception:  # the handler answers every error itself; this is the last line of defence
            traceback.print_exc()
            self._send_json(500, {"error": INTERNAL_ERROR_BODY, "request_id": None}, close=True)
            return
        headers = list((result.get("headers") or {}).items())
        headers += [(k, v) for k, values in (result.get("multiValueHeaders") or {}).items() for v in values]
        self._send(int(result.get("statusCode", 500)), (result.get("body") or "").encode("utf-8"), headers)

    def _route(self, body: str | None) -> tuple[Handler, dict[str, Any] | GatewayAnswer]:
        """The handler of the request's route, and its event or the API's own answer."""
        cls, path = type(self), urlsplit(self.path).path
        handler = cls.routes.get((self.command, path))
        if handler is None and cls.front_door.api == "http" and cls.routes:
            return cls.lambda_handler, GatewayAnswer(404, "Not Found")  # an HTTP API answers no route itself
        if handler is None:  # the REST API: the path's function answers a method it lacks (405)
            handler = next((h for (_, p), h in cls.routes.items() if p == path), cls.lambda_handler)
        event = cls.front_door.event(self.command, self.path, body, dict(self.headers.items()),
                                     source_ip=self.client_address[0])
        return handler, event

    def _content_length(self) -> int | None:
        """The announced body length, or None after refusing a request whose framing cannot be trusted."""
        if "Transfer-Encoding" in self.headers:
            self.send_error(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length (no chunked bodies)")
            return None
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            return 0
        text = values.pop()
        if values or not _DIGITS.fullmatch(text):
            self.send_error(HTTPStatus.BAD_REQUEST, "Content-Length must be one non-negative whole number")
            return None
        if len(text) > len(str(MAX_LOCAL_BODY)) or int(text) > MAX_LOCAL_BODY:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body may be at most {MAX_LOCAL_BODY} bytes")
            return None
        return int(text)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The server's own refusals (bad request line, too many headers, bad framing) in the API's error shape."""
        status = HTTPStatus(code)
        text = clip(f"{message or status.phrase}" + (f": {explain}" if explain else ""), ECHO_LIMIT * 4)
        error = {"code": _SERVER_ERROR_CODES.get(code, status.phrase.lower().replace(" ", "_")), "message": text}
        self._send_json(code, {"error": error, "request_id": None}, close=True)

    def _send_json(self, status: int, body: dict[str, Any], close: bool = False,
                   extra: list[tuple[str, str]] | None = None) -> None:
        if close:
            self.close_connection = True
        headers = [("Content-Type", "application/json")] + ([("Connection", "close")] if close else []) + (extra or [])
        self._send(status, json.dumps(body).encode("utf-8"), headers)

    def _send(self, status: int, payload: bytes, headers: list[tuple[str, str]]) -> None:
        try:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client left; nobody is there to answer
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        if self.quiet:
            return
        sys.stderr.write(f"local-api {self.address_string()} {format % args}\n")


def make_server(lambda_handler: Any, host: str = "127.0.0.1", port: int = 8080, quiet: bool = False,
                front_door: FrontDoor | None = None,
                routes: Mapping[tuple[str, str], Handler] | None = None) -> LocalApiServer:
    """The local API: ``lambda_handler`` behind the REST API by default; with ``front_door`` and ``routes``
    (from the synthesized stack), each route's function behind the API the stack deploys."""
    handler_class = type("LocalApiHandler", (_RequestHandler,), {
        "lambda_handler": staticmethod(lambda_handler), "quiet": quiet, "front_door": front_door or FrontDoor(),
        "routes": {route: staticmethod(h) for route, h in (routes or {}).items()}})
    return LocalApiServer((host, port), handler_class)


def start_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="slimserve-local-api", daemon=True)
    thread.start()
    return thread


def call(base_url: str, method: str, path: str, body: Any = None, content_type: str = "application/json",
         headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """A tiny HTTP client for the demo and tests (standard library only); ``headers`` e.g. Authorization."""
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
    if isinstance(data, str):
        data = data.encode("utf-8")
    request = Request(base_url.rstrip("/") + path, data=data, method=method,
                      headers={**({"Content-Type": content_type} if data is not None else {}), **(headers or {})})
    try:
        with urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def bundle_path(path: str) -> Path:
    root = Path(path)
    if not (root / "manifest.json").is_file():
        raise SystemExit(f"{root} is not a model bundle (no manifest.json): make one with 'slimserve bundle'")
    return root
