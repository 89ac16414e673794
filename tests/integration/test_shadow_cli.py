"""`slimserve shadow` with --table, as a new user would run it: name an admitted version as the champion's
shadow, see it in `slimserve status`, clear it; refusals leave the routing item as it was."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest

from functions.common.registry import ModelEntry, Registry
from pipeline.cli import main as cli
from pipeline.local.emulation import REGION, create_registry_table, emulated_account
from tests.integration.release_account import MODEL, TABLE


@pytest.fixture
def registry() -> Iterator[Registry]:
    with emulated_account():
        client = boto3.client("dynamodb", region_name=REGION)
        create_registry_table(client, TABLE)
        registry = Registry(client, TABLE)
        for version, admitted in (("v1", True), ("v2", True), ("v3", False)):
            entry = registry.register(ModelEntry(model=MODEL, version=version, bundle_uri=f"s3://b/{version}/",
                                                 manifest_sha256="a" * 64))
            registry.record_verdict(entry, {"admitted": admitted, "summary": "judged"})
        registry.promote(registry.get(MODEL, "v1"), "first release")
        yield registry


def test_shadow_is_set_shown_and_cleared(registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--model", MODEL, "--table", TABLE]
    assert cli(["shadow", *where, "--version", "v2"]) == 0
    assert "cancer: v2 shadows v1 on 5% of requests" in capsys.readouterr().out
    assert cli(["status", *where]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["shadow_version"], shown["shadow_share"], shown["champion_version"]) == ("v2", 5, "v1")
    assert cli(["shadow", *where, "--version", "v2", "--share", "20"]) == 0
    assert registry.routing(MODEL).shadow_share == 20
    assert cli(["shadow", *where, "--clear"]) == 0
    assert "cancer: no shadow (v2 no longer runs)" in capsys.readouterr().out
    assert registry.routing(MODEL).shadow_version is None and registry.lock(MODEL) is None


@pytest.mark.parametrize(("argv", "code"), [
    (["--version", "v3"], "not_admitted"),
    (["--version", "v9"], "unknown_version"),
    (["--version", "v2", "--share", "60"], "shadow_share_over_limit"),
    ([], "configuration_error"),
])
def test_refusals_name_their_error_and_change_nothing(registry: Registry, capsys: pytest.CaptureFixture[str],
                                                      argv: list[str], code: str) -> None:
    before = registry.routing(MODEL)
    assert cli(["shadow", "--model", MODEL, "--table", TABLE, *argv]) == 2
    assert f"[{code}]" in capsys.readouterr().err
    assert registry.routing(MODEL) == before


def test_an_unknown_model_is_refused(registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["shadow", "--model", "nobody", "--table", TABLE, "--version", "v2"]) == 2
    assert "[unknown_model]" in capsys.readouterr().err
