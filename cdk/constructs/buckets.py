"""The one way slimserve makes a bucket: private, S3-encrypted, TLS-only, owner-enforced, versioned, and, unless
it is the access-log bucket itself, access-logged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from .nag import checkov_skip


@dataclass(frozen=True)
class AccessLogs:
    """Where a bucket's server access logs go: the stack's log bucket, under this bucket's own prefix."""

    bucket: s3.IBucket
    prefix: str


def abort_incomplete_uploads(days: int = 1) -> s3.LifecycleRule:
    """Parts of an abandoned multipart upload are billed until removed."""
    return s3.LifecycleRule(id="abort-incomplete-multipart-uploads",
                            abort_incomplete_multipart_upload_after=Duration.days(days))


def secure_bucket(scope: Construct, construct_id: str, *, removal_policy: RemovalPolicy,
                  access_logs: AccessLogs | None,
                  lifecycle_rules: Sequence[s3.LifecycleRule] = ()) -> s3.Bucket:
    """`access_logs=None` only for the access-log bucket: S3 cannot log a bucket into itself."""
    # S3-managed keys: server access logs cannot go to SSE-KMS, and SageMaker and S3 notifications need no grants.
    bucket = s3.Bucket(
        scope, construct_id,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        encryption=s3.BucketEncryption.S3_MANAGED,
        enforce_ssl=True,
        versioned=True,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        removal_policy=removal_policy,
        server_access_logs_bucket=access_logs.bucket if access_logs else None,
        server_access_logs_prefix=access_logs.prefix if access_logs else None,
        lifecycle_rules=list(lifecycle_rules) or None,
    )
    if access_logs is None:
        checkov_skip(bucket, "CKV_AWS_18", "the access-log bucket itself: S3 cannot log a bucket into itself, "
                                           "and another log bucket would be unlogged in turn")
    return bucket
