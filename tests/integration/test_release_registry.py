"""The registry's routing item and release lock on (moto) DynamoDB: what serving reads, moved only
with the statuses, and one release at a time per model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from functions.common.errors import LockHeld, NoChampion, NothingToRollBack, RegistryConflict
from functions.common.registry import ModelEntry, Registry
from pipeline.local.emulation import REGION, create_registry_table, emulated_account


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(clock: Clock) -> Iterator[Registry]:
    with emulated_account():
        client = boto3.client("dynamodb", region_name=REGION)
        create_registry_table(client, "models")
        yield Registry(client, "models", clock=clock)


def register(registry: Registry, version: str, **kwargs: Any) -> ModelEntry:
    return registry.register(ModelEntry(model="churn", version=version, bundle_uri=f"s3://b/models/churn/{version}/",
                                        manifest_sha256=version[-1] * 64, **kwargs))


def test_no_routing_before_the_first_release(registry: Registry) -> None:
    routing = registry.routing("churn")
    assert routing.champion_version is None and routing.canary_version is None and routing.revision == 0


def test_promotion_names_the_champion_and_its_bundle_in_the_routing_item(registry: Registry) -> None:
    register(registry, "v1")
    registry.promote(registry.get("churn", "v1"), "first release")
    routing = registry.routing("churn")
    assert (routing.champion_version, routing.champion_uri) == ("v1", "s3://b/models/churn/v1/")
    assert routing.champion_sha256 == "1" * 64 and routing.canary_version is None and routing.revision == 1


def test_canary_weight_moves_and_promotion_clears_the_canary(registry: Registry) -> None:
    register(registry, "v1")
    registry.promote(registry.get("churn", "v1"), "first release")
    register(registry, "v2")
    routing = registry.set_canary(registry.get("churn", "v2"), 10, "canary at 10%")
    assert (routing.canary_version, routing.canary_weight) == ("v2", 10)
    assert registry.get("churn", "v2").status == "canary"
    assert registry.set_canary(registry.get("churn", "v2"), 50, "canary at 50%").canary_weight == 50
    registry.promote(registry.get("churn", "v2"), "canary healthy")
    routing = registry.routing("churn")
    assert routing.champion_version == "v2" and routing.canary_version is None and routing.canary_weight == 0
    assert registry.get("churn", "v1").status == "retired"


def test_a_second_canary_or_a_canary_without_champion_is_refused(registry: Registry) -> None:
    register(registry, "v1")
    with pytest.raises(NoChampion):
        registry.set_canary(registry.get("churn", "v1"), 10, "no champion yet")
    registry.promote(registry.get("churn", "v1"), "first release")
    register(registry, "v2")
    register(registry, "v3")
    registry.set_canary(registry.get("churn", "v2"), 10, "canary")
    with pytest.raises(RegistryConflict):
        registry.set_canary(registry.get("churn", "v3"), 10, "a second canary")
    with pytest.raises(RegistryConflict):
        registry.set_canary(registry.get("churn", "v2"), 101, "too much")
    assert registry.routing("churn").canary_version == "v2" and registry.get("churn", "v3").status == "candidate"


def test_canary_rollback_records_reason_and_figures_once(registry: Registry) -> None:
    register(registry, "v1")
    registry.promote(registry.get("churn", "v1"), "first release")
    register(registry, "v2")
    registry.set_canary(registry.get("churn", "v2"), 10, "canary")
    figures = {"error_rate": {"canary": 0.5, "champion": 0.0}}
    entry = registry.roll_back_canary(registry.get("churn", "v2"), "errors", {"outcome": "rolled-back",
                                                                               "figures": figures})
    assert entry.status == "rolled-back" and entry.reason == "errors" and entry.release["figures"] == figures
    routing = registry.routing("churn")
    assert routing.canary_version is None and routing.champion_version == "v1"
    again = registry.roll_back_canary(registry.get("churn", "v2"), "late", {})
    assert again.revision == entry.revision and again.reason == "errors"  # nothing written twice


def test_restore_serves_the_last_known_good_version_again(registry: Registry) -> None:
    for v in ("v1", "v2", "v3"):
        register(registry, v)
        registry.promote(registry.get("churn", v), f"release {v}")
    restored = registry.restore("churn", "v3", "champion alarm")
    assert restored.version == "v2" and restored.status == "champion"
    assert registry.get("churn", "v3").status == "rolled-back"
    assert registry.routing("churn").champion_version == "v2"
    assert registry.restore("churn", "v3", "the same alarm again").version == "v2"  # once only
    assert [e.status for e in registry.list("churn")].count("champion") == 1


def test_restore_to_a_named_version_and_its_refusals(registry: Registry) -> None:
    with pytest.raises(NoChampion):
        registry.restore("churn", "v1", "nothing serves")
    register(registry, "v1")
    registry.promote(registry.get("churn", "v1"), "first")
    with pytest.raises(NothingToRollBack):
        registry.restore("churn", "v1", "alarm")  # no earlier version
    for v in ("v2", "v3"):
        register(registry, v)
        registry.promote(registry.get("churn", v), f"release {v}")
    register(registry, "v4")
    with pytest.raises(NothingToRollBack):
        registry.restore("churn", "v3", "by hand", to_version="v4")  # a candidate never served
    with pytest.raises(RegistryConflict):
        registry.restore("churn", "v2", "not the champion")
    assert registry.restore("churn", "v3", "by hand", to_version="v1").version == "v1"
    assert registry.routing("churn").champion_version == "v1"


def test_the_lock_admits_one_owner_until_it_is_released_or_expires(registry: Registry, clock: Clock) -> None:
    registry.take_lock("churn", "release-1", ttl_seconds=600)
    registry.take_lock("churn", "release-1", ttl_seconds=600)  # the same owner renews
    with pytest.raises(LockHeld) as held:
        registry.take_lock("churn", "release-2", ttl_seconds=600)
    assert "release-1" in held.value.message and held.value.code == "lock_held"
    registry.take_lock("other-model", "release-2", ttl_seconds=600)  # locks are per model
    assert registry.release_lock("churn", "release-2") is False  # not the owner: nothing released
    assert registry.lock("churn").owner == "release-1"  # type: ignore[union-attr]
    assert registry.release_lock("churn", "release-1") is True
    assert registry.release_lock("churn", "release-1") is False  # idempotent
    registry.take_lock("churn", "release-2", ttl_seconds=60)
    clock.now += 61  # its owner died: the lock expires and can be taken over
    registry.take_lock("churn", "rollback:e1", ttl_seconds=60)
    assert registry.lock("churn").owner == "rollback:e1"  # type: ignore[union-attr]


def test_routing_and_lock_items_are_not_versions(registry: Registry) -> None:
    register(registry, "v1")
    registry.promote(registry.get("churn", "v1"), "first")
    registry.take_lock("churn", "cli", ttl_seconds=60)
    assert [e.version for e in registry.list("churn")] == ["v1"]
    assert [e.version for e in registry.list()] == ["v1"]
