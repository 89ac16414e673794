"""The shadow inside one environment: drawn for its share of request ids independently of the canary,
picked up within the routing TTL (an injected clock, never a sleep), compared with the served answer,
and never able to fail the request it runs beside."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from functions.common.bundle import Model, Prediction
from functions.common.registry import Routing
from functions.common.routing import RoutingSource, ShadowDraw, role_for, shadow_slot
from functions.common.shadow import SHADOW_DIMENSIONS, ShadowMismatch, compare, run_shadow
from tests.unit import test_routing as routing_tests
from tests.unit.test_routing import Clock, Table


class FakeModel:
    """A model with a manifest's name and classes whose answers a test sets (or that raises)."""

    def __init__(self, version: str, classes: list[Any] | None = None, answer: Prediction | None = None,
                 clock: Clock | None = None, cost_ms: float = 0.0) -> None:
        self.version, self.answer, self.clock, self.cost_ms = version, answer, clock, cost_ms
        self.manifest = SimpleNamespace(name="churn", version=version, classes=classes)
        self.calls = 0

    def predict(self, instances: Any) -> Prediction:
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.cost_ms / 1e3
        if self.answer is None:
            raise RuntimeError("the shadow's model broke")
        return self.answer


def fake_model(version: str, classes: list[Any] | None = None, answer: Prediction | None = None,
               clock: Clock | None = None, cost_ms: float = 0.0) -> Model:
    """A FakeModel where the code under test expects a Model (it has what shadows read: manifest, predict)."""
    return cast(Model, FakeModel(version, classes, answer, clock, cost_ms))


class Logs:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, msg: str, *args: Any, extra: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.lines.append((msg, extra or {}))

    error = warning


def routing(shadow: str | None = None, share: int = 0, canary: str | None = None, weight: int = 0) -> Routing:
    return Routing(model="churn", champion_version="v1", champion_uri="s3://b/v1/", champion_sha256="a" * 64,
                   canary_version=canary, canary_uri=f"s3://b/{canary}/" if canary else "",
                   canary_sha256="b" * 64 if canary else "", canary_weight=weight,
                   shadow_version=shadow, shadow_uri=f"s3://b/{shadow}/" if shadow else "",
                   shadow_sha256="c" * 64 if shadow else "", shadow_share=share)


def loader(broken: set[str] | None = None) -> Any:
    return routing_tests.loader(broken, model=FakeModel)


def source(table: Table, load: Any, clock: Clock, ttl: float = 15) -> RoutingSource:
    return routing_tests.source(table, load, clock, ttl, logger=Logs())



IDS = [f"req-{i}" for i in range(10_000)]


def test_the_shadow_draw_follows_its_share_and_not_the_canary_draw() -> None:
    shadowed = {i for i in IDS if shadow_slot(i) < 10}
    assert 0.08 < len(shadowed) / len(IDS) < 0.12  # sha256 of the id: the same share every run
    canary = {i for i in IDS if role_for(i, 10) == "canary"}
    # Independent draws: about a tenth of the canary's requests are shadowed too, not all or none.
    assert 0.06 < len(shadowed & canary) / len(canary) < 0.14
    assert [shadow_slot(i) for i in IDS[:50]] == [shadow_slot(i) for i in IDS[:50]]


def test_requests_in_the_share_draw_the_loaded_shadow_and_others_draw_nothing() -> None:
    clock, load = Clock(), loader()
    models = source(Table(routing("v3", 30)), load, clock)
    for request_id in IDS[:300]:
        draw = models.shadow_for(request_id, "v1")
        if shadow_slot(request_id) < 30:
            assert draw is not None and draw.version == "v3" and draw.model is not None
        else:
            assert draw is None
    assert load.calls == ["s3://b/v3/"]  # loaded once, on the first request that drew it


def test_share_zero_no_shadow_or_the_served_version_itself_draw_nothing() -> None:
    clock, load = Clock(), loader()
    assert all(source(Table(routing("v3", 0)), load, clock).shadow_for(i, "v1") is None for i in IDS[:200])
    assert all(source(Table(routing()), load, clock).shadow_for(i, "v1") is None for i in IDS[:200])
    # The shadow version answering the request (it became the canary): nothing to compare it with.
    assert all(source(Table(routing("v3", 100)), load, clock).shadow_for(i, "v3") is None for i in IDS[:200])
    assert load.calls == []


def test_a_warm_environment_picks_up_a_new_shadow_within_the_ttl() -> None:
    clock, table, load = Clock(), Table(routing()), loader()
    models = source(table, load, clock, ttl=15)
    models.preload()
    assert models.shadow_for("r1", "v1") is None
    table.routing = routing("v3", 100)  # set_shadow in the registry
    clock.now = 14.9
    assert models.shadow_for("r2", "v1") is None and table.reads == 1  # the read is still trusted
    clock.now = 15.0
    draw = models.shadow_for("r3", "v1")
    assert draw is not None and draw.version == "v3" and table.reads == 2
    table.routing, clock.now = routing(), 30.0  # clear_shadow: the bundle is dropped too
    assert models.shadow_for("r4", "v1") is None
    assert [k[0] for k in models._models] == ["s3://b/v1/"]


