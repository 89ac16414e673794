"""Feedback files: CSV or JSON Lines rows of (prediction_id, label) dropped under feedback/ in the model
bucket. Every row is recorded as /feedback records one; an outcome per row is written back under
feedback-results/. A bad row is an outcome, a corrupt file is a summary: neither is an exception.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

from ..common import aws
from ..common.errors import SlimserveError
from ..common.layout import FEEDBACK_PREFIX, FEEDBACK_RESULTS_PREFIX
from .labels import Feedback

COLUMNS = ("prediction_id", "label")


def results_key(key: str) -> str:
    """Where the outcome of feedback/<name> is written: feedback-results/<name>.json (outside feedback/)."""
    name = key[len(FEEDBACK_PREFIX):] if key.startswith(FEEDBACK_PREFIX) else key
    return f"{FEEDBACK_RESULTS_PREFIX}{name}.json"


class FileRefused(SlimserveError):
    code = "feedback_file_refused"


def rows_of(key: str, data: bytes) -> Iterator[tuple[Any, Any] | SlimserveError]:
    """(prediction_id, label) per row, or the error of a row that has neither; FileRefused for a file
    that is not UTF-8 CSV with the two columns, nor JSON Lines."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FileRefused("the file is not UTF-8 text") from None
    if key.lower().endswith((".jsonl", ".ndjson", ".json")):
        yield from _json_lines(text)
    elif key.lower().endswith(".csv"):
        yield from _csv_rows(text)
    else:
        raise FileRefused("name the file .csv or .jsonl")


def _csv_rows(text: str) -> Iterator[tuple[Any, Any] | SlimserveError]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not set(COLUMNS) <= set(reader.fieldnames):
        raise FileRefused("a CSV feedback file needs the header prediction_id,label")
    for row in reader:
        yield row.get("prediction_id"), row.get("label")


def _json_lines(text: str) -> Iterator[tuple[Any, Any] | SlimserveError]:
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            yield SlimserveError("the line is not JSON", code="malformed_json")
            continue
        if not isinstance(row, dict) or not set(COLUMNS) <= set(row):
            yield SlimserveError("the line needs prediction_id and label", code="missing_field")
            continue
        yield row["prediction_id"], row["label"]


def ingest(feedback: Feedback, data: bytes, key: str, caller: str) -> dict[str, Any]:
    """Record every row of one file; the summary: counts per outcome and one outcome per row."""
    outcomes: list[dict[str, Any]] = []
    try:
        for number, row in enumerate(rows_of(key, data), start=1):
            outcomes.append({"row": number, **_outcome(feedback, row, caller)})
    except FileRefused as exc:
        return {"key": key, "refused": exc.to_body(None)["error"], "stored": 0, "rows": outcomes,
                "counts": _counts(outcomes)}
    return {"key": key, "stored": sum(o["outcome"] == "stored" for o in outcomes), "counts": _counts(outcomes),
            "rows": outcomes}


def _outcome(feedback: Feedback, row: tuple[Any, Any] | SlimserveError, caller: str) -> dict[str, Any]:
    if isinstance(row, SlimserveError):
        return {"outcome": row.code, "message": row.message}
    try:
        feedback.record(row[0], row[1], caller)
    except SlimserveError as exc:
        if exc.status >= 500:
            raise  # the store or the bundle is unavailable: the whole file is retried, stored rows answer 409
        return {"outcome": exc.code, "message": exc.message}
    return {"outcome": "stored"}


def _counts(outcomes: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome["outcome"]] = counts.get(outcome["outcome"], 0) + 1
    return counts


def process_object(feedback: Feedback, bucket: str, key: str, max_bytes: int,
                   log: Callable[[str, dict[str, Any]], None]) -> dict[str, Any]:
    """Read feedback/<name>, record its rows, write feedback-results/<name>.json; returns the summary."""
    client = aws.client("s3")
    with aws.translated(f"reading s3://{bucket}/{key}"):
        head = client.head_object(Bucket=bucket, Key=key)
        if int(head["ContentLength"]) > max_bytes:
            summary: dict[str, Any] = {"key": key, "stored": 0, "counts": {}, "rows": [], "refused": {
                "code": FileRefused.code, "message": f"the file is over {max_bytes} bytes"}}
        else:
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            summary = ingest(feedback, data, key, f"s3://{bucket}/{key}")
    with aws.translated(f"writing s3://{bucket}/{results_key(key)}"):
        client.put_object(Bucket=bucket, Key=results_key(key), Body=json.dumps(summary).encode("utf-8"),
                          ContentType="application/json")
    log("feedback file recorded", {"key": key, "counts": summary["counts"], "refused": "refused" in summary})
    return summary
