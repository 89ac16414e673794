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
