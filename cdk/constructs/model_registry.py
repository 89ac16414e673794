"""ModelRegistry (the DynamoDB table of model versions) and ValidationGate (the function that judges a
candidate bundle on a holdout, writes its report next to the bundle and records the verdict).

Bucket layout (the contract with `functions/validation`): bundles under `models/<name>/<version>/`,
holdout files under `holdout/`; the gate writes `models/<name>/<version>/validation-report.json`.
Table layout (the contract with `functions/common/registry.py`): partition key `model`, sort key `version`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aws_cdk import CfnOutput, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from functions.common.layout import HOLDOUT_PREFIX, MODELS_PREFIX, REPORT_FILE, objects
from functions.common.settings import ValidationSettings

from .checks import check_range
from .function import LAMBDA_MAX_TIMEOUT_SECONDS, FunctionProps, SlimserveFunction
from .monitoring import Monitoring
from .nag import checkov_skip

HANDLER = "functions.validation.handler.lambda_handler"

REPORT_OBJECTS = f"{MODELS_PREFIX}*/{REPORT_FILE}"
"""The only keys the gate may write: one report per bundle (`*` spans `<name>/<version>`)."""
# The handler calls get_item (get, champion), put_item (register), update_item (record_verdict); Query is
# `Registry.list(model)`, one model's versions. No Scan, no TransactWriteItems: promotion is not the gate's.
REGISTRY_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query")


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
        checkov_skip(self.table, "CKV_AWS_119", "KMS-encrypted under the AWS managed key; IAM on the table "
                                                "decides who reads or moves a champion, a CMK adds no control")
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
        owner = "ValidationGateSettings"
        check_range(owner, "memory_size", self.memory_size, 128, 10_240)
        check_range(owner, "timeout_seconds", self.timeout_seconds, 1, LAMBDA_MAX_TIMEOUT_SECONDS,
                    hint="Lambda's maximum")
        check_range(owner, "reserved_concurrency", self.reserved_concurrency, 1, 1000, hint="0 would refuse every run")


@dataclass(frozen=True)
class ValidationGateProps:
    model_bucket: s3.IBucket
    """Holds the bundles (`models/`) and the holdouts (`holdout/`)."""
    table: dynamodb.ITable
    """The model registry the gate records its verdicts in."""
    layer: lambda_.ILayerVersion
    """The runtime layer the inference function uses (onnxruntime, numpy): one layer, one version."""
    monitoring: Monitoring
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)
    settings: ValidationGateSettings = field(default_factory=ValidationGateSettings)

    def validate(self) -> None:
        self.settings.validate()


class ValidationGate(Construct):
    """The validation function, its least-privilege role and log group, and an alarm on its errors."""

    def __init__(self, scope: Construct, construct_id: str, props: ValidationGateProps) -> None:
        super().__init__(scope, construct_id)
        props.validate()
        self.props = props
        self.settings = props.settings
        self.function = self._function()
        self.log_group = self.function.execution_log_group
        self.errors_alarm = props.monitoring.function_errors(
            self, "ErrorsAlarm", self.function, "The validation function raised errors (a verdict was not recorded)")
        CfnOutput(self, "FunctionName", value=self.function.function_name,
                  description="Invoke with {candidate_uri, holdout_uri} to judge a candidate bundle")

    def _function(self) -> SlimserveFunction:
        fn = SlimserveFunction(self, "Function", FunctionProps(
            handler=HANDLER,
            description="slimserve validation gate: judge a candidate bundle on a holdout, record the verdict",
            settings=ValidationSettings(registry_table=self.props.table.table_name),
            layers=[self.props.layer],
            memory_size=self.settings.memory_size,
            timeout_seconds=self.settings.timeout_seconds,
            reserved_concurrency=self.settings.reserved_concurrency,
            log_retention=self.settings.log_retention,
            architecture=self.props.architecture,
            invoked_by="an operator or a state machine (RequestResponse)",
        ))
        bucket = self.props.model_bucket
        fn.grant_read_objects(bucket, {objects(MODELS_PREFIX): "bundles: candidates and champions",
                                       objects(HOLDOUT_PREFIX): "holdout files only"})
        fn.grant_put_objects(bucket, {REPORT_OBJECTS: "writes only each bundle's report"})
        self.props.table.grant(fn, *REGISTRY_ACTIONS)
        return fn
