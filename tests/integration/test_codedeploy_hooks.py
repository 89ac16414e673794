"""The CodeDeploy hooks of a code release on moto: BeforeAllowTraffic takes the model's release lock or
stops the code release, AfterAllowTraffic releases it. moto's CodeDeploy does not take hook statuses
(PutLifecycleEventHookExecutionStatus is not implemented), so the verdicts go to a recording client
through the module's one seam; the registry is moto's DynamoDB."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import boto3
import pytest

from functions.common.errors import LockHeld, SlimserveError
from functions.common.registry import Registry
from pipeline.local.apigw import LambdaContext
from pipeline.local.emulation import REGION, create_registry_table, emulated_account

TABLE, MODEL = "slimserve-models", "cancer"
MODULE = "functions.release.hooks"
CONTEXT = LambdaContext(function_name="slimserve-codedeploy-hook")


class RecordingCodeDeploy:
    """Stands in for the CodeDeploy client: keeps each hook status it is told."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    def put_lifecycle_event_hook_execution_status(self, **kwargs: str) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {"lifecycleEventHookExecutionId": kwargs["lifecycleEventHookExecutionId"]}


@dataclass
class Hooks:
    module: ModuleType
    registry: Registry
    codedeploy: RecordingCodeDeploy

    def before(self, deployment: str, execution: str = "exec-before") -> dict[str, Any]:
        event = {"DeploymentId": deployment, "LifecycleEventHookExecutionId": execution}
        return self.module.before_allow_traffic_handler(event, CONTEXT)  # type: ignore[no-any-return]

    def after(self, deployment: str, execution: str = "exec-after") -> dict[str, Any]:
        event = {"DeploymentId": deployment, "LifecycleEventHookExecutionId": execution}
        return self.module.after_allow_traffic_handler(event, CONTEXT)  # type: ignore[no-any-return]

    def lock_owner(self) -> str | None:
        lock = self.registry.lock(MODEL)
        return lock.owner if lock else None


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hooks]:
    with emulated_account():
        ddb = boto3.client("dynamodb", region_name=REGION)
        create_registry_table(ddb, TABLE)
        for key, value in {"REGISTRY_TABLE": TABLE, "MODEL_NAME": MODEL, "LOCK_TTL_SECONDS": "1800",
                           "AWS_DEFAULT_REGION": REGION}.items():
            monkeypatch.setenv(key, value)
        # A fresh execution environment: settings are read at import, as at a cold start.
        module = importlib.reload(sys.modules[MODULE]) if MODULE in sys.modules else importlib.import_module(MODULE)
        recorder = RecordingCodeDeploy()
        monkeypatch.setattr(module, "codedeploy", lambda: recorder)
        yield Hooks(module, Registry(ddb, TABLE), recorder)


def test_before_allow_traffic_takes_the_lock_and_reports_succeeded(hooks: Hooks) -> None:
    assert hooks.before("d-CODE1", "hook-1") == {"status": "Succeeded"}
    assert hooks.lock_owner() == "codedeploy:d-CODE1"
    assert hooks.codedeploy.calls == [
        {"deploymentId": "d-CODE1", "lifecycleEventHookExecutionId": "hook-1", "status": "Succeeded"}]


def test_a_model_release_cannot_start_during_a_code_release(hooks: Hooks) -> None:
    hooks.before("d-CODE1")
    with pytest.raises(LockHeld, match="codedeploy:d-CODE1"):
        hooks.registry.take_lock(MODEL, "arn:aws:states:us-east-1:123456789012:execution:release:r1", 3600)


def test_code_release_is_stopped_while_a_model_release_holds_the_lock(
        hooks: Hooks, caplog: pytest.LogCaptureFixture) -> None:
    release = "arn:aws:states:us-east-1:123456789012:execution:release:r1"
    hooks.registry.take_lock(MODEL, release, 3600)
    assert hooks.before("d-CODE2", "hook-2") == {"status": "Failed"}
    assert hooks.codedeploy.calls == [
        {"deploymentId": "d-CODE2", "lifecycleEventHookExecutionId": "hook-2", "status": "Failed"}]
    assert hooks.lock_owner() == release  # the model release keeps its lock
    [refused] = [r for r in caplog.records if r.levelname == "ERROR"]  # the log says why, and who holds it
    assert refused.__dict__["error"] == "lock_held" and f"held by {release}" in refused.__dict__["reason"]


def test_after_allow_traffic_releases_the_lock_idempotently(hooks: Hooks) -> None:
    hooks.before("d-CODE3")
    assert hooks.after("d-CODE3", "hook-a") == {"status": "Succeeded"}
    assert hooks.lock_owner() is None
    assert hooks.after("d-CODE3", "hook-b") == {"status": "Succeeded"}  # a retried hook changes nothing
    assert [c["status"] for c in hooks.codedeploy.calls] == ["Succeeded"] * 3
    hooks.registry.take_lock(MODEL, "cli", 60)  # model releases may run again


def test_after_allow_traffic_never_releases_a_lock_it_does_not_hold(hooks: Hooks) -> None:
    hooks.registry.take_lock(MODEL, "cli", 3600)
    assert hooks.after("d-OTHER") == {"status": "Succeeded"}
    assert hooks.lock_owner() == "cli"


def test_a_retried_before_hook_renews_its_own_lock(hooks: Hooks) -> None:
    assert hooks.before("d-CODE4", "hook-1")["status"] == "Succeeded"
    assert hooks.before("d-CODE4", "hook-1")["status"] == "Succeeded"
    assert hooks.lock_owner() == "codedeploy:d-CODE4"


@pytest.mark.parametrize("event", [{}, {"DeploymentId": "d-1"}, {"DeploymentId": "d 1; x",
                                                                  "LifecycleEventHookExecutionId": "e"}])
def test_an_event_that_is_not_a_hook_event_is_refused_and_changes_nothing(hooks: Hooks, event: dict[str, str]) -> None:
    with pytest.raises(SlimserveError, match="not a CodeDeploy hook event"):
        hooks.module.before_allow_traffic_handler(event, CONTEXT)
    assert hooks.lock_owner() is None and hooks.codedeploy.calls == []
