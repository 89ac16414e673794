"""ServingApi: the inference Lambda (alias `live`) behind an authenticated, throttled REST API (or HTTP API)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from aws_cdk import CfnOutput, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from functions.common.settings import InferenceSettings

from .checks import check_key_prefix, check_range, check_sha256
from .function import FunctionProps, SlimserveFunction
from .model_store import grant_put_capture
from .nag import ack, checkov_skip
from .serving_http_api import JwtAuth, ServingHttpApi, ServingHttpApiProps

HANDLER = "functions.inference.handler.lambda_handler"

# Lambda rejects synchronous request payloads above 6 MB, so a larger body limit could never apply.
LAMBDA_SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
# A REST API integration times out at 29 s by default: a longer function would answer nobody.
APIGW_INTEGRATION_TIMEOUT_SECONDS = 29
_STAGE_NAME = re.compile(r"^[A-Za-z0-9_]{1,128}$")
_OWNER = "ServingApiProps"


@dataclass(frozen=True)
class CaptureProps:
    """Request capture to the model bucket's capture/ prefix (see functions/common/capture.py)."""

    sample_rate: float = 0.0
    """Share of requests captured, chosen by request id; 0 (the default) captures nothing and grants nothing."""
    max_records: int = 500
    """A buffer of this many rows is written in the request that fills it."""
    max_seconds: float = 60.0
    """A buffer whose oldest row is older is written in the next request."""
    drop_columns: tuple[str, ...] = ()
    """Features never captured (PII)."""
    hash_columns: tuple[str, ...] = ()
    """Features captured as sha256:<hex16> (pseudonymised: equal values stay equal)."""

    def validate(self, owner: str) -> None:
        if not 0 <= self.sample_rate <= 1:
            raise ValueError(f"{owner}.capture.sample_rate must be between 0 and 1, got {self.sample_rate}")
        check_range(f"{owner}.capture", "max_records", self.max_records, 1, 100_000)
        if self.max_seconds <= 0:
            raise ValueError(f"{owner}.capture.max_seconds must be > 0, got {self.max_seconds}")
        for name in (*self.drop_columns, *self.hash_columns):
            if not name or "," in name:
                raise ValueError(f"{owner}.capture: column names are non-empty and hold no comma, got {name!r}")


