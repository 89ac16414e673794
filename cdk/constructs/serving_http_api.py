"""ServingHttpApi: alias `live` behind a throttled API Gateway HTTP API (the cheaper front door), authenticated
with IAM (SigV4) or, with `JwtAuth`, with bearer tokens (JWT) from an OpenID issuer.

Payload format 1.0, so the inference handler reads the same event as from the REST API's proxy integration.
The HTTP API has no gateway responses: its own errors (401 from JWT auth, 403 from IAM auth or a missing
scope, 429 throttled, 413 too large, 404 no route) carry its body `{"message": ...}`, not the handler's error
shape (README, "The HTTP API's own errors").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import jsii
from aws_cdk import RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk.aws_apigatewayv2_authorizers import HttpIamAuthorizer, HttpJwtAuthorizer
from aws_cdk.aws_apigatewayv2_integrations import HttpLambdaIntegration
from constructs import Construct

from .nag import checkov_skip

# The HTTP API's own context fields (not the REST API's): who called (IAM caller, or the token's subject),
# which route, what it answered, and why the authorizer refused.
ACCESS_LOG_FORMAT = json.dumps({
    "requestId": "$context.requestId", "ip": "$context.identity.sourceIp", "caller": "$context.identity.caller",
    "user": "$context.identity.user", "subject": "$context.authorizer.claims.sub",
    "authorizerError": "$context.authorizer.error", "requestTime": "$context.requestTime",
    "httpMethod": "$context.httpMethod",
    "routeKey": "$context.routeKey", "status": "$context.status", "protocol": "$context.protocol",
    "responseLength": "$context.responseLength", "integrationLatency": "$context.integrationLatency",
    "error": "$context.error.message", "integrationError": "$context.integrationErrorMessage",
})
DEFAULT_STAGE = "$default"
# An OAuth scope is one token of printable ASCII without space, quote or backslash (RFC 6749, 3.3).
_SCOPE = re.compile(r"^[!#-\[\]-~]+$")


@dataclass(frozen=True)
class JwtAuth:
    """Bearer tokens instead of SigV4 on every route: API Gateway checks each token's signature against the
    issuer's published keys (`kid`, RSA only), `iss`, `aud` (or `client_id` when there is no `aud`), `exp`,
    `nbf`, `iat` and, where a route names scopes, that `scope` or `scp` holds one of them."""

    issuer: str
    """The OpenID issuer, an https:// URL (its `/.well-known/openid-configuration` names the keys)."""
    audience: tuple[str, ...]
    """A token's `aud` (or `client_id`) must be one of these."""
    scopes: tuple[str, ...] = ()
    """Every route needs a token with one of these scopes; none: any valid token of the audience."""
    feedback_scopes: tuple[str, ...] = ()
    """POST /feedback (who may post labels) needs one of these instead of `scopes`; none: as `scopes`."""

    def validate(self, name: Callable[[str], str] = lambda field: f"JwtAuth.{field}") -> None:
        """Raise ValueError naming the bad field as `name(field)` says (a prop path, or a context key)."""
        if not re.match(r"^https://[^/\s]+\S*$", self.issuer):
            raise ValueError(f"{name('issuer')} must be an https:// URL (the token issuer), got {self.issuer!r}")
        if not self.audience or not all(a and "," not in a and not any(c.isspace() for c in a) for a in self.audience):
            raise ValueError(f"{name('audience')} needs one or more audiences (a token's aud or client_id), "
                             f"without spaces or commas, got {self.audience!r}")
        for field, scopes in (("scopes", self.scopes), ("feedback_scopes", self.feedback_scopes)):
            for scope in scopes:
                if not _SCOPE.match(scope):
                    raise ValueError(f"{name(field)}: a scope is one word of printable characters, got {scope!r}")

    def route_scopes(self, path: str) -> list[str]:
        """The scopes a route needs: /feedback's own where set, else every route's."""
        return list(self.feedback_scopes if path == "/feedback" and self.feedback_scopes else self.scopes)


@dataclass(frozen=True)
class ServingHttpApiProps:
    alias: lambda_.IAlias
    """Alias `live` (CodeDeploy shifts it): every inference route invokes it, never $LATEST."""
    throttle_rate_limit: float
    throttle_burst_limit: int
    log_retention: logs.RetentionDays
    jwt: JwtAuth | None = None
    """Bearer tokens from this issuer on every route instead of IAM; None: IAM (SigV4)."""


