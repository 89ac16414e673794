"""The end-to-end local demo: train, bundle, serve through the real handler on moto S3, call it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

SEED = 7


def train_demo_model(workdir: Path) -> tuple[Path, Path]:
    """A 100-tree random forest on the breast cancer data set that ships with scikit-learn."""
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = load_breast_cancer(as_frame=True).frame
    train, holdout = train_test_split(frame, test_size=0.25, random_state=SEED, stratify=frame["target"])
    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=100, random_state=SEED, n_jobs=1))
    model.fit(train.drop(columns=["target"]), train["target"])
    workdir.mkdir(parents=True, exist_ok=True)
    model_path, holdout_path = workdir / "model.joblib", workdir / "holdout.csv"
    joblib.dump(model, model_path)
    holdout.to_csv(holdout_path, index=False)
    return model_path, holdout_path


def run_demo(workdir: Path) -> int:
    import warnings

    import boto3
    import pandas as pd

    # Functions that emit no metric of their own in a step say so on every call; the demo's output is its story.
    warnings.filterwarnings("ignore", message="No application metrics to publish")

    from .cli import main as cli
    from .local.emulation import REGION, emulated_account, upload_bundle
    from .local.server import load_inference_handler, make_server, start_in_thread

    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")  # keep the demo output readable
    logging.getLogger("botocore").setLevel(logging.WARNING)
    print("== 1. train a 100-tree random forest on breast cancer (scikit-learn)")
    model_path, holdout_path = train_demo_model(workdir)
    print(f"   wrote {model_path} and {holdout_path}")

    print("== 2. slimserve bundle")
    bundle_dir = workdir / "bundle"
    code = cli(["bundle", "--model", str(model_path), "--sample", str(holdout_path), "--target", "target",
                "--out", str(bundle_dir), "--name", "breast-cancer"])
    if code:
        return code

    print("== 3. serve it through the inference Lambda handler, model loaded from S3 (moto)")
    holdout = pd.read_csv(holdout_path)
    rows = holdout.drop(columns=["target"])
    with emulated_account():
        uri = upload_bundle(boto3.client("s3", region_name=REGION), bundle_dir)
        handler = load_inference_handler(uri)
        server = make_server(handler.lambda_handler, port=0, quiet=True)
        start_in_thread(server)
        base = f"http://127.0.0.1:{server.server_address[1]}"
        print(f"   {uri} -> {base}")
        try:
            _calls(base, rows, holdout["target"])
        finally:
            server.shutdown()
            server.server_close()
        print("== 4. batch: upload a messy CSV to s3://.../incoming/, S3 -> SQS -> batch Lambda")
        _batch(uri, messy_csv(holdout.drop(columns=["target"])))
        print("== 5. validation gate Lambda: a weaker candidate against the champion, verdict in the registry")
        _gate(workdir, uri, holdout_path)
        _releases(workdir, bundle_dir, holdout_path)
        _drift(holdout_path)
    print("== done: the same handler runs on Lambda behind API Gateway (see README: Deploy)")
    return 0


def messy_csv(rows: Any) -> bytes:
    """A real file as it arrives: mostly good rows, some broken ones, a blank line. 'n/a' is one of the
    bundle's missing markers: a null, refused (null_value) where the model takes none."""
    lines = rows.to_csv(index=False).splitlines()
    lines[4] = "n/a," + lines[4].split(",", 1)[1]
    lines[9] = lines[9].rsplit(",", 2)[0]
    lines[14] = "inf," + lines[14].split(",", 1)[1]
    lines[20] = ""
    return ("\n".join(lines) + "\n").encode()


