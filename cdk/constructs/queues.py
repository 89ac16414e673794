"""The one way slimserve makes a queue: SQS-managed encryption and TLS only."""

from __future__ import annotations

from typing import Any

from aws_cdk import aws_sqs as sqs
from constructs import Construct

from .nag import checkov_skip


def managed_queue(scope: Construct, construct_id: str, *, senders: str, **kwargs: Any) -> sqs.Queue:
    """An SQS-managed-SSE queue that refuses plain HTTP. ``senders`` names who sends to it: they are why no
    customer managed key is used (a KMS key would need a key policy for each of them)."""
    queue = sqs.Queue(scope, construct_id, encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True, **kwargs)
    checkov_skip(queue, "CKV_AWS_27", f"SQS-managed SSE (checkov reads only KmsMasterKeyId): {senders} "
                                      "need no key policy")
    return queue
