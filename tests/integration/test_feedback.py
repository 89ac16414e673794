"""Feedback through the handlers on moto: prediction ids from /predict, labels posted back (stored once,
named 4xx for anything wrong), the live accuracy they move, feedback files, and the review queue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from functions.common.prediction_ids import MAX_ID_CHARS, verify
from pipeline.local.apigw import IAM_USER_ARN, LambdaContext, http_api_event, jwt_claims, proxy_event
from pipeline.local.emulation import MODEL_BUCKET, REGION, emulated_account, upload_bundle
from pipeline.local.server import load_function, load_inference_handler
from tests.conftest import breast_cancer

KEY_HEX = "5e" * 32
TABLE = "slimserve-feedback-test"
CALLER = "arn:aws:iam::123456789012:user/labeller"


@pytest.fixture
def account() -> Iterator[dict[str, Any]]:
    with emulated_account():
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        dynamodb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "prediction_id", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "prediction_id", "KeyType": "HASH"}])
        sqs = boto3.client("sqs", region_name=REGION)
        yield {"s3": boto3.client("s3", region_name=REGION), "dynamodb": dynamodb, "sqs": sqs,
               "queue": sqs.create_queue(QueueName="review")["QueueUrl"]}



def serve(account: dict[str, Any], bundle: Path, **settings: str) -> tuple[ModuleType, ModuleType]:
    """The inference and feedback functions of one bundle, sharing the prediction id key."""
    uri = upload_bundle(account["s3"], bundle)
    inference = load_inference_handler(uri, PREDICTION_ID_KEY=KEY_HEX, **settings)
    feedback = load_function("functions.feedback.handler", uri, PREDICTION_ID_KEY=KEY_HEX, FEEDBACK_TABLE=TABLE,
                             MODEL_BUCKET=MODEL_BUCKET, MODEL_NAME=inference.holder.load().manifest.name)
    return inference, feedback


def call(module: ModuleType, path: str, body: Any, handler: str = "lambda_handler") -> tuple[int, dict[str, Any]]:
    event = proxy_event("POST", path, body if isinstance(body, str) else json.dumps(body),
                        {"Content-Type": "application/json"})
    event["requestContext"]["identity"]["userArn"] = CALLER  # type: ignore[index]
    result = getattr(module, handler)(event, LambdaContext())
    return result["statusCode"], json.loads(result["body"])


def predict(inference: ModuleType, rows: list[list[float]]) -> dict[str, Any]:
    status, body = call(inference, "/predict", {"instances": rows})
    assert status == 200
    return body


def rows_of(inference: ModuleType, n: int) -> list[list[float]]:
    width = len(inference.holder.load().manifest.feature_names)
    return [[float((i * 7 + j) % 13) for j in range(width)] for i in range(n)]


def stored_items(account: dict[str, Any]) -> list[dict[str, Any]]:
    return account["dynamodb"].scan(TableName=TABLE)["Items"]


def test_each_row_gets_an_id_that_names_its_prediction(account: dict[str, Any], rf_bundle: Path) -> None:
    inference, _ = serve(account, rf_bundle)
    body = predict(inference, rows_of(inference, 5))
    assert len(body["prediction_ids"]) == 5
    refs = [verify(bytes.fromhex(KEY_HEX), pid) for pid in body["prediction_ids"]]
    assert [r.row for r in refs] == list(range(5))
    assert [r.prediction for r in refs] == body["predictions"]
    assert {(r.model, r.version, r.request_id) for r in refs} == {("cancer", "v1", body["request_id"])}


def test_a_label_is_stored_once_with_the_callers_identity(account: dict[str, Any], rf_bundle: Path) -> None:
    inference, feedback = serve(account, rf_bundle)
    pid = predict(inference, rows_of(inference, 1))["prediction_ids"][0]
    status, body = call(feedback, "/feedback", {"prediction_id": pid, "label": 1})
    assert status == 201 and body["label"] == 1
    status, again = call(feedback, "/feedback", {"prediction_id": pid, "label": 0})
    assert status == 409 and again["error"]["code"] == "duplicate_label"
    items = stored_items(account)
    assert len(items) == 1
    assert items[0]["label"] == {"S": "1"} and items[0]["caller"] == {"S": CALLER}
    assert int(items[0]["expires_at"]["N"]) > int(items[0]["labelled_at"]["N"])


def test_a_label_through_the_http_api_names_who_the_gateway_let_in(account: dict[str, Any],
                                                                    rf_bundle: Path) -> None:
    """`-c slimserve:api=http`: the IAM caller's ARN, or a JWT's `<iss>#<sub>` (no IAM identity comes with one)."""
    inference, feedback = serve(account, rf_bundle)
    pids = predict(inference, rows_of(inference, 2))["prediction_ids"]
    claims = jwt_claims(subject="labeller-7")
    for pid, token_claims in zip(pids, (None, claims), strict=True):
        event = http_api_event("POST", "/feedback", json.dumps({"prediction_id": pid, "label": 1}),
                               jwt_claims=token_claims)
        assert feedback.lambda_handler(event, LambdaContext())["statusCode"] == 201
    callers = {item["prediction_id"]["S"]: item["caller"]["S"] for item in stored_items(account)}
    assert callers == {pids[0]: IAM_USER_ARN, pids[1]: f"{claims['iss']}#labeller-7"}


def _tampered(pid: str) -> str:
    payload = pid.split(".")[1]
    other = "A" if payload[-2] != "A" else "B"
    return pid.replace(payload, payload[:-2] + other + payload[-1])


@pytest.mark.parametrize("forge", [
    _tampered,  # the payload altered, the proof kept
    lambda pid: pid[:-1] + ("A" if pid[-1] != "A" else "B"),  # the proof altered
    lambda pid: pid.rsplit(".", 1)[0],  # no proof
    lambda pid: "p1." + "A" * (MAX_ID_CHARS + 10) + ".x",  # oversized
    lambda pid: "x" * 5000,  # over what the body reads
    lambda pid: "p2" + pid[2:],  # another format
])
def test_forged_and_malformed_ids_are_refused_and_nothing_is_stored(account: dict[str, Any], rf_bundle: Path,
                                                                    forge: Any) -> None:
    inference, feedback = serve(account, rf_bundle)
    pid = predict(inference, rows_of(inference, 1))["prediction_ids"][0]
    status, body = call(feedback, "/feedback", {"prediction_id": forge(pid), "label": 1})
    assert status == 400 and body["error"]["code"] == "invalid_prediction_id"
    assert stored_items(account) == []


def test_an_id_signed_with_another_key_is_refused(account: dict[str, Any], rf_bundle: Path) -> None:
    from functions.common.prediction_ids import issue

    _, feedback = serve(account, rf_bundle)
    forged = issue(b"not the service's key, 32 bytes!", "cancer", "v1", "r", 0, 1)
    status, body = call(feedback, "/feedback", {"prediction_id": forged, "label": 1})
    assert status == 400 and body["error"]["code"] == "invalid_prediction_id"


@pytest.mark.parametrize("label", [7, "maybe", 1.5, True])
def test_a_label_outside_the_classes_is_refused(account: dict[str, Any], rf_bundle: Path, label: Any) -> None:
    inference, feedback = serve(account, rf_bundle)
    pid = predict(inference, rows_of(inference, 1))["prediction_ids"][0]
    status, body = call(feedback, "/feedback", {"prediction_id": pid, "label": label})
    assert status == 400 and body["error"]["code"] == "label_not_in_classes"
    assert stored_items(account) == []


@pytest.mark.parametrize(("body", "code"), [
    ("{", "malformed_json"), ({"label": 1}, "missing_field"),
    ({"prediction_id": "p1.a.b", "label": 1, "extra": 2}, "unknown_field"),
    ({"prediction_id": "p1.a.b", "label": [1]}, "wrong_type"),
])
def test_malformed_bodies_get_named_codes(account: dict[str, Any], rf_bundle: Path, body: Any, code: str) -> None:
    _, feedback = serve(account, rf_bundle)
    status, answer = call(feedback, "/feedback", body)
    assert status == 400 and answer["error"]["code"] == code and answer["request_id"]


def _live(records: list[dict[str, Any]], name: str) -> list[float]:
    return [r[name] for r in records if name in r]


def test_labels_posted_back_move_live_accuracy(account: dict[str, Any], rf_bundle: Path,
                                               metric_records: list[dict[str, Any]]) -> None:
    inference, feedback = serve(account, rf_bundle)
    body = predict(inference, rows_of(inference, 8))
    for i, (pid, predicted) in enumerate(zip(body["prediction_ids"], body["predictions"], strict=True)):
        label = predicted if i < 6 else 1 - predicted  # six right, two wrong
        assert call(feedback, "/feedback", {"prediction_id": pid, "label": label})[0] == 201
    values = _live(metric_records, "LiveAccuracy")
    assert values == [1.0] * 6 + [0.0] * 2 and sum(values) / len(values) == 0.75
    record = next(r for r in metric_records if "LiveAccuracy" in r)
    assert record["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["model_name"], ["model_name", "model_version"]]
    assert (record["model_name"], record["model_version"]) == ("cancer", "v1")


def test_regressor_labels_move_live_mae(account: dict[str, Any], regression_bundle: Path,
                                        metric_records: list[dict[str, Any]]) -> None:
    inference, feedback = serve(account, regression_bundle)
    body = predict(inference, rows_of(inference, 2))
    for pid, predicted in zip(body["prediction_ids"], body["predictions"], strict=True):
        assert call(feedback, "/feedback", {"prediction_id": pid, "label": predicted + 10})[0] == 201
    assert _live(metric_records, "LiveMae") == pytest.approx([10.0, 10.0])
    status, answer = call(feedback, "/feedback", {"prediction_id": body["prediction_ids"][0], "label": "high"})
    assert status == 400 and answer["error"]["code"] == "label_not_a_number"


def _drop(account: dict[str, Any], feedback: ModuleType, key: str, data: bytes) -> dict[str, Any]:
    account["s3"].put_object(Bucket=MODEL_BUCKET, Key=key, Body=data)
    event = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                          "s3": {"bucket": {"name": MODEL_BUCKET}, "object": {"key": key, "size": len(data)}}}]}
    feedback.files_handler(event, LambdaContext())
    name = key.removeprefix("feedback/")
    return json.loads(account["s3"].get_object(Bucket=MODEL_BUCKET, Key=f"feedback-results/{name}.json")["Body"].read())


def test_a_feedback_file_records_good_rows_and_names_each_bad_one(account: dict[str, Any], rf_bundle: Path) -> None:
    inference, feedback = serve(account, rf_bundle)
    ids = predict(inference, rows_of(inference, 3))["prediction_ids"]
    csv = (f"prediction_id,label\n{ids[0]},1\n{ids[1]},0\n{ids[0]},0\n{_tampered(ids[2])},1\n{ids[2]},maybe\n"
           f",1\n").encode()
    summary = _drop(account, feedback, "feedback/batch-1.csv", csv)
    assert [row["outcome"] for row in summary["rows"]] == [
        "stored", "stored", "duplicate_label", "invalid_prediction_id", "label_not_in_classes", "invalid_prediction_id"]
    assert summary["stored"] == 2 and len(stored_items(account)) == 2
    lines = b"\n".join([json.dumps({"prediction_id": ids[2], "label": 1}).encode(), b"{not json", b"[1, 2]"])
    summary = _drop(account, feedback, "feedback/batch-2.jsonl", lines)
    assert [row["outcome"] for row in summary["rows"]] == ["stored", "malformed_json", "missing_field"]
    assert len(stored_items(account)) == 3


@pytest.mark.parametrize(("key", "data"), [
    ("feedback/binary.csv", bytes(range(256)) * 4),  # not UTF-8
    ("feedback/no-header.csv", b"a,b\n1,2\n"),
    ("feedback/labels.parquet", b"PAR1"),
])
def test_a_corrupt_feedback_file_is_summarised_never_fatal(account: dict[str, Any], rf_bundle: Path, key: str,
                                                           data: bytes) -> None:
    _, feedback = serve(account, rf_bundle)
    summary = _drop(account, feedback, key, data)
    assert summary["refused"]["code"] == "feedback_file_refused" and summary["stored"] == 0
    assert stored_items(account) == []


def test_low_confidence_predictions_reach_the_review_queue(account: dict[str, Any], rf_bundle: Path) -> None:
    inference, _ = serve(account, rf_bundle, REVIEW_CONFIDENCE_BELOW="0.9", REVIEW_QUEUE_URL=account["queue"])
    body = predict(inference, breast_cancer().drop(columns=["target"]).iloc[::14].to_numpy().tolist())
    low = [pid for pid, p in zip(body["prediction_ids"], body["probabilities"], strict=True) if max(p) < 0.9]
    assert low and len(low) < len(body["predictions"])  # the rows give both kinds
    messages = account["sqs"].receive_message(QueueUrl=account["queue"], MaxNumberOfMessages=10)["Messages"]
    items = [item for m in messages for item in json.loads(m["Body"])["items"]]
    assert [item["prediction_id"] for item in items] == low
    assert all(item["confidence"] < 0.9 and "row" not in item for item in items)  # rows only where capture allows


def test_without_a_threshold_nothing_is_queued(account: dict[str, Any], rf_bundle: Path) -> None:
    inference, _ = serve(account, rf_bundle, REVIEW_QUEUE_URL=account["queue"])
    predict(inference, rows_of(inference, 40))
    assert "Messages" not in account["sqs"].receive_message(QueueUrl=account["queue"], MaxNumberOfMessages=10)
