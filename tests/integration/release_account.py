"""An emulated account for release tests: registry, model bucket, CloudWatch fed by the handlers'
EMF, an SNS topic read through a queue, and the real inference and release handlers."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3

from functions.common.manifest import MANIFEST_FILE, sha256_hex
from functions.common.registry import ModelEntry, Registry
from pipeline.local.apigw import LambdaContext, proxy_event
from pipeline.local.emulation import REGION, create_registry_table, upload_bundle
from pipeline.local.lambdas import forward_emf
from pipeline.local.server import load_function
from tests.conftest import breast_cancer

TABLE = "slimserve-models"
MODEL = "cancer"


def bundle_version(bundle: Path, version: str, out: Path) -> Path:
    """The same model under another version: what a retrained bundle looks like to the registry."""
    target = out / version
    if not target.exists():
        shutil.copytree(bundle, target)
        manifest = json.loads((target / MANIFEST_FILE).read_text())
        (target / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": version}))
    return target


class Wrapped:
    """A test-only model wrapper: the real model's answers, changed by ``change`` (delay, errors, flips)."""

    def __init__(self, model: Any, change: Callable[[Any, Any], Any]) -> None:
        self._model, self._change = model, change

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict(self, instances: Any) -> Any:
        return self._change(self._model, instances)


class FakeClock:
    """What the handler measures model latency with: models advance it, nothing sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class WallClock:
    """When metrics are stamped: now, plus whatever a test moved it on by."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


class ReleaseAccount:
    def __init__(self, bundle: Path, workdir: Path) -> None:
        self.bundle, self.workdir = bundle, workdir
        self.s3 = boto3.client("s3", region_name=REGION)
        self.ddb = boto3.client("dynamodb", region_name=REGION)
        self.cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        self.sns, self.sqs = boto3.client("sns", region_name=REGION), boto3.client("sqs", region_name=REGION)
        create_registry_table(self.ddb, TABLE)
        self.registry = Registry(self.ddb, TABLE)
        self.topic = self.sns.create_topic(Name="slimserve-releases")["TopicArn"]
        self.inbox = self.sqs.create_queue(QueueName="release-notices")["QueueUrl"]
        inbox_arn = self.sqs.get_queue_attributes(QueueUrl=self.inbox, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"]
        self.sns.subscribe(TopicArn=self.topic, Protocol="sqs", Endpoint=inbox_arn,
                           Attributes={"RawMessageDelivery": "true"})
        self.rows = json.loads(breast_cancer().drop(columns=["target"]).head(40).to_json(orient="values"))
        self.clock, self.wall = FakeClock(), WallClock()
        self.changes: dict[str, Callable[[Any, Any], Any]] = {}
        self.release = load_function("functions.release.handler", "", REGISTRY_TABLE=TABLE,
                                     NOTIFY_TOPIC_ARN=self.topic)
        self.serving: ModuleType | None = None

    def add_version(self, version: str, *, admitted: bool | None = True) -> ModelEntry:
        """Upload a bundle under ``version`` and register it with the gate's verdict (None: not judged)."""
        folder = bundle_version(self.bundle, version, self.workdir)
        uri = upload_bundle(self.s3, folder)
        entry = self.registry.register(ModelEntry(model=MODEL, version=version, bundle_uri=uri,
                                                  manifest_sha256=sha256_hex((folder / MANIFEST_FILE).read_bytes())))
        if admitted is None:
            return entry
        return self.registry.record_verdict(entry, {"admitted": admitted,
                                                    "summary": "admitted" if admitted else "worse than champion"})

    def step(self, action: str, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.release.lambda_handler({"action": action, "model": MODEL, **fields},
                                                             LambdaContext(function_name="slimserve-release"))
        return result

    def serve(self, ttl_seconds: str = "0") -> ModuleType:
        """A fresh inference environment routed by the registry; models advance the fake clock by 1 ms."""
        module = load_function("functions.inference.handler", "", MODEL_NAME=MODEL, REGISTRY_TABLE=TABLE,
                               ROUTING_TTL_SECONDS=ttl_seconds)
        module.clock = self.clock
        source = module.holder
        load = source.load_bundle

        def load_with_changes(uri: str, sha: str) -> Any:
            model = load(uri, sha)
            return Wrapped(model, self.changes.get(model.version, self._timed()))

        source.load_bundle = load_with_changes
        source.reset()  # the cold start loaded the champion unwrapped
        self.serving = module
        return module

    def _timed(self, delay_ms: float = 1.0) -> Callable[[Any, Any], Any]:
        def change(model: Any, instances: Any) -> Any:
            self.clock.now += delay_ms / 1e3
            return model.predict(instances)
        return change

    def slow(self, version: str, delay_ms: float) -> None:
        self.changes[version] = self._timed(delay_ms)

    def failing(self, version: str) -> None:
        def change(model: Any, instances: Any) -> Any:
            raise RuntimeError("the canary's model broke")
        self.changes[version] = change

    def flipped(self, version: str) -> None:
        """Every answer the opposite class: a model whose predictions shifted."""
        def change(model: Any, instances: Any) -> Any:
            result = model.predict(instances)
            return type(result)(predictions=[1 - p for p in result.predictions],
                                probabilities=[list(reversed(p)) for p in result.probabilities])
        self.changes[version] = change

    def traffic(self, requests: int, start: int = 0) -> dict[str, int]:
        """``requests`` calls with fixed request ids; returns how many each version answered (by status)."""
        assert self.serving is not None
        answered: dict[str, int] = {}
        for i in range(start, start + requests):
            event: Any = proxy_event("POST", "/predict", json.dumps({"instances": self.rows[i % 40:i % 40 + 3]}),
                                     {"Content-Type": "application/json"})
            event["requestContext"]["requestId"] = f"req-{i}"
            result = self.serving.lambda_handler(event, LambdaContext())
            body = json.loads(result["body"])
            key = body.get("model_version") or f"status {result['statusCode']}"
            answered[key] = answered.get(key, 0) + 1
        return answered

    def notices(self) -> list[dict[str, Any]]:
        messages = self.sqs.receive_message(QueueUrl=self.inbox, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]


def release_account(bundle: Path, workdir: Path) -> Iterator[ReleaseAccount]:
    """Yield an account whose handlers' EMF lands in moto's CloudWatch (call inside emulated_account)."""
    account = ReleaseAccount(bundle, workdir)
    with forward_emf(account.cloudwatch, clock=account.wall):
        yield account
