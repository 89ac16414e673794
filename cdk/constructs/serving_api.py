"""ServingApi: the inference Lambda (alias `live`) behind an IAM-authenticated, throttled REST API."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from aws_cdk import CfnOutput, Duration, IgnoreMode, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from .nag import ack

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LAYER_DIR = REPO_ROOT / "layers" / "build" / "runtime"
HANDLER = "functions.inference.handler.lambda_handler"
SERVICE_NAME = "slimserve-inference"
METRICS_NAMESPACE = "Slimserve"

# gitignore semantics (IgnoreMode.GIT): drop everything at the top, then re-admit the `functions/`
# tree but only its directories and `.py` files, so tests, .venv, cdk.out, caches never ship.
FUNCTION_CODE_EXCLUDES = [
    "/*",
    "!/functions/",
    "/functions/**",
    "!/functions/**/",
    "!/functions/**/*.py",
    "__pycache__/",
]

# Lambda rejects synchronous request payloads above 6 MB, so a larger body limit could never apply.
LAMBDA_SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
# A REST API integration times out at 29 s by default: a longer function would answer nobody.
APIGW_INTEGRATION_TIMEOUT_SECONDS = 29
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_STAGE_NAME = re.compile(r"^[A-Za-z0-9_]{1,128}$")


@dataclass(frozen=True)
class ServingApiProps:
    model_bucket: s3.IBucket
    model_prefix: str
    """Key prefix of one model bundle, e.g. "models/churn/3/"; the function may read nothing else."""
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
    layer_dir: Path = DEFAULT_LAYER_DIR
    """Prebuilt layer folder holding `python/...` (written by `make layer`; synth never bundles)."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad prop, before any resource is created."""
        _validate_prefix(self.model_prefix)
        if self.model_manifest_sha256 is not None and not _SHA256.match(self.model_manifest_sha256):
            raise ValueError("ServingApiProps.model_manifest_sha256 must be 64 hex characters (a sha256 digest)")
        _check_range("memory_size", self.memory_size, 128, 10_240)
        _check_range("reserved_concurrency", self.reserved_concurrency, 1, None,
                     hint="0 would throttle every request")
        _check_range("timeout_seconds", self.timeout_seconds, 1, APIGW_INTEGRATION_TIMEOUT_SECONDS,
                     hint="API Gateway gives up on the integration after 29 s")
        _check_range("max_rows", self.max_rows, 1, None)
        _check_range("max_body_bytes", self.max_body_bytes, 1, LAMBDA_SYNC_PAYLOAD_LIMIT,
                     hint="Lambda rejects synchronous payloads above 6 MiB")
        self._validate_throttle()
        if not _STAGE_NAME.match(self.stage_name):
            raise ValueError(f"ServingApiProps.stage_name must match {_STAGE_NAME.pattern}, got {self.stage_name!r}")

    def _validate_throttle(self) -> None:
        if self.throttle_rate_limit <= 0:
            raise ValueError(f"ServingApiProps.throttle_rate_limit must be > 0, got {self.throttle_rate_limit}")
        if self.throttle_burst_limit < self.throttle_rate_limit:
            raise ValueError(
                f"ServingApiProps.throttle_burst_limit ({self.throttle_burst_limit}) must be >= "
                f"throttle_rate_limit ({self.throttle_rate_limit}): the bucket must hold one second of traffic")

    def layer_asset_dir(self) -> Path:
        """The layer folder, or a FileNotFoundError that says how to build it."""
        layer_dir = Path(self.layer_dir)
        if not (layer_dir / "python").is_dir():
            raise FileNotFoundError(
                f"Lambda layer not built: {layer_dir / 'python'} does not exist. Run `make layer` first "
                "(or pass layer_dir / `-c slimserve:layerDir=...` pointing at a folder holding python/).")
        return layer_dir


def function_code(root: Path) -> lambda_.Code:
    """The `functions/` package under `root`, .py files only, at its import path (no bundling)."""
    return lambda_.Code.from_asset(str(root), exclude=FUNCTION_CODE_EXCLUDES, ignore_mode=IgnoreMode.GIT)


def _validate_prefix(prefix: str) -> None:
    if not prefix or not prefix.endswith("/") or prefix.startswith("/"):
        raise ValueError(
            f"ServingApiProps.model_prefix must be a relative key prefix ending with '/', "
            f"e.g. 'models/churn/3/', got {prefix!r}")
    if "*" in prefix or "//" in prefix:
        raise ValueError(f"ServingApiProps.model_prefix must not contain '*' or '//', got {prefix!r}")


def _check_range(name: str, value: float, low: float, high: float | None, hint: str = "") -> None:
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        why = f" ({hint})" if hint else ""
        raise ValueError(f"ServingApiProps.{name} must be {bounds}, got {value}{why}")


