"""Events an API Gateway HTTP API sends with payload format 1.0: the REST proxy shape with the HTTP API's own
requestContext, authenticated by IAM (SigV4) or by a JWT authorizer."""

from __future__ import annotations

from typing import Any

from pipeline.local.apigw import proxy_event

IAM_USER_ARN = "arn:aws:iam::123456789012:user/caller"
# IAM identity fields an HTTP API fills for a SigV4 caller and leaves null for a JWT one.
_IAM_IDENTITY = {"caller": "AIDAEXAMPLE", "user": "AIDAEXAMPLE", "accessKey": "AKIAEXAMPLE",
                 "userArn": IAM_USER_ARN, "accountId": "123456789012"}


def http_api_event(method: str, path: str, body: str | None = None, *,
                   jwt_claims: dict[str, str] | None = None) -> dict[str, Any]:
    """One request through the HTTP API: `version` 1.0, the `$default` stage, the route key as resourceId, a path
    without the stage; the IAM caller in identity, or (with `jwt_claims`) the token's claims in authorizer, a bearer
    Authorization header and no IAM identity at all."""
    headers = {"Content-Type": "application/json"}
    if jwt_claims is not None:
        headers["Authorization"] = "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0xIn0.e30.c2ln"  # passed through as sent
    event: dict[str, Any] = proxy_event(method, path, body, headers)
    context = event["requestContext"]
    context.update(stage="$default", path=path, resourceId=f"{method} {path}", domainPrefix="abc123",
                   domainName="abc123.execute-api.eu-west-1.amazonaws.com",
                   authorizer={"claims": jwt_claims, "scopes": None})
    context["identity"].update(dict.fromkeys(_IAM_IDENTITY) if jwt_claims is not None else _IAM_IDENTITY)
    return {"version": "1.0", **event}


def jwt_claims(subject: str = "0f1e2d3c-labeller", scope: str = "labels/write") -> dict[str, str]:
    """The claims a JWT authorizer hands the integration (payload 1.0: every value a string)."""
    return {"iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example", "sub": subject,
            "client_id": "slimserve-client", "token_use": "access", "scope": scope,
            "exp": "1893456000", "iat": "1893452400"}
