"""Labelled rows for the next training set: stored labels joined to their captured rows by prediction id.

Nothing here runs by itself: `slimserve feedback-rows` writes the rows to a CSV and `slimserve train
--with-feedback FILE` adds them, so labels reach training only when asked and only once at least
``min_labels`` rows can be joined. A captured row with a feature dropped or hashed (the capture's PII
settings) cannot train a model, so such rows are refused by name rather than filled in.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from functions.common import aws
from functions.common.errors import SlimserveError
from functions.common.layout import capture_model_prefix, model_prefix

DEFAULT_MIN_LABELS = 500
HASHED = re.compile(r"sha256:[0-9a-f]{16}")


class TooFewLabels(SlimserveError):
    """Fewer labelled rows than the minimum: nothing is written."""

    status = 409
    code = "too_few_labels"


class CapturedRowsUnusable(SlimserveError):
    """Labelled rows whose captured features were dropped or hashed cannot train a model."""

    status = 409
    code = "captured_rows_unusable"


def stored_labels(dynamodb: Any, table: str, model: str) -> dict[str, Any]:
    """prediction_id -> label (the model's own value) of every label stored for ``model``."""
    labels: dict[str, Any] = {}
    with aws.translated(f"reading labels from {table}"):
        pages = dynamodb.get_paginator("scan").paginate(
            TableName=table, FilterExpression="#m = :m", ExpressionAttributeNames={"#m": "model"},
            ExpressionAttributeValues={":m": {"S": model}}, ProjectionExpression="prediction_id, label")
        for page in pages:
            for item in page.get("Items", []):
                labels[item["prediction_id"]["S"]] = json.loads(item["label"]["S"])
    return labels


def captured_records(s3: Any, bucket: str, model: str) -> Iterator[dict[str, Any]]:
    """Every captured row of ``model``, all versions; a corrupt object is skipped, as drift skips it."""
    from functions.drift.service import CorruptCapture, parse_capture

    prefix = capture_model_prefix(model)
    with aws.translated(f"listing s3://{bucket}/{prefix}"):
        pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix))
    for page in pages:
        for item in page.get("Contents", []):
            with aws.translated(f"reading s3://{bucket}/{item['Key']}"):
                body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            try:
                yield from parse_capture(body)
            except CorruptCapture:
                continue


def _features(s3: Any, bucket: str, model: str, version: str, cache: dict[str, tuple[list[str], str | None]]
              ) -> tuple[list[str], str | None]:
    """The version's feature names and target column, from its bundle's manifest (read once)."""
    from functions.common.bundle import read_manifest, s3_reader

    if version not in cache:
        manifest = read_manifest(s3_reader(s3, bucket, model_prefix(model, version)))[0]
        cache[version] = ([f.name for f in manifest.features], manifest.target)
    return cache[version]


def _unusable(row: Mapping[str, Any], features: list[str]) -> list[str]:
    """The features a captured row lost: dropped (absent) or hashed (a sha256 stand-in)."""
    return [name for name in features
            if name not in row or (isinstance(row[name], str) and HASHED.fullmatch(row[name]) is not None)]


def labelled_rows(s3: Any, dynamodb: Any, bucket: str, table: str, model: str, *, min_labels: int,
                  target: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """The captured rows that carry a stored label, each with the label under the target column; and that
    column (``target``, else the manifest's, else "label"). TooFewLabels below ``min_labels`` rows,
    CapturedRowsUnusable when a labelled row lost a feature to the capture's PII settings."""
    labels = stored_labels(dynamodb, table, model)
    features: dict[str, tuple[list[str], str | None]] = {}
    rows: list[dict[str, Any]] = []
    column = target
    lost: set[str] = set()
    seen: set[str] = set()
    for record in captured_records(s3, bucket, model) if labels else iter(()):
        pid = record.get("prediction_id")
        if pid not in labels or pid in seen:
            continue
        seen.add(pid)
        names, manifest_target = _features(s3, bucket, model, str(record["version"]), features)
        lost.update(_unusable(record["row"], names))
        column = column or manifest_target or "label"
        rows.append({**{name: record["row"].get(name) for name in names}, "_label": labels[pid]})
    if lost:
        raise CapturedRowsUnusable(f"labelled rows of {model} were captured without {', '.join(sorted(lost))} "
                                   "(dropped or hashed by the capture settings): they cannot train a model")
    if len(rows) < min_labels:
        raise TooFewLabels(f"{len(rows)} labelled rows of {model} (of {len(labels)} labels stored); at least "
                           f"{min_labels} are needed before labels enter training")
    column = column or "label"
    return [{**{k: v for k, v in row.items() if k != "_label"}, column: row["_label"]} for row in rows], column


def write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    """The rows as CSV (written whole, then renamed into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(out)
