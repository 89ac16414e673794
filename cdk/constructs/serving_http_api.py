"""ServingHttpApi: alias `live` behind an IAM-authenticated, throttled API Gateway HTTP API (the cheaper front door).

Payload format 1.0, so the inference handler reads the same event as from the REST API's proxy integration.
The HTTP API has no gateway responses: its own errors (403 from IAM auth, 429 throttled, 413 too large,
404 no route) carry its body `{"message": ...}`, not the handler's error shape (README, "The HTTP API").
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import jsii
from aws_cdk import RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk.aws_apigatewayv2_authorizers import HttpIamAuthorizer
from aws_cdk.aws_apigatewayv2_integrations import HttpLambdaIntegration
from constructs import Construct

from .nag import checkov_skip

# The HTTP API's own context fields (not the REST API's): who called, which route, what it answered.
ACCESS_LOG_FORMAT = json.dumps({
    "requestId": "$context.requestId", "ip": "$context.identity.sourceIp", "caller": "$context.identity.caller",
    "user": "$context.identity.user", "requestTime": "$context.requestTime", "httpMethod": "$context.httpMethod",
    "routeKey": "$context.routeKey", "status": "$context.status", "protocol": "$context.protocol",
    "responseLength": "$context.responseLength", "integrationLatency": "$context.integrationLatency",
    "error": "$context.error.message", "integrationError": "$context.integrationErrorMessage",
})
DEFAULT_STAGE = "$default"


@dataclass(frozen=True)
class ServingHttpApiProps:
    alias: lambda_.IAlias
    """Alias `live` (CodeDeploy shifts it): every inference route invokes it, never $LATEST."""
    throttle_rate_limit: float
    throttle_burst_limit: int
    log_retention: logs.RetentionDays


class ServingHttpApi(Construct):
    """HTTP API: POST /predict, GET /health, GET /openapi.json on the alias; IAM on every route; `$default` stage
    throttled, with JSON access logs."""

    def __init__(self, scope: Construct, construct_id: str, props: ServingHttpApiProps) -> None:
        super().__init__(scope, construct_id)
        self.props = props
        self.api = apigwv2.HttpApi(self, "Api", description="slimserve inference API (HTTP API)",
                                   create_default_stage=False, default_authorizer=HttpIamAuthorizer())
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
            self.api.add_routes(path=path, methods=[method], integration=integration)
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

    def add_iam_route(self, path: str, method: str, function: lambda_.IFunction, *, rate_limit: float,
                      burst_limit: int) -> list[apigwv2.HttpRoute]:
        """Another function's route, IAM-authenticated (the API's default), throttled on its own below the stage."""
        routes = self.api.add_routes(path=f"/{path}", methods=[apigwv2.HttpMethod(method)],
                                     integration=self.integration(f"{path.title()}Integration", function))
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
