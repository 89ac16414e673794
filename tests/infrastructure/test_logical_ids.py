"""Deployed stacks survive a refactor: the stateful resources keep the logical ids they were deployed with.

CloudFormation replaces a resource whose logical id changes: a retained bucket or log group would be
orphaned and a new empty one created, and the registry table's deletion protection would fail the update.
`logical_ids.json` lists them per synthesized variant; a new resource may appear, a listed one may not go.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synth_helpers import Synth

pytestmark = pytest.mark.slow  # full synths of five variants

COMMITTED = Path(__file__).with_name("logical_ids.json")
STATEFUL_TYPES = ("AWS::S3::Bucket", "AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::Logs::LogGroup",
                  "AWS::StepFunctions::StateMachine")
VARIANTS = {"default": "default_synth", "api_key": "api_key_synth", "batch": "batch_synth", "http": "http_synth",
            "jwt": "jwt_synth"}


def test_committed_list_covers_every_stateful_type_and_variant() -> None:
    committed = json.loads(COMMITTED.read_text())
    assert set(committed) == set(VARIANTS)
    assert {t for ids in committed.values() for t in ids} == set(STATEFUL_TYPES)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stateful_resources_keep_their_logical_ids(variant: str, request: pytest.FixtureRequest) -> None:
    synth: Synth = request.getfixturevalue(VARIANTS[variant])
    committed: dict[str, list[str]] = json.loads(COMMITTED.read_text())[variant]
    missing = {resource_type: sorted(set(ids) - set(synth.resources(resource_type)))
               for resource_type, ids in committed.items()}
    assert {t: ids for t, ids in missing.items() if ids} == {}, (
        "these deployed resources would be replaced (their logical id changed or they are gone)")
