"""cdk-nag helpers shared by the constructs: acknowledging a finding with its reason, and naming
a resource's ARN the way cdk-nag prints it in finding ids."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import IConstruct


def ack(scope: IConstruct | None, rule_id: str, reason: str) -> None:
    # cdk-nag 3.0.2 matches bare ids ("AwsSolutions-L1"); CDK stores them as "Annotation::<id>".
    if scope is None:
        raise ValueError(f"cannot acknowledge {rule_id}: construct missing")
    Validations.of(scope).acknowledge(Acknowledgment(id=rule_id, reason=reason))


def arn_token(resource: IConstruct) -> str | None:
    """A resource ARN as cdk-nag prints it (`<LogicalId.Arn>`); None for an imported resource,
    whose finding nag then reports with the exact id to acknowledge."""
    cfn = resource.node.default_child
    if not isinstance(cfn, (s3.CfnBucket, lambda_.CfnFunction)):
        return None
    return f"<{Stack.of(cfn).resolve(cfn.logical_id)}.Arn>"
