"""Labels into training, in the emulated account: captured rows joined to stored labels by prediction id,
a minimum count before anything is written, rows the capture hashed or dropped refused, and `slimserve
train --with-feedback` adding the rows only when asked."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

from functions.common.layout import capture_key
from pipeline import cli
from pipeline.feedback_rows import CapturedRowsUnusable, TooFewLabels, labelled_rows
from pipeline.local.emulation import MODEL_BUCKET, REGION, emulated_account, upload_bundle
from pipeline.local.up import Target
from tests.conftest import breast_cancer

TABLE = "slimserve-feedback-rows-test"
MODEL = "cancer"  # rf_bundle's name; its target column is "target"


@pytest.fixture
def account(rf_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with emulated_account():
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        dynamodb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "prediction_id", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "prediction_id", "KeyType": "HASH"}])
        s3 = boto3.client("s3", region_name=REGION)
        upload_bundle(s3, rf_bundle)
        target = Target(endpoints={"model": MODEL, "model_bucket": MODEL_BUCKET}, where="the test account",
                        local=True)
        monkeypatch.setattr(cli, "_target", lambda args: target)
        yield {"s3": s3, "dynamodb": dynamodb}


def features() -> pd.DataFrame:
    return breast_cancer().drop(columns=["target"])


def capture(account: dict[str, Any], rows: list[dict[str, Any]], suffix: str = "0123456789ab") -> list[str]:
    """One capture object as the inference function writes it; the prediction ids of its rows."""
    ids = [f"pid-{suffix}-{i}" for i in range(len(rows))]
    lines = [json.dumps({"ts": "2026-01-01T00:00:00.000Z", "request_id": "r1", "model": MODEL, "version": "v1",
                         "role": "champion", "row": row, "prediction": 1, "score": 0.9, "prediction_id": pid})
             for row, pid in zip(rows, ids, strict=True)]
    key = capture_key(MODEL, "v1", datetime(2026, 1, 1, tzinfo=UTC), suffix)
    account["s3"].put_object(Bucket=MODEL_BUCKET, Key=key, Body=gzip.compress(("\n".join(lines) + "\n").encode()))
    return ids


def label(account: dict[str, Any], pid: str, value: Any, model: str = MODEL) -> None:
    """A label item as functions/feedback/labels.py stores it."""
    account["dynamodb"].put_item(TableName=TABLE, Item={
        "prediction_id": {"S": pid}, "model": {"S": model}, "version": {"S": "v1"},
        "label": {"S": json.dumps(value)}, "labelled_at": {"N": "1"}})


def joined(account: dict[str, Any], min_labels: int) -> tuple[list[dict[str, Any]], str]:
    return labelled_rows(account["s3"], account["dynamodb"], MODEL_BUCKET, TABLE, MODEL, min_labels=min_labels)


def test_labelled_captured_rows_come_back_with_their_labels(account: dict[str, Any]) -> None:
    rows = features().iloc[:5].to_dict("records")
    ids = capture(account, rows)
    label(account, ids[0], 0)
    label(account, ids[3], 1)
    label(account, "pid-of-another-model", 1, model="other")
    out, column = joined(account, min_labels=2)
    assert column == "target"  # the bundle's target column
    assert out == [{**rows[0], "target": 0}, {**rows[3], "target": 1}]  # unlabelled predictions stay out


def test_cli_writes_the_rows_as_csv_with_the_target_column(account: dict[str, Any], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rows = features().iloc[:3].to_dict("records")
    for pid, value in zip(capture(account, rows), (1, 0, 1), strict=True):
        label(account, pid, value)
    out = tmp_path / "labelled.csv"
    assert cli.main(["feedback-rows", "--out", str(out), "--min-labels", "3", "--labels-table", TABLE]) == 0
    written = pd.read_csv(out)
    assert list(written["target"]) == [1, 0, 1] and list(written.columns) == [*rows[0], "target"]
    assert written.iloc[1]["mean radius"] == pytest.approx(rows[1]["mean radius"])
    assert "3 labelled rows of cancer" in capsys.readouterr().out


def test_below_the_minimum_nothing_is_written(account: dict[str, Any], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    ids = capture(account, features().iloc[:4].to_dict("records"))
    label(account, ids[0], 1)
    with pytest.raises(TooFewLabels) as refused:
        joined(account, min_labels=2)
    assert refused.value.code == "too_few_labels"
    out = tmp_path / "labelled.csv"
    assert cli.main(["feedback-rows", "--out", str(out), "--labels-table", TABLE]) == 2  # default minimum: 500
    assert not out.exists() and not list(tmp_path.iterdir())
    assert "error [too_few_labels]: 1 labelled rows of cancer" in capsys.readouterr().err


@pytest.mark.parametrize("shape", ["hashed", "dropped"])
def test_rows_captured_without_a_feature_are_refused(account: dict[str, Any], shape: str) -> None:
    rows = features().iloc[:2].to_dict("records")
    if shape == "hashed":
        rows[1]["mean radius"] = "sha256:0123456789abcdef"
    else:
        del rows[1]["mean radius"]
    for pid in capture(account, rows):
        label(account, pid, 1)
    with pytest.raises(CapturedRowsUnusable, match=r"without mean radius .*cannot train"):
        joined(account, min_labels=1)


def test_a_table_is_needed_where_the_target_names_none(account: dict[str, Any], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["feedback-rows", "--out", str(tmp_path / "x.csv")]) == 2
    assert "--labels-table" in capsys.readouterr().err


@pytest.mark.slow  # trains a teacher and a logistic student on 569 rows
def test_train_adds_the_feedback_rows_only_when_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = breast_cancer()
    data, extra = tmp_path / "data.csv", tmp_path / "labelled.csv"
    frame.iloc[:500].to_csv(data, index=False)
    frame.iloc[500:].to_csv(extra, index=False)
    fast = ["--data", str(data), "--target", "target", "--teacher", "hgb", "--student", "logreg", "--augment", "0"]
    assert cli.main(["train", *fast, "--out", str(tmp_path / "with"), "--with-feedback", str(extra)]) == 0
    shown = capsys.readouterr().out
    assert "on 569 rows" in shown and f"69 labelled rows added from {extra}" in shown
    assert cli.main(["train", *fast, "--out", str(tmp_path / "without")]) == 0
    shown = capsys.readouterr().out
    assert "on 500 rows" in shown and "labelled rows added" not in shown
