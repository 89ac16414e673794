"""SlimserveFunction: the one way slimserve makes a Lambda function.

Python 3.12 with the `functions/` package as code, its own role that may write only its own log group
(retained, with a retention), X-Ray tracing, reserved concurrency, the given layers in the given order,
and an environment rendered by the function's settings model (`functions.common.settings`), the same
model the handler parses at cold start. The acknowledgements (cdk-nag) and accepted checkov findings every
function needs are made here, each with its reason; S3 grants go through `grant_read_objects`,
`grant_put_objects` and `grant_list_bucket`, which name keys, never a whole bucket's objects.

The log group and role sit beside the function (`<id>Logs`, `<id>Role`) rather than under it, so that
the log groups of functions deployed before this construct keep their logical ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy, Size
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from functions.common.settings import EPHEMERAL_MAX_MIB, EPHEMERAL_MIN_MIB, Settings

from .checks import check_range
from .code_asset import stage_function_code
from .nag import ack, arn_token, checkov_skip
from .topology import LAMBDA_MAX_TIMEOUT_SECONDS

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME = lambda_.Runtime.PYTHON_3_12


def function_code(root: Path = REPO_ROOT) -> lambda_.Code:
    """The `functions/` package under `root` at its import path: its .py files and their checked-hash
    .pyc compiled by Python 3.12 (`code_asset.stage_function_code`), so no cold start compiles it."""
    return lambda_.Code.from_asset(str(stage_function_code(root)))


@dataclass(frozen=True)
class FunctionProps:
    handler: str
    """Dotted path of the handler, e.g. "functions.inference.handler.lambda_handler"."""
    description: str
    settings: Settings
    """Rendered to the environment with `to_env()` (Powertools service name and namespace included)."""
    layers: Sequence[lambda_.ILayerVersion]
    """Extracted into /opt in this order (the runtime layer first)."""
    memory_size: int
    timeout_seconds: int
    reserved_concurrency: int
    log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)
    ephemeral_storage_mib: int = EPHEMERAL_MIN_MIB
    """/tmp size; Lambda's default (and least) unless the function spools files there."""
    log_group_id: str | None = None
    """Defaults to `<id>Logs`; set only to keep the id a deployed log group already has."""
    invoked_by: str | None = None
    """Who invokes the function synchronously and so receives its failures (e.g. "API Gateway"): such a
    function needs no dead-letter queue. None for a function invoked asynchronously: give it `dead_letter_queue`."""
    dead_letter_queue: sqs.IQueue | None = None
    """Where Lambda parks an asynchronous invocation that failed every retry."""

    def validate(self, owner: str) -> None:
        check_range(owner, "memory_size", self.memory_size, 128, 10_240)
        check_range(owner, "timeout_seconds", self.timeout_seconds, 1, LAMBDA_MAX_TIMEOUT_SECONDS,
                    hint="Lambda's maximum")
        check_range(owner, "reserved_concurrency", self.reserved_concurrency, 1, None,
                    hint="0 would throttle every invocation")
        check_range(owner, "ephemeral_storage_mib", self.ephemeral_storage_mib,
                    EPHEMERAL_MIN_MIB, EPHEMERAL_MAX_MIB)
        if not self.layers:
            raise ValueError(f"{owner}.layers must hold the runtime layer at least")
        if self.invoked_by is not None and (not self.invoked_by.strip() or "\n" in self.invoked_by):
            raise ValueError(f"{owner}.invoked_by must name the synchronous caller on one line")