class ServingHttpApi(Construct):
    """HTTP API: POST /predict, GET /health, GET /openapi.json on the alias; IAM or JWT on every route;
    `$default` stage throttled, with JSON access logs."""

    def __init__(self, scope: Construct, construct_id: str, props: ServingHttpApiProps) -> None:
        super().__init__(scope, construct_id)
        if props.jwt is not None:
            props.jwt.validate(lambda field: f"ServingHttpApiProps.jwt.{field}")
        self.props = props
        authorizer: apigwv2.IHttpRouteAuthorizer = HttpIamAuthorizer() if props.jwt is None else HttpJwtAuthorizer(
            "JwtAuthorizer", props.jwt.issuer, jwt_audience=list(props.jwt.audience))
        self.api = apigwv2.HttpApi(self, "Api", description="slimserve inference API (HTTP API)",
                                   create_default_stage=False, default_authorizer=authorizer)
        self.access_logs = logs.LogGroup(self, "AccessLogs", retention=props.log_retention,
                                         removal_policy=RemovalPolicy.RETAIN)
        self.stage = apigwv2.HttpStage(
            self, "DefaultStage", http_api=self.api, stage_name=DEFAULT_STAGE, auto_deploy=True,
            detailed_metrics_enabled=True,
            throttle=apigwv2.ThrottleSettings(rate_limit=props.throttle_rate_limit,
                                              burst_limit=props.throttle_burst_limit),
            access_log_settings=_AccessLogs(apigwv2.LogGroupLogDestination(self.access_logs)))
        self._route_settings: dict[str, dict[str, object]] = {}
        integration = self.integration("LiveIntegration", props.alias)
        for method, path in ((apigwv2.HttpMethod.POST, "/predict"), (apigwv2.HttpMethod.GET, "/health"),
                             (apigwv2.HttpMethod.GET, "/openapi.json")):
            self._add_routes(path, method, integration)
        checkov_skip(self.access_logs, "CKV_AWS_158", "service-encrypted at rest; access log lines hold no "
                                                      "request or response body")

    @property
    def url(self) -> str:
        """The `$default` stage's URL: routes sit at its root (`<url>predict`)."""
        return str(self.stage.url)

    @staticmethod
    def integration(construct_id: str, function: lambda_.IFunction) -> HttpLambdaIntegration:
        """Payload format 1.0: the REST proxy event's shape, so one handler serves both APIs."""
        return HttpLambdaIntegration(construct_id, function,
                                     payload_format_version=apigwv2.PayloadFormatVersion.VERSION_1_0)

    def _add_routes(self, path: str, method: apigwv2.HttpMethod,
                    integration: HttpLambdaIntegration) -> list[apigwv2.HttpRoute]:
        """A route under the API's default authorizer (IAM or JWT), with the scopes JWT auth names for it."""
        scopes = self.props.jwt.route_scopes(path) if self.props.jwt is not None else []
        return self.api.add_routes(path=path, methods=[method], integration=integration,
                                   authorization_scopes=scopes or None)

    def add_route(self, path: str, method: str, function: lambda_.IFunction, *, rate_limit: float,
                  burst_limit: int) -> list[apigwv2.HttpRoute]:
        """Another function's route, authenticated as every route is, throttled on its own below the stage."""
        routes = self._add_routes(f"/{path}", apigwv2.HttpMethod(method),
                                  self.integration(f"{path.title()}Integration", function))
        self._route_settings[f"{method} /{path}"] = {
            "ThrottlingRateLimit": rate_limit, "ThrottlingBurstLimit": burst_limit, "DetailedMetricsEnabled": True}
        stage = self.stage.node.default_child
        if not isinstance(stage, apigwv2.CfnStage):
            raise TypeError(f"{self.node.id}: no CfnStage to throttle /{path} on")
        stage.add_property_override("RouteSettings", dict(self._route_settings))
        return routes


@jsii.implements(apigwv2.IAccessLogSettings)
class _AccessLogs:
    """The stage's access log settings (an interface in CDK, not a struct): JSON lines to our log group."""

    def __init__(self, destination: apigwv2.IAccessLogDestination) -> None:
        self._destination = destination

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw.AccessLogFormat:
        return apigw.AccessLogFormat.custom(ACCESS_LOG_FORMAT)
