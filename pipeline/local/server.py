"""A local HTTP endpoint in front of the real inference handler.

Each HTTP request becomes the API Gateway proxy event the Lambda receives, and the handler's
proxy response becomes the HTTP response: one code path, locally and on AWS.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

from .apigw import LambdaContext, proxy_event

MAX_LOCAL_BODY = 64 * 1024 * 1024  # far above the handler's own limit, so the handler decides


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


class _RequestHandler(BaseHTTPRequestHandler):
    lambda_handler: Any = None
    quiet = False
    server_version = "slimserve-local"

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_LOCAL_BODY:
            self.send_error(413)
            return
        body = self.rfile.read(length).decode("utf-8", errors="replace") if length else None
        event = proxy_event(self.command, self.path, body, {k: v for k, v in self.headers.items()},
                            source_ip=self.client_address[0])
        result = type(self).lambda_handler(event, LambdaContext())
        payload = (result.get("body") or "").encode("utf-8")
        self.send_response(int(result.get("statusCode", 500)))
        for key, value in (result.get("headers") or {}).items():
            self.send_header(key, value)
        for key, values in (result.get("multiValueHeaders") or {}).items():
            for value in values:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        if self.quiet:
            return
        sys.stderr.write(f"local-api {self.address_string()} {format % args}\n")


def make_server(lambda_handler: Any, host: str = "127.0.0.1", port: int = 8080,
                quiet: bool = False) -> ThreadingHTTPServer:
    handler_class = type("LocalApiHandler", (_RequestHandler,), {"lambda_handler": staticmethod(lambda_handler),
                                                                 "quiet": quiet})
    return ThreadingHTTPServer((host, port), handler_class)


def start_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="slimserve-local-api", daemon=True)
    thread.start()
    return thread


def call(base_url: str, method: str, path: str, body: Any = None,
         content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    """A tiny HTTP client for the demo and tests (standard library only)."""
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
    if isinstance(data, str):
        data = data.encode("utf-8")
    request = Request(base_url.rstrip("/") + path, data=data, method=method,
                      headers={"Content-Type": content_type} if data is not None else {})
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