class SlimserveFunction(lambda_.Function):
    def __init__(self, scope: Construct, construct_id: str, props: FunctionProps) -> None:
        props.validate(construct_id)
        log_group = logs.LogGroup(scope, props.log_group_id or f"{construct_id}Logs",
                                  retention=props.log_retention, removal_policy=RemovalPolicy.RETAIN)
        # Own role instead of AWSLambdaBasicExecutionRole: logs may go to this function's group only.
        role = iam.Role(scope, f"{construct_id}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description=f"{props.description}: own log group, granted resources only")
        log_group.grant_write(role)
        super().__init__(
            scope, construct_id,
            runtime=RUNTIME,
            architecture=props.architecture,
            handler=props.handler,
            code=function_code(),
            layers=list(props.layers),
            role=role,
            memory_size=props.memory_size,
            timeout=Duration.seconds(props.timeout_seconds),
            reserved_concurrent_executions=props.reserved_concurrency,
            ephemeral_storage_size=(Size.mebibytes(props.ephemeral_storage_mib)
                                    if props.ephemeral_storage_mib != EPHEMERAL_MIN_MIB else None),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            environment=props.settings.to_env(),
            description=props.description,
            dead_letter_queue=props.dead_letter_queue,
        )
        self.props = props
        self.execution_role = role
        self.execution_log_group = log_group
        self._acknowledged: set[str] = set()
        self._pin_layer_order()
        ack(self, "AwsSolutions-L1", "python3.12 is the runtime the product and its onnxruntime layer are built for")
        self._ack_role("AwsSolutions-IAM5[Resource::*]", "X-Ray trace writes take no resource scope")
        self._accept_checkov_findings()

    def _accept_checkov_findings(self) -> None:
        checkov_skip(self, "CKV_AWS_117", "calls only AWS APIs, IAM-signed over TLS: nothing private to reach in a VPC")
        checkov_skip(self, "CKV_AWS_173", "environment holds no secret (URIs, table, sha256 pin, limits); "
                                          "Lambda encrypts it at rest with its service key")
        checkov_skip(self.execution_log_group, "CKV_AWS_158", "service-encrypted at rest; logs carry no "
                                                              "payloads (ids, codes, counts), so a CMK guards nothing")
        if self.props.invoked_by is not None:
            checkov_skip(self, "CKV_AWS_116", f"invoked synchronously by {self.props.invoked_by}, which receives "
                                              "its failures; a function DLQ holds only asynchronous invocations")

    def _pin_layer_order(self) -> None:
        # CDK lists layers sorted by construct path (cdk.json turns on @aws-cdk/aws-lambda:recognizeLayerVersion);
        # Lambda extracts them into /opt in the listed order, so the order the props give is pinned here.
        if len(self.props.layers) < 2:
            return
        cfn = self.node.default_child
        if not isinstance(cfn, lambda_.CfnFunction):
            raise TypeError(f"{self.node.id}: no CfnFunction to pin the layer order on")
        cfn.add_property_override("Layers", [layer.layer_version_arn for layer in self.props.layers])

    def _ack_role(self, rule_id: str, reason: str) -> None:
        if rule_id not in self._acknowledged:
            self._acknowledged.add(rule_id)
            ack(self.execution_role, rule_id, reason)

    def grant_read_objects(self, bucket: s3.IBucket, patterns: Mapping[str, str], *, versions: bool = False) -> None:
        """s3:GetObject on each key pattern ("models/churn/3/*": reason), and s3:GetObjectVersion with `versions`
        (a read by version id). Not `grant_read`, which also lists every key of the bucket; without
        `grant_list_bucket`, S3 answers a read of a missing key with AccessDenied rather than NoSuchKey."""
        actions = ["s3:GetObject", "s3:GetObjectVersion"] if versions else ["s3:GetObject"]
        for pattern, reason in patterns.items():
            self.add_to_role_policy(iam.PolicyStatement(actions=actions, resources=[bucket.arn_for_objects(pattern)]))
            self.acknowledge_objects(bucket, pattern, reason)
        if bucket.encryption_key is not None:
            bucket.encryption_key.grant_decrypt(self)

    def grant_list_bucket(self, bucket: s3.IBucket, prefixes: Sequence[str] | None = None) -> None:
        """s3:ListBucket on `bucket`: with `prefixes` ("runs/*"), listings under them only (an `s3:prefix`
        condition). Without, the whole bucket: only that makes S3 answer a read of a missing key with
        NoSuchKey (404), since a read carries no prefix for the condition to match. Say why at the call."""
        if prefixes is not None and not prefixes:
            raise ValueError(f"{self.node.id}: grant_list_bucket got no prefixes (None lists the whole bucket)")
        conditions = {"StringLike": {"s3:prefix": list(prefixes)}} if prefixes is not None else None
        self.add_to_role_policy(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn],
                                                    conditions=conditions))

    def grant_put_objects(self, bucket: s3.IBucket, patterns: Mapping[str, str]) -> None:
        """`grant_put` on each key pattern, with its acknowledgements (never a delete)."""
        for pattern, reason in patterns.items():
            bucket.grant_put(self, pattern)
            self.acknowledge_objects(bucket, pattern, reason)
        self._ack_role("AwsSolutions-IAM5[Action::s3:Abort*]", "grant_put: abort uploads of granted keys only")

    def acknowledge_objects(self, bucket: s3.IBucket, pattern: str, reason: str) -> None:
        """The wildcard finding of a statement on `bucket`/`pattern` (for statements made without a grant)."""
        # An imported bucket has no token nag can print; its finding then names the exact id to acknowledge.
        if (token := arn_token(bucket)) is not None:
            self._ack_role(f"AwsSolutions-IAM5[Resource::{token}/{pattern}]", reason)
