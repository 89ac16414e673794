"""A raw HTTP/1.1 client for the local server's tests: requests written byte for byte, answers read whole."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.local.server import LocalApiServer, make_server


@contextmanager
def serving(lambda_handler: Any) -> Iterator[LocalApiServer]:
    """The local server on a free port, in a thread, for the length of the block."""
    server = make_server(lambda_handler, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Answer:
    version: str
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def assert_error_shape(self, status: int, code: str) -> None:
        assert (self.status, self.headers["content-type"]) == (status, "application/json")
        body = self.json()
        assert set(body) == {"error", "request_id"} and body["error"]["code"] == code and body["error"]["message"]


class RawClient:
    """One TCP connection; requests written byte for byte, responses read by Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
        lines = [f"{method} {path} HTTP/1.1", "Host: local"]
        lines += [f"{k}: {v}" for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return self.read(head=method == "HEAD")

    def read(self, head: bool = False) -> Answer:
        version, status, _ = self.reader.readline().decode("latin-1").split(" ", 2)
        headers = {}
        while (line := self.reader.readline().decode("latin-1").rstrip("\r\n")) != "":
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        body = b"" if head else self.reader.read(int(headers["content-length"]))
        return Answer(version, int(status), headers, body)

    def closed_by_server(self) -> bool:
        return self.reader.read(1) == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()
