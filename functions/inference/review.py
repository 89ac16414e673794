"""What an answer leaves for the feedback loop: a prediction id per row, and low-confidence rows sent
to the review queue (their ids, and the rows themselves only where capture is allowed to keep them).

The queue is best effort: a failed send is logged and counted, never a failed prediction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..common import aws
from ..common.errors import AwsError, SlimserveError
from ..common.prediction_ids import configured_key, issue

MAX_MESSAGE_BYTES = 200_000  # below SQS's 256 KiB, room for attributes and encoding


def prediction_ids(key: bytes, model: str, version: str, request_id: str,
                   predictions: Sequence[Any]) -> list[str | None]:
    """One id per row, in row order; None for a row whose id would be too long to verify later."""
    ids: list[str | None] = []
    for row, prediction in enumerate(predictions):
        try:
            ids.append(issue(key, model, version, request_id, row, prediction))
        except (ValueError, TypeError):
            ids.append(None)
    return ids


def low_confidence_rows(probabilities: Sequence[Sequence[float]] | None, below: float) -> list[int]:
    """Rows whose top class probability is below the threshold (none for a regressor)."""
    if probabilities is None:
        return []
    return [i for i, row in enumerate(probabilities) if row and max(row) < below]


@dataclass(frozen=True)
class ReviewItem:
    prediction_id: str | None
    confidence: float
    row: Any | None = None
    """The scored row, only where capture allows keeping rows."""


def review_messages(model: str, version: str, request_id: str, items: Sequence[ReviewItem]) -> list[str]:
    """The queue messages for one request: its low-confidence rows, split so that each message fits SQS."""
    messages: list[str] = []
    chunk: list[dict[str, Any]] = []
    size = 0
    for item in items:
        entry = {"prediction_id": item.prediction_id, "confidence": item.confidence}
        if item.row is not None:
            entry["row"] = item.row
        entry_size = len(json.dumps(entry, default=str))
        if chunk and size + entry_size > MAX_MESSAGE_BYTES:
            messages.append(_message(model, version, request_id, chunk))
            chunk, size = [], 0
        chunk.append(entry)
        size += entry_size
    if chunk:
        messages.append(_message(model, version, request_id, chunk))
    return messages


def _message(model: str, version: str, request_id: str, entries: list[dict[str, Any]]) -> str:
    return json.dumps({"model": model, "version": version, "request_id": request_id, "items": entries}, default=str)


def send_for_review(queue_url: str, messages: Sequence[str], on_error: Callable[[AwsError], None]) -> int:
    """Send each message; returns how many were sent. A failure is reported to `on_error` and skipped."""
    sent = 0
    for body in messages:
        try:
            with aws.translated(f"sending to the review queue {queue_url}"):
                aws.client("sqs").send_message(QueueUrl=queue_url, MessageBody=body)
            sent += 1
        except AwsError as exc:
            on_error(exc)
    return sent


class FeedbackLoop:
    """Built once per environment from the inference settings: adds prediction ids to an answer and sends
    its low-confidence rows for review. `keep_row` says whether (and how) a scored row may leave with them."""

    def __init__(self, key_hex: str | None, secret_arn: str | None, *, review_below: float | None,
                 queue_url: str | None, keep_row: Callable[[Any], Any] | None, on_error: Callable[[Exception], None]):
        self._key_hex, self._secret_arn = key_hex, secret_arn
        self.review_below = review_below if queue_url else None
        self.queue_url = queue_url
        self.keep_row = keep_row
        self.on_error = on_error

    def key(self) -> bytes | None:
        """The signing key; None (ids left out, the error reported) while the secret cannot be read."""
        try:
            return configured_key(self._key_hex, self._secret_arn)
        except SlimserveError as exc:
            self.on_error(exc)
            return None

    def answer(self, model: str, version: str, request_id: str, instances: Sequence[Any],
               predictions: Sequence[Any], probabilities: Sequence[Sequence[float]] | None) -> list[str | None] | None:
        """The answer's prediction ids (None when no key is configured); low-confidence rows go for review."""
        key = self.key() if (self._key_hex or self._secret_arn) else None
        ids = prediction_ids(key, model, version, request_id, predictions) if key is not None else None
        if self.review_below is not None and self.queue_url:
            rows = low_confidence_rows(probabilities, self.review_below)
            if rows:
                assert probabilities is not None  # rows come from them
                items = [ReviewItem(ids[i] if ids else None, max(probabilities[i]),
                                    self.keep_row(instances[i]) if self.keep_row else None) for i in rows]
                send_for_review(self.queue_url, review_messages(model, version, request_id, items), self.on_error)
        return ids
