"""Capture rows written before shadows were captured and rows that carry a shadow's answer, in one object:
the drift reader (and `slimserve monitor` through it) and labels into training read both alike, and take
only the served answer and the features."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from typing import Any

from functions.common.layout import capture_key
from functions.drift.service import read_window
from pipeline.local.emulation import MODEL_BUCKET
from tests.integration.test_feedback_rows import MODEL, account, features, joined, label

__all__ = ["account"]  # the emulated account of labels into training, shared as a fixture

FLUSHED = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
SHADOW_KEYS: list[dict[str, Any]] = [
    {},  # a row as written before shadows were captured
    {"shadow_version": "v2", "shadow_prediction": 0, "shadow_score": 0.7},
    {"shadow_version": "v2", "shadow_error": "shadow_unavailable"},
]


def test_rows_with_and_without_shadow_keys_read_alike(account: dict[str, Any]) -> None:
    rows = features().iloc[:3].to_dict("records")
    lines = [json.dumps({"ts": "2026-01-01T00:10:00.000Z", "request_id": f"r{i}", "model": MODEL, "version": "v1",
                         "role": "champion", "row": row, "prediction": 1, "score": 0.9, "prediction_id": f"pid-{i}",
                         **extra})
             for i, (row, extra) in enumerate(zip(rows, SHADOW_KEYS, strict=True))]
    account["s3"].put_object(Bucket=MODEL_BUCKET, Key=capture_key(MODEL, "v1", FLUSHED, "0123456789ab"),
                             Body=gzip.compress(("\n".join(lines) + "\n").encode()))
    window = read_window(account["s3"], MODEL_BUCKET, MODEL, ["v1"], FLUSHED.replace(minute=30), 1, 100)
    assert (window.objects, window.corrupt) == (1, 0)
    assert window.rows == rows and window.predictions == {"v1": [1, 1, 1]}  # the served answers alone
    for i, value in enumerate((1, 0, 1)):
        label(account, f"pid-{i}", value)
    out, column = joined(account, min_labels=3)
    assert column == "target"
    assert out == [{**row, "target": value} for row, value in zip(rows, (1, 0, 1), strict=True)]
