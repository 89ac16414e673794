"""The registry on (moto) DynamoDB: conditional writes never lose an update or make two champions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from functions.common.registry import ModelEntry, Registry, RegistryConflict, UnknownVersion
from pipeline.local.emulation import REGION, create_registry_table, emulated_account


@pytest.fixture
def registry() -> Iterator[Registry]:
    with emulated_account():
        client = boto3.client("dynamodb", region_name=REGION)
        create_registry_table(client, "models")
        yield Registry(client, "models")


def register(registry: Registry, version: str, **kwargs: Any) -> ModelEntry:
    return registry.register(ModelEntry(model="churn", version=version, bundle_uri=f"s3://b/models/churn/{version}/",
                                        manifest_sha256="ab" * 32, **kwargs))


def test_register_get_list(registry: Registry) -> None:
    register(registry, "v1", metrics={"holdout": {"roc_auc": 0.91}}, lineage={"teacher": "t1"})
    register(registry, "v2")
    entry = registry.get("churn", "v1")
    assert entry.status == "candidate" and entry.metrics["holdout"]["roc_auc"] == 0.91 and entry.revision == 1
    assert [e.version for e in registry.list("churn")] == ["v1", "v2"]
    with pytest.raises(RegistryConflict):
        register(registry, "v1")  # a version is registered once
    with pytest.raises(UnknownVersion):
        registry.get("churn", "v9")


def test_stale_writer_loses_instead_of_overwriting(registry: Registry) -> None:
    register(registry, "v1")
    first, second = registry.get("churn", "v1"), registry.get("churn", "v1")
    registry.record_verdict(first, {"admitted": False, "summary": "worse than champion"})
    with pytest.raises(RegistryConflict):
        registry.record_verdict(second, {"admitted": True, "summary": "fine"})  # read before the first write
    assert registry.get("churn", "v1").status == "rejected"


def test_promotion_retires_the_previous_champion(registry: Registry) -> None:
    register(registry, "v1")
    register(registry, "v2")
    registry.promote(registry.get("churn", "v1"), "first release")
    registry.promote(registry.get("churn", "v2"), "better AUC")
    assert registry.champion("churn").version == "v2"  # type: ignore[union-attr]
    assert registry.get("churn", "v1").status == "retired"
    assert [e.status for e in registry.list("churn")].count("champion") == 1


class AtomicCalls:
    """DynamoDB applies each request atomically; moto's in-process backend does not across threads.
    Holding a lock per API call restores that, while the read-then-write windows still race."""

    def __init__(self, client: Any) -> None:
        self._client, self._lock = client, threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name in ("get_paginator", "exceptions", "meta"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)
        return call


def test_two_concurrent_promotions_make_one_champion(registry: Registry) -> None:
    registry.client = AtomicCalls(registry.client)
    for v in ("v1", "v2", "v3"):
        register(registry, v)
    registry.promote(registry.get("churn", "v1"), "first")
    entries = [registry.get("churn", "v2"), registry.get("churn", "v3")]
    start, outcomes = threading.Barrier(2), []

    def promote(entry: ModelEntry) -> None:
        start.wait()
        try:
            registry.promote(entry, "race")
            outcomes.append("won")
        except RegistryConflict:
            outcomes.append("lost")

    threads = [threading.Thread(target=promote, args=(e,)) for e in entries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = [e.status for e in registry.list("churn")]
    assert statuses.count("champion") == 1
    assert sorted(outcomes) in (["lost", "won"], ["won", "won"])  # the second may see the first and retire it
    assert registry.champion("churn").status == "champion"  # type: ignore[union-attr]


def test_a_promotion_from_a_stale_champion_read_is_refused(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    for v in ("v1", "v2", "v3"):
        register(registry, v)
    registry.promote(registry.get("churn", "v1"), "first")
    stale = registry.champion("churn")
    registry.promote(registry.get("churn", "v2"), "second")
    monkeypatch.setattr(registry, "champion", lambda model: stale)  # as if read before v2 won
    with pytest.raises(RegistryConflict):
        registry.promote(registry.get("churn", "v3"), "third")
    monkeypatch.undo()
    assert registry.champion("churn").version == "v2"  # type: ignore[union-attr]
    assert [e.status for e in registry.list("churn")].count("champion") == 1


def test_illegal_transitions_are_refused(registry: Registry) -> None:
    register(registry, "v1")
    rejected = registry.record_verdict(registry.get("churn", "v1"), {"admitted": False, "summary": "no"})
    with pytest.raises(RegistryConflict):
        registry.promote(rejected, "sneak in")
    with pytest.raises(RegistryConflict):
        registry.transition(rejected, "canary", "sneak in")


def test_models_list_and_show_commands(registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main as cli

    register(registry, "v1")
    registry.promote(registry.get("churn", "v1"), "first release")
    register(registry, "v2")
    assert cli(["models", "list", "--table", "models"]) == 0
    out = capsys.readouterr().out
    assert "v1" in out and "champion" in out and "v2" in out and "candidate" in out
    assert cli(["models", "show", "v1", "--model", "churn", "--table", "models"]) == 0
    shown = capsys.readouterr().out
    assert '"status": "champion"' in shown and '"reason": "first release"' in shown
    assert cli(["models", "show", "v9", "--model", "churn", "--table", "models"]) == 2  # unknown version
