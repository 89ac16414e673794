"""The release state machine as synthesized: what it may touch, and every path of its definition executed by
moto's own Step Functions interpreter, its Lambda tasks answered in-process by a scripted release function.

The scripted function answers each action as the release function's contract says (RELEASE-CONTRACT in the
functions' docstrings): these tests are about the machine's paths (which step follows which answer, what
reaches the rollback, when the lock is released, which error a run fails with), not about the comparison.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from synth_helpers import (
    ACCOUNT,
    MODEL_CONTEXT,
    Synth,
    as_list,
    finished_execution,
    function_by_handler,
    machine_definition,
    resource_id,
    role_statements,
    violations,
)

from cdk.constructs.release import HANDLER, INPUT_REFUSED_ERROR, ReleaseMachineSettings

pytestmark = pytest.mark.slow  # a full synth, then executions on moto's interpreter

REGION = "us-east-1"
# Releases bake for 0 s (executions run straight through) and compare from 10 canary requests on.
RELEASE_CONTEXT = {**MODEL_CONTEXT, "slimserve:releaseBakeSeconds": "0", "slimserve:releaseMinCanaryRequests": "10",
                   "slimserve:trainingIntegration": "request"}
START = {"model": "churn", "version": "8"}
SINCE = "2026-11-30T12:00:00+00:00"


@pytest.fixture(scope="module")
def release_synth(synth_once: Callable[..., Synth]) -> Synth:
    """The stack with releases baking for 0 s, so executions run straight through on moto."""
    return synth_once(**RELEASE_CONTEXT)


class StepFailed(Exception):
    """What the scripted function raises: `name` becomes the Step Functions error, as the handler's class name does."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class ScriptedRelease:
    """The release function's answers, scripted: compare decisions in order, errors by action."""

    def __init__(self, decisions: tuple[str, ...] = (), first_release: bool = False,
                 errors: dict[str, str] | None = None) -> None:
        self.decisions = list(decisions)
        self.first_release = first_release
        self.errors = errors or {}
        self.calls: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(event)
        action = event["action"]
        if action in self.errors:
            raise StepFailed(self.errors[action], f"{action} refused")
        if action == "admit":
            return {"first_release": self.first_release, "champion_version": None if self.first_release else "7"}
        if action == "set_weight":
            return {"weight": event["weight"], "since": SINCE}
        if action == "compare":
            decision = self.decisions.pop(0)
            return {"decision": decision, "reason": f"scripted {decision}", "figures": {"canary_requests": 3}}
        return {action: True}

    def actions(self) -> list[str]:
        return [c["action"] if c["action"] != "set_weight" else f"set_weight {c['weight']}" for c in self.calls]


