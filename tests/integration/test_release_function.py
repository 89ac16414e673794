"""The release function's steps on moto (DynamoDB, CloudWatch, SNS), with real traffic through the
routed inference handler: each path of a release, one test each, and bad input refused by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.common.errors import LockHeld, NotAdmitted, SlimserveError, UnknownModel, UnknownVersion
from pipeline.local.apigw import LambdaContext
from pipeline.local.emulation import emulated_account
from tests.integration.release_account import MODEL, ReleaseAccount, release_account

CONTEXT = LambdaContext(function_name="slimserve-release")


@pytest.fixture
def account(rf_bundle: Path, tmp_path: Path) -> Iterator[ReleaseAccount]:
    with emulated_account():
        yield from release_account(rf_bundle, tmp_path)


def with_champion(account: ReleaseAccount, version: str = "v1") -> None:
    account.add_version(version)
    assert account.step("admit", version=version)["first_release"] is True
    account.step("first_release", version=version)


def bake(account: ReleaseAccount, version: str, weight: int, requests: int = 200, min_requests: int = 10,
         extended: bool = False) -> dict:  # type: ignore[type-arg]
    stage = account.step("set_weight", version=version, weight=weight)
    account.traffic(requests, start=weight * 1000)
    return account.step("compare", version=version, since=stage["since"], min_requests=min_requests,
                        extended=extended)


def test_first_release_on_an_empty_registry_becomes_champion_and_serves(account: ReleaseAccount) -> None:
    account.add_version("v1")
    assert account.step("admit", version="v1") == {"first_release": True, "champion_version": None}
    account.serve()
    assert account.traffic(3) == {"status 503": 3}  # no champion yet: model_unavailable
    assert account.step("first_release", version="v1")["champion_version"] == "v1"
    assert account.traffic(3) == {"v1": 3}
    entry = account.registry.get(MODEL, "v1")
    assert entry.status == "champion" and entry.release["outcome"] == "first_release"


def test_clean_promotion_by_canary(account: ReleaseAccount) -> None:
    with_champion(account)
    account.add_version("v2")
    account.serve()
    assert account.step("lock", owner="exec-1") == {"locked": True}
    assert account.step("admit", version="v2") == {"first_release": False, "champion_version": "v1"}
    for weight in (10, 50):
        result = bake(account, "v2", weight)
        assert result["decision"] == "continue", result["reason"]
        figures = result["figures"]
        assert figures["canary"]["requests"] > 0 and figures["champion"]["requests"] > 0
        assert figures["prediction_psi"] < 0.25
    assert account.step("set_weight", version="v2", weight=100)["weight"] == 100
    assert account.traffic(5) == {"v2": 5}
    account.step("promote", version="v2", reason="the canary passed every stage")
    assert account.step("unlock", owner="exec-1") == {"unlocked": True}
    assert account.registry.champion(MODEL).version == "v2"  # type: ignore[union-attr]
    assert account.registry.get(MODEL, "v1").status == "retired"
    assert account.registry.routing(MODEL).canary_version is None
    assert account.traffic(5) == {"v2": 5} and account.notices() == []


def test_canary_errors_roll_back_with_the_reason_and_a_notice(account: ReleaseAccount) -> None:
    with_champion(account)
    account.add_version("v2")
    account.failing("v2")
    account.serve()
    result = bake(account, "v2", 10)
    assert result["decision"] == "rollback" and result["reason"].startswith("errors")
    assert result["figures"]["error_rate"]["canary"] == 1.0 and result["figures"]["error_rate"]["champion"] == 0.0
    account.step("rollback", version="v2", reason=result["reason"], figures=result["figures"])
    entry = account.registry.get(MODEL, "v2")
    assert entry.status == "rolled-back" and entry.reason.startswith("errors")
    assert entry.release["figures"]["error_rate"]["canary"] == 1.0
    assert account.traffic(20) == {"v1": 20}  # every request on the champion again
    (notice,) = account.notices()
    assert notice["version"] == "v2" and notice["reason"].startswith("errors") and notice["champion_version"] == "v1"


def test_canary_latency_regression_rolls_back(account: ReleaseAccount) -> None:
    with_champion(account)
    account.add_version("v2")
    account.slow("v2", delay_ms=500)  # a fixed delay on the fake clock, far above any threshold
    account.serve()
    result = bake(account, "v2", 10)
    assert result["decision"] == "rollback" and result["reason"].startswith("latency"), result["reason"]
    assert result["figures"]["canary"]["latency_ms"] == pytest.approx(500)
    assert result["figures"]["champion"]["latency_ms"] == pytest.approx(1)


def test_canary_prediction_shift_rolls_back(account: ReleaseAccount) -> None:
    with_champion(account)
    account.add_version("v2")
    account.flipped("v2")
    account.serve()
    result = bake(account, "v2", 50)
    assert result["decision"] == "rollback" and result["reason"].startswith("prediction shift"), result["reason"]
    assert result["figures"]["prediction_psi"] > 1


def test_a_short_bake_is_extended_once_then_ends_insufficient_traffic(account: ReleaseAccount) -> None:
    with_champion(account)
    account.add_version("v2")
    account.serve()
    first = bake(account, "v2", 10, requests=20, min_requests=100)
    assert first["decision"] == "extend"
    again = account.step("compare", version="v2", since=account.step("set_weight", version="v2", weight=10)["since"],
                         min_requests=100, extended=True)
    assert again["decision"] == "insufficient_traffic" and "fewer than 100" in again["reason"]
    account.step("rollback", version="v2", reason="insufficient_traffic: " + again["reason"], figures=again["figures"])
    assert account.registry.get(MODEL, "v2").status == "rolled-back"


def test_a_candidate_the_gate_refused_or_never_judged_is_not_admitted(account: ReleaseAccount) -> None:
    with_champion(account)
    account.add_version("v2", admitted=False)
    account.add_version("v3", admitted=None)
    before = [(e.version, e.status, e.revision) for e in account.registry.list(MODEL)]
    with pytest.raises(NotAdmitted, match="refused by the gate"):
        account.step("admit", version="v2")
    with pytest.raises(NotAdmitted, match="no verdict"):
        account.step("admit", version="v3")
    with pytest.raises(NotAdmitted, match="champion"):
        account.step("admit", version="v1")  # already serving
    assert [(e.version, e.status, e.revision) for e in account.registry.list(MODEL)] == before


def test_a_release_while_the_lock_is_held_is_refused(account: ReleaseAccount) -> None:
    with_champion(account)
    account.step("lock", owner="codedeploy:d-1")
    with pytest.raises(LockHeld, match="codedeploy:d-1"):
        account.step("lock", owner="exec-2")
    assert account.step("unlock", owner="exec-2") == {"unlocked": False}
    assert account.registry.lock(MODEL).owner == "codedeploy:d-1"  # type: ignore[union-attr]


def test_bad_steps_get_named_errors_and_change_nothing(account: ReleaseAccount) -> None:
    with_champion(account)
    before = [(e.version, e.status, e.revision) for e in account.registry.list(MODEL)]
    with pytest.raises(UnknownVersion):
        account.step("admit", version="v9")
    for event in ({"action": "launch", "model": MODEL}, {"action": "set_weight", "model": MODEL, "version": "v1",
                                                           "weight": 101},
                  {"action": "admit", "model": "../x", "version": "v1"}, {"model": MODEL}, "not an object"):
        with pytest.raises(SlimserveError) as refused:
            account.release.lambda_handler(event, CONTEXT)
        assert refused.value.code == "bad_request"
    assert [(e.version, e.status, e.revision) for e in account.registry.list(MODEL)] == before


def _table(account: ReleaseAccount) -> list[dict]:  # type: ignore[type-arg]
    return sorted(account.ddb.scan(TableName=account.registry.table)["Items"], key=str)


def test_every_step_on_a_model_never_seen_is_refused_unknown_model_and_changes_nothing(
        account: ReleaseAccount) -> None:
    with_champion(account)
    before = _table(account)
    steps = [{"action": "lock", "owner": "exec-1"}, {"action": "lock", "owner": "exec-1", "ttl_seconds": 60},
             {"action": "unlock", "owner": "exec-1"}, {"action": "admit", "version": "v1"},
             {"action": "set_weight", "version": "v1", "weight": 10},
             {"action": "compare", "version": "v1", "since": "2026-01-01T00:00:00+00:00"},
             {"action": "promote", "version": "v1"}, {"action": "rollback", "version": "v1", "reason": "bad"},
             {"action": "first_release", "version": "v1"}]
    for step in steps:
        with pytest.raises(UnknownModel) as refused:
            account.release.lambda_handler({**step, "model": "never-seen"}, CONTEXT)
        assert refused.value.code == "unknown_model" and "never-seen" in refused.value.message
    assert _table(account) == before


def test_a_retraining_lock_may_name_a_new_model_and_lasts_as_long_as_it_asks(account: ReleaseAccount) -> None:
    taken = account.release.lambda_handler({"action": "lock", "model": "fresh", "owner": "exec-r",
                                            "ttl_seconds": 100_000, "may_be_new": True}, CONTEXT)
    lock = account.registry.lock("fresh")
    assert taken == {"locked": True} and lock is not None and lock.owner == "exec-r"
    assert lock.expires_at - account.registry.clock() > 6 * 3600  # longer than the release function's default
    assert account.release.lambda_handler({"action": "unlock", "model": "fresh", "owner": "exec-r"},
                                          CONTEXT) == {"unlocked": True}
    assert _table(account) == []


def test_a_warm_environment_picks_up_a_new_champion_within_the_ttl(account: ReleaseAccount) -> None:
    with_champion(account)
    module = account.serve(ttl_seconds="15")
    clock = [0.0]
    module.holder.clock = lambda: clock[0]  # the routing TTL's clock, injected: nothing sleeps
    assert account.traffic(2) == {"v1": 2}
    account.add_version("v2")
    account.step("set_weight", version="v2", weight=100)
    account.step("promote", version="v2")
    clock[0] = 14.0
    assert account.traffic(2) == {"v1": 2}  # within the TTL the environment may still answer with v1
    clock[0] = 15.0
    assert account.traffic(2) == {"v2": 2}
