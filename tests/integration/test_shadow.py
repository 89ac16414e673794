"""A shadow on the emulated account: set and cleared by the release function under the gate's and the
lock's rules, run by the real routed inference handler on its share of requests, measured in
CloudWatch-shaped EMF, and never part of an answer."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions.common.capture import Capture, s3_put
from functions.common.errors import LockHeld, NoChampion, NotAdmitted, SlimserveError, UnknownModel, UnknownVersion
from functions.common.routing import set_metric_sink, shadow_slot
from functions.drift.service import capture_keys, parse_capture, read_window
from pipeline.local.apigw import LambdaContext, proxy_event
from pipeline.local.emulation import MODEL_BUCKET, emulated_account
from pipeline.local.server import load_function
from tests.integration.release_account import MODEL, TABLE, ReleaseAccount, release_account


@pytest.fixture
def account(rf_bundle: Path, tmp_path: Path) -> Iterator[ReleaseAccount]:
    with emulated_account():
        yield from release_account(rf_bundle, tmp_path)


@pytest.fixture
def shadow_records() -> Iterator[list[dict[str, Any]]]:
    """The shadow's EMF records, while every record still reaches the account's CloudWatch."""
    found: list[dict[str, Any]] = []
    forward = set_metric_sink(None)

    def sink(record: dict[str, Any]) -> None:
        if "ShadowRequests" in record:
            found.append(record)
        forward(record)

    set_metric_sink(sink)
    yield found
    set_metric_sink(forward)


def champion_and_candidate(account: ReleaseAccount, max_share: int | None = None) -> None:
    """v1 champion, v2 an admitted candidate; ``max_share``: the release function's MAX_SHADOW_SHARE."""
    if max_share is not None:
        account.release = load_function("functions.release.handler", "", REGISTRY_TABLE=TABLE,
                                        NOTIFY_TOPIC_ARN=account.topic, MAX_SHADOW_SHARE=str(max_share))
    account.add_version("v1")
    account.step("first_release", version="v1")
    account.add_version("v2")


def answers(account: ReleaseAccount, requests: int = 30) -> list[tuple[int, dict[str, Any]]]:
    """``requests`` calls with fixed request ids: each status and body as the caller sees it."""
    assert account.serving is not None
    seen = []
    for i in range(requests):
        event: Any = proxy_event("POST", "/predict", json.dumps({"instances": account.rows[i % 40:i % 40 + 3]}),
                                 {"Content-Type": "application/json"})
        event["requestContext"]["requestId"] = f"req-{i}"
        result = account.serving.lambda_handler(event, LambdaContext())
        seen.append((result["statusCode"], json.loads(result["body"])))
    return seen


def predictions_of(account: ReleaseAccount, version: str) -> list[int]:
    """How many times each environment's model of ``version`` was asked to predict (a counter wrapper)."""
    calls: list[int] = []

    def change(model: Any, instances: Any) -> Any:
        calls.append(1)
        return model.predict(instances)

    account.changes[version] = change
    return calls


def test_the_shadow_answer_is_never_returned(account: ReleaseAccount, shadow_records: list[dict[str, Any]]) -> None:
    champion_and_candidate(account)
    account.flipped("v2")  # every shadow answer the opposite class: any leak would show
    account.serve()
    without = answers(account)
    assert account.step("set_shadow", version="v2", share=25) == {"shadow_version": "v2", "shadow_share": 25}
    account.serve()
    with_shadow = answers(account)
    assert with_shadow == without  # bodies, model_version and request ids alike
    assert all(status == 200 and body["model_version"] == "v1" for status, body in with_shadow)
    assert len(shadow_records) == sum(shadow_slot(f"req-{i}") < 25 for i in range(30)) > 0


