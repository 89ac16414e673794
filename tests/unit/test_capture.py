"""Request capture: sampling, the objects' keys and lines, PII columns, flush thresholds, failures."""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from functions.common.capture import Capture, columns, hashed, sampled
from functions.common.errors import AwsError
from functions.common.layout import CAPTURE_PREFIX, capture_key, capture_model_prefix
from functions.common.settings import InferenceSettings

NAMES = ("age", "email", "income")
KEY = re.compile(r"^capture/churn/(v[12])/2024/05/06/07/(\d+)-([0-9a-f]{12})\.jsonl\.gz$")
FIELDS = {"ts", "request_id", "model", "version", "role", "row", "prediction", "score", "prediction_id"}
T0 = 1714979289.5  # 2024-05-06T07:08:09.5Z


def routed(version: str = "v1", role: str = "champion", name: str = "churn") -> Any:
    model = SimpleNamespace(manifest=SimpleNamespace(name=name), version=version,
                            schema=SimpleNamespace(names=list(NAMES)))
    return SimpleNamespace(model=model, role=role)


def classified(rows: int) -> Any:
    return SimpleNamespace(predictions=["yes"] * rows, probabilities=[[0.2, 0.8]] * rows)


@dataclass
class Bucket:
    """Records PUTs; fails them while `failing`."""

    objects: dict[str, bytes] = field(default_factory=dict)
    failing: bool = False

    def put(self, key: str, body: bytes) -> None:
        if self.failing:
            raise AwsError("s3://bucket/key failed: SlowDown")
        self.objects[key] = body

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for key in sorted(self.objects)
                for line in gzip.decompress(self.objects[key]).decode().splitlines()]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def capture(bucket: Bucket, rate: float = 1.0, **kwargs: Any) -> tuple[Capture, list[dict[str, Any]]]:
    emitted: list[dict[str, Any]] = []
    kwargs.setdefault("clock", Clock())
    made = Capture(sample_rate=rate, put=bucket.put, wall=lambda: T0, emit=emitted.append, **kwargs)
    return made, emitted


def test_layout_names_the_contract_key() -> None:
    from datetime import UTC, datetime

    when = datetime(2024, 5, 6, 7, 8, 9, 500000, tzinfo=UTC)
    assert capture_key("churn", "v1", when, "0123456789ab") == \
        "capture/churn/v1/2024/05/06/07/1714979289500-0123456789ab.jsonl.gz"
    assert capture_model_prefix("churn") == "capture/churn/" and CAPTURE_PREFIX == "capture/"


def test_rate_zero_writes_nothing() -> None:
    bucket = Bucket()
    cap, emitted = capture(bucket, rate=0.0, max_records=1)
    for i in range(50):
        cap.record(f"r{i}", routed(), [[1, "a@b", 2.0]], classified(1))
    assert cap.flush() == 0 and bucket.objects == {} and emitted == [] and cap.pending_rows == 0


def test_full_rate_writes_every_row_with_the_contract_fields() -> None:
    bucket = Bucket()
    cap, emitted = capture(bucket, max_records=10_000)
    cap.record("req-1", routed(), [[41, "a@b.c", 1.5], {"age": 7, "email": "x@y", "income": 2.0}], classified(2),
               ["p1.a.b", "p1.c.d"])
    cap.record("req-2", routed("v2", "canary"), [[3, "q@r", 0.0]], classified(1))
    assert bucket.objects == {}  # nothing written before a threshold
    assert cap.flush() == 3
    assert len(bucket.objects) == 2  # one object per model version
    assert all(KEY.match(key) for key in bucket.objects)
    lines = bucket.lines()
    assert [set(line) for line in lines] == [FIELDS] * 3
    first, second, canary = lines
    assert first == {"ts": "2024-05-06T07:08:09.500Z", "request_id": "req-1", "model": "churn", "version": "v1",
                     "role": "champion", "row": {"age": 41, "email": "a@b.c", "income": 1.5},
                     "prediction": "yes", "score": 0.8, "prediction_id": "p1.a.b"}
    assert second["row"] == {"age": 7, "email": "x@y", "income": 2.0} and second["prediction_id"] == "p1.c.d"
    assert canary["version"] == "v2" and canary["role"] == "canary" and canary["prediction_id"] is None
    assert {r["CaptureRowsWritten"] for r in emitted} == {1, 2}


