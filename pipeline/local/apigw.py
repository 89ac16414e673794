"""API Gateway REST proxy events and Lambda contexts, built the way AWS builds them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit


def proxy_event(method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None,
                stage: str = "local", source_ip: str = "127.0.0.1") -> dict[str, object]:
    """The event API Gateway (REST, Lambda proxy integration) sends for one HTTP request."""
    split = urlsplit(path)
    query = {k: v[-1] for k, v in parse_qs(split.query).items()} or None
    multi_query = parse_qs(split.query) or None
    headers = dict(headers or {})
    request_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    return {
        "resource": split.path,
        "path": split.path,
        "httpMethod": method.upper(),
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": split.path,
            "httpMethod": method.upper(),
            "path": f"/{stage}{split.path}",
            "stage": stage,
            "requestId": request_id,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "protocol": "HTTP/1.1",
            "accountId": "123456789012",
            "apiId": "local",
            "identity": {"sourceIp": source_ip, "userAgent": headers.get("User-Agent", "")},
        },
        "body": body,
        "isBase64Encoded": False,
    }


@dataclass
class LambdaContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    function_name: str = "slimserve-inference"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 1024
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/slimserve-inference"
    log_stream_name: str = "local"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}:live"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000