def test_a_different_shadow_publishes_its_agreement_score_difference_and_latency(
        account: ReleaseAccount, shadow_records: list[dict[str, Any]]) -> None:
    champion_and_candidate(account)
    flip = account.changes
    account.flipped("v2")
    flipped = flip["v2"]

    def slow_and_flipped(model: Any, instances: Any) -> Any:
        account.clock.now += 0.004  # the shadow's model takes 4 ms on the handler's clock
        return flipped(model, instances)

    account.changes["v2"] = slow_and_flipped
    account.step("set_shadow", version="v2", share=20)
    account.serve()
    served = answers(account, 40)
    shadowed = [body for i, (_, body) in enumerate(served) if shadow_slot(f"req-{i}") < 20]
    assert len(shadow_records) == len(shadowed) > 0
    for record, body in zip(shadow_records, shadowed, strict=True):
        assert (record["model_name"], record["model_version"], record["served_version"]) == (MODEL, "v2", "v1")
        assert record["ShadowRequests"] == 1 and record["ShadowErrors"] == 0
        assert record["ShadowAgreement"] == 0.0  # every label the opposite one
        # The flipped shadow gives the served label 1 - p: the difference is |2p - 1| on each row.
        top = [max(p) for p in body["probabilities"]]
        assert record["ShadowScoreDiff"] == pytest.approx(sum(abs(2 * p - 1) for p in top) / len(top))
        assert record["ShadowLatency"] == pytest.approx(4.0)
        assert record["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["model_name"],
                                                                       ["model_name", "model_version"]]
    stored = account.cloudwatch.list_metrics(Namespace="Slimserve", MetricName="ShadowAgreement")["Metrics"]
    assert {d["Name"]: d["Value"] for d in stored[0]["Dimensions"]} == {"model_name": MODEL, "model_version": "v2"}


def test_a_captured_shadowed_request_keeps_both_answers_and_readers_see_the_served_one(
        account: ReleaseAccount) -> None:
    champion_and_candidate(account, max_share=100)
    account.flipped("v2")
    account.step("set_shadow", version="v2", share=100)
    module = account.serve()
    module.capture = Capture(sample_rate=1.0, put=s3_put(MODEL_BUCKET), max_records=10_000, emit=lambda r: None)
    served = answers(account, 5)
    assert module.capture.flush() == 15
    keys = capture_keys(account.s3, MODEL_BUCKET, MODEL, "v1", dt.datetime.now(dt.UTC), 1)
    lines = [line for key in keys
             for line in parse_capture(account.s3.get_object(Bucket=MODEL_BUCKET, Key=key)["Body"].read())]
    expected = [(p, max(q)) for _, body in served for p, q in zip(body["predictions"], body["probabilities"],
                                                                   strict=True)]
    assert sorted((line["prediction"], line["score"]) for line in lines) == sorted(expected)
    for line in lines:  # the flipped shadow: the other label, with the served answer's top probability
        assert (line["version"], line["shadow_version"]) == ("v1", "v2")
        assert (line["shadow_prediction"], line["shadow_score"]) == (1 - line["prediction"], line["score"])
    # The drift reader (and `slimserve monitor` through it) reads rows and served predictions alone.
    window = read_window(account.s3, MODEL_BUCKET, MODEL, ["v1"], dt.datetime.now(dt.UTC), 1, 1000)
    assert sorted(window.predictions["v1"]) == sorted(p for p, _ in expected) and len(window.rows) == 15
    assert all(set(row) == set(lines[0]["row"]) for row in window.rows)


def test_share_zero_runs_nothing(account: ReleaseAccount, shadow_records: list[dict[str, Any]]) -> None:
    champion_and_candidate(account)
    calls = predictions_of(account, "v2")
    account.step("set_shadow", version="v2", share=0)
    account.serve()
    assert {status for status, _ in answers(account)} == {200}
    assert calls == [] and shadow_records == []


def test_a_failing_shadow_never_fails_the_request(account: ReleaseAccount,
                                                  shadow_records: list[dict[str, Any]]) -> None:
    champion_and_candidate(account, max_share=100)
    account.serve()
    without = answers(account, 10)
    account.failing("v2")
    account.step("set_shadow", version="v2", share=100)
    account.serve()
    assert answers(account, 10) == without
    assert len(shadow_records) == 10 and all(r["ShadowErrors"] == 1 for r in shadow_records)


