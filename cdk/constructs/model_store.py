"""ModelStore: the private, versioned S3 bucket that holds model bundles, plus its access-log bucket."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import CfnOutput, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from functions.common.layout import CAPTURE_PREFIX, capture_model_prefix, objects

from .buckets import AccessLogs, secure_bucket
from .checks import check_range
from .function import SlimserveFunction

ACCESS_LOG_NONCURRENT_DAYS = 30
"""How long an access log deleted or replaced before its expiry can still be restored."""


@dataclass(frozen=True)
class ModelStoreProps:
    access_log_expiration_days: int = 365
    """Server access logs are deleted after this many days (they grow without bound otherwise)."""
    removal_policy: RemovalPolicy = RemovalPolicy.RETAIN
    """Bundles are the audit trail of what served which prediction: keep them when the stack goes."""
    capture_expiration_days: int = 30
    """Captured requests (capture/) are deleted after this many days: they hold callers' rows."""

    def validate(self) -> None:
        check_range("ModelStoreProps", "access_log_expiration_days", self.access_log_expiration_days, 1)
        check_range("ModelStoreProps", "capture_expiration_days", self.capture_expiration_days, 1)


class ModelStore(Construct):
    """Model bucket (private, S3-encrypted, versioned, TLS-only, access-logged) and its log bucket."""

    def __init__(self, scope: Construct, construct_id: str, props: ModelStoreProps | None = None) -> None:
        super().__init__(scope, construct_id)
        self.props = props or ModelStoreProps()
        self.props.validate()
        self.access_log_bucket = self._access_log_bucket()
        self.bucket = self._model_bucket()
        CfnOutput(self, "ModelBucketName", value=self.bucket.bucket_name,
                  description="Model bundles under models/<model>/<version>/, the gate's holdouts under holdout/")

    def _access_log_bucket(self) -> s3.Bucket:
        return secure_bucket(
            self, "AccessLogBucket", removal_policy=self.props.removal_policy, access_logs=None,
            lifecycle_rules=[
                # Versioned like every bucket: a log deleted or overwritten early stays recoverable for a while.
                s3.LifecycleRule(
                    id="expire-access-logs",
                    expiration=Duration.days(self.props.access_log_expiration_days),
                    noncurrent_version_expiration=Duration.days(ACCESS_LOG_NONCURRENT_DAYS),
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                ),
                s3.LifecycleRule(id="remove-expired-delete-markers", expired_object_delete_marker=True),
            ],
        )

    def _model_bucket(self) -> s3.Bucket:
        # Versioned: a bundle overwritten by mistake can be recovered; sha256s pin the rest.
        return secure_bucket(self, "ModelBucket", removal_policy=self.props.removal_policy,
                             access_logs=AccessLogs(self.access_log_bucket, "model-bucket/"),
                             lifecycle_rules=[
                                 # Captured rows are personal data at worst: expired, and no old version kept.
                                 s3.LifecycleRule(id="expire-capture", prefix=CAPTURE_PREFIX,
                                                  expiration=Duration.days(self.props.capture_expiration_days),
                                                  noncurrent_version_expiration=Duration.days(1)),
                             ])

    def grant_put_capture(self, fn: SlimserveFunction, model_name: str | None) -> None:
        """s3:PutObject under capture/<model>/ (all of capture/ when no model is named): the inference function."""
        grant_put_capture(fn, self.bucket, model_name)

    def grant_read_capture(self, fn: SlimserveFunction, model_name: str | None = None) -> None:
        """Read and list capture/<model>/ (all of capture/ when no model is named): the drift and feedback functions."""
        pattern = objects(capture_model_prefix(model_name) if model_name else CAPTURE_PREFIX)
        fn.grant_read_objects(self.bucket, {pattern: "captured requests: read by monitoring only"})
        fn.grant_list_bucket(self.bucket, [pattern])


def grant_put_capture(fn: SlimserveFunction, bucket: s3.IBucket, model_name: str | None) -> None:
    """PutObject only (no tagging, retention, legal hold or delete) on the model's capture prefix."""
    pattern = objects(capture_model_prefix(model_name) if model_name else CAPTURE_PREFIX)
    fn.add_to_role_policy(iam.PolicyStatement(actions=["s3:PutObject"], resources=[bucket.arn_for_objects(pattern)]))
    fn.acknowledge_objects(bucket, pattern, "capture objects are named by the flush time: one prefix, writes only")