def test_preload_loads_the_shadow_at_cold_start() -> None:
    load = loader()
    source(Table(routing("v3", 5)), load, Clock()).preload()
    assert sorted(load.calls) == ["s3://b/v1/", "s3://b/v3/"]


def test_a_classifier_shadow_publishes_agreement_score_difference_and_latency(
        metric_records: list[dict[str, Any]]) -> None:
    clock = Clock()
    served = fake_model("v1", classes=["no", "yes"])
    answer = Prediction(["yes", "no", "no", "yes"], [[0.2, 0.8], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    # The shadow's classes in another order: scores are matched by label, not by position.
    shadow = fake_model("v3", classes=["yes", "no"], clock=clock, cost_ms=4.0,
                       answer=Prediction(["yes", "yes", "no", "no"], [[0.9, 0.1], [0.5, 0.5], [0.3, 0.7],
                                                                      [0.4, 0.6]]))
    run = run_shadow(ShadowDraw("v3", shadow), [[1], [2], [3], [4]], served, answer, clock=clock, log=Logs())
    record = run.record
    assert metric_records == [record]
    assert run.version == "v3" and run.error is None and run.answer is not None  # kept for request capture
    assert run.answer.predictions == ["yes", "yes", "no", "no"]
    assert record["ShadowRequests"] == 1 and record["ShadowErrors"] == 0
    assert record["ShadowAgreement"] == pytest.approx(2 / 4)
    # |0.8-0.9| + |0.9-0.5| + |0.6-0.7| + |0.7-0.4| over 4 rows
    assert record["ShadowScoreDiff"] == pytest.approx((0.1 + 0.4 + 0.1 + 0.3) / 4)
    assert record["ShadowLatency"] == pytest.approx(4.0)
    directive = record["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "Slimserve" and directive["Dimensions"] == SHADOW_DIMENSIONS
    assert (record["model_name"], record["model_version"], record["served_version"]) == ("churn", "v3", "v1")
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units["ShadowLatency"] == "Milliseconds" and units["ShadowRequests"] == "Count"


def test_a_regressor_shadow_publishes_the_mean_absolute_difference_and_no_agreement() -> None:
    served, shadow = fake_model("v1"), fake_model("v3")
    values = compare(served, Prediction([1.0, 2.0, 4.0], None), shadow, Prediction([1.5, 2.0, 3.0], None))
    assert values == {"ShadowScoreDiff": pytest.approx(0.5)}


def test_an_answer_that_cannot_be_compared_is_a_mismatch() -> None:
    served, shadow = fake_model("v1", classes=["no", "yes"]), fake_model("v3")
    with pytest.raises(ShadowMismatch):
        compare(served, Prediction(["no"], [[0.6, 0.4]]), shadow, Prediction([0.3], None))
    with pytest.raises(ShadowMismatch):
        compare(served, Prediction(["no"], [[0.6, 0.4]]), served, Prediction([], []))


@pytest.mark.parametrize(("draw", "code"), [(ShadowDraw("v3", fake_model("v3", answer=None)), "internal_error"),
                                            (ShadowDraw("v3", None), "shadow_unavailable")],
                         ids=["predict raises", "bundle not loaded"])
def test_a_failing_shadow_is_counted_and_logged_never_raised(draw: ShadowDraw, code: str,
                                                             metric_records: list[dict[str, Any]]) -> None:
    logs = Logs()
    served = fake_model("v1", classes=["no", "yes"])
    run = run_shadow(draw, [{"secret": "row"}], served, Prediction(["no"], [[0.6, 0.4]]), clock=Clock(), log=logs)
    record = run.record
    assert run.answer is None and run.error == code  # request capture keeps the code, not an answer
    assert record["ShadowErrors"] == 1 and record["ShadowRequests"] == 1
    assert "ShadowAgreement" not in record and "ShadowScoreDiff" not in record
    ((_message, extra),) = logs.lines
    assert extra["shadow_version"] == "v3" and "secret" not in repr(logs.lines)  # never the rows


def test_a_shadow_whose_bundle_fails_to_load_draws_no_model_and_is_retried_later() -> None:
    clock, load = Clock(), loader(broken={"s3://b/v3/"})
    models = source(Table(routing("v3", 100)), load, clock)
    draw = models.shadow_for("r1", "v1")
    assert draw is not None and draw.model is None
    assert models.shadow_for("r2", "v1").model is None and load.calls.count("s3://b/v3/") == 1  # type: ignore[union-attr]
    clock.now = 31  # the retry interval passed (the routing read is older than its TTL too)
    models.shadow_for("r3", "v1")
    assert load.calls.count("s3://b/v3/") == 2
