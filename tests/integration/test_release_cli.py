"""`slimserve release`, `status` and `rollback` with --table: a registry table named directly, the release driven
step by step from the command line (no state machine), as a new user would run them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from pipeline.cli import main as cli
from pipeline.local.emulation import MODEL_BUCKET, REGION, create_registry_table, emulated_account
from tests.conftest import breast_cancer
from tests.integration.release_account import TABLE, bundle_version


@pytest.fixture
def account() -> Iterator[None]:
    with emulated_account():
        create_registry_table(boto3.client("dynamodb", region_name=REGION), TABLE)
        yield


def test_release_status_and_rollback_commands(account: None, rf_bundle: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    holdout = tmp_path / "holdout.csv"
    breast_cancer().sample(120, random_state=1).to_csv(holdout, index=False)
    where = ["--table", TABLE, "--bucket", MODEL_BUCKET]
    for version in ("v1", "v2"):
        bundle = bundle_version(rf_bundle, version, tmp_path)
        assert cli(["release", "--bundle", str(bundle), "--holdout", str(holdout), *where,
                    "--bake-seconds", "0", "--min-requests", "0"]) == 0
    out = capsys.readouterr().out
    assert "release cancer v1: first_release" in out and "release cancer v2: promoted" in out
    assert cli(["status", "--model", "cancer", "--table", TABLE]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["champion_version"] == "v2" and shown["canary_version"] is None and shown["lock"] is None
    assert shown["last_release"]["outcome"] == "promoted"
    assert cli(["rollback", "--model", "cancer", "--table", TABLE]) == 0
    assert "v1 is champion again" in capsys.readouterr().out
    assert cli(["rollback", "--model", "cancer", "--table", TABLE]) == 2  # nothing left to roll back to
    assert "nothing_to_roll_back" in capsys.readouterr().err
    assert cli(["status", "--model", "cancer", "--table", TABLE]) == 0
    assert json.loads(capsys.readouterr().out)["champion_version"] == "v1"


def test_release_without_traffic_ends_insufficient_traffic(account: None, rf_bundle: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    holdout = tmp_path / "holdout.csv"
    breast_cancer().sample(120, random_state=1).to_csv(holdout, index=False)
    where = ["--table", TABLE, "--bucket", MODEL_BUCKET, "--bake-seconds", "0"]
    assert cli(["release", "--bundle", str(bundle_version(rf_bundle, "v1", tmp_path)), "--holdout", str(holdout),
                *where]) == 0
    assert cli(["release", "--bundle", str(bundle_version(rf_bundle, "v2", tmp_path)), "--holdout", str(holdout),
                *where]) == 1
    assert "rolled_back (insufficient_traffic" in capsys.readouterr().out
    assert cli(["release", "--bundle", str(rf_bundle), "--holdout", str(holdout), "--table", TABLE]) == 2  # no bucket


def test_rollback_and_status_of_a_model_never_released_are_refused_unknown_model(
        account: None, capsys: pytest.CaptureFixture[str]) -> None:
    ddb = boto3.client("dynamodb", region_name=REGION)
    for command in ("rollback", "status"):
        assert cli([command, "--model", "never-seen", "--table", TABLE]) == 2
        assert "error [unknown_model]" in capsys.readouterr().err
    assert ddb.scan(TableName=TABLE)["Items"] == []
