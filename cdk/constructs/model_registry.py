"""ModelRegistry (the DynamoDB table of model versions) and ValidationGate (the function that judges a
candidate bundle on a holdout, writes its report next to the bundle and records the verdict).

Bucket layout (the contract with `functions/validation`): bundles under `models/<name>/<version>/`,
holdout files under `holdout/`; the gate writes `models/<name>/<version>/validation-report.json`.
Table layout (the contract with `functions/common/registry.py`): partition key `model`, sort key `version`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aws_cdk import CfnOutput, Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from .nag import ack, arn_token
from .serving_api import METRICS_NAMESPACE, REPO_ROOT, function_code

HANDLER = "functions.validation.handler.lambda_handler"
SERVICE_NAME = "slimserve-validation"

MODELS_PREFIX = "models/"
HOLDOUT_PREFIX = "holdout/"
REPORT_OBJECTS = f"{MODELS_PREFIX}*/validation-report.json"
"""The only keys the gate may write: one report per bundle (`*` spans `<name>/<version>`)."""
# The handler calls get_item (get, champion), put_item (register), update_item (record_verdict); Query is
# `Registry.list(model)`, one model's versions. No Scan, no TransactWriteItems: promotion is not the gate's.
REGISTRY_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query")
LAMBDA_MAX_TIMEOUT_SECONDS = 900


@dataclass(frozen=True)
class ModelRegistryProps:
    removal_policy: RemovalPolicy = RemovalPolicy.RETAIN
    """The registry is the record of which version served when and why: keep it when the stack goes."""


class ModelRegistry(Construct):
    """The registry table: one item per model version plus a champion pointer per model."""

    def __init__(self, scope: Construct, construct_id: str, props: ModelRegistryProps | None = None) -> None:
        super().__init__(scope, construct_id)
        self.props = props or ModelRegistryProps()
        self.table = dynamodb.Table(
            self, "Table",
            partition_key=dynamodb.Attribute(name="model", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="version", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True),
            deletion_protection=True,
            removal_policy=self.props.removal_policy,
        )
        CfnOutput(self, "TableName", value=self.table.table_name, description="Model registry table")


@dataclass(frozen=True)
class ValidationGateSettings:
    """The tunables of the validation function (what a stack chooses); resources come in props."""

    memory_size: int = 2048
    timeout_seconds: int = 300
    reserved_concurrency: int = 2
    log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting, before any resource is created."""
        _check_range("memory_size", self.memory_size, 128, 10_240)
        _check_range("timeout_seconds", self.timeout_seconds, 1, LAMBDA_MAX_TIMEOUT_SECONDS, hint="Lambda's maximum")
        _check_range("reserved_concurrency", self.reserved_concurrency, 1, 1000, hint="0 would refuse every run")


@dataclass(frozen=True)
class ValidationGateProps:
    model_bucket: s3.IBucket
    """Holds the bundles (`models/`) and the holdouts (`holdout/`)."""
    table: dynamodb.ITable
    """The model registry the gate records its verdicts in."""
    layer: lambda_.ILayerVersion
    """The runtime layer the inference function uses (onnxruntime, numpy): one layer, one version."""
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)
    settings: ValidationGateSettings = field(default_factory=ValidationGateSettings)

    def validate(self) -> None:
        self.settings.validate()


def _check_range(name: str, value: float, low: float, high: float, hint: str = "") -> None:
    if value < low or value > high:
        why = f" ({hint})" if hint else ""
        raise ValueError(f"ValidationGateSettings.{name} must be between {low} and {high}, got {value}{why}")


class ValidationGate(Construct):
    """The validation function, its least-privilege role and log group, and an alarm on its errors."""

    def __init__(self, scope: Construct, construct_id: str, props: ValidationGateProps) -> None:
        super().__init__(scope, construct_id)
        props.validate()
        self.props = props
        self.settings = props.settings
        self.log_group = logs.LogGroup(self, "FunctionLogs", retention=self.settings.log_retention,
                                       removal_policy=RemovalPolicy.RETAIN)
        self.function = self._function()
        self._grant()
        self.errors_alarm = self.function.metric_errors(
            period=Duration.minutes(5), statistic=cloudwatch.Stats.SUM,
        ).create_alarm(
            self, "ErrorsAlarm", threshold=0, evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description="The validation function raised errors (a verdict was not recorded)")
        self._acknowledge_nag_findings()
        CfnOutput(self, "FunctionName", value=self.function.function_name,
                  description="Invoke with {candidate_uri, holdout_uri} to judge a candidate bundle")

    def _function(self) -> lambda_.Function:
        # Own role instead of AWSLambdaBasicExecutionRole: logs may go to this function's group only.
        role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description="slimserve validation function: own log group, granted prefixes and registry only")
        self.log_group.grant_write(role)
        return lambda_.Function(
            self, "Function",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=self.props.architecture,
            handler=HANDLER,
            code=function_code(REPO_ROOT),
            layers=[self.props.layer],
            role=role,
            memory_size=self.settings.memory_size,
            timeout=Duration.seconds(self.settings.timeout_seconds),
            reserved_concurrent_executions=self.settings.reserved_concurrency,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            environment={
                "REGISTRY_TABLE": self.props.table.table_name,
                "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            },
            description="slimserve validation gate: judge a candidate bundle on a holdout, record the verdict",
        )

    def _grant(self) -> None:
        bucket, fn = self.props.model_bucket, self.function
        for prefix in (MODELS_PREFIX, HOLDOUT_PREFIX):  # candidate and champion bundles; holdout files
            bucket.grant_read(fn, f"{prefix}*")
        bucket.grant_put(fn, REPORT_OBJECTS)
        self.props.table.grant(fn, *REGISTRY_ACTIONS)

    def _acknowledge_nag_findings(self) -> None:
        """Each finding acknowledged on the narrowest construct, reason on the same line."""
        fn, role = self.function, self.function.role
        ack(fn, "AwsSolutions-L1", "python3.12 is the runtime the product and its onnxruntime layer are built for")
        ack(role, "AwsSolutions-IAM5[Resource::*]", "X-Ray trace writes take no resource scope")
        ack(role, "AwsSolutions-IAM5[Action::s3:GetObject*]", "grant_read: read-only, models/ and holdout/ only")
        ack(role, "AwsSolutions-IAM5[Action::s3:GetBucket*]", "grant_read: bucket metadata of the model bucket")
        ack(role, "AwsSolutions-IAM5[Action::s3:List*]", "grant_read: key listing of the model bucket")
        ack(role, "AwsSolutions-IAM5[Action::s3:Abort*]", "grant_put: abort report uploads only")
        if (bucket := arn_token(self.props.model_bucket)) is not None:
            ack(role, f"AwsSolutions-IAM5[Resource::{bucket}/{MODELS_PREFIX}*]", "bundles: candidates and champions")
            ack(role, f"AwsSolutions-IAM5[Resource::{bucket}/{HOLDOUT_PREFIX}*]", "holdout files only")
            ack(role, f"AwsSolutions-IAM5[Resource::{bucket}/{REPORT_OBJECTS}]", "writes only each bundle's report")
