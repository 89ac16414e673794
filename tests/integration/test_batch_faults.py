"""Faults in the batch path, in the emulated account: a worker killed mid-file, S3 failing mid-stream
or on the manifest, the model's bundle unreadable for a while, duplicate and redelivered events.

The promise: nothing lost, nothing doubled, and every failure visible in a manifest, a metric or a
batch item failure (which, after the queue's receive limit, parks the message in the DLQ).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from botocore.exceptions import ClientError, ResponseStreamingError

from functions.batch import stores
from functions.common import aws as adapter
from pipeline.local.apigw import LambdaContext
from pipeline.local.emulation import sqs_event
from tests.conftest import breast_cancer
from tests.integration import test_batch_lambda as batch_lambda
from tests.integration.test_batch_lambda import batch_function, drain, get

aws = batch_lambda.aws  # the emulated account with the scoring bucket and queues, shared with the happy paths

ROWS = 400


class Killed(BaseException):
    """The execution environment going away (a timeout, out of memory): no handler code runs after it."""


def rows_csv(n: int = ROWS) -> bytes:
    lines = breast_cancer().head(n).to_csv(index=False).splitlines()
    lines[7] = "oops," + lines[7].split(",", 1)[1]  # one rejected row, line 8
    return ("\n".join(lines) + "\n").encode()


def upload(aws: dict[str, Any], key: str, body: bytes) -> list[dict[str, Any]]:
    aws["s3"].put_object(Bucket=aws["bucket"], Key=key, Body=body)
    messages = drain(aws["sqs"], aws["queue_url"])
    assert messages, "S3 did not notify the queue"
    return messages


def deliver(module: ModuleType, messages: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(module.lambda_handler(sqs_event(messages), LambdaContext(function_name="slimserve-batch")))


def failed_ids(response: dict[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


def deliver_failing(module: ModuleType, messages: list[dict[str, Any]]) -> None:
    """Every message of the batch fails: the invocation fails, so SQS delivers them all again."""
    with pytest.raises(BatchProcessingError):
        deliver(module, messages)


def keys(aws: dict[str, Any], prefix: str) -> list[str]:
    return [o["Key"] for o in aws["s3"].list_objects_v2(Bucket=aws["bucket"], Prefix=prefix).get("Contents", [])]


def versions(aws: dict[str, Any], key: str) -> int:
    listed = aws["s3"].list_object_versions(Bucket=aws["bucket"], Prefix=key)
    return len([v for v in listed.get("Versions", []) if v["Key"] == key])


def assert_scored_once(aws: dict[str, Any], name: str, rows: int = ROWS) -> dict[str, Any]:
    """The manifest is complete, and the scored and rejected files hold each input row exactly once."""
    manifest = json.loads(get(aws, f"manifests/{name}.json"))
    assert manifest["status"] == "complete"
    assert manifest["rows"] == {"in": rows, "scored": rows - 1, "rejected": 1}
    scored = list(csv.DictReader(io.StringIO(get(aws, f"scored/{name}").decode())))
    rejected = list(csv.DictReader(io.StringIO(get(aws, f"rejected/{name}").decode())))
    assert len(scored) == rows - 1 and [r["line"] for r in rejected] == ["8"]
    assert len({r["mean radius"] + r["mean texture"] + r["mean area"] for r in scored}) >= rows - 5  # not repeated
    return manifest


def metrics_emitted(capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    """The sums of the metrics the function printed (CloudWatch embedded metric format)."""
    totals: dict[str, float] = {}
    for line in capsys.readouterr().out.splitlines():
        if '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + sum(value if isinstance(value, list)
                                                                             else [value])
    return totals


def fail_once(client: Any, method: str, monkeypatch: pytest.MonkeyPatch, when: Callable[[dict[str, Any]], bool],
              code: str = "InternalError") -> dict[str, int]:
    """``client.method`` answers ``code`` the first time ``when(kwargs)`` holds, then works again."""
    real, seen = getattr(client, method), {"failed": 0}

    def flaky(**kwargs: Any) -> Any:
        if when(kwargs) and not seen["failed"]:
            seen["failed"] += 1
            raise ClientError({"Error": {"Code": code, "Message": "injected"}}, method)
        return real(**kwargs)

    monkeypatch.setattr(client, method, flaky)
    return seen


def test_a_worker_killed_mid_file_publishes_nothing_and_the_redelivery_scores_it_once(
        aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    module = batch_function(aws, CHUNK_ROWS="50")
    monkeypatch.setattr(stores, "PART_BYTES", 20_000)  # a multipart upload is open when the kill comes
    messages = upload(aws, "incoming/kill.csv", rows_csv())
    s3 = adapter.client("s3")
    real_upload, parts = s3.upload_part, {"n": 0}

    def killed_on_third_part(**kwargs: Any) -> Any:
        parts["n"] += 1
        if parts["n"] == 3:
            raise Killed
        return real_upload(**kwargs)

    monkeypatch.setattr(s3, "upload_part", killed_on_third_part)
    monkeypatch.setattr(stores.S3Sink, "abort", lambda self: None)  # a dead process cleans nothing up
    with pytest.raises(Killed):
        deliver(module, messages)
    assert keys(aws, "scored/") == keys(aws, "rejected/") == keys(aws, "manifests/") == []  # nothing published
    orphans = aws["s3"].list_multipart_uploads(Bucket=aws["bucket"]).get("Uploads", [])
    assert [u["Key"] for u in orphans] == ["scored/kill.csv"]  # unseen parts, left to the bucket's lifecycle rule
    monkeypatch.undo()
    module = batch_function(aws, CHUNK_ROWS="50")  # a fresh execution environment takes the redelivery
    assert deliver(module, messages) == {"batchItemFailures": []}
    assert_scored_once(aws, "kill.csv")
    assert versions(aws, "scored/kill.csv") == versions(aws, "manifests/kill.csv.json") == 1


def test_get_object_failing_mid_stream_fails_the_message_and_the_retry_completes(
        aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    module = batch_function(aws, CHUNK_ROWS="50")
    messages = upload(aws, "incoming/cut.csv", rows_csv())
    s3 = adapter.client("s3")
    real_get, calls = s3.get_object, {"n": 0}

    def cut_after_4_kib(**kwargs: Any) -> Any:
        response = real_get(**kwargs)
        if kwargs["Key"] == "incoming/cut.csv" and not calls["n"]:
            calls["n"] += 1
            body, sent = response["Body"], {"bytes": 0}

            class Cut:
                def read(self, size: int = -1) -> bytes:
                    if sent["bytes"] > 4096:
                        raise ResponseStreamingError(error="connection reset by peer")
                    data: bytes = body.read(min(size, 1024) if size > 0 else 1024)
                    sent["bytes"] += len(data)
                    return data

            response["Body"] = Cut()
        return response

    monkeypatch.setattr(s3, "get_object", cut_after_4_kib)
    capsys.readouterr()
    deliver_failing(module, messages)
    assert metrics_emitted(capsys).get("MessagesFailed") == 1
    assert keys(aws, "scored/") == keys(aws, "manifests/") == []  # no verdict on a file never read whole
    assert deliver(module, messages) == {"batchItemFailures": []}
    assert_scored_once(aws, "cut.csv")


def test_the_manifest_put_failing_fails_the_message_and_the_retry_rewrites_the_same_outputs(
        aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    module = batch_function(aws)
    messages = upload(aws, "incoming/m.csv", rows_csv())
    seen = fail_once(adapter.client("s3"), "put_object", monkeypatch,
                     lambda kw: kw["Key"].startswith("manifests/"), code="SlowDown")
    capsys.readouterr()
    deliver_failing(module, messages)
    assert seen["failed"] == 1 and metrics_emitted(capsys).get("MessagesFailed") == 1
    assert keys(aws, "manifests/") == []  # outputs without a manifest are not committed
    first = get(aws, "scored/m.csv")
    assert deliver(module, messages) == {"batchItemFailures": []}
    manifest = assert_scored_once(aws, "m.csv")
    assert get(aws, "scored/m.csv") == first  # the retry wrote the same rows, not more
    assert manifest["outputs"]["scored"]["bytes"] == len(first)


def test_a_failed_part_upload_is_aborted_and_the_retry_completes(aws: dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    module = batch_function(aws, CHUNK_ROWS="50")
    monkeypatch.setattr(stores, "PART_BYTES", 20_000)  # parts below S3's minimum: never completed here
    messages = upload(aws, "incoming/p.csv", rows_csv())
    fail_once(adapter.client("s3"), "upload_part", monkeypatch, lambda kw: kw["PartNumber"] == 2)
    deliver_failing(module, messages)
    assert not aws["s3"].list_multipart_uploads(Bucket=aws["bucket"]).get("Uploads")  # aborted, no orphan
    monkeypatch.undo()  # S3 completes no upload of parts this small: the retry writes the file whole
    assert deliver(module, messages) == {"batchItemFailures": []}
    assert_scored_once(aws, "p.csv")


def test_an_unreadable_bundle_fails_the_message_until_the_model_loads(
        aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    module = batch_function(aws, RETRY_LOAD_SECONDS="0")
    messages = upload(aws, "incoming/b.csv", rows_csv())
    seen = fail_once(adapter.client("s3"), "get_object", monkeypatch, lambda kw: kw["Key"].startswith("models/"))
    deliver_failing(module, messages)
    assert seen["failed"] == 1 and keys(aws, "manifests/") == []
    assert deliver(module, messages) == {"batchItemFailures": []}
    assert_scored_once(aws, "b.csv")


def test_duplicate_events_in_one_batch_and_across_batches_score_the_file_once(aws: dict[str, Any]) -> None:
    module = batch_function(aws)
    messages = upload(aws, "incoming/d.csv", rows_csv())
    twin = {**messages[0], "MessageId": "duplicate-delivery"}
    assert deliver(module, [messages[0], twin]) == {"batchItemFailures": []}
    assert deliver(module, messages) == {"batchItemFailures": []}  # redelivered after the visibility timeout
    assert_scored_once(aws, "d.csv")
    assert versions(aws, "scored/d.csv") == versions(aws, "manifests/d.csv.json") == 1


def test_a_message_half_done_when_it_failed_finishes_the_rest_on_redelivery(
        aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """One S3 message may announce several objects: the one already committed is not scored again."""
    module = batch_function(aws)
    first = upload(aws, "incoming/one.csv", rows_csv())
    second = upload(aws, "incoming/two.csv", rows_csv())
    body = json.loads(first[0]["Body"])
    body["Records"] += json.loads(second[0]["Body"])["Records"]
    message = {**first[0], "Body": json.dumps(body)}
    fail_once(adapter.client("s3"), "put_object", monkeypatch, lambda kw: kw["Key"] == "manifests/two.csv.json")
    good = upload(aws, "incoming/three.csv", rows_csv())  # a message beside it in the batch succeeds
    assert failed_ids(deliver(module, [message, *good])) == [message["MessageId"]]
    assert keys(aws, "manifests/") == ["manifests/one.csv.json", "manifests/three.csv.json"]
    assert deliver(module, [message]) == {"batchItemFailures": []}
    assert_scored_once(aws, "one.csv") and assert_scored_once(aws, "two.csv")
    assert versions(aws, "scored/one.csv") == 1  # skipped on redelivery, not rewritten


def test_an_unexpected_error_is_a_rejected_manifest_and_a_metric_not_a_retry(
        aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from functions.batch import scoring

    module = batch_function(aws)
    messages = upload(aws, "incoming/bug.csv", rows_csv())

    def bug(model: Any, chunk: Any) -> Any:
        raise IndexError("a bug nobody foresaw")

    monkeypatch.setattr(scoring, "score_chunk", bug)
    capsys.readouterr()
    assert deliver(module, messages) == {"batchItemFailures": []}  # redelivering would only fail again
    manifest = json.loads(get(aws, "manifests/bug.csv.json"))
    assert manifest["status"] == "rejected" and manifest["reason"]["code"] == "internal_error"
    assert "foresaw" not in manifest["reason"]["message"] and keys(aws, "scored/") == []
    emitted = metrics_emitted(capsys)
    assert emitted.get("FilesFailedInternally") == 1 and emitted.get("FilesRejected") == 1
