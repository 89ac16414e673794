"""ModelStore: the private, versioned S3 bucket that holds model bundles, plus its access-log bucket."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct


@dataclass(frozen=True)
class ModelStoreProps:
    access_log_expiration_days: int = 365
    """Server access logs are deleted after this many days (they grow without bound otherwise)."""
    removal_policy: RemovalPolicy = RemovalPolicy.RETAIN
    """Bundles are the audit trail of what served which prediction: keep them when the stack goes."""

    def validate(self) -> None:
        if self.access_log_expiration_days < 1:
            raise ValueError(
                f"ModelStoreProps.access_log_expiration_days must be >= 1, got {self.access_log_expiration_days}")


class ModelStore(Construct):
    """Model bucket (private, S3-encrypted, versioned, TLS-only, access-logged) and its log bucket."""

    def __init__(self, scope: Construct, construct_id: str, props: ModelStoreProps | None = None) -> None:
        super().__init__(scope, construct_id)
        self.props = props or ModelStoreProps()
        self.props.validate()
        self.access_log_bucket = self._access_log_bucket()
        self.bucket = self._model_bucket()

    def _access_log_bucket(self) -> s3.Bucket:
        # S3 server access logging cannot deliver to an SSE-KMS bucket, hence S3-managed keys here.
        bucket = s3.Bucket(
            self, "AccessLogBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=self.props.removal_policy,
            lifecycle_rules=[s3.LifecycleRule(
                id="expire-access-logs",
                expiration=Duration.days(self.props.access_log_expiration_days),
                abort_incomplete_multipart_upload_after=Duration.days(7),
            )],
        )
        return bucket

    def _model_bucket(self) -> s3.Bucket:
        return s3.Bucket(
            self, "ModelBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=True,  # a bundle overwritten by mistake can be recovered; sha256s pin the rest
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=self.props.removal_policy,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="model-bucket/",
        )