class ServingApi(Construct):
    """Inference function + alias `live` + REST API (POST /predict, GET /health, GET /openapi.json)."""

    def __init__(self, scope: Construct, construct_id: str, props: ServingApiProps) -> None:
        super().__init__(scope, construct_id)
        props.validate()
        self.props = props
        self.layer = self._layer(props.layer_asset_dir())
        self.log_group = self._log_group("FunctionLogs")
        self.function = self._function()
        self.alias = lambda_.Alias(self, "LiveAlias", alias_name="live", version=self.function.current_version)
        self.api = self._rest_api()
        self._add_routes()
        if props.api_key_required:
            self._add_usage_plan()
        self._acknowledge_nag_findings()
        CfnOutput(self, "ApiUrl", value=self.api.url, description="Base URL of the inference API stage")
        CfnOutput(self, "FunctionName", value=self.function.function_name, description="Inference function")

    # --- function ---------------------------------------------------------------------------------

    def _layer(self, layer_dir: Path) -> lambda_.LayerVersion:
        return lambda_.LayerVersion(
            self, "RuntimeLayer",
            code=lambda_.Code.from_asset(str(layer_dir)),  # prebuilt folder: no bundling, no Docker
            compatible_runtimes=[lambda_.Runtime.PYTHON_3_12],
            compatible_architectures=[self.props.architecture],
            description="slimserve runtime dependencies (prebuilt by `make layer`)",
        )

    def _log_group(self, construct_id: str) -> logs.LogGroup:
        return logs.LogGroup(self, construct_id, retention=self.props.log_retention,
                             removal_policy=RemovalPolicy.RETAIN)

    def _function(self) -> lambda_.Function:
        fn = lambda_.Function(
            self, "InferenceFunction",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=self.props.architecture,
            handler=HANDLER,
            code=function_code(REPO_ROOT),
            layers=[self.layer],
            role=self._execution_role(),
            memory_size=self.props.memory_size,
            timeout=Duration.seconds(self.props.timeout_seconds),
            reserved_concurrent_executions=self.props.reserved_concurrency,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            environment=self._environment(),
            description="slimserve inference: ONNX model via onnxruntime",
        )
        self.props.model_bucket.grant_read(fn, f"{self.props.model_prefix}*")
        return fn

    def _execution_role(self) -> iam.Role:
        # Own role instead of AWSLambdaBasicExecutionRole: logs may go to this function's group only.
        role = iam.Role(self, "InferenceRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description="slimserve inference function: own log group, model prefix read-only")
        self.log_group.grant_write(role)
        return role

    def _environment(self) -> dict[str, str]:
        env = {
            "MODEL_URI": f"s3://{self.props.model_bucket.bucket_name}/{self.props.model_prefix}",
            "MAX_ROWS": str(self.props.max_rows),
            "MAX_BODY_BYTES": str(self.props.max_body_bytes),
            "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
        }
        if self.props.model_manifest_sha256:
            env["MODEL_MANIFEST_SHA256"] = self.props.model_manifest_sha256
        return env

    # --- API --------------------------------------------------------------------------------------

    def _rest_api(self) -> apigw.RestApi:
        access_logs = self._log_group("AccessLogs")
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
        predict = self.api.root.add_resource("predict")
        predict.add_method(
            "POST", integration,
            request_validator=apigw.RequestValidator(
                self, "PredictValidator", rest_api=self.api,
                validate_request_body=True, validate_request_parameters=True),
            request_models={"application/json": self._predict_model()},
        )
        self.api.root.add_resource("health").add_method("GET", integration)
        self.api.root.add_resource("openapi.json").add_method("GET", integration)

    def _predict_model(self) -> apigw.Model:
        # Shape only, so malformed bodies never cost a Lambda call; the handler owns the finer limits
        # (row count, id length, unknown keys) because its errors name the offending field.
        row = apigw.JsonSchema(type=[apigw.JsonSchemaType.OBJECT, apigw.JsonSchemaType.ARRAY])
        return self.api.add_model(
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
        plan = self.api.add_usage_plan(
            "UsagePlan",
            description="slimserve inference callers",
            throttle=apigw.ThrottleSettings(rate_limit=self.props.throttle_rate_limit,
                                            burst_limit=self.props.throttle_burst_limit),
        )
        plan.add_api_stage(stage=self.api.deployment_stage)
        # The key's value is generated by API Gateway; read it from the console/CLI, never from code.
        plan.add_api_key(self.api.add_api_key("ApiKey", description="slimserve inference default key"))

    # --- cdk-nag ----------------------------------------------------------------------------------

    def _acknowledge_nag_findings(self) -> None:
        """Each finding acknowledged on the narrowest construct, reason on the same line."""
        role, fn, api = self.function.role, self.function, self.api
        cw_role = api.node.find_child("CloudWatchRole")
        cw_policy = "arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
        ack(fn, "AwsSolutions-L1", "python3.12 is the runtime the product and its onnxruntime layer are built for")
        ack(role, "AwsSolutions-IAM5[Resource::*]", "X-Ray trace writes take no resource scope")
        ack(role, "AwsSolutions-IAM5[Action::s3:GetObject*]", "grant_read: read-only, model prefix only")
        ack(role, "AwsSolutions-IAM5[Action::s3:GetBucket*]", "grant_read: read-only, model bucket only")
        ack(role, "AwsSolutions-IAM5[Action::s3:List*]", "grant_read: lists the model bucket only")
        if (bucket := self._bucket_token()) is not None:
            ack(role, f"AwsSolutions-IAM5[Resource::{bucket}/{self.props.model_prefix}*]", "one bundle prefix only")
        ack(cw_role, f"AwsSolutions-IAM4[Policy::{cw_policy}]", "API Gateway's account-wide log role")
        ack(api.deployment_stage, "AwsSolutions-APIG3", "IAM-signed and throttled; WAF is an account-level add-on")
        for method in api.methods:
            ack(method, "AwsSolutions-COG4", "callers authenticate with IAM (SigV4), not Cognito user pools")

    def _bucket_token(self) -> str | None:
        """The bucket ARN as cdk-nag prints it (`<LogicalId.Arn>`); None for an imported bucket,
        whose finding nag then reports with the exact id to acknowledge."""
        cfn_bucket = self.props.model_bucket.node.default_child
        if not isinstance(cfn_bucket, s3.CfnBucket):
            return None
        return f"<{Stack.of(cfn_bucket).resolve(cfn_bucket.logical_id)}.Arn>"


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
