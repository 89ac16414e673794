"""Tell operators what a release or rollback did: one SNS message, subject and JSON body."""

from __future__ import annotations

import json
from typing import Any

from . import aws

SUBJECT_LIMIT = 100  # SNS refuses longer subjects


def notify(topic_arn: str | None, subject: str, body: dict[str, Any]) -> str | None:
    """Publish to ``topic_arn`` (nothing when unset); returns the message id."""
    if not topic_arn:
        return None
    with aws.translated(f"publishing to {topic_arn}"):
        answer = aws.client("sns").publish(TopicArn=topic_arn, Subject=subject[:SUBJECT_LIMIT],
                                           Message=json.dumps(body, indent=2, default=str))
    return str(answer["MessageId"])