def _batch(model_uri: str, body: bytes) -> None:
    import csv
    import io

    import boto3

    from .local.apigw import LambdaContext
    from .local.emulation import REGION, create_scoring_resources, sqs_event
    from .local.server import load_function

    s3, sqs = boto3.client("s3", region_name=REGION), boto3.client("sqs", region_name=REGION)
    resources = create_scoring_resources(s3, sqs)
    bucket, queue = resources["bucket"], resources["queue_url"]
    sqs.purge_queue(QueueUrl=queue)  # S3's test event
    batch = load_function("functions.batch.handler", model_uri, STATE_MACHINE_ARN="")
    s3.put_object(Bucket=bucket, Key="incoming/holdout-messy.csv", Body=body)
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    response = batch.lambda_handler(sqs_event(messages), LambdaContext(function_name="slimserve-batch"))
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="manifests/holdout-messy.csv.json")["Body"].read())
    rows = manifest["rows"]
    print(f"   SQS batch response {json.dumps(response)}; manifest status {manifest['status']}")
    print(f"   rows in {rows['in']} = scored {rows['scored']} + rejected {rows['rejected']}")
    rejected = s3.get_object(Bucket=bucket, Key="rejected/holdout-messy.csv")["Body"].read().decode()
    for record in csv.DictReader(io.StringIO(rejected)):
        print(f"   rejected line {record['line']}: {record['reason']}")
    again = batch.lambda_handler(sqs_event(messages), LambdaContext(function_name="slimserve-batch"))
    versions = s3.list_object_versions(Bucket=bucket, Prefix="scored/holdout-messy.csv")["Versions"]
    print(f"   redelivered the same message: {json.dumps(again)}, scored/ still has {len(versions)} version")


def _gate(workdir: Path, champion_uri: str, holdout_path: Path) -> None:
    import boto3
    import pandas as pd
    from sklearn.tree import DecisionTreeClassifier

    from functions.common.registry import ModelEntry, Registry

    from .bundler import build_bundle
    from .cli import render_verdict
    from .local.apigw import LambdaContext
    from .local.emulation import MODEL_BUCKET, REGION, create_registry_table, upload_bundle
    from .local.server import load_function

    holdout = pd.read_csv(holdout_path)
    features = holdout.drop(columns=["target"])
    stump = DecisionTreeClassifier(max_depth=1, random_state=SEED).fit(features, holdout["target"])
    build_bundle(stump, holdout, workdir / "candidate", name="breast-cancer", version="candidate-stump",
                 target="target")
    s3, ddb = boto3.client("s3", region_name=REGION), boto3.client("dynamodb", region_name=REGION)
    candidate_uri = upload_bundle(s3, workdir / "candidate")
    s3.put_object(Bucket=MODEL_BUCKET, Key="holdout/breast-cancer.csv", Body=holdout_path.read_bytes())
    create_registry_table(ddb, "slimserve-models")
    registry = Registry(ddb, "slimserve-models")
    champion_version = champion_uri.rstrip("/").rsplit("/", 1)[1]
    registry.promote(registry.register(ModelEntry(model="breast-cancer", version=champion_version,
                                                  bundle_uri=champion_uri)), "demo: first release")
    gate = load_function("functions.validation.handler", "", REGISTRY_TABLE="slimserve-models")
    gate.registry.cache_clear()
    result = gate.lambda_handler({"candidate_uri": candidate_uri,
                                  "holdout_uri": f"s3://{MODEL_BUCKET}/holdout/breast-cancer.csv"},
                                 LambdaContext(function_name="slimserve-validation"))
    key = result["report_uri"].split(f"{MODEL_BUCKET}/", 1)[1]
    report = json.loads(s3.get_object(Bucket=MODEL_BUCKET, Key=key)["Body"].read())
    print("   " + render_verdict(report).replace("\n", "\n   "))
    for entry in registry.list("breast-cancer"):
        print(f"   registry: {entry.version:<28} {entry.status:<10} {entry.reason}")