def test_regressor_score_is_the_predicted_value() -> None:
    bucket = Bucket()
    cap, _ = capture(bucket)
    cap.record("r", routed(), [[1, "e", 2.0]], SimpleNamespace(predictions=[3.25], probabilities=None))
    cap.flush()
    assert bucket.lines()[0]["score"] == 3.25 and bucket.lines()[0]["prediction"] == 3.25


def test_sampling_is_decided_by_the_request_id() -> None:
    ids = [f"request-{i}" for i in range(4000)]
    chosen = [i for i in ids if sampled(i, 0.25)]
    assert chosen == [i for i in ids if sampled(i, 0.25)]  # the same ids every time
    assert 0.2 < len(chosen) / len(ids) < 0.3
    assert set(chosen) <= {i for i in ids if sampled(i, 0.5)}  # a higher rate keeps what a lower one kept
    bucket = Bucket()
    cap, _ = capture(bucket, rate=0.25)
    for request_id in ids[:200]:
        cap.record(request_id, routed(), [[1, "e", 2.0]], classified(1))
    cap.flush()
    assert [line["request_id"] for line in bucket.lines()] == [i for i in ids[:200] if sampled(i, 0.25)]


def test_flush_at_max_records_in_the_request_that_fills_the_buffer() -> None:
    bucket = Bucket()
    cap, _ = capture(bucket, max_records=5)
    for i in range(4):
        cap.record(f"r{i}", routed(), [[i, "e", 0.0]], classified(1))
    assert bucket.objects == {} and cap.pending_rows == 4
    cap.record("r4", routed(), [[4, "e", 0.0]], classified(1))
    assert len(bucket.lines()) == 5 and cap.pending_rows == 0


def test_flush_when_the_oldest_row_is_older_than_max_seconds() -> None:
    bucket, clock = Bucket(), Clock()
    cap, _ = capture(bucket, max_records=1000, max_seconds=60, clock=clock)
    cap.record("r0", routed(), [[0, "e", 0.0]], classified(1))
    clock.now += 59.9
    cap.record("r1", routed(), [[1, "e", 0.0]], classified(1))
    assert bucket.objects == {}
    clock.now += 0.1  # the oldest row is now 60 s old: the next request flushes, sampled or not
    cap.sample_rate = 1e-12
    cap.record("not-sampled", routed(), [[2, "e", 0.0]], classified(1))
    assert [line["request_id"] for line in bucket.lines()] == ["r0", "r1"]


def test_dropped_columns_are_absent_and_hashed_ones_are_stable_digests() -> None:
    bucket = Bucket()
    cap, _ = capture(bucket, drop=columns("income"), hash_columns=columns(" email ,age"))
    cap.record("r", routed(), [[41, "a@b.c", 9.5], {"age": None, "email": "a@b.c", "income": 1.0}], classified(2))
    cap.flush()
    first, second = (line["row"] for line in bucket.lines())
    assert first == {"age": hashed(41), "email": hashed("a@b.c")}
    assert second == {"age": None, "email": first["email"]}  # equal values, equal digests; a null stays null
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", first["email"]) and "a@b.c" not in json.dumps(bucket.lines())


def shadow_run(version: str = "v3", answer: Any = None, error: str | None = None) -> Any:
    """What run_shadow hands to capture (a ShadowRun): the version and its answer, or its error code."""
    return SimpleNamespace(version=version, answer=answer, error=error)