@dataclass(frozen=True)
class ServingApiProps:
    model_bucket: s3.IBucket
    layer: lambda_.ILayerVersion
    """The runtime layer (onnxruntime, numpy, Powertools), made by the stack's `Layers`."""
    model_name: str | None = None
    """The model the registry routes (champion, canary): the function reads `models/<name>/*` and its routing item."""
    registry_table: dynamodb.ITable | None = None
    """The model registry whose routing item names the bundles to serve (with `model_name`)."""
    model_prefix: str | None = None
    """Pins one bundle instead ("models/churn/3/"): the function reads nothing else, and no registry."""
    model_manifest_sha256: str | None = None
    """Pins the bundle's manifest: a changed manifest under the same prefix is refused at load."""
    memory_size: int = 1024
    reserved_concurrency: int = 10
    timeout_seconds: int = 10
    api_key_required: bool = False
    throttle_rate_limit: float = 50
    throttle_burst_limit: int = 100
    log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH
    max_rows: int = 10_000
    max_body_bytes: int = 5 * 1024 * 1024
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)
    stage_name: str = "v1"
    capture: CaptureProps = field(default_factory=CaptureProps)
    """Request capture (off by default): the function may then PutObject under capture/<model>/ only."""
    api: Literal["rest", "http"] = "rest"
    """The front door: a REST API (gateway responses in the error shape, request validation, API keys) or the
    cheaper HTTP API (same routes, IAM or JWT auth, throttling and access logs; its own errors keep its own body)."""
    jwt_auth: JwtAuth | None = None
    """Bearer tokens (JWT) instead of IAM on every route of the HTTP API; None: IAM (SigV4)."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad prop, before any resource is created."""
        self.capture.validate(_OWNER)
        if self.api not in ("rest", "http"):
            raise ValueError(f"ServingApiProps.api must be 'rest' or 'http', got {self.api!r}")
        if self.api == "http" and self.api_key_required:
            raise ValueError("ServingApiProps.api_key_required needs api='rest': HTTP APIs have no API keys")
        if self.jwt_auth is not None:
            if self.api != "http":
                raise ValueError("ServingApiProps.jwt_auth needs api='http': the REST API authenticates with IAM")
            self.jwt_auth.validate(lambda field: f"{_OWNER}.jwt_auth.{field}")
        if self.model_prefix is not None:
            check_key_prefix(_OWNER, "model_prefix", self.model_prefix)
        elif not (self.model_name and self.registry_table is not None):
            raise ValueError("ServingApiProps needs model_name and registry_table (registry routing) or model_prefix")
        check_sha256(_OWNER, "model_manifest_sha256", self.model_manifest_sha256)
        check_range(_OWNER, "memory_size", self.memory_size, 128, 10_240)
        check_range(_OWNER, "reserved_concurrency", self.reserved_concurrency, 1, None,
                    hint="0 would throttle every request")
        check_range(_OWNER, "timeout_seconds", self.timeout_seconds, 1, APIGW_INTEGRATION_TIMEOUT_SECONDS,
                    hint="API Gateway gives up on the integration after 29 s")
        check_range(_OWNER, "max_rows", self.max_rows, 1, None)
        check_range(_OWNER, "max_body_bytes", self.max_body_bytes, 1, LAMBDA_SYNC_PAYLOAD_LIMIT,
                    hint="Lambda rejects synchronous payloads above 6 MiB")
        self._validate_throttle()
        if not _STAGE_NAME.match(self.stage_name):
            raise ValueError(f"ServingApiProps.stage_name must match {_STAGE_NAME.pattern}, got {self.stage_name!r}")

    def _validate_throttle(self) -> None:
        if self.throttle_rate_limit <= 0:  # a float: > 0, which a range check cannot say
            raise ValueError(f"ServingApiProps.throttle_rate_limit must be > 0, got {self.throttle_rate_limit}")
        if self.throttle_burst_limit < self.throttle_rate_limit:
            raise ValueError(
                f"ServingApiProps.throttle_burst_limit ({self.throttle_burst_limit}) must be >= "
                f"throttle_rate_limit ({self.throttle_rate_limit}): the bucket must hold one second of traffic")


