"""The batch path's wiring as plain data: BatchScoring builds it in CloudFormation, the local
emulation builds the same thing in moto. No AWS CDK import, so the emulation needs no Node.js."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from functions.common.layout import INCOMING_PREFIX

LAMBDA_MAX_TIMEOUT_SECONDS = 900
# AWS: set an SQS event source's visibility timeout to at least six times the function timeout.
VISIBILITY_TIMEOUT_FACTOR = 6
DLQ_RETENTION_DAYS = 14  # SQS maximum: the longest window to inspect and redrive failures
OBJECT_CREATED = "s3:ObjectCreated:*"


@dataclass(frozen=True)
class BatchTopology:
    """Scoring bucket (versioned) -> object created under incoming/ -> queue -> batch function, DLQ after N."""

    function_timeout_seconds: int = LAMBDA_MAX_TIMEOUT_SECONDS
    max_receive_count: int = 3
    incoming_prefix: str = INCOMING_PREFIX
    events: tuple[str, ...] = (OBJECT_CREATED,)
    dlq_retention_days: int = DLQ_RETENTION_DAYS
    bucket_versioned: bool = True  # the version id is part of a run's identity

    @property
    def visibility_timeout_seconds(self) -> int:
        return VISIBILITY_TIMEOUT_FACTOR * self.function_timeout_seconds

    def redrive_policy(self, dead_letter_queue_arn: str) -> dict[str, Any]:
        return {"deadLetterTargetArn": dead_letter_queue_arn, "maxReceiveCount": self.max_receive_count}

    def key_filter(self) -> dict[str, Any]:
        """The S3 notification filter, as both CloudFormation and the S3 API spell it."""
        return {"Key": {"FilterRules": [{"Name": "prefix", "Value": self.incoming_prefix}]}}
