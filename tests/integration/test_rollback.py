"""Rollback after promotion: the champion's errors raise its alarm (evaluated locally with the stack's
AlarmSpecs), the alarm's event reaches the rollback function through a rule, and the last known-good
version serves again, once however often the event comes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from functions.common.errors import LockHeld, NoChampion, NothingToRollBack, SlimserveError, UnknownModel
from pipeline.local.alarms import AlarmEvaluator, LocalRouter, champion_rule_pattern, state_change_event
from pipeline.local.apigw import LambdaContext
from pipeline.local.emulation import emulated_account
from pipeline.local.server import load_function
from tests.integration.release_account import MODEL, TABLE, ReleaseAccount, release_account

CONTEXT = LambdaContext(function_name="slimserve-rollback")


@pytest.fixture
def account(rf_bundle: Path, tmp_path: Path) -> Iterator[ReleaseAccount]:
    with emulated_account():
        yield from release_account(rf_bundle, tmp_path)


@pytest.fixture
def rollback(account: ReleaseAccount) -> ModuleType:
    return load_function("functions.rollback.handler", "", REGISTRY_TABLE=TABLE, NOTIFY_TOPIC_ARN=account.topic)


def promoted(account: ReleaseAccount, *versions: str) -> None:
    """Each version released in turn: the first by the gate alone, the others through a canary."""
    for i, version in enumerate(versions):
        account.add_version(version)
        if i == 0:
            account.step("first_release", version=version)
        else:
            account.step("set_weight", version=version, weight=100)
            account.step("promote", version=version)


def alarm_event(name: str, raised_at: dt.datetime, state: str = "ALARM") -> dict[str, Any]:
    from pipeline.local.alarms import model_alarms

    return state_change_event(name, model_alarms(MODEL)[name], state, "OK", [9.0, 9.0], raised_at)


def test_champion_errors_raise_the_alarm_and_the_last_known_good_version_serves_again(
        account: ReleaseAccount, rollback: ModuleType) -> None:
    promoted(account, "v1", "v2")
    account.failing("v2")
    account.serve()
    router = LocalRouter()
    router.add_rule("ChampionAlarmRule", champion_rule_pattern(MODEL), lambda e: rollback.lambda_handler(e, CONTEXT))
    evaluator = AlarmEvaluator(account.cloudwatch, router, MODEL)
    assert account.traffic(10) == {"status 500": 10}
    assert evaluator.evaluate(account.wall()) == []  # one bad minute: the spec wants two
    account.wall.offset += dt.timedelta(seconds=60)
    account.traffic(10, start=10)
    (event,) = evaluator.evaluate(account.wall())
    assert event["detail"]["alarmName"] == f"slimserve-{MODEL}-champion-errors"
    ((rule, _, answer),) = router.delivered
    assert rule == "ChampionAlarmRule"
    assert answer["rolled_back"] is True and answer["champion_version"] == "v1" and answer["from_version"] == "v2"
    bad = account.registry.get(MODEL, "v2")
    assert bad.status == "rolled-back" and bad.release["alarm"] == f"slimserve-{MODEL}-champion-errors"
    assert account.registry.routing(MODEL).champion_version == "v1"
    assert account.traffic(5, start=100) == {"v1": 5}  # the warm environment (TTL 0) serves v1 again
    (notice,) = account.notices()
    assert notice["rolled_back"] == "v2" and notice["champion_version"] == "v1"
    assert account.registry.lock(MODEL) is None  # the lock was released


def test_duplicate_and_late_alarm_events_roll_back_once(account: ReleaseAccount, rollback: ModuleType) -> None:
    promoted(account, "v1", "v2", "v3")
    raised = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    event = alarm_event(f"slimserve-{MODEL}-champion-errors", raised)
    first = rollback.lambda_handler(event, CONTEXT)
    assert first["rolled_back"] is True and first["champion_version"] == "v2"
    again = rollback.lambda_handler(event, CONTEXT)  # EventBridge delivers at least once
    late = rollback.lambda_handler({**event, "id": "another-delivery"}, CONTEXT)
    older = rollback.lambda_handler(alarm_event(f"slimserve-{MODEL}-champion-latency",
                                                raised - dt.timedelta(hours=1)), CONTEXT)
    assert [r["rolled_back"] for r in (again, late, older)] == [False, False, False]
    assert account.registry.champion(MODEL).version == "v2"  # type: ignore[union-attr]
    assert [e.status for e in account.registry.list(MODEL)] == ["retired", "champion", "rolled-back"]
    assert len(account.notices()) == 1


def test_an_ok_state_changes_nothing(account: ReleaseAccount, rollback: ModuleType) -> None:
    promoted(account, "v1", "v2")
    answer = rollback.lambda_handler(alarm_event(f"slimserve-{MODEL}-champion-errors", dt.datetime.now(dt.UTC),
                                                 state="OK"), CONTEXT)
    assert answer["rolled_back"] is False and account.registry.champion(MODEL).version == "v2"  # type: ignore[union-attr]


def test_rollback_refusals_are_named_and_change_nothing(account: ReleaseAccount, rollback: ModuleType) -> None:
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    with pytest.raises(UnknownModel):  # nothing of this model registered yet
        rollback.lambda_handler(alarm_event(f"slimserve-{MODEL}-champion-errors", now), CONTEXT)
    assert account.ddb.scan(TableName=TABLE)["Items"] == []
    account.add_version("v1")
    with pytest.raises(NoChampion):
        rollback.lambda_handler(alarm_event(f"slimserve-{MODEL}-champion-errors", now), CONTEXT)
    account.step("first_release", version="v1")
    with pytest.raises(NothingToRollBack):
        rollback.lambda_handler(alarm_event(f"slimserve-{MODEL}-champion-errors", now), CONTEXT)
    account.registry.take_lock(MODEL, "exec-release", ttl_seconds=600)
    with pytest.raises(LockHeld):
        rollback.lambda_handler(alarm_event(f"slimserve-{MODEL}-champion-errors", now), CONTEXT)
    for event in ({"detail-type": "Scheduled Event", "id": "1", "detail": {}},
                  {**alarm_event(f"slimserve-{MODEL}-champion-errors", now), "detail": {"alarmName": "x"}},
                  alarm_event(f"slimserve-{MODEL}-canary-errors", now)):
        with pytest.raises(SlimserveError) as refused:
            rollback.lambda_handler(event, CONTEXT)
        assert refused.value.code == "bad_request"
    assert account.registry.champion(MODEL).version == "v1"  # type: ignore[union-attr]
    assert account.registry.lock(MODEL).owner == "exec-release"  # type: ignore[union-attr]