@pytest.fixture
def run_release(release_synth: Synth, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[Callable[[ScriptedRelease, dict[str, Any]], dict[str, Any]]]:
    """Runs the synthesized release machine on moto with `script` as the release function."""
    from moto import mock_aws
    from moto.awslambda_simple.models import LambdaSimpleBackend

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    function_id, _ = function_by_handler(release_synth, HANDLER)
    machine_id = resource_id(release_synth, "ReleaseStateMachine", "AWS::StepFunctions::StateMachine")
    definition = machine_definition(release_synth, machine_id, REGION)
    scripts: list[ScriptedRelease] = []

    def invoke(backend: Any, function_name: str, qualifier: Any, body: Any, headers: Any,
               response_headers: dict[str, str]) -> bytes:
        assert function_name.rsplit(":", 1)[-1] == function_id, function_name
        try:
            return json.dumps(scripts[-1](json.loads(body))).encode()
        except StepFailed as exc:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": exc.name, "errorMessage": str(exc)}).encode()

    monkeypatch.setattr(LambdaSimpleBackend, "invoke", invoke)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
        client = boto3.client("stepfunctions", region_name=REGION)
        arn = client.create_state_machine(name="release", definition=definition,
                                          roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn")["stateMachineArn"]

        def run(script: ScriptedRelease, state_input: dict[str, Any]) -> dict[str, Any]:
            scripts.append(script)
            execution = client.start_execution(stateMachineArn=arn, input=json.dumps(state_input))
            return finished_execution(client, execution["executionArn"])

        yield run


def _output(done: dict[str, Any]) -> dict[str, Any]:
    assert done["status"] == "SUCCEEDED", done
    return dict(json.loads(done["output"]))


# --- executed paths ---------------------------------------------------------------------------------

def test_a_clean_canary_goes_through_every_stage_and_is_promoted(run_release: Any) -> None:
    script = ScriptedRelease(decisions=("continue", "continue"))
    output = _output(run_release(script, START))
    assert output["outcome"] == "promoted"
    assert script.actions() == ["lock", "admit", "set_weight 10", "compare", "set_weight 50", "compare",
                                "set_weight 100", "promote", "unlock"]
    owner = script.calls[0]["owner"]
    assert owner.startswith(f"arn:aws:states:{REGION}:{ACCOUNT}:execution:release:")
    assert script.calls[-1] == {"action": "unlock", "model": "churn", "owner": owner}  # the same owner frees it
    compare = script.calls[3]
    assert compare == {"action": "compare", "model": "churn", "version": "8", "since": SINCE,
                       "min_requests": 10, "extended": False}


@pytest.mark.parametrize("stage", [0, 1])
def test_a_comparison_that_says_rollback_rolls_back_with_its_reason_and_figures(run_release: Any,
                                                                               stage: int) -> None:
    script = ScriptedRelease(decisions=("continue",) * stage + ("rollback",))
    output = _output(run_release(script, START))
    assert output["outcome"] == "rolled_back"
    assert "promote" not in script.actions() and script.actions()[-2:] == ["rollback", "unlock"]
    assert script.calls[-2] == {"action": "rollback", "model": "churn", "version": "8",
                                "reason": "scripted rollback", "figures": {"canary_requests": 3}}
    assert output["compare"]["decision"] == "rollback"


def test_a_short_bake_is_extended_once_then_ends_with_insufficient_traffic(run_release: Any) -> None:
    script = ScriptedRelease(decisions=("extend", "insufficient_traffic"))
    output = _output(run_release(script, START))
    assert output["outcome"] == "rolled_back"
    compares = [c for c in script.calls if c["action"] == "compare"]
    assert [c["extended"] for c in compares] == [False, True]
    assert script.calls[-2]["reason"] == "scripted insufficient_traffic"


def test_an_extended_bake_with_enough_traffic_carries_on(run_release: Any) -> None:
    script = ScriptedRelease(decisions=("extend", "continue", "continue"))
    assert _output(run_release(script, START))["outcome"] == "promoted"


def test_the_first_release_of_a_model_becomes_champion_without_a_canary(run_release: Any) -> None:
    script = ScriptedRelease(first_release=True)
    assert _output(run_release(script, START))["outcome"] == "first_release"
    assert script.actions() == ["lock", "admit", "first_release", "unlock"]


def test_a_candidate_not_admitted_is_refused_and_the_lock_released(run_release: Any) -> None:
    script = ScriptedRelease(errors={"admit": "NotAdmitted"})
    done = run_release(script, START)
    assert (done["status"], done["error"]) == ("FAILED", "NotAdmitted")
    assert "admit refused" in done["cause"]
    assert script.actions() == ["lock", "admit", "unlock"]


def test_a_release_while_the_lock_is_held_is_refused_and_touches_nothing(run_release: Any) -> None:
    script = ScriptedRelease(errors={"lock": "LockHeld"})
    done = run_release(script, START)
    assert (done["status"], done["error"]) == ("FAILED", "LockHeld")
    assert script.actions() == ["lock"]  # not ours: no unlock, no step


def test_a_release_of_a_model_the_registry_has_never_seen_fails_by_name_and_touches_nothing(
        run_release: Any) -> None:
    script = ScriptedRelease(errors={"lock": "UnknownModel"})  # what the release function's lock raises
    done = run_release(script, START)
    assert (done["status"], done["error"]) == ("FAILED", "UnknownModel")
    assert script.actions() == ["lock"]


def test_a_version_the_registry_does_not_hold_fails_by_name_and_frees_the_lock(run_release: Any) -> None:
    script = ScriptedRelease(errors={"admit": "UnknownVersion"})
    done = run_release(script, START)
    assert (done["status"], done["error"]) == ("FAILED", "UnknownVersion")
    assert script.actions() == ["lock", "admit", "unlock"]


def test_a_failed_step_with_a_canary_in_place_rolls_it_back_and_fails_under_its_name(run_release: Any) -> None:
    script = ScriptedRelease(decisions=("continue",), errors={"set_weight": "RoutingConflict"})
    done = run_release(script, START)
    assert (done["status"], done["error"]) == ("FAILED", "RoutingConflict")
    assert script.actions() == ["lock", "admit", "set_weight 10", "rollback", "unlock"]
    assert script.calls[3]["reason"] == "RoutingConflict" and script.calls[3]["figures"] == {}


def test_a_failed_unlock_does_not_fail_a_promotion(run_release: Any) -> None:
    script = ScriptedRelease(decisions=("continue", "continue"), errors={"unlock": "ServiceUnavailable"})
    assert _output(run_release(script, START))["outcome"] == "promoted"


@pytest.mark.parametrize("bad", [{}, {"model": "churn"}, {"model": "churn", "version": 8}, {"version": "8"}])
def test_malformed_input_fails_by_name_before_any_step(run_release: Any, bad: dict[str, Any]) -> None:
    script = ScriptedRelease()
    done = run_release(script, bad)
    assert (done["status"], done["error"]) == ("FAILED", INPUT_REFUSED_ERROR)
    assert script.calls == []


# --- the synthesized resources ----------------------------------------------------------------------

def test_release_function_reads_its_settings_and_names_every_resource(release_synth: Synth) -> None:
    _, fn = function_by_handler(release_synth, HANDLER)
    env = fn["Environment"]["Variables"]
    assert env["REGISTRY_TABLE"] == {"Ref": resource_id(release_synth, "Registry", "AWS::DynamoDB::Table")}
    topic = resource_id(release_synth, "Release", "AWS::SNS::Topic")
    assert env["NOTIFY_TOPIC_ARN"] == {"Ref": topic}
    statements = role_statements(release_synth, fn["Role"]["Fn::GetAtt"][0])
    by_action = {a: s for s in statements for a in as_list(s["Action"])}
    assert by_action["sns:Publish"]["Resource"] == {"Ref": topic}
    assert {"dynamodb:PutItem", "dynamodb:ConditionCheckItem"} <= set(by_action)  # a promotion's transaction
    assert "dynamodb:Scan" not in by_action
    metrics = by_action["cloudwatch:GetMetricStatistics"]
    assert "Condition" not in metrics  # cloudwatch:namespace applies to PutMetricData only: it would deny reads
    wildcard = [s for s in statements if "*" in as_list(s["Resource"])]
    assert {a for s in wildcard for a in as_list(s["Action"])} <= {
        "xray:PutTraceSegments", "xray:PutTelemetryRecords", "cloudwatch:GetMetricStatistics",
        "cloudwatch:GetMetricData"}


def test_release_machine_invokes_only_the_release_function(release_synth: Synth) -> None:
    function_id, _ = function_by_handler(release_synth, HANDLER)
    machine_id = resource_id(release_synth, "ReleaseStateMachine", "AWS::StepFunctions::StateMachine")
    role = release_synth.template["Resources"][machine_id]["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    invokes = [s for s in role_statements(release_synth, role) if "lambda:InvokeFunction" in as_list(s["Action"])]
    resources = [r for s in invokes for r in as_list(s["Resource"])]
    assert resources and all(json.dumps(r).count(function_id) == 1 for r in resources)


def test_release_topic_is_encrypted_and_refuses_plain_http(release_synth: Synth) -> None:
    topic_id = resource_id(release_synth, "Release", "AWS::SNS::Topic")
    topic = release_synth.template["Resources"][topic_id]["Properties"]
    assert "alias/aws/sns" in json.dumps(topic["KmsMasterKeyId"])
    policy = next(p["Properties"] for p in release_synth.resources("AWS::SNS::TopicPolicy").values()
                  if {"Ref": topic_id} in p["Properties"]["Topics"])
    deny = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_release_stack_passes_cdk_nag(release_synth: Synth) -> None:
    assert release_synth.nag_error is None, violations(release_synth)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"canary_weights": (50, 10, 100)}, "canary_weights"),
    ({"canary_weights": (10, 50)}, "canary_weights"),
    ({"canary_weights": ()}, "canary_weights"),
    ({"bake_seconds": -1}, "bake_seconds"),
    ({"min_canary_requests": -1}, "min_canary_requests"),
    ({"bake_seconds": 24 * 3600, "run_timeout_hours": 24}, "run_timeout_hours"),
])
def test_bad_release_settings_raise_value_error_naming_the_setting(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"ReleaseMachineSettings.{message}"):
        ReleaseMachineSettings(**overrides).validate()
