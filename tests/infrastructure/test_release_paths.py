"""The synthesized release machine on moto's own interpreter, its Lambda tasks run by the real release handler
(through the local Lambda dispatcher), with real traffic through the routed inference handler while a stage
bakes: each path a user would see, the registry's record of it, and the lock freed at the end."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from synth_helpers import ACCOUNT, Synth, finished_execution, function_by_handler, machine_definition, resource_id
from test_release_machine import RELEASE_CONTEXT

from cdk.constructs.release import HANDLER
from pipeline.local.emulation import REGION, STATE_MACHINES, emulated_account
from pipeline.local.lambdas import lambda_dispatch
from tests.integration.release_account import MODEL, ReleaseAccount, release_account

pytestmark = pytest.mark.slow  # a full synth, a forest bundle, executions on moto's interpreter

BAKE_REQUESTS = 200  # per stage: ~20 canary requests at 10%, over the synthesized minimum of 10


@pytest.fixture(scope="module")
def release_synth(synth_once: Callable[..., Synth]) -> Synth:
    return synth_once(**RELEASE_CONTEXT)


class Machine:
    """The synthesized release machine in moto, and the account its steps act on."""

    def __init__(self, synth: Synth, account: ReleaseAccount) -> None:
        self.account = account
        self.function_id, _ = function_by_handler(synth, HANDLER)
        machine_id = resource_id(synth, "ReleaseStateMachine", "AWS::StepFunctions::StateMachine")
        self.client = boto3.client("stepfunctions", region_name=REGION)
        self.arn = self.client.create_state_machine(
            name="release", definition=machine_definition(synth, machine_id, REGION),
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn")["stateMachineArn"]
        self.baked = 0
        self.runs = 0

    def release_step(self, event: dict[str, Any], context: Any) -> Any:
        """The real release handler; a comparison sees the traffic its stage served while it baked."""
        if event.get("action") == "compare":
            self.baked += 1
            self.account.traffic(BAKE_REQUESTS, start=self.baked * 1000)
        return self.account.release.lambda_handler(event, context)

    def run(self, state_input: dict[str, Any]) -> dict[str, Any]:
        self.runs += 1
        with lambda_dispatch({self.function_id: self.release_step}):
            execution = self.client.start_execution(stateMachineArn=self.arn, name=f"run-{self.runs}",
                                                    input=json.dumps(state_input))
            return finished_execution(self.client, execution["executionArn"])


@pytest.fixture
def machine(release_synth: Synth, rf_bundle: Path, tmp_path: Path) -> Iterator[Machine]:
    with emulated_account(config=STATE_MACHINES):
        for account in release_account(rf_bundle, tmp_path):
            yield Machine(release_synth, account)


def _champion(machine: Machine, version: str = "v1") -> None:
    machine.account.add_version(version)
    done = machine.run({"model": MODEL, "version": version})
    assert json.loads(done["output"])["outcome"] == "first_release", done


def _outcome(done: dict[str, Any]) -> dict[str, Any]:
    assert done["status"] == "SUCCEEDED", done
    return dict(json.loads(done["output"]))


def test_first_release_on_an_empty_registry_becomes_champion(machine: Machine) -> None:
    _champion(machine)
    registry = machine.account.registry
    assert registry.champion(MODEL).version == "v1"  # type: ignore[union-attr]
    assert registry.lock(MODEL) is None
    machine.account.serve()
    assert machine.account.traffic(3) == {"v1": 3}


def test_clean_promotion_by_canary(machine: Machine) -> None:
    _champion(machine)
    machine.account.add_version("v2")
    machine.account.serve()
    output = _outcome(machine.run({"model": MODEL, "version": "v2"}))
    assert output["outcome"] == "promoted" and output["compare"]["decision"] == "continue"
    assert output["compare"]["figures"]["canary"]["requests"] > 0  # the canary really served while baking
    registry = machine.account.registry
    assert registry.champion(MODEL).version == "v2"  # type: ignore[union-attr]
    assert registry.get(MODEL, "v1").status == "retired"
    assert registry.routing(MODEL).canary_version is None and registry.lock(MODEL) is None
    assert machine.account.traffic(5) == {"v2": 5}


@pytest.mark.parametrize(("change", "reason"), [
    (lambda account: account.failing("v2"), "errors"),
    (lambda account: account.slow("v2", delay_ms=500), "latency"),  # a fixed delay on the fake clock
    (lambda account: account.flipped("v2"), "prediction shift"),
], ids=["errors", "latency", "prediction-shift"])
def test_a_bad_canary_is_rolled_back_by_itself_with_the_reason(machine: Machine, change: Any, reason: str) -> None:
    _champion(machine)
    machine.account.add_version("v2")
    change(machine.account)
    machine.account.serve()
    output = _outcome(machine.run({"model": MODEL, "version": "v2"}))
    assert output["outcome"] == "rolled_back" and output["compare"]["reason"].startswith(reason)
    registry = machine.account.registry
    entry = registry.get(MODEL, "v2")
    assert entry.status == "rolled-back" and entry.reason.startswith(reason)
    assert registry.champion(MODEL).version == "v1" and registry.lock(MODEL) is None  # type: ignore[union-attr]
    assert machine.account.traffic(10) == {"v1": 10}
    (notice,) = machine.account.notices()
    assert notice["version"] == "v2" and notice["reason"].startswith(reason)


def test_a_candidate_the_gate_refused_is_not_admitted_and_nothing_changes(machine: Machine) -> None:
    _champion(machine)
    machine.account.add_version("v2", admitted=False)
    before = machine.account.registry.list(MODEL)
    done = machine.run({"model": MODEL, "version": "v2"})
    assert (done["status"], done["error"]) == ("FAILED", "NotAdmitted")
    assert machine.account.registry.list(MODEL) == before and machine.account.registry.lock(MODEL) is None


def test_an_unknown_version_fails_by_name_and_nothing_changes(machine: Machine) -> None:
    _champion(machine)
    before = machine.account.registry.list(MODEL)
    done = machine.run({"model": MODEL, "version": "v9"})
    assert (done["status"], done["error"]) == ("FAILED", "UnknownVersion")
    assert machine.account.registry.list(MODEL) == before


def test_a_release_while_the_lock_is_held_is_refused(machine: Machine) -> None:
    _champion(machine)
    machine.account.add_version("v2")
    machine.account.step("lock", owner="cli")
    done = machine.run({"model": MODEL, "version": "v2"})
    assert (done["status"], done["error"]) == ("FAILED", "LockHeld")
    registry = machine.account.registry
    assert registry.get(MODEL, "v2").status != "canary" and registry.routing(MODEL).canary_version is None
    assert registry.lock(MODEL).owner == "cli"  # type: ignore[union-attr]  # still the holder's
