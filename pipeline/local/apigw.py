"""API Gateway events and Lambda contexts, built the way AWS builds them: the REST API's proxy event, and the
HTTP API's with payload format 1.0 (the same shape with the HTTP API's own requestContext), authenticated by
IAM (SigV4) or by a JWT authorizer."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

IAM_USER_ARN = "arn:aws:iam::123456789012:user/caller"
# IAM identity fields an HTTP API fills for a SigV4 caller and leaves null for a JWT one.
_IAM_IDENTITY = {"caller": "AIDAEXAMPLE", "user": "AIDAEXAMPLE", "accessKey": "AKIAEXAMPLE",
                 "userArn": IAM_USER_ARN, "accountId": "123456789012"}
_SAMPLE_TOKEN = "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0xIn0.e30.c2ln"  # a test event's header, passed as sent


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


def http_api_event(method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None, *,
                   jwt_claims: Mapping[str, str] | None = None, source_ip: str = "127.0.0.1") -> dict[str, Any]:
    """One request through the HTTP API with payload 1.0: `version` 1.0, the `$default` stage, the route key as
    resourceId, a path without the stage; the IAM caller in identity, or (with `jwt_claims`) the token's claims
    in authorizer and no IAM identity at all. Without ``headers``: JSON, and a bearer token with `jwt_claims`."""
    if headers is None:
        bearer = {"Authorization": _SAMPLE_TOKEN} if jwt_claims is not None else {}
        headers = {"Content-Type": "application/json", **bearer}
    event: dict[str, Any] = proxy_event(method, path, body, headers, source_ip=source_ip)
    route = urlsplit(path).path
    context = event["requestContext"]
    context.update(stage="$default", path=route, resourceId=f"{method.upper()} {route}", domainPrefix="abc123",
                   domainName="abc123.execute-api.eu-west-1.amazonaws.com",
                   authorizer={"claims": dict(jwt_claims) if jwt_claims is not None else None, "scopes": None})
    context["identity"].update(dict.fromkeys(_IAM_IDENTITY) if jwt_claims is not None else _IAM_IDENTITY)
    return {"version": "1.0", **event}


def jwt_claims(subject: str = "0f1e2d3c-labeller", scope: str = "labels/write") -> dict[str, str]:
    """The claims a JWT authorizer hands the integration (payload 1.0: every value a string)."""
    return {"iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example", "sub": subject,
            "client_id": "slimserve-client", "token_use": "access", "scope": scope,
            "exp": "1893456000", "iat": "1893452400"}


@dataclass(frozen=True)
class GatewayAnswer:
    """An answer the API itself makes before any function runs (the HTTP API's body: `{"message": ...}`)."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def body(self) -> dict[str, str]:
        return {"message": self.message}


def unverified_claims(authorization: str) -> dict[str, str]:
    """The claims of a bearer token (`Bearer <jwt>` or the bare token) read from its payload WITHOUT checking
    its signature, issuer, audience, expiry or scopes, each value a string as payload 1.0 hands them.
    Raises ValueError when the header holds no JWT with a JSON object as its payload."""
    token = authorization.strip().removeprefix("Bearer ").strip()
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("the token is not a JWT (header.payload.signature)")
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        raise ValueError("the token's payload is not base64url-encoded JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("the token's payload is not a JSON object")
    return {str(k): _claim_text(v) for k, v in payload.items()}


def _claim_text(value: Any) -> str:
    """A claim as payload 1.0 carries it: strings as they are, a list as `[a b]`, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + " ".join(_claim_text(v) for v in value) + "]"
    return json.dumps(value)


def unsigned_token(claims: Mapping[str, Any]) -> str:
    """A JWT with these claims and no signature (`alg: none`): enough for a local API that reads, not checks."""
    def part(value: Mapping[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(dict(value)).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@dataclass(frozen=True)
class FrontDoor:
    """The API a deployed stack puts in front of its functions, as the local API emulates it: the REST API or
    the HTTP API (payload 1.0), with IAM or (HTTP API only) JWT auth. Neither a SigV4 signature nor a token's
    signature is checked locally."""

    api: str = "rest"
    """`rest` or `http`."""
    auth: str = "iam"
    """`iam` or `jwt`."""
    issuer: str | None = None
    """The JWT authorizer's issuer (`jwtIssuer`), for the example token."""

    def describe(self) -> str:
        if self.api == "rest":
            return "the REST API (Lambda proxy events; IAM auth is not checked locally)"
        if self.auth == "iam":
            return ("the HTTP API, payload 1.0, IAM auth (no signature is checked: every request comes from "
                    f"{IAM_USER_ARN})")
        return ("the HTTP API, payload 1.0, JWT auth: NOT VERIFIED locally; the claims are read from the "
                "bearer token's payload, unchecked (signature, issuer, audience, expiry and scopes); "
                "no Authorization header: 401")

    def example_token(self) -> str | None:
        """A token the local API accepts (unsigned), with the stack's issuer: None unless JWT auth."""
        if self.auth != "jwt":
            return None
        return unsigned_token({"iss": self.issuer or "https://issuer.invalid", "sub": "local-user",
                               "token_use": "access"})

    def event(self, method: str, path: str, body: str | None, headers: dict[str, str],
              source_ip: str = "127.0.0.1") -> dict[str, Any] | GatewayAnswer:
        """The event the route's function receives, or the API's own refusal (JWT: no or unreadable token)."""
        if self.api == "rest":
            return proxy_event(method, path, body, headers, source_ip=source_ip)
        claims = None
        if self.auth == "jwt":
            authorization = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
            if not authorization.strip():
                return GatewayAnswer(401, "Unauthorized", {"www-authenticate": "Bearer"})
            try:
                claims = unverified_claims(authorization)
            except ValueError as exc:
                return GatewayAnswer(401, "Unauthorized", {"www-authenticate": f'Bearer error="invalid_token" '
                                                                                f'error_description="{exc}"'})
        return http_api_event(method, path, body, headers, jwt_claims=claims, source_ip=source_ip)


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
