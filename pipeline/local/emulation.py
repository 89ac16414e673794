"""An embedded AWS account: moto in-process, fake credentials, and the resources slimserve uses."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cdk.constructs.topology import BatchTopology
from functions.common import aws, layout
from functions.common.manifest import MANIFEST_FILE, Manifest

REGION = "us-east-1"
MODEL_BUCKET = "slimserve-models-local"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


# moto runs the synthesized state machines itself; Lambda tasks go to the in-process dispatcher (lambdas.py).
STATE_MACHINES = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}


@contextmanager
def emulated_account(config: dict[str, Any] | None = None) -> Iterator[None]:
    """Fake credentials first, then moto: no request can reach a real account. ``config`` is moto's
    (e.g. to execute state machines)."""
    saved = {k: os.environ.get(k) for k in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    from moto import mock_aws

    aws.client.cache_clear()  # the functions' clients are made inside the emulation, never reused from outside
    try:
        with mock_aws(config=config):  # type: ignore[arg-type]
            yield
    finally:
        aws.client.cache_clear()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


SCORING_BUCKET = "slimserve-scoring-local"


def create_scoring_resources(s3: Any, sqs: Any, bucket: str = SCORING_BUCKET,
                             topology: BatchTopology | None = None) -> dict[str, str]:
    """The batch path of the stack, from the definition BatchScoring synthesizes: scoring bucket, its
    notifications to a queue with a DLQ."""
    wiring = topology or BatchTopology()
    s3.create_bucket(Bucket=bucket)
    if wiring.bucket_versioned:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    dlq = sqs.create_queue(QueueName=f"{bucket}-dlq", Attributes={
        "MessageRetentionPeriod": str(wiring.dlq_retention_days * 86_400)})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(QueueName=f"{bucket}-incoming", Attributes={
        "VisibilityTimeout": str(wiring.visibility_timeout_seconds),
        "RedrivePolicy": json.dumps(wiring.redrive_policy(dlq_arn))})["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{
        "QueueArn": queue_arn, "Events": list(wiring.events), "Filter": wiring.key_filter()}]})
    return {"bucket": bucket, "queue_url": queue, "dlq_url": dlq}


def sqs_event(messages: list[dict[str, Any]], queue_arn: str = "arn:aws:sqs:us-east-1:123456789012:incoming"
              ) -> dict[str, Any]:
    """The event the SQS event source mapping hands the batch function for received messages."""
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0", "SenderId": "s3",
                       "ApproximateFirstReceiveTimestamp": "0"},
        "messageAttributes": {}, "md5OfBody": m.get("MD5OfBody", ""), "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn, "awsRegion": REGION} for m in messages]}


def model_prefix(manifest: Manifest) -> str:
    return layout.model_prefix(manifest.name, manifest.version)


def upload_bundle(s3: Any, bundle_dir: str | Path, bucket: str = MODEL_BUCKET, create_bucket: bool = True) -> str:
    """Create the (private, encrypted, versioned) model bucket if needed (unless the stack made it) and
    upload a bundle.

    Returns the bundle's ``s3://`` URI.
    """
    root = Path(bundle_dir)
    manifest = Manifest.model_validate_json((root / MANIFEST_FILE).read_bytes())
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])} if create_bucket else {bucket}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})
    prefix = model_prefix(manifest)
    for name in [MANIFEST_FILE, *manifest.files]:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=(root / name).read_bytes())
    return f"s3://{bucket}/{prefix}/"


def create_registry_table(dynamodb: Any, table: str) -> None:
    """The model registry's table as the stack defines it (keys: model, version)."""
    dynamodb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                          AttributeDefinitions=[{"AttributeName": "model", "AttributeType": "S"},
                                                {"AttributeName": "version", "AttributeType": "S"}],
                          KeySchema=[{"AttributeName": "model", "KeyType": "HASH"},
                                     {"AttributeName": "version", "KeyType": "RANGE"}])
