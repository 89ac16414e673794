"""Monitoring that acts, in the emulated account: a champion serves real-shaped traffic with capture at 100%,
the drift function compares each window with the bundle's profile, the local evaluator judges the stack's
drift alarms, and the composite drift alarm starts a retraining run once; labels posted back move live
accuracy in CloudWatch and its alarm. The clock is moved, never waited for.

The retraining machine here is started, not run: its execution is a moto Step Functions execution of a
machine that is never interpreted (the real machine's run is tests/infrastructure/test_retraining_machine.py).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest

from cdk.constructs.alarms import DRIFT_KS_MAX, DRIFT_PSI_MAX
from functions.common.registry import ModelEntry, Registry
from functions.common.settings import DriftSettings
from functions.drift.service import run_drift
from pipeline.local.alarms import AlarmEvaluator, LocalRouter, drift_alarm_name, drift_rule_pattern
from pipeline.local.apigw import LambdaContext, proxy_event
from pipeline.local.emulation import MODEL_BUCKET, REGION, create_registry_table, emulated_account, upload_bundle
from pipeline.local.lambdas import forward_emf
from pipeline.local.server import load_function
from tests import realdata
from tests.integration.test_feedback import account, call, predict, rows_of, serve  # noqa: F401  (account: fixture)

MODEL, TABLE, TARGET = "segments", "slimserve-registry-loop", "segment"
FEATURES = [*realdata.NUMERIC, *realdata.CATEGORICAL]
T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
MIN_SAMPLES = 800


@pytest.fixture(scope="module")
def segments_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A logistic regression on the real-shaped table (three string classes; the ID and date dropped)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from pipeline.bundler import build_bundle

    frame = realdata.string_labels(2000, seed=11)
    model = make_pipeline(ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), realdata.NUMERIC),
        ("text", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         realdata.CATEGORICAL)]), LogisticRegression(max_iter=500))
    model.fit(frame.drop(columns=[TARGET]), frame[TARGET])
    out = tmp_path_factory.mktemp("segments") / "bundle"
    build_bundle(model, frame, out, name=MODEL, version="v1", target=TARGET)
    return out


@dataclass
class Clock:
    now: dt.datetime = T0

    def wall(self) -> float:
        return self.now.timestamp()


@dataclass
class Loop:
    """The emulated account: the routed inference and drift functions, the evaluator, the retraining rule."""

    inference: ModuleType
    drift: ModuleType
    evaluator: AlarmEvaluator
    stepfunctions: Any
    machine: str
    clock: Clock = field(default_factory=Clock)

    def traffic(self, frame: pd.DataFrame, per_request: int = 50) -> None:
        part = frame[FEATURES].astype(object)
        rows = part.where(part.notna(), None).to_dict("records")
        for start in range(0, len(rows), per_request):
            event: Any = proxy_event("POST", "/predict", json.dumps({"instances": rows[start:start + per_request]}),
                                     {"Content-Type": "application/json"})
            assert self.inference.lambda_handler(event, LambdaContext())["statusCode"] == 200
        self.inference.capture.flush()

    def drift_run(self) -> Any:
        """One scheduled run of the drift function at the clock's time (its handler's settings and clients)."""
        routing = self.drift.registry().routing(MODEL)
        return run_drift(self.drift.settings, routing, boto3.client("s3", region_name=REGION), self.clock.now,
                         self.drift.manifest_of)

    def executions(self) -> list[dict[str, Any]]:
        listed = self.stepfunctions.list_executions(stateMachineArn=self.machine)["executions"]
        return [self.stepfunctions.describe_execution(executionArn=e["executionArn"]) for e in listed]


@pytest.fixture
def loop(segments_bundle: Path) -> Iterator[Loop]:
    with emulated_account():
        s3, cloudwatch = boto3.client("s3", region_name=REGION), boto3.client("cloudwatch", region_name=REGION)
        dynamodb, sfn = boto3.client("dynamodb", region_name=REGION), boto3.client("stepfunctions", region_name=REGION)
        uri = upload_bundle(s3, segments_bundle)
        create_registry_table(dynamodb, TABLE)
        registry = Registry(dynamodb, TABLE)
        registry.promote(registry.register(ModelEntry(model=MODEL, version="v1", bundle_uri=uri)), "first release")
        inference = load_function("functions.inference.handler", "", MODEL_NAME=MODEL, REGISTRY_TABLE=TABLE,
                                  ROUTING_TTL_SECONDS="0", MODEL_BUCKET=MODEL_BUCKET, CAPTURE_SAMPLE_RATE="1")
        drift = load_function("functions.drift.handler", "", **DriftSettings(
            registry_table=TABLE, model_name=MODEL, model_bucket=MODEL_BUCKET, min_samples=MIN_SAMPLES).to_env())
        drift.registry.cache_clear()
        machine = sfn.create_state_machine(
            name="slimserve-retraining", roleArn="arn:aws:iam::123456789012:role/sfn",
            definition=json.dumps({"StartAt": "Train", "States": {"Train": {"Type": "Pass", "End": True}}}),
        )["stateMachineArn"]
        router = LocalRouter()

        def start_retraining(event: dict[str, Any]) -> str:  # the rule's target input: the run id is the event id
            payload = {"model": MODEL, "run_id": event["id"], "data_prefix": f"{MODEL}/latest"}
            return str(sfn.start_execution(stateMachineArn=machine, input=json.dumps(payload))["executionArn"])

        router.add_rule("DriftAlarmRule", drift_rule_pattern(MODEL), start_retraining)
        result = Loop(inference, drift, AlarmEvaluator(cloudwatch, router, MODEL), sfn, machine)
        result.inference.capture.wall = result.clock.wall
        with forward_emf(cloudwatch):
            yield result


def shifted(frame: pd.DataFrame) -> pd.DataFrame:
    """Older customers on the bigger plans: a numeric feature moved and a category mix changed."""
    frame = frame.copy()
    frame["age"] = frame["age"] + 20
    frame["plan"] = np.random.default_rng(5).choice(realdata.PLANS, len(frame), p=[0.05, 0.1, 0.25, 0.6])
    return frame


def test_shifted_inputs_raise_the_drift_alarm_and_start_retraining_once(loop: Loop) -> None:
    loop.traffic(realdata.features(1000, seed=21))
    loop.clock.now = T0 + dt.timedelta(minutes=5)
    calm = loop.drift_run()
    assert calm.published and calm.rows == 1000
    assert calm.psi_max < DRIFT_PSI_MAX.threshold and calm.ks_max < DRIFT_KS_MAX.threshold
    assert loop.evaluator.evaluate(loop.clock.now) == []

    # A day later the traffic has shifted (the calm rows have left the 24 h window).
    loop.clock.now = T0 + dt.timedelta(hours=25)
    loop.traffic(shifted(realdata.features(1000, seed=22)))
    loop.clock.now += dt.timedelta(minutes=5)
    first = loop.drift_run()
    assert first.rows == 1000 and first.features["age"].ks > DRIFT_KS_MAX.threshold  # type: ignore[operator]
    assert first.features["plan"].psi > DRIFT_PSI_MAX.threshold and first.features["city"].psi < 0.1
    assert loop.evaluator.evaluate(loop.clock.now) == [] and loop.executions() == []  # one hour: the specs want two

    loop.clock.now += dt.timedelta(hours=1)
    loop.drift_run()
    events = loop.evaluator.evaluate(loop.clock.now)
    raised = [e["detail"]["alarmName"] for e in events if e["detail"]["state"]["value"] == "ALARM"]
    assert f"slimserve-{MODEL}-signal-psi" in raised and raised[-1] == drift_alarm_name(MODEL)
    (run,) = loop.executions()
    assert json.loads(run["input"]) == {"model": MODEL, "run_id": events[-1]["id"], "data_prefix": f"{MODEL}/latest"}

    # Still drifted an hour later, and evaluated twice: the alarm stays in ALARM and starts nothing more.
    loop.clock.now += dt.timedelta(hours=1)
    assert loop.drift_run().published
    assert loop.evaluator.evaluate(loop.clock.now) == [] and loop.evaluator.evaluate(loop.clock.now) == []
    assert len(loop.executions()) == 1 and len(loop.evaluator.router.delivered) == 1


def test_labels_posted_back_move_live_accuracy_in_cloudwatch_and_raise_its_alarm(account: dict[str, Any],  # noqa: F811
                                                                               rf_bundle: Path) -> None:
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    evaluator = AlarmEvaluator(cloudwatch, LocalRouter(), "cancer")
    with forward_emf(cloudwatch):
        inference, feedback = serve(account, rf_bundle)
        body = predict(inference, rows_of(inference, 10))
        labelled = list(zip(body["prediction_ids"], body["predictions"], strict=True))

        def post(start: int, stop: int, right: bool) -> float:
            for pid, predicted in labelled[start:stop]:
                assert call(feedback, "/feedback", {"prediction_id": pid, "label": predicted if right
                                                    else 1 - predicted})[0] == 201
            now = dt.datetime.now(dt.UTC)
            (point,) = cloudwatch.get_metric_statistics(
                Namespace="Slimserve", MetricName="LiveAccuracy", StartTime=now - dt.timedelta(hours=1),
                EndTime=now + dt.timedelta(minutes=1), Period=7200, Statistics=["Average"],
                Dimensions=[{"Name": "model_name", "Value": "cancer"}])["Datapoints"]
            return float(point["Average"])

        assert post(0, 4, right=True) == 1.0
        assert evaluator.evaluate() == []
        assert post(4, 10, right=False) == pytest.approx(0.4)  # 4 right of 10
        (event,) = evaluator.evaluate()
    assert (event["detail"]["alarmName"], event["detail"]["state"]["value"]) == ("slimserve-cancer-live-accuracy",
                                                                                 "ALARM")