def test_a_shadow_bundle_that_will_not_load_never_fails_the_request(
        account: ReleaseAccount, shadow_records: list[dict[str, Any]]) -> None:
    champion_and_candidate(account, max_share=100)
    account.serve()
    without = answers(account, 10)
    broken = account.registry.get(MODEL, "v2")
    account.ddb.update_item(TableName="slimserve-models", Key={"model": {"S": MODEL}, "version": {"S": "v2"}},
                            UpdateExpression="SET manifest_sha256 = :bad",
                            ExpressionAttributeValues={":bad": {"S": "0" * 64}})  # the bundle no longer verifies
    account.step("set_shadow", version=broken.version, share=100)
    account.serve()
    assert answers(account, 10) == without
    assert len(shadow_records) == 10 and all(r["ShadowErrors"] == 1 for r in shadow_records)


def test_set_shadow_refuses_what_the_gate_did_not_admit_and_leaves_the_registry_as_it_was(
        account: ReleaseAccount) -> None:
    champion_and_candidate(account)
    account.add_version("v3", admitted=False)
    account.add_version("v4", admitted=None)  # never judged
    before = account.registry.routing(MODEL)
    refusals = [(NotAdmitted, {"version": "v3"}), (NotAdmitted, {"version": "v4"}),
                (UnknownVersion, {"version": "v9"}), (UnknownModel, {"model": "nobody", "version": "v2"}),
                (SlimserveError, {"version": "v2", "share": 101}),  # outside 0..100: refused as a bad step
                (SlimserveError, {"version": "v2", "share": 50}),  # over max_shadow_share (25 by default)
                (SlimserveError, {"version": "v1"})]  # the champion cannot shadow itself
    for error, fields in refusals:
        with pytest.raises(error):
            account.release.lambda_handler({"action": "set_shadow", "model": MODEL, **fields},
                                           LambdaContext(function_name="slimserve-release"))
    assert account.registry.routing(MODEL) == before
    assert account.registry.lock(MODEL) is None
    assert account.registry.get(MODEL, "v3").status == "rejected"


def test_set_shadow_needs_a_champion(account: ReleaseAccount) -> None:
    account.add_version("v1")
    with pytest.raises(NoChampion):
        account.step("set_shadow", version="v1")
    assert account.registry.routing(MODEL).revision == 0


def test_shadow_changes_respect_the_release_lock(account: ReleaseAccount) -> None:
    champion_and_candidate(account)
    account.step("lock", owner="exec-1")
    before = account.registry.routing(MODEL)
    with pytest.raises(LockHeld):
        account.step("set_shadow", version="v2")
    assert account.registry.routing(MODEL) == before
    # The run that holds the lock may set one, and keeps its lock as it was.
    lock = account.registry.lock(MODEL)
    assert account.step("set_shadow", version="v2", owner="exec-1")["shadow_share"] == 5  # the default share
    assert account.registry.lock(MODEL) == lock
    account.step("unlock", owner="exec-1")
    assert account.step("clear_shadow") == {"shadow_version": None, "cleared": "v2"}
    routing = account.registry.routing(MODEL)
    assert (routing.shadow_version, routing.shadow_share, routing.champion_version) == (None, 0, "v1")
    assert account.registry.lock(MODEL) is None  # taken and let go by the step itself
    assert account.registry.get(MODEL, "v2").status == "candidate"  # shadowing never changed its status


def test_a_warm_environment_picks_up_a_new_shadow_within_the_ttl(
        account: ReleaseAccount, shadow_records: list[dict[str, Any]]) -> None:
    champion_and_candidate(account, max_share=100)
    module = account.serve(ttl_seconds="15")
    now = [0.0]
    module.holder.clock = lambda: now[0]
    module.holder.reset()
    answers(account, 5)
    account.step("set_shadow", version="v2", share=100)
    now[0] = 14.0
    answers(account, 5)
    assert shadow_records == []  # the routing read is still trusted
    now[0] = 15.0
    answers(account, 5)
    assert len(shadow_records) == 5 and {r["model_version"] for r in shadow_records} == {"v2"}