def test_a_shadowed_request_keeps_the_shadow_answer_beside_the_served_one() -> None:
    bucket = Bucket()
    cap, _ = capture(bucket)
    shadow = shadow_run(answer=SimpleNamespace(predictions=["no", "yes"], probabilities=[[0.7, 0.3], [0.1, 0.9]]))
    cap.record("r1", routed(), [[1, "e", 0.0], [2, "e", 0.0]], classified(2), None, shadow)
    cap.record("r2", routed(), [[3, "e", 0.0]], classified(1))  # not shadowed: the rows are as before
    cap.record("r3", routed(), [[4, "e", 0.0]], SimpleNamespace(predictions=[3.25], probabilities=None), None,
               shadow_run(answer=SimpleNamespace(predictions=[2.5], probabilities=None)))
    cap.flush()
    first, second, plain, regressor = bucket.lines()
    assert set(plain) == FIELDS
    assert {k: first[k] for k in set(first) - FIELDS} == {"shadow_version": "v3", "shadow_prediction": "no",
                                                          "shadow_score": 0.7}
    assert (second["shadow_prediction"], second["shadow_score"]) == ("yes", 0.9)
    assert (first["prediction"], first["score"], first["version"]) == ("yes", 0.8, "v1")  # the served answer
    assert (regressor["shadow_prediction"], regressor["shadow_score"], regressor["prediction"]) == (2.5, 2.5, 3.25)


def test_a_failed_shadow_leaves_its_version_and_error_code_and_no_answer() -> None:
    bucket = Bucket()
    cap, _ = capture(bucket)
    cap.record("r", routed(), [[1, "e", 0.0]], classified(1), None, shadow_run(error="shadow_unavailable"))
    cap.flush()
    (line,) = bucket.lines()
    assert {k: line[k] for k in set(line) - FIELDS} == {"shadow_version": "v3", "shadow_error": "shadow_unavailable"}


def test_pii_settings_shape_the_features_not_the_shadow_answer() -> None:
    bucket = Bucket()
    cap, _ = capture(bucket, drop=columns("income"), hash_columns=columns("email"))
    shadow = shadow_run(answer=SimpleNamespace(predictions=["no"], probabilities=[[0.6, 0.4]]))
    cap.record("r", routed(), [[41, "a@b.c", 9.5]], classified(1), None, shadow)
    cap.flush()
    (line,) = bucket.lines()
    assert line["row"] == {"age": 41, "email": hashed("a@b.c")}
    assert (line["shadow_prediction"], line["shadow_score"]) == ("no", 0.6)


def test_a_failing_put_is_logged_and_counted_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    bucket = Bucket(failing=True)
    cap, emitted = capture(bucket, max_records=2)
    cap.record("r0", routed(), [[0, "e", 0.0], [1, "e", 0.0]], classified(2))  # flushes, and fails
    assert bucket.objects == {} and cap.pending_rows == 0
    assert emitted[0]["CaptureFlushFailures"] == 1 and emitted[0]["CaptureRowsLost"] == 2
    assert emitted[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Slimserve"
    assert "capture flush failed" in caplog.text and "SlowDown" not in json.dumps(emitted)
    bucket.failing = False
    cap.record("r1", routed(), [[2, "e", 0.0], [3, "e", 0.0]], classified(2))
    assert [line["request_id"] for line in bucket.lines()] == ["r1", "r1"]


def test_a_row_that_cannot_be_serialised_loses_its_flush_not_the_request() -> None:
    bucket = Bucket()
    cap, emitted = capture(bucket)
    cap.record("r", routed(), [[1, "e", 0.0]], SimpleNamespace(predictions=[], probabilities=None))
    assert cap.flush() == 0 and emitted[0]["CaptureRowsLost"] == 1


def test_settings_build_a_capture_only_with_a_bucket_and_a_rate() -> None:
    off = Capture.from_settings(InferenceSettings(model_uri="/m"))
    assert not off.enabled and not off.install_shutdown_flush({"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9"})
    on = Capture.from_settings(InferenceSettings(
        model_uri="/m", model_bucket="b", capture_sample_rate=0.5, capture_max_records=7, capture_max_seconds=3,
        capture_drop_columns="a,b", capture_hash_columns="c"))
    assert on.enabled and on.sample_rate == 0.5 and (on.max_records, on.max_seconds) == (7, 3)
    assert on.drop == {"a", "b"} and on.hash_columns == {"c"}
    assert not on.install_shutdown_flush({})  # outside Lambda no signal handler is set
