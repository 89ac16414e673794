"""Scanner helpers shared by the constructs: acknowledging a cdk-nag finding with its reason, naming a
resource's ARN the way cdk-nag prints it in finding ids, and accepting a checkov finding with its reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, CfnResource, Stack, Validations
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


def checkov_skip(resource: IConstruct | None, check_id: str, reason: str) -> None:
    """Accept one checkov finding on a resource (an L2 or its CfnResource): written to the resource's
    CloudFormation Metadata (`checkov: skip: [{id, comment}]`), so checkov reports it skipped with its reason."""
    cfn = resource if isinstance(resource, CfnResource) or resource is None else resource.node.default_child
    if not isinstance(cfn, CfnResource):
        raise ValueError(f"cannot accept {check_id}: no CloudFormation resource at "
                         f"{resource.node.path if resource is not None else 'a missing construct'}")
    if not reason.strip() or "\n" in reason:
        raise ValueError(f"{cfn.node.path}: accepting {check_id} needs a one-line reason")
    metadata = cfn.get_metadata("checkov") or {}
    skips = [skip for skip in metadata.get("skip", []) if skip["id"] != check_id]
    cfn.add_metadata("checkov", {**metadata, "skip": [*skips, {"id": check_id, "comment": reason}]})


def ack_notifications_handler(scope: IConstruct) -> None:
    """CDK's stack-wide helper that writes buckets' notification configurations (made by the first
    `add_event_notification` of the stack): acknowledged once, whichever construct asks."""
    handler = next((c for c in Stack.of(scope).node.children
                    if c.node.id.startswith("BucketNotificationsHandler")), None)
    role = handler.node.try_find_child("Role") if handler is not None else None
    basic = "arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
    ack(role, f"AwsSolutions-IAM4[Policy::{basic}]", "CDK's notification helper, deploy time; role is fixed")
    resource = handler.node.try_find_child("Resource") if handler is not None else None
    helper = "CDK's notification helper, invoked only by CloudFormation at deploy time"
    checkov_skip(resource, "CKV_AWS_115", f"{helper}: one call per deploy, no concurrency to reserve")
    checkov_skip(resource, "CKV_AWS_116", f"{helper}, synchronously: CloudFormation receives its failure")
    checkov_skip(resource, "CKV_AWS_117", f"{helper}: calls only the S3 API")