class ServingApi(Construct):
    """Inference function + alias `live` + REST API (POST /predict, GET /health, GET /openapi.json)."""

    def __init__(self, scope: Construct, construct_id: str, props: ServingApiProps) -> None:
        super().__init__(scope, construct_id)
        props.validate()
        self.props = props
        self.function = self._function()
        self.log_group = self.function.execution_log_group
        self.alias = lambda_.Alias(self, "LiveAlias", alias_name="live", version=self.function.current_version)
        self.http_api: ServingHttpApi | None = None
        self.api: apigw.RestApi | apigwv2.HttpApi
        if props.api == "http":
            self.http_api = ServingHttpApi(self, "HttpApi", ServingHttpApiProps(
                alias=self.alias, throttle_rate_limit=props.throttle_rate_limit,
                throttle_burst_limit=props.throttle_burst_limit, log_retention=props.log_retention,
                jwt=props.jwt_auth))
            self.api, url = self.http_api.api, self.http_api.url
        else:
            self.rest_api: apigw.RestApi = self._rest_api()
            self.api, url = self.rest_api, self.rest_api.url
            self._add_routes()
            if props.api_key_required:
                self._add_usage_plan()
            self._acknowledge_nag_findings()
        CfnOutput(self, "ApiUrl", value=url, description="Base URL of the inference API stage")
        CfnOutput(self, "FunctionName", value=self.function.function_name, description="Inference function")

    # --- function ---------------------------------------------------------------------------------

    def _function(self) -> SlimserveFunction:
        props = self.props
        fn = SlimserveFunction(self, "InferenceFunction", FunctionProps(
            handler=HANDLER,
            description="slimserve inference: ONNX model via onnxruntime",
            settings=InferenceSettings(
                model_uri=f"s3://{props.model_bucket.bucket_name}/{props.model_prefix}" if props.model_prefix else None,
                model_name=None if props.model_prefix else props.model_name,
                registry_table=None if props.model_prefix or props.registry_table is None
                else props.registry_table.table_name,
                model_manifest_sha256=props.model_manifest_sha256,
                max_rows=props.max_rows,
                max_body_bytes=props.max_body_bytes,
                **_capture_settings(props),
            ),
            layers=[props.layer],
            memory_size=props.memory_size,
            timeout_seconds=props.timeout_seconds,
            reserved_concurrency=props.reserved_concurrency,
            log_retention=props.log_retention,
            architecture=props.architecture,
            log_group_id="FunctionLogs",  # the id it was first deployed with
            invoked_by=f"API Gateway (the {props.api.upper()} API's Lambda proxy integration)",
        ))
        if props.capture.sample_rate > 0:
            grant_put_capture(fn, props.model_bucket, props.model_name)
        if props.model_prefix:
            fn.grant_read_objects(props.model_bucket, {f"{props.model_prefix}*": "one bundle prefix only"})
            return fn
        assert props.registry_table is not None and props.model_name  # validate() said so
        fn.grant_read_objects(props.model_bucket, {f"models/{props.model_name}/*": "the served model's versions only"})
        # The routing item only: GetItem on this model's partition key, nothing written, no other model.
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="ReadRouting", actions=["dynamodb:GetItem"], resources=[props.registry_table.table_arn],
            conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [props.model_name]}}))
        return fn

    # --- API --------------------------------------------------------------------------------------

    def _rest_api(self) -> apigw.RestApi:
        access_logs = logs.LogGroup(self, "AccessLogs", retention=self.props.log_retention,
                                    removal_policy=RemovalPolicy.RETAIN)
        api = apigw.RestApi(
            self, "RestApi",
            description="slimserve inference API",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            # Execution logging (logging_level) needs the account-level CloudWatch role; create it.
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN,
            deploy_options=apigw.StageOptions(
                stage_name=self.props.stage_name,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=True, http_method=True, ip=True, protocol=True, request_time=True,
                    resource_path=True, response_length=True, status=True, user=True),
                tracing_enabled=True,
                logging_level=apigw.MethodLoggingLevel.INFO,
                metrics_enabled=True,
                data_trace_enabled=False,  # full request logging would write payloads to logs
                throttling_rate_limit=self.props.throttle_rate_limit,
                throttling_burst_limit=self.props.throttle_burst_limit,
            ),
            default_method_options=apigw.MethodOptions(
                authorization_type=apigw.AuthorizationType.IAM,
                api_key_required=self.props.api_key_required,
            ),
        )
        api.node.try_remove_child("Endpoint")  # RestApi's auto output; ours below has a stable, meaningful id
        _add_error_responses(api)
        return api

    def _add_routes(self) -> None:
        integration = apigw.LambdaIntegration(self.alias, proxy=True)  # the alias, never $LATEST
        predict = self.rest_api.root.add_resource("predict")
        predict.add_method(
            "POST", integration,
            request_validator=apigw.RequestValidator(
                self, "PredictValidator", rest_api=self.rest_api,
                validate_request_body=True, validate_request_parameters=True),
            request_models={"application/json": self._predict_model()},
        )
        self.rest_api.root.add_resource("health").add_method("GET", integration)
        self.rest_api.root.add_resource("openapi.json").add_method("GET", integration)

    def add_route(self, path: str, method: str, function: lambda_.IFunction, *, rate_limit: float,
                  burst_limit: int) -> apigw.Method | list[apigwv2.HttpRoute]:
        """Another function's route on this API: its own resource, so IAM policies (or JWT scopes) allow it apart
        from /predict, authenticated as every route is, and throttled on its own below the stage's limits."""
        if self.http_api is not None:
            return self.http_api.add_route(path, method, function, rate_limit=rate_limit, burst_limit=burst_limit)
        added = self.rest_api.root.add_resource(path).add_method(
            method, apigw.LambdaIntegration(function, proxy=True), authorization_type=apigw.AuthorizationType.IAM)
        stage = self.rest_api.deployment_stage.node.default_child
        if not isinstance(stage, apigw.CfnStage):
            raise TypeError(f"{self.node.id}: no CfnStage to throttle /{path} on")
        existing = stage.method_settings if isinstance(stage.method_settings, list) else []
        stage.method_settings = [*existing, apigw.CfnStage.MethodSettingProperty(
            http_method=method, resource_path="/" + f"/{path}".replace("/", "~1"), throttling_rate_limit=rate_limit,
            throttling_burst_limit=burst_limit, metrics_enabled=True, logging_level="INFO", data_trace_enabled=False)]
        ack(added, "AwsSolutions-COG4", "callers authenticate with IAM (SigV4), not Cognito user pools")
        return added

    def _predict_model(self) -> apigw.Model:
        # Shape only, so malformed bodies never cost a Lambda call; the handler owns the finer limits
        # (row count, id length, unknown keys) because its errors name the offending field.
        row = apigw.JsonSchema(type=[apigw.JsonSchemaType.OBJECT, apigw.JsonSchemaType.ARRAY])
        return self.rest_api.add_model(
            "PredictRequest",
            content_type="application/json",
            model_name="PredictRequest",
            schema=apigw.JsonSchema(
                schema=apigw.JsonSchemaVersion.DRAFT4,
                title="PredictRequest",
                type=apigw.JsonSchemaType.OBJECT,
                required=["instances"],
                properties={
                    "instances": apigw.JsonSchema(type=apigw.JsonSchemaType.ARRAY, min_items=1, items=row),
                    "id": apigw.JsonSchema(type=apigw.JsonSchemaType.STRING),
                },
            ),
        )

    def _add_usage_plan(self) -> None:
        plan = self.rest_api.add_usage_plan(
            "UsagePlan",
            description="slimserve inference callers",
            throttle=apigw.ThrottleSettings(rate_limit=self.props.throttle_rate_limit,
                                            burst_limit=self.props.throttle_burst_limit),
        )
        plan.add_api_stage(stage=self.rest_api.deployment_stage)
        # The key's value is generated by API Gateway; read it from the console/CLI, never from code.
        plan.add_api_key(self.rest_api.add_api_key("ApiKey", description="slimserve inference default key"))

    # --- cdk-nag ----------------------------------------------------------------------------------

    def _acknowledge_nag_findings(self) -> None:
        """Each finding acknowledged on the narrowest construct, reason on the same line."""
        api = self.rest_api
        cw_role = api.node.find_child("CloudWatchRole")
        cw_policy = "arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
        ack(cw_role, f"AwsSolutions-IAM4[Policy::{cw_policy}]", "API Gateway's account-wide log role")
        ack(api.deployment_stage, "AwsSolutions-APIG3", "IAM-signed and throttled; WAF is an account-level add-on")
        for method in api.methods:
            ack(method, "AwsSolutions-COG4", "callers authenticate with IAM (SigV4), not Cognito user pools")
        checkov_skip(api.deployment_stage, "CKV_AWS_120", "a cache keyed without the POST body would answer "
                                                          "one caller's rows with another's predictions")
        checkov_skip(self.node.find_child("AccessLogs"), "CKV_AWS_158", "service-encrypted at rest; access "
                                                                        "log lines hold no request or response body")


