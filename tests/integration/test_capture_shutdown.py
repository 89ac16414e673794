"""The capture flush at shutdown: the real inference handler in a child process, as Lambda runs it.

The child sees a Runtime API (a local stand-in for the Extensions API) and S3 (a local moto server).
At import the handler registers its internal extension with no events, which is what makes Lambda
send the runtime SIGTERM at shutdown; the test then sends SIGTERM and reads what reached S3.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "capture-shutdown-test"
CHILD = """
import json, sys, time
from pipeline.local.apigw import LambdaContext, proxy_event
from functions.inference import handler
names = handler.holder.load().manifest.feature_names
for i in range(3):
    body = json.dumps({"instances": [[float(i)] * len(names)]})
    result = handler.lambda_handler(proxy_event("POST", "/predict", body, {"Content-Type": "application/json"}),
                                    LambdaContext())
    assert result["statusCode"] == 200, result
print("READY", handler.capture.pending_rows, flush=True)
time.sleep(60)  # frozen, as between invocations, until SIGTERM
sys.exit(3)
"""


class RuntimeApi(BaseHTTPRequestHandler):
    """The Extensions API calls the runtime makes: register, then a next-event call that waits."""

    calls: list[tuple[str, str, dict[str, str], bytes]] = []
    released = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.calls.append(("POST", self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Lambda-Extension-Identifier", "ext-0001")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"functionName":"slimserve-inference"}')

    def do_GET(self) -> None:
        self.calls.append(("GET", self.path, dict(self.headers), b""))
        self.released.wait(120)  # no events were subscribed: nothing comes until the environment goes

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def runtime_api() -> Iterator[str]:
    RuntimeApi.calls = []
    RuntimeApi.released = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    RuntimeApi.released.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"  # port 0: the one the OS chose
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()  # fresh S3
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def start_child(bundle: Path, runtime_api: str, s3_endpoint: str) -> subprocess.Popen[str]:
    """The handler with three rows answered and buffered (capture at 100%, no threshold reached)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODEL_URI": str(bundle), "MODEL_BUCKET": BUCKET,
           "CAPTURE_SAMPLE_RATE": "1", "CAPTURE_MAX_RECORDS": "1000", "CAPTURE_MAX_SECONDS": "3600",
           "AWS_LAMBDA_RUNTIME_API": runtime_api, "AWS_ENDPOINT_URL_S3": s3_endpoint,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true"}
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None
    ready = next((line for line in child.stdout if line.startswith("READY")), "")  # log lines come first
    if ready.split() != ["READY", "3"]:
        child.kill()
        pytest.fail(f"the child did not buffer three rows: {child.stderr.read() if child.stderr else ''}")
    return child


def captured(s3_endpoint: str) -> list[dict[str, Any]]:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert all(key.startswith("capture/") and key.endswith(".jsonl.gz") for key in keys)
    return [json.loads(line) for key in keys
            for line in gzip.decompress(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()).decode().splitlines()]


def test_sigterm_flushes_what_is_buffered(rf_bundle: Path, runtime_api: str, s3_endpoint: str) -> None:
    child = start_child(rf_bundle, runtime_api, s3_endpoint)
    try:
        assert captured(s3_endpoint) == []  # buffered, not written
        child.send_signal(signal.SIGTERM)
        _, errors = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, errors
    lines = captured(s3_endpoint)
    assert len(lines) == 3 and {line["role"] for line in lines} == {"champion"}
    register = next(call for call in RuntimeApi.calls if call[0] == "POST")
    assert register[1] == "/2020-01-01/extension/register"
    assert register[2]["Lambda-Extension-Name"] == "slimserve-capture" and json.loads(register[3]) == {"events": []}
    waits = [call for call in RuntimeApi.calls if call[0] == "GET"]
    assert waits and waits[0][1] == "/2020-01-01/extension/event/next"
    assert waits[0][2]["Lambda-Extension-Identifier"] == "ext-0001"


def test_a_crash_loses_exactly_the_buffered_rows(rf_bundle: Path, runtime_api: str, s3_endpoint: str) -> None:
    """A timeout or an out-of-memory kill ends the environment with SIGKILL: what was buffered is gone."""
    child = start_child(rf_bundle, runtime_api, s3_endpoint)
    child.kill()
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL and captured(s3_endpoint) == []
