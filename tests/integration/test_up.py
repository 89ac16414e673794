"""`slimserve up` as a new user would run it: a process keeping the emulated account with the stack's resources,
the local API in front of the inference handler, and release, status and rollback acting on it through the
synthesized release machine; and `--aws` reading a stack's outputs."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from functions.common.registry import ModelEntry, Registry
from pipeline.cli import main as cli
from pipeline.local.apigw import unsigned_token, unverified_claims
from pipeline.local.emulation import FAKE_CREDENTIALS, REGION, create_registry_table, emulated_account
from pipeline.local.server import call
from pipeline.local.stack import OUTPUT_NAMES
from pipeline.local.up import UP_FILE
from tests.conftest import breast_cancer
from tests.integration.release_account import bundle_version

pytestmark = pytest.mark.slow  # a synth, a forest bundle, a server process and executions on moto's interpreter

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "cancer"  # the rf_bundle's model
HANG = 600  # seconds: only a process that never gets there fails (a loaded machine is slow, not wrong)


@dataclass
class Up:
    process: subprocess.Popen[str]
    state_dir: Path
    state: dict[str, Any]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=HANG)


@pytest.fixture
def client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands point this process's clients at the running account: restored after each test."""
    for key in (*FAKE_CREDENTIALS, "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state folder for the module: each `up` after the first reuses its synth."""
    return tmp_path_factory.mktemp("state")


@contextmanager
def running_up(state_dir: Path, log_path: Path, *context: str) -> Iterator[Up]:
    """`slimserve up` in its own process until the block ends; ``context``: more `-c key=value`."""
    command = [sys.executable, "-m", "pipeline.cli", "up", "--port", "0", "--moto-port", "0", "--model", MODEL,
               "--state-dir", str(state_dir), "--routing-ttl", "0",
               "-c", "slimserve:releaseBakeSeconds=0", "-c", "slimserve:releaseMinCanaryRequests=0",
               *(arg for pair in context for arg in ("-c", pair))]
    log = log_path.open("w")
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    up_file = state_dir / UP_FILE
    deadline = time.monotonic() + HANG
    while not up_file.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert up_file.is_file(), log_path.read_text()
    running = Up(process, state_dir, json.loads(up_file.read_text()))
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def up(state_dir: Path, tmp_path: Path) -> Iterator[Up]:
    with running_up(state_dir, tmp_path / "up.log") as running:
        yield running


@pytest.fixture
def holdout(tmp_path: Path) -> Path:
    path = tmp_path / "holdout.csv"
    breast_cancer().sample(120, random_state=1).to_csv(path, index=False)
    return path


def _predict(up: Up) -> tuple[int, dict[str, Any]]:
    rows = json.loads(breast_cancer().drop(columns=["target"]).head(3).to_json(orient="values"))
    return call(up.state["api_url"], "POST", "/predict", {"instances": rows})


def test_up_serves_what_release_promotes_and_rollback_restores(up: Up, client_env: None, rf_bundle: Path,
                                                                 holdout: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--state-dir", str(up.state_dir)]
    status, body = _predict(up)
    assert (status, body["error"]["code"]) == (503, "model_unavailable")  # nothing released yet

    v1, v2 = (bundle_version(rf_bundle, v, tmp_path) for v in ("v1", "v2"))
    assert cli(["release", "--bundle", str(v1), "--holdout", str(holdout), *where]) == 0
    out = capsys.readouterr().out
    assert "gate: ADMITTED" in out and "  FirstRelease\n" in out  # the synthesized machine's states, as entered
    assert "release cancer v1: first_release" in out
    status, body = _predict(up)
    assert (status, body["model_version"]) == (200, "v1")

    other = tmp_path / "other.csv"  # a holdout without the bundle's features: the gate refuses the candidate
    other.write_text("a,b,target\n1,2,0\n3,4,1\n")
    refused = bundle_version(rf_bundle, "v1b", tmp_path)
    assert cli(["release", "--bundle", str(refused), "--holdout", str(other), *where]) == 1
    out = capsys.readouterr().out
    assert "gate: REFUSED" in out and "release cancer v1b: refused (NotAdmitted" in out

    assert cli(["release", "--bundle", str(v2), "--holdout", str(holdout), *where]) == 0
    out = capsys.readouterr().out
    assert "  Canary10\n" in out and "  Promote\n" in out and "release cancer v2: promoted" in out
    assert _predict(up)[1]["model_version"] == "v2"

    assert cli(["status", *where]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["champion_version"] == "v2" and shown["canary_version"] is None and shown["lock"] is None
    assert shown["last_release"]["outcome"] == "promoted"
    assert shown["alarms"][f"slimserve-{MODEL}-champion-errors"] == "OK"

    other_model = tmp_path / "other-model"
    shutil.copytree(v2, other_model)
    manifest = json.loads((other_model / "manifest.json").read_text())
    (other_model / "manifest.json").write_text(json.dumps({**manifest, "name": "churn"}))
    assert cli(["release", "--bundle", str(other_model), "--holdout", str(holdout), *where]) == 2
    assert "unknown_model" in capsys.readouterr().err  # this up serves cancer: refused before anything is written
    assert cli(["up", "--state-dir", str(up.state_dir), "--port", "0", "--moto-port", "0"]) == 2
    assert "already runs" in capsys.readouterr().err

    assert cli(["rollback", *where]) == 0
    assert "v2 rolled back, v1 is champion again" in capsys.readouterr().out
    assert _predict(up)[1]["model_version"] == "v1"

    assert up.stop() == 0
    assert not (up.state_dir / UP_FILE).exists()
    assert cli(["status", *where]) == 2
    assert "emulation_not_running" in capsys.readouterr().err


ISSUER = "https://issuer.example.com/pool"
HTTP_JWT = ("slimserve:api=http", "slimserve:apiAuth=jwt", f"slimserve:jwtIssuer={ISSUER}",
            "slimserve:jwtAudience=local-client")


def test_up_with_the_http_api_and_jwt_answers_as_the_rest_api_and_names_the_labeller(
        state_dir: Path, client_env: None, rf_bundle: Path, holdout: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`-c slimserve:api=http -c slimserve:apiAuth=jwt`: payload 1.0 events, claims from the (unverified) token."""
    v1 = bundle_version(rf_bundle, "v1", tmp_path)
    with running_up(state_dir, tmp_path / "rest.log") as rest, \
            running_up(tmp_path / "http-state", tmp_path / "http.log", *HTTP_JWT) as http:
        for running in (rest, http):
            assert cli(["release", "--bundle", str(v1), "--holdout", str(holdout),
                        "--state-dir", str(running.state_dir)]) == 0
        capsys.readouterr()
        said = (tmp_path / "http.log").read_text()
        assert "front door      the HTTP API, payload 1.0, JWT auth: NOT VERIFIED locally" in said
        token = next(line.split()[2] for line in said.splitlines() if line.startswith("  example token"))
        assert unverified_claims(token) == {"iss": ISSUER, "sub": "local-user", "token_use": "access"}

        rows = json.loads(breast_cancer().drop(columns=["target"]).head(3).to_json(orient="values"))
        assert call(http.state["api_url"], "POST", "/predict", {"instances": rows}) == \
            (401, {"message": "Unauthorized"})
        labeller = {"Authorization": f"Bearer {unsigned_token({'iss': ISSUER, 'sub': 'labeller-7'})}"}
        status, answer = call(http.state["api_url"], "POST", "/predict", {"instances": rows}, headers=labeller)
        rest_status, rest_answer = call(rest.state["api_url"], "POST", "/predict", {"instances": rows})
        assert status == rest_status == 200
        same = ("model_version", "predictions", "probabilities")
        assert {k: answer.get(k) for k in same} == {k: rest_answer.get(k) for k in same}
        assert answer["model_version"] == "v1"

        pid = answer["prediction_ids"][0]
        status, stored = call(http.state["api_url"], "POST", "/feedback", {"prediction_id": pid, "label": 1},
                              headers=labeller)
        assert status == 201, stored
        table = boto3.client("dynamodb", region_name=REGION, endpoint_url=http.state["endpoint_url"])
        (item,) = table.scan(TableName=http.state["feedback_table"])["Items"]
        assert item["caller"]["S"] == f"{ISSUER}#labeller-7"


def test_release_without_up_fails_by_name(rf_bundle: Path, holdout: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    state_dir = tmp_path / "state"
    where = ["--bundle", str(rf_bundle), "--holdout", str(holdout), "--state-dir", str(state_dir)]
    assert cli(["release", *where]) == 2
    err = capsys.readouterr().err
    assert "emulation_not_running" in err and "slimserve up" in err
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state_dir.mkdir()
    (state_dir / UP_FILE).write_text(json.dumps({"pid": int(gone.stdout), "endpoint_url": "http://127.0.0.1:9"}))
    assert cli(["release", *where]) == 2
    assert "emulation_not_running" in capsys.readouterr().err  # a stale up.json: its process is gone


# --- --aws: a deployed stack, read through its outputs ------------------------------------------------

def _stack_template(outputs: dict[str, str]) -> str:
    return json.dumps({"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
                       "Outputs": {key: {"Value": value} for key, value in outputs.items()}})


def test_aws_reads_the_stack_outputs(client_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    values = {"model": MODEL, "table": "prod-registry", "model_bucket": "prod-models", "data_bucket": "prod-data",
              "artifacts_bucket": "prod-artifacts", "validation_function": "prod-validation",
              "release_machine": f"arn:aws:states:{REGION}:123456789012:stateMachine:release",
              "retraining_machine": f"arn:aws:states:{REGION}:123456789012:stateMachine:retraining",
              "api_url": "https://api.example/prod/", "topic": f"arn:aws:sns:{REGION}:123456789012:releases",
              "feedback_table": "prod-labels"}
    # Output ids as CDK writes them: a nested construct's id carries an 8-character hash.
    outputs = {OUTPUT_NAMES[k] + ("" if k == "model" else "0A1B2C3D"): v for k, v in values.items()}
    with emulated_account():
        create_registry_table(boto3.client("dynamodb", region_name=REGION), "prod-registry")
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        cloudformation.create_stack(StackName="Prod", TemplateBody=_stack_template(outputs))
        assert cli(["status", "--aws", "--stack", "Prod"]) == 2  # the registry has no such model yet
        assert "unknown_model" in capsys.readouterr().err
        registry = Registry(boto3.client("dynamodb", region_name=REGION), "prod-registry")
        registry.register(ModelEntry(model=MODEL, version="v7", bundle_uri=f"s3://prod-models/models/{MODEL}/v7/",
                                     manifest_sha256="0" * 64))
        assert cli(["status", "--aws", "--stack", "Prod"]) == 0  # the stack's model, in the table its outputs name
        shown = json.loads(capsys.readouterr().out)
        assert shown["model"] == MODEL and shown["champion_version"] is None and shown["alarms"] == {}
        assert cli(["rollback", "--aws", "--stack", "Prod"]) == 2
        assert "no_champion" in capsys.readouterr().err
        without_table = {k: v for k, v in outputs.items() if not k.startswith("RegistryTableName")}
        cloudformation.create_stack(StackName="Old", TemplateBody=_stack_template(without_table))
        assert cli(["status", "--aws", "--stack", "Old"]) == 2
        err = capsys.readouterr().err
        assert "configuration_error" in err and "RegistryTableName" in err