def _capture_settings(props: ServingApiProps) -> dict[str, Any]:
    capture = props.capture
    if capture.sample_rate <= 0:
        return {}
    return {"model_bucket": props.model_bucket.bucket_name, "capture_sample_rate": capture.sample_rate,
            "capture_max_records": capture.max_records, "capture_max_seconds": capture.max_seconds,
            "capture_drop_columns": ",".join(capture.drop_columns) or None,
            "capture_hash_columns": ",".join(capture.hash_columns) or None}


def _add_error_responses(api: apigw.RestApi) -> None:
    """Gateway-made errors in the handler's one error shape, so clients parse a single format."""
    body = ('{"error": {"code": "%s", "message": $context.error.messageString}, '
            '"request_id": "$context.requestId"}')
    api.add_gateway_response("BadRequestBody", type=apigw.ResponseType.BAD_REQUEST_BODY,
                             templates={"application/json": body % "invalid_input"})
    api.add_gateway_response("RequestTooLarge", type=apigw.ResponseType.REQUEST_TOO_LARGE,
                             templates={"application/json": body % "payload_too_large"})
    for name, response_type in (("Default4xx", apigw.ResponseType.DEFAULT_4_XX),
                                ("Default5xx", apigw.ResponseType.DEFAULT_5_XX)):
        api.add_gateway_response(name, type=response_type,
                                 templates={"application/json": body % "$context.error.responseType"})
