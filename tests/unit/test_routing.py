"""Routing between champion and canary inside one environment: by weight, deterministic on the
request id, a routing read trusted for its TTL (an injected clock, never a sleep), and EMF per role."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from functions.common.errors import AwsError, BundleError, ModelUnavailable
from functions.common.registry import Routing
from functions.common.routing import (
    ROLE_DIMENSIONS,
    VERSION_DIMENSIONS,
    RoutingSource,
    emit_request_metrics,
    metric_label,
    role_for,
    set_metric_sink,
    traffic_slot,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeModel:
    def __init__(self, version: str) -> None:
        self.version = version


class Table:
    """The routing item as a test sets it, and how often it was read."""

    def __init__(self, routing: Routing) -> None:
        self.routing, self.reads, self.fail = routing, 0, False

    def read(self) -> Routing:
        self.reads += 1
        if self.fail:
            raise AwsError("registry table models failed: ThrottlingException")
        return self.routing


def routing(champion: str | None = "v1", canary: str | None = None, weight: int = 0) -> Routing:
    return Routing(model="churn", champion_version=champion, champion_uri=f"s3://b/{champion}/",
                   champion_sha256="a" * 64, canary_version=canary, canary_uri=f"s3://b/{canary}/" if canary else "",
                   canary_sha256="b" * 64 if canary else "", canary_weight=weight)


def loader(broken: set[str] | None = None, model: Callable[[str], Any] = FakeModel) -> Any:
    """Loads a ``model(version)`` per bundle URI, recording each load; URIs in ``broken`` fail their check."""
    loads: list[str] = []

    def load(uri: str, sha: str) -> Any:
        loads.append(uri)
        if uri in (broken or set()):
            raise BundleError(f"{uri}manifest.json does not match")
        return model(uri.rstrip("/").rsplit("/", 1)[1])

    load.calls = loads  # type: ignore[attr-defined]
    return load


def source(table: Table, load: Any, clock: Clock, ttl: float = 15, **kwargs: Any) -> RoutingSource:
    return RoutingSource(table.read, load, ttl_seconds=ttl, retry_load_seconds=30, clock=clock, **kwargs)


def test_slots_are_stable_and_spread_over_a_hundred() -> None:
    ids = [f"req-{i}" for i in range(10_000)]
    assert [traffic_slot(i) for i in ids[:50]] == [traffic_slot(i) for i in ids[:50]]
    share = sum(role_for(i, 10) == "canary" for i in ids) / len(ids)
    assert 0.08 < share < 0.12  # the sha256 of the id: the same ids give the same share every run
    assert all(role_for(i, 0) == "champion" for i in ids[:100]) and all(role_for(i, 100) == "canary" for i in ids[:100])


def test_requests_follow_the_weight_and_the_answer_says_which_model() -> None:
    clock, load = Clock(), loader()
    models = source(Table(routing("v1", "v2", 30)), load, clock)
    roles = {f"req-{i}": models.route(f"req-{i}") for i in range(400)}
    for request_id, routed in roles.items():
        assert routed.role == role_for(request_id, 30)
        assert routed.version == ("v2" if routed.role == "canary" else "v1")
    assert sorted(load.calls) == ["s3://b/v1/", "s3://b/v2/"]  # each bundle loaded once


def test_a_warm_environment_picks_up_a_new_champion_within_the_ttl() -> None:
    clock, table = Clock(), Table(routing("v1"))
    models = source(table, loader(), clock, ttl=15)
    assert models.route("r1").version == "v1"
    table.routing = routing("v2")  # a promotion in the registry
    clock.now = 14.9
    assert models.route("r2").version == "v1" and table.reads == 1  # the read is still trusted
    clock.now = 15.0
    assert models.route("r3").version == "v2" and table.reads == 2
    assert models.load().version == "v2"


def test_no_champion_answers_unavailable_until_the_first_release() -> None:
    clock, table = Clock(), Table(routing(None))
    models = source(table, loader(), clock)
    models.preload()
    with pytest.raises(ModelUnavailable):
        models.route("r1")
    table.routing = routing("v1")
    clock.now = 15
    assert models.route("r1").version == "v1"


def test_a_canary_that_cannot_load_leaves_its_traffic_to_the_champion() -> None:
    clock = Clock()
    models = source(Table(routing("v1", "v2", 100)), loader(broken={"s3://b/v2/"}), clock)
    routed = models.route("r1")
    assert (routed.role, routed.version) == ("champion", "v1")
    assert models.last_error is not None and models.last_error.code == "bundle_invalid"


def test_a_failed_routing_read_keeps_the_last_routing() -> None:
    clock, table = Clock(), Table(routing("v1"))
    models = source(table, loader(), clock)
    assert models.route("r").version == "v1"
    table.fail, clock.now = True, 20
    assert models.route("r").version == "v1"
    fresh = source(Table(routing("v1")), loader(), Clock())
    fresh._read_routing = table.read  # a cold environment with no routing at all
    with pytest.raises(ModelUnavailable):
        fresh.route("r")


def test_bundles_no_longer_named_are_dropped() -> None:
    clock, table, load = Clock(), Table(routing("v1", "v2", 50)), loader()
    models = source(table, load, clock)
    models.preload()
    table.routing, clock.now = routing("v2"), 15
    models.route("r")
    assert [k[0] for k in models._models] == ["s3://b/v2/"]


def test_an_emf_record_carries_both_dimension_sets() -> None:
    records: list[dict[str, Any]] = []
    previous = set_metric_sink(records.append)
    try:
        emit_request_metrics("churn", "canary", "v2", status=503, timestamp_ms=5)
        emit_request_metrics("churn", "champion", "v1", status=200, latency_ms=2.5, counts={"Predictions_yes": 3})
    finally:
        set_metric_sink(previous)
    first, second = records
    directive = first["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "Slimserve" and directive["Dimensions"] == [ROLE_DIMENSIONS, VERSION_DIMENSIONS]
    assert (first["Requests"], first["Errors4xx"], first["Errors5xx"], first["model_role"]) == (1, 0, 1, "canary")
    assert "ModelLatency" not in first and second["ModelLatency"] == 2.5 and second["Predictions_yes"] == 3
    units = {m["Name"]: m["Unit"] for m in second["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units["ModelLatency"] == "Milliseconds" and units["Predictions_yes"] == "Count"


def test_class_labels_become_safe_metric_names() -> None:
    assert metric_label("yes") == "yes" and metric_label(1) == "1" and metric_label("a b/c") == "a_b_c"
    assert metric_label("") == "_" and len(metric_label("x" * 500)) == 64