def _calls(base: str, rows: Any, truth: Any) -> None:
    from .local.server import call

    status, body = call(base, "GET", "/health")
    print(f"   GET /health -> {status} {json.dumps(body)}")

    keyed = json.loads(rows.head(3).to_json(orient="records"))
    status, body = call(base, "POST", "/predict", {"instances": keyed})
    print(f"   POST /predict (3 rows keyed by name) -> {status}")
    print(f"      predictions {body['predictions']} (truth {truth.head(3).tolist()})")
    print(f"      probabilities {[[round(p, 3) for p in row] for row in body['probabilities']]}")
    print(f"      model_version {body['model_version']} request_id {body['request_id']}")

    ordered = json.loads(rows.to_json(orient="values"))
    status, body = call(base, "POST", "/predict", {"instances": ordered})
    accuracy = sum(p == t for p, t in zip(body["predictions"], truth.tolist(), strict=True)) / len(truth)
    print(f"   POST /predict ({len(ordered)} rows as ordered arrays) -> {status}, holdout accuracy {accuracy:.3f}")

    first = keyed[0]
    name = next(iter(first))
    bad_cases = [
        ("malformed JSON", "{\"instances\": [", "application/json"),
        ("wrong content type", json.dumps({"instances": keyed[:1]}), "text/plain"),
        ("missing feature", {"instances": [{k: v for k, v in first.items() if k != name}]}, None),
        ("misspelled feature", {"instances": [{**{k: v for k, v in first.items() if k != name},
                                               name.replace("mean", "maen"): 1.0}]}, None),
        ("wrong type", {"instances": [{**first, name: "large"}]}, None),
        ("NaN", '{"instances": [[NaN' + ", 1.0" * (len(first) - 1) + "]]}", "application/json"),
        ("empty instances", {"instances": []}, None),
    ]
    for label, payload, content_type in bad_cases:
        status, body = call(base, "POST", "/predict", payload, content_type or "application/json")
        error = body.get("error", {})
        print(f"   bad input: {label:<20} -> {status} {error.get('code')} ({error.get('field')})")


def _releases(workdir: Path, bundle_dir: Path, holdout_path: Path) -> None:
    """Steps 6 and 7: the release function's steps driven in the order the release state machine runs
    them (no state machine runs here), with traffic through the routed inference handler in each bake."""
    import contextlib
    import io
    import shutil

    import boto3
    import pandas as pd

    from functions.common.manifest import MANIFEST_FILE

    from .local.apigw import LambdaContext, proxy_event
    from .local.emulation import MODEL_BUCKET, REGION, upload_bundle
    from .local.lambdas import forward_emf
    from .local.releases import drive_release
    from .local.server import load_function

    s3 = boto3.client("s3", region_name=REGION)
    rows = json.loads(pd.read_csv(holdout_path).drop(columns=["target"]).to_json(orient="values"))
    gate = load_function("functions.validation.handler", "", REGISTRY_TABLE="slimserve-models")
    gate.registry.cache_clear()
    release = load_function("functions.release.handler", "", REGISTRY_TABLE="slimserve-models")
    release.registry.cache_clear()
    serving = load_function("functions.inference.handler", "", MODEL_NAME="breast-cancer",
                            REGISTRY_TABLE="slimserve-models", ROUTING_TTL_SECONDS="0")
    sent = [0]

    def candidate(version: str) -> None:
        folder = workdir / version
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(bundle_dir, folder)
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": version}))
        uri = upload_bundle(s3, folder)
        holdout_uri = f"s3://{MODEL_BUCKET}/holdout/breast-cancer.csv"
        verdict = gate.lambda_handler({"candidate_uri": uri, "holdout_uri": holdout_uri},
                                      LambdaContext(function_name="slimserve-validation"))
        print(f"   gate: {version} {'admitted' if verdict['admitted'] else 'refused'} ({verdict['summary']})")

    def step(action: str, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = release.lambda_handler({"action": action, "model": "breast-cancer", **fields},
                                                        LambdaContext(function_name="slimserve-release"))
        if action == "set_weight":
            print(f"   canary at {fields['weight']}%")
        if action == "compare":
            print(f"     compare: {result['decision']} ({result['reason']})")
        return result

    def bake(weight: int) -> None:
        answered: dict[str, int] = {}
        for _ in range(200):
            i = sent[0] = sent[0] + 1
            event: Any = proxy_event("POST", "/predict", json.dumps({"instances": rows[i % len(rows):][:2]}),
                                     {"Content-Type": "application/json"})
            event["requestContext"]["requestId"] = f"demo-{i}"
            with contextlib.redirect_stdout(io.StringIO()):  # Powertools' own metric lines; ours reach CloudWatch
                body = json.loads(serving.lambda_handler(event, LambdaContext())["body"])
            answered[body.get("model_version", "error")] = answered.get(body.get("model_version", "error"), 0) + 1
        print(f"     200 requests answered by {answered}")

    with forward_emf(boto3.client("cloudwatch", region_name=REGION)):
        print("== 6. release a good candidate by canary: 10% -> 50% -> 100%, compared with the champion each bake")
        candidate("candidate-good")
        outcome = drive_release(step, "candidate-good", owner="demo", bake=bake, min_requests=15)
        print(f"   outcome: {outcome['outcome']}")
        print("== 7. release a bad candidate: in serving it answers 1 for every row (a skew the holdout did not "
              "show, simulated by a wrapper)")
        candidate("candidate-skewed")
        load = serving.holder.load_bundle

        def skewed(uri: str, sha: str) -> Any:
            model = load(uri, sha)
            if model.version == "candidate-skewed":
                original = model.predict
                model.predict = lambda instances: _always_one(original(instances))  # type: ignore[method-assign]
            return model

        serving.holder.load_bundle = skewed
        outcome = drive_release(step, "candidate-skewed", owner="demo", bake=bake, min_requests=15)
        print(f"   outcome: {outcome['outcome']}" + (f": {outcome['reason']}" if outcome.get("reason") else ""))
    from functions.common.registry import Registry

    for entry in Registry(boto3.client("dynamodb", region_name=REGION), "slimserve-models").list("breast-cancer"):
        print(f"   registry: {entry.version:<28} {entry.status:<12} {entry.reason[:70]}")


def _always_one(result: Any) -> Any:
    return type(result)(predictions=[1 for _ in result.predictions],
                        probabilities=[[0.0, 1.0] for _ in result.predictions])


DRIFT_FEATURES = ("mean radius", "mean perimeter", "mean area", "worst radius", "worst area")
"""Step 8 enlarges these by 40%: larger tumours than the model was trained on."""


def _drift(holdout_path: Path) -> None:
    """Step 8: the champion serves with capture at 100%; the drift function runs each hour of a clock the
    demo moves (no waiting); the stack's drift alarms are evaluated from CloudWatch as the stack defines
    them; the composite alarm's event reaches the retraining rule, which starts a run."""
    import contextlib
    import datetime as dt
    import io

    import boto3
    import pandas as pd

    from functions.common.settings import DriftSettings
    from functions.drift.service import run_drift

    from .local.alarms import AlarmEvaluator, LocalRouter, drift_rule_pattern
    from .local.apigw import LambdaContext, proxy_event
    from .local.emulation import MODEL_BUCKET, REGION
    from .local.lambdas import forward_emf
    from .local.server import load_function

    model, table = "breast-cancer", "slimserve-models"
    print("== 8. drift: shifted inputs raise the drift alarm and start retraining (the clock moves an hour per "
          "drift run; nothing waits)")
    clock = [dt.datetime.now(dt.UTC).replace(microsecond=0)]
    s3, sfn = boto3.client("s3", region_name=REGION), boto3.client("stepfunctions", region_name=REGION)
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    serving = load_function("functions.inference.handler", "", MODEL_NAME=model, REGISTRY_TABLE=table,
                            ROUTING_TTL_SECONDS="0", MODEL_BUCKET=MODEL_BUCKET, CAPTURE_SAMPLE_RATE="1")
    serving.capture.wall = lambda: clock[0].timestamp()
    drift = load_function("functions.drift.handler", "", **DriftSettings(
        registry_table=table, model_name=model, model_bucket=MODEL_BUCKET, min_samples=500).to_env())
    drift.registry.cache_clear()
    machine = sfn.create_state_machine(  # started, never run here: its jobs train on SageMaker
        name="slimserve-retraining", roleArn="arn:aws:iam::123456789012:role/slimserve-retraining",
        definition=json.dumps({"StartAt": "Train", "States": {"Train": {"Type": "Pass", "End": True}}}),
    )["stateMachineArn"]

    def start_retraining(event: dict[str, Any]) -> str:
        payload = {"model": model, "run_id": event["id"], "data_prefix": f"{model}/latest",
                   "holdout_uri": f"s3://{MODEL_BUCKET}/holdout/{model}.csv"}
        return str(sfn.start_execution(stateMachineArn=machine, input=json.dumps(payload))["executionArn"])

    router = LocalRouter()
    router.add_rule("DriftAlarmRule", drift_rule_pattern(model), start_retraining)
    evaluator = AlarmEvaluator(cloudwatch, router, model)
    holdout = pd.read_csv(holdout_path).drop(columns=["target"])

    def traffic(frame: Any, times: int) -> None:
        rows = json.loads(frame.to_json(orient="values"))
        for i in range(0, len(rows) * times, 50):
            event: Any = proxy_event("POST", "/predict", json.dumps({"instances": (rows * times)[i:i + 50]}),
                                     {"Content-Type": "application/json"})
            with contextlib.redirect_stdout(io.StringIO()):
                serving.lambda_handler(event, LambdaContext())
        serving.capture.flush()

    def hourly_run(label: str, top: int = 0) -> None:
        report = run_drift(drift.settings, drift.registry().routing(model), s3, clock[0], drift.manifest_of)
        prediction = "" if report.prediction is None else f", prediction PSI {report.prediction.psi:.3f}"
        print(f"   {clock[0]:%a %H:%M} drift run ({label}): {report.rows} captured rows, PSI max {report.psi_max:.3f}, "
              f"KS max {report.ks_max:.3f}{prediction}")
        ranked = sorted(report.features.items(), key=lambda item: -item[1].psi)
        for name, c in ranked[:top]:
            print(f"      {name:<22} PSI {c.psi:6.3f}  KS {c.ks or 0:.3f}")
        if top:
            print(f"      ... {len(ranked) - top} other features, PSI at most {ranked[top][1].psi:.3f}")
        delivered = len(router.delivered)
        for event in evaluator.evaluate(clock[0]):
            detail = event["detail"]
            print(f"   alarm {detail['alarmName']}: {detail['previousState']['value']} -> {detail['state']['value']} "
                  f"({detail['state']['reason']})")
        for rule, _, execution in router.delivered[delivered:]:
            print(f"   EventBridge rule {rule} -> retraining run started: {str(execution).rsplit(':', 1)[1]}")
        states = [(k.removeprefix(f"slimserve-{model}-"), v) for k, v in evaluator.states.items()
                  if k.startswith((f"slimserve-{model}-drift", f"slimserve-{model}-signal"))]
        print(f"   drift alarms now: {', '.join(f'{k} {v}' for k, v in states)}")

    with forward_emf(cloudwatch):
        traffic(holdout, 4)
        clock[0] += dt.timedelta(minutes=5)
        hourly_run("traffic like the training data")
        clock[0] += dt.timedelta(hours=25)
        shifted = holdout.copy()
        shifted[list(DRIFT_FEATURES)] *= 1.4
        print(f"   a day later: larger tumours ({', '.join(DRIFT_FEATURES)} x1.4)")
        traffic(shifted, 4)
        for hour in range(3):
            clock[0] += dt.timedelta(minutes=5) if hour == 0 else dt.timedelta(hours=1)
            hourly_run("shifted traffic", top=6 if hour == 0 else 0)
            if hour == 0:
                print("   one breaching hour: each drift alarm wants two in a row")
    runs = sfn.list_executions(stateMachineArn=machine)["executions"]
    for run in runs:
        described = sfn.describe_execution(executionArn=run["executionArn"])
        print(f"   retraining run {run['name']}: input {described['input']}")
    print(f"   {len(runs)} retraining run for one shift, started and not run here: it trains on SageMaker jobs "
          "(`slimserve up` and `slimserve retrain` run one locally)")
