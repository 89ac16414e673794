"""The ``slimserve`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from functions.common.errors import ConfigurationError, SlimserveError
from functions.common.settings import DriftSettings

from .feedback_rows import DEFAULT_MIN_LABELS


def _bundle(args: argparse.Namespace) -> int:
    import joblib

    from .bundler import build_bundle
    from .training.contract import read_table

    # joblib files are pickles: load only models you trained yourself. Serving never loads them.
    estimator = joblib.load(args.model)
    sample = read_table(Path(args.sample))
    result = build_bundle(estimator, sample, args.out, name=args.name, version=args.version, target=args.target,
                          tolerance=args.tolerance, lineage={"source_model": Path(args.model).name})
    m = result.manifest
    print(f"bundle {m.name} {m.version} written to {result.path}")
    print(f"  task {m.task}, {len(m.features)} features, input {m.onnx.input_mode}/{m.onnx.input_dtype}, "
          f"model.onnx {m.sizes['model.onnx']:,} bytes")
    print(f"  parity on {m.parity.rows} rows: max abs diff {m.parity.max_abs_diff:.3g} "
          f"(tolerance {m.parity.tolerance:g})"
          + (f", labels agree {m.parity.label_agreement:.2%}" if m.parity.label_agreement is not None else ""))
    for split, values in m.metrics.items():
        print(f"  {split} metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    if args.quantize:
        from .bundling.quantize import quantize_bundle

        # The sample stands in for a holdout here: with --target its labels judge the metrics too.
        print(f"  quantize: {quantize_bundle(result.path, sample, args.target).reason}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import boto3

    from .local.emulation import REGION, emulated_account, upload_bundle
    from .local.server import bundle_path, load_inference_handler, make_server

    root = bundle_path(args.bundle)
    with emulated_account():
        uri = upload_bundle(boto3.client("s3", region_name=REGION), root)
        module = load_inference_handler(uri)
        if module.holder.last_error is not None:
            print(f"model failed to load: {module.holder.last_error.message}", file=sys.stderr)
            return 1
        server = make_server(module.lambda_handler, args.host, args.port)
        host, port = str(server.server_address[0]), int(server.server_address[1])
        model = module.holder.load()
        print(f"serving {model.manifest.name} {model.version} from {uri} (moto S3)\n"
              f"  POST http://{host}:{port}/predict   GET /health   GET /openapi.json\n  Ctrl-C to stop", flush=True)
        try:
            _stop_on_signals()
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the server, even when started from a shell that ignores SIGINT."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def _score(args: argparse.Namespace) -> int:
    from functions.batch.scoring import Source, manifest_key, score_file
    from functions.batch.stores import LocalStore
    from functions.common.bundle import directory_reader, load_model
    from functions.common.layout import INCOMING_PREFIX
    from functions.common.manifest import sha256_file

    from .local.server import bundle_path

    model = load_model(directory_reader(bundle_path(args.bundle)), max_rows=max(args.chunk_rows, 10_000))
    path = Path(args.input)
    if not path.is_file():
        print(f"error: {path} is not a file", file=sys.stderr)
        return 2
    source = Source(bucket="local", key=INCOMING_PREFIX + path.name, size=path.stat().st_size,
                    etag=sha256_file(path))
    store = LocalStore(args.out_dir)
    with path.open("rb") as stream:
        result = score_file(model, store, source, stream, chunk_rows=args.chunk_rows)
    m = result.manifest
    where = Path(args.out_dir) / manifest_key(source)
    if result.skipped:
        print(f"{path.name} was already scored by run {m['run_id']}: nothing written again ({where})")
    if m["status"] == "rejected":
        print(f"{path.name} rejected [{m['reason']['code']}]: {m['reason']['message']}  (manifest {where})")
        return 1
    rows = m["rows"]
    print(f"{path.name}: {rows['in']} rows in, {rows['scored']} scored, {rows['rejected']} rejected "
          f"in {m['seconds']:.2f} s (model {m['model']['version']})")
    for name, out in m["outputs"].items():
        print(f"  {name:<9} {Path(args.out_dir) / out['key']}  ({out['bytes']:,} bytes, sha256 {out['sha256'][:12]})")
    print(f"  manifest  {where}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from functions.common.bundle import directory_reader
    from functions.validation.gate import GateConfig
    from functions.validation.service import REPORT_FILE, report_json, validate

    settings = {"target": args.target, "primary_metric": args.primary_metric, "slices": args.slice or [],
                "tolerance": args.tolerance, "latency_budget_ms": args.latency_budget_ms,
                "size_budget_bytes": args.size_budget_bytes, "max_parity_diff": args.max_parity_diff,
                "min_slice_rows": args.min_slice_rows}
    config = GateConfig.model_validate({k: v for k, v in settings.items() if v is not None})
    holdout = Path(args.holdout)
    if not holdout.is_file():
        print(f"error: holdout {holdout} is not a file", file=sys.stderr)
        return 2
    with holdout.open("rb") as stream:
        report = validate(directory_reader(args.candidate),
                          directory_reader(args.champion) if args.champion else None, (stream, holdout.name), config)
    out = Path(args.report) if args.report else Path(args.candidate) / REPORT_FILE
    problem = _write_report(out, report_json(report), create_folder=bool(args.report))
    print(render_verdict(report))
    if problem and args.report:
        print(f"error: the report cannot be written to {out}: {problem}", file=sys.stderr)
        return 2
    print(f"report: {out}" if problem is None else f"report: not written ({problem})")
    return 0 if report["admitted"] else 1


def _write_report(path: Path, body: str, create_folder: bool) -> str | None:
    """Write the report; a folder named by --report is created. Returns why it was not written."""
    try:
        if create_folder:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.parent.is_dir():
            return f"the folder {path.parent} does not exist"
        path.write_text(body)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def render_verdict(report: dict) -> str:  # type: ignore[type-arg]
    lines = []
    cand, champ = report.get("candidate") or {}, report.get("champion") or {}
    lines.append(f"candidate {cand.get('name', '?')} {cand.get('version', '?')}" + _champion_words(report, champ)
                 + (f" on {report['rows']} holdout rows" if "rows" in report else ""))
    metrics = report.get("metrics") or {}
    if metrics:
        names = list(metrics["candidate"])
        lines.append(f"  {'metric':<10}" + "".join(f"{who:>12}" for who in metrics))
        for name in names:
            mark = " *" if name == report.get("primary_metric") else ""
            lines.append(f"  {name + mark:<10}" + "".join(f"{metrics[who].get(name, float('nan')):>12.4f}"
                                                          for who in metrics))
    for name, s in (report.get("slices") or {}).items():
        lines.append(f"  slice {name:<18} rows {s['rows']:>6}  candidate {s['candidate']:.4f}  "
                     f"champion {s['champion']:.4f}")
    width = max([16, *(len(check["check"]) + 2 for check in report["checks"])])
    lines.append(f"  {'check':<{width}}{'result':<8}detail")
    for check in report["checks"]:
        result = "pass" if check["passed"] else "FAIL"
        lines.append(f"  {check['check']:<{width}}{result:<8}{check['detail']}")
    lines.append(f"verdict: {'ADMITTED' if report['admitted'] else 'REFUSED'}"
                 + ("" if report["admitted"] else f" ({', '.join(report['reasons'])})"))
    return "\n".join(lines)


def _champion_words(report: dict, champ: dict) -> str:  # type: ignore[type-arg]
    if champ and "metrics" in report and "champion" not in report["metrics"]:
        return f" vs champion {champ['version']} (not compared: the schemas differ)"
    if champ:
        return f" vs champion {champ['version']}"
    if report.get("champion_given"):
        return f" (champion given, not compared: refused first, {', '.join(report['reasons'])})"
    return " (no champion)"


def _registry(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import os

    import boto3

    from functions.common.registry import Registry

    table = args.table or os.environ.get("SLIMSERVE_REGISTRY_TABLE")
    if not table:
        raise ConfigurationError("name the registry table with --table or SLIMSERVE_REGISTRY_TABLE")
    return Registry(boto3.client("dynamodb", endpoint_url=args.endpoint_url), table)


def _models_list(args: argparse.Namespace) -> int:
    entries = _registry(args).list(args.model)
    if not entries:
        print("no models registered" + (f" under {args.model!r}" if args.model else ""))
        return 0
    print(f"{'model':<16}{'version':<28}{'status':<12}{'verdict':<34}{'updated':<26}")
    for e in entries:
        verdict = e.verdict.get("summary", "") if e.verdict else ""
        print(f"{e.model:<16}{e.version:<28}{e.status:<12}{verdict[:32]:<34}{e.updated_at:<26}")
    return 0


def _models_show(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    print(json.dumps(asdict(_registry(args).get(args.model, args.version)), indent=2))
    return 0


def _account(args: argparse.Namespace) -> None:
    """Point every AWS client (the functions' too) at --endpoint-url, e.g. a moto server."""
    import os

    if args.endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint_url


def _target(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Where release, rollback, status and retrain act: the running `slimserve up`, or a deployed stack (--aws)."""
    from .local.up import deployed_stack, running_up

    if args.aws:
        from cdk.app import STACK_ID

        return deployed_stack(args.stack or STACK_ID)
    return running_up(Path(args.state_dir))


def _registry_and_model(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The registry and the model a rollback or status is about: --table (that table directly), else the target's."""
    if args.table:
        if not args.model:
            raise ConfigurationError("name the model with --model when the registry is named with --table")
        _account(args)
        return _registry(args), args.model
    import boto3

    from functions.common.registry import Registry

    target = _target(args)
    return Registry(boto3.client("dynamodb"), target["table"]), args.model or target["model"]


def _release(args: argparse.Namespace) -> int:
    if args.table:  # the registry named directly: the release is driven step by step from here
        return _release_by_steps(args)
    from .local.up import outcome_line, release_bundle

    outcome = release_bundle(_target(args), Path(args.bundle), Path(args.holdout))
    print(outcome_line(f"release {outcome['model']} {outcome['version']}", outcome))
    return 0 if outcome["outcome"] in ("first_release", "promoted") else 1


def _release_by_steps(args: argparse.Namespace) -> int:
    import os
    import time

    import boto3

    from functions.common.manifest import MANIFEST_FILE, Manifest

    from .local.apigw import LambdaContext
    from .local.emulation import upload_bundle
    from .local.releases import drive_release
    from .local.server import load_function

    _account(args)
    registry = _registry(args)
    bucket = args.bucket or os.environ.get("SLIMSERVE_MODEL_BUCKET")
    if not bucket:
        raise ConfigurationError("name the model bucket with --bucket or SLIMSERVE_MODEL_BUCKET")
    manifest = Manifest.model_validate_json((Path(args.bundle) / MANIFEST_FILE).read_bytes())
    s3 = boto3.client("s3")
    uri = upload_bundle(s3, args.bundle, bucket)
    holdout_key = f"holdout/{manifest.name}/{Path(args.holdout).name}"
    s3.put_object(Bucket=bucket, Key=holdout_key, Body=Path(args.holdout).read_bytes())
    gate = load_function("functions.validation.handler", "", REGISTRY_TABLE=registry.table)
    gate.registry.cache_clear()
    verdict = gate.lambda_handler({"candidate_uri": uri, "holdout_uri": f"s3://{bucket}/{holdout_key}"},
                                  LambdaContext(function_name="slimserve-validation"))
    print(f"gate: {manifest.name} {manifest.version} {'ADMITTED' if verdict['admitted'] else 'REFUSED'} "
          f"({verdict['summary']})")
    release = load_function("functions.release.handler", "", REGISTRY_TABLE=registry.table)
    release.registry.cache_clear()

    def step(action: str, **fields: object) -> dict:  # type: ignore[type-arg]
        result: dict = release.lambda_handler({"action": action, "model": manifest.name, **fields},  # type: ignore[type-arg]
                                              LambdaContext(function_name="slimserve-release"))
        if action in ("set_weight", "compare"):
            print(f"  {action} {fields.get('weight', '')}: {result.get('decision', '')} {result.get('reason', '')}")
        return result

    outcome = drive_release(step, manifest.version, owner="cli", bake=lambda weight: time.sleep(args.bake_seconds),
                            min_requests=args.min_requests)
    print(f"release {manifest.name} {manifest.version}: {outcome['outcome']}"
          + (f" ({outcome['reason']})" if outcome.get("reason") else ""))
    return 0 if outcome["outcome"] != "rolled_back" else 1


def _rollback(args: argparse.Namespace) -> int:
    registry, model = _registry_and_model(args)
    registry.require_model(model)
    champion = registry.champion(model)
    if champion is None:
        from functions.common.errors import NoChampion

        raise NoChampion(f"{model} has no champion to roll back")
    registry.take_lock(model, "cli", 900)
    try:
        restored = registry.restore(model, champion.version, "rolled back by hand", to_version=args.to,
                                    release={"outcome": "rolled-back", "reason": "rolled back by hand"})
    finally:
        registry.release_lock(model, "cli")
    print(f"{model}: {champion.version} rolled back, {restored.version} is champion again")
    return 0


def _shadow(args: argparse.Namespace) -> int:
    """Name (or clear) the model's shadow in its routing item, under the release lock, as set_shadow does."""
    from functions.common.settings import ReleaseSettings
    from functions.release import service

    registry, model = _registry_and_model(args)
    registry.require_model(model)
    if args.clear:
        cleared = service.clear_shadow(registry, model, owner="cli", lock_ttl_seconds=900)["cleared"]
        print(f"{model}: no shadow" + (f" ({cleared} no longer runs)" if cleared else " (there was none)"))
        return 0
    if not args.version:
        raise ConfigurationError("name the shadow with --version VERSION, or remove it with --clear")
    share = service.DEFAULT_SHADOW_SHARE if args.share is None else args.share
    result = service.set_shadow(registry, model, args.version, share, owner="cli", lock_ttl_seconds=900,
                                max_share=ReleaseSettings.model_fields["max_shadow_share"].default)
    champion = registry.routing(model).champion_version
    print(f"{model}: {result['shadow_version']} shadows {champion} on {result['shadow_share']}% of requests "
          "(measured as Shadow* metrics, never returned)")
    return 0


def _status(args: argparse.Namespace) -> int:
    import time

    from .local.releases import status

    registry, model = _registry_and_model(args)
    registry.require_model(model)
    shown = status(registry, model, time.time())
    if not args.table:
        from .local.up import describe_alarms

        shown["alarms"] = describe_alarms(model)
    print(json.dumps(shown, indent=2, default=str))
    return 0


def _monitor(args: argparse.Namespace) -> int:
    from cdk.constructs.alarms import DRIFT_KS_MAX, DRIFT_PSI_MAX

    from .monitor import drift_now, render

    target = _target(args)
    report = drift_now(target, args.model or target["model"], window_hours=args.window_hours,
                       min_samples=args.min_samples)
    print(render(report, {"psi": DRIFT_PSI_MAX.threshold, "ks": DRIFT_KS_MAX.threshold}))
    return 0


def _feedback_rows(args: argparse.Namespace) -> int:
    import boto3

    from .feedback_rows import labelled_rows, write_rows

    target = _target(args)
    table = args.labels_table or target.endpoints.get("feedback_table")
    if not table:
        raise ConfigurationError(f"{target.where} names no feedback labels table: give it with --labels-table")
    model = args.model or target["model"]
    rows, column = labelled_rows(boto3.client("s3"), boto3.client("dynamodb"), target["model_bucket"], table, model,
                                 min_labels=args.min_labels, target=args.target)
    write_rows(rows, Path(args.out))
    print(f"{len(rows)} labelled rows of {model} (target column {column}) written to {args.out}; "
          f"add them with `slimserve train ... --with-feedback {args.out}`")
    return 0


def _up(args: argparse.Namespace) -> int:
    from .local.up import UpOptions, run_up

    pairs = [item.split("=", 1) for item in args.context or []]
    if any(len(pair) != 2 for pair in pairs):
        raise ConfigurationError("give CDK context as -c KEY=VALUE, e.g. -c slimserve:releaseBakeSeconds=10")
    options = UpOptions(port=args.port, moto_port=args.moto_port, host=args.host, model=args.model,
                        state_dir=Path(args.state_dir), context=dict(pairs), routing_ttl_seconds=args.routing_ttl,
                        alarm_interval_seconds=args.alarm_interval)
    return run_up(options, say=lambda line: print(line, flush=True), serving=_stop_on_signals)


def _retrain(args: argparse.Namespace) -> int:
    from .local.up import outcome_line, start_retraining
    from .training.data import DataRefused

    target = _target(args)
    try:
        outcome = start_retraining(target, Path(args.data), args.target, args.model)
    except DataRefused as exc:
        print(f"error [data_refused]: {exc}", file=sys.stderr)
        return 2
    print(outcome_line(f"retrain {args.model or target['model']}", outcome))
    return 0 if outcome["outcome"] in ("first_release", "promoted") else 1


def _train(args: argparse.Namespace) -> int:
    from .training.data import DataRefused
    from .training.local import train_locally

    extra = ["--teacher", args.teacher, "--student", args.student, "--temperature", str(args.temperature),
             "--augment", str(args.augment), "--name", args.name, "--quantize", "on" if args.quantize else "off"]
    if args.on == "sagemaker":
        return _train_on_sagemaker(args, extra)
    try:
        result = train_locally(Path(args.data), args.target, Path(args.out), task=args.task, seed=args.seed,
                               extra_args=extra, say=lambda line: print(line, file=sys.stderr, flush=True),
                               feedback=Path(args.with_feedback) if args.with_feedback else None)
    except DataRefused as exc:
        print(f"error [data_refused]: {exc}", file=sys.stderr)
        return 2
    print(f"trained a {result['task']} model on {result['rows']} rows; teacher on {result['teacher']['device']}, "
          f"student {result['student']}; "
          f"steps (s): {result['timings']}")
    if args.with_feedback:
        print(f"  {result['feedback_rows']} labelled rows added from {args.with_feedback}")
    metrics = result["metrics"]
    names = [k for k in metrics if k.startswith("holdout_")]
    columns = list(metrics[names[0]])
    print(f"  {'holdout':<18}" + "".join(f"{c:>10}" for c in columns))
    for name in names:
        print(f"  {name[8:]:<18}" + "".join(f"{metrics[name].get(c, float('nan')):>10.4f}" for c in columns))
    for warning in result.get("warnings", []):
        print(f"warning: {warning}")
    if "quantization" in result:
        print(f"quantize: {result['quantization']['reason']}")
    print(f"bundle {result['version']}: {result['bundle']}")
    return 0


def _train_on_sagemaker(args: argparse.Namespace, extra: list[str]) -> int:
    import boto3

    from .training.sagemaker_jobs import SageMakerPlan, launch, run_id_for

    if not (args.data.startswith("s3://") and args.out.startswith("s3://") and args.role):
        print("error: --on sagemaker needs --data s3://.../ (with train/, validation/, holdout/), --out s3://... "
              "and --role ARN", file=sys.stderr)
        return 2
    region = args.region or boto3.session.Session().region_name or "us-east-1"
    run_id = run_id_for(args.data)
    hyper = {"target": args.target, "seed": str(args.seed), **dict(zip(extra[::2], extra[1::2], strict=True))}
    hyper = {k.lstrip("-"): v for k, v in hyper.items()}
    if args.task:
        hyper["task"] = args.task
    plan = SageMakerPlan(data_uri=args.data, output_uri=args.out, role_arn=args.role, region=region, run_id=run_id,
                         source_uri=f"{args.out.rstrip('/')}/{run_id}/sourcedir.tar.gz", hyperparameters=hyper)
    sent = launch(plan, boto3.client("sagemaker", region_name=region), boto3.client("s3", region_name=region))
    for request in sent:
        print(f"{request['TrainingJobName']}: {request['ResourceConfig']['InstanceType']} "
              f"{request['AlgorithmSpecification']['TrainingImage']}")
    print(f"bundle: {plan.model_artifact('export')} (bundle/ inside)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.workdir))


QUANTIZE_HELP = ("also write an int8 (dynamic) graph, kept when labels and metrics hold: MLP students and teachers "
                 "only; linear and tree models (ONNX-ML operators) are not quantizable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bundle", help="turn a fitted scikit-learn model into a verified ONNX bundle")
    b.add_argument("--model", required=True, help="joblib file of a fitted estimator or Pipeline (your own)")
    b.add_argument("--sample", required=True, help="CSV or Parquet rows to check parity on (training-like data)")
    b.add_argument("--out", required=True, help="folder to write model.onnx and manifest.json into")
    b.add_argument("--target", help="target column in the sample, dropped from features and used for metrics")
    b.add_argument("--name", default="model", help="model name (default: model)")
    b.add_argument("--version", help="model version (default: UTC time and model hash)")
    b.add_argument("--tolerance", type=float, default=1e-4, help="max abs sklearn/ONNX difference (default 1e-4)")
    b.add_argument("--quantize", action="store_true", help=QUANTIZE_HELP)
    b.set_defaults(func=_bundle)

    s = sub.add_parser("serve", help="serve a bundle on a local HTTP endpoint through the real Lambda handler")
    s.add_argument("--bundle", required=True, help="bundle folder")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.set_defaults(func=_serve)

    c = sub.add_parser("score", help="score a CSV / JSON Lines / Parquet file (gzip accepted) with a bundle")
    c.add_argument("--bundle", required=True, help="bundle folder")
    c.add_argument("input", help="file to score (.csv, .jsonl, .ndjson, optionally .gz; or .parquet)")
    c.add_argument("out_dir", help="folder for scored/, rejected/ and manifests/")
    c.add_argument("--chunk-rows", type=int, default=5000, help="rows scored per chunk (default 5000)")
    c.set_defaults(func=_score)

    v = sub.add_parser("validate", help="the validation gate: admit a candidate only if it has earned it")
    v.add_argument("--candidate", required=True, help="candidate bundle folder")
    v.add_argument("--champion", help="champion bundle folder (omit for a first model)")
    v.add_argument("--holdout", required=True, help="held-out rows with labels (.csv, .jsonl, .parquet)")
    v.add_argument("--target", help="label column (default: the bundle's target)")
    v.add_argument("--slice", action="append", help="holdout column to check slice by slice (repeatable)")
    v.add_argument("--primary-metric", help="roc_auc (binary default), macro_f1, accuracy, log_loss, rmse, mae, r2")
    v.add_argument("--tolerance", type=float, help="how much worse than the champion is acceptable (0.005)")
    v.add_argument("--latency-budget-ms", type=float, help="p99 single-row latency budget (5 ms)")
    v.add_argument("--size-budget-bytes", type=int, help="bundle size budget (50 MiB)")
    v.add_argument("--max-parity-diff", type=float, help="sklearn/ONNX parity budget (1e-4)")
    v.add_argument("--min-slice-rows", type=int, help="slices with fewer rows are not judged (30)")
    v.add_argument("--report", help="where to write the JSON report (default: next to the candidate bundle)")
    v.set_defaults(func=_validate)

    models = sub.add_parser("models", help="the model registry (DynamoDB)")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    for name, helptext in (("list", "every version with its status and verdict"),
                           ("show", "one version in full")):
        p = models_sub.add_parser(name, help=helptext)
        p.add_argument("--table", help="registry table (default: $SLIMSERVE_REGISTRY_TABLE)")
        p.add_argument("--endpoint-url", help="DynamoDB endpoint (e.g. a local emulator)")
        if name == "list":
            p.add_argument("--model", help="only this model")
            p.set_defaults(func=_models_list)
        else:
            p.add_argument("version", help="model version")
            p.add_argument("--model", required=True, help="model name")
            p.set_defaults(func=_models_show)

    r = sub.add_parser("release", help="gate a bundle, then release it by canary (or as the first champion)")
    r.add_argument("--bundle", required=True, help="bundle folder")
    r.add_argument("--holdout", required=True, help="held-out rows with labels, for the gate")
    r.add_argument("--bucket", help="with --table: model bucket (default: $SLIMSERVE_MODEL_BUCKET)")
    r.add_argument("--bake-seconds", type=float, default=60, help="with --table: how long each canary stage serves")
    r.add_argument("--min-requests", type=int, default=100, help="with --table: canary requests a comparison needs")
    r.set_defaults(func=_release)
    rb = sub.add_parser("rollback", help="serve the last known-good version (or --to VERSION) again")
    rb.add_argument("--model", help="model name (default: the stack's)")
    rb.add_argument("--to", help="a retired version to serve again (default: the last known-good one)")
    rb.set_defaults(func=_rollback)
    st = sub.add_parser("status", help="champion, canary and weight, alarms, the release lock, how the last "
                                       "release ended")
    st.add_argument("--model", help="model name (default: the stack's)")
    st.set_defaults(func=_status)
    sh = sub.add_parser("shadow", help="run an admitted version beside the champion on a share of requests, "
                                       "measured and never returned (or --clear it)")
    sh.add_argument("--model", help="model name (default: the stack's)")
    sh.add_argument("--version", help="the admitted version that shadows the champion")
    sh.add_argument("--share", type=int, help="percent of requests it runs on (default 5; each one pays its "
                                              "latency)")
    sh.add_argument("--clear", action="store_true", help="no shadow any more")
    sh.set_defaults(func=_shadow)
    rt = sub.add_parser("retrain", help="upload a table and run the stack's retraining machine (train, gate, release)")
    rt.add_argument("--data", required=True, help="CSV or Parquet table with the target column")
    rt.add_argument("--target", required=True, help="label column")
    rt.add_argument("--model", help="model name (default: the stack's, the only one it retrains)")
    rt.set_defaults(func=_retrain)
    mo = sub.add_parser("monitor", help="drift of the model's captured traffic: PSI/KS per feature with histograms")
    mo.add_argument("--model", help="model name (default: the stack's)")
    mo.add_argument("--window-hours", type=int, default=24, help="captured rows of the last N hours (24)")
    mo.add_argument("--min-samples", type=int, default=DriftSettings.model_fields["min_samples"].default,
                    help="fewer rows: nothing is compared (the drift function's default)")
    mo.set_defaults(func=_monitor)
    fr = sub.add_parser("feedback-rows", help="captured rows joined to their stored labels, as a CSV for "
                                              "`slimserve train --with-feedback`")
    fr.add_argument("--model", help="model name (default: the stack's)")
    fr.add_argument("--out", required=True, help="CSV file to write")
    fr.add_argument("--min-labels", type=int, default=DEFAULT_MIN_LABELS,
                    help=f"fewer labelled rows: nothing is written (default {DEFAULT_MIN_LABELS})")
    fr.add_argument("--target", help="label column (default: the bundle's target)")
    fr.add_argument("--labels-table", help="the feedback labels table (default: the stack's, where it names one)")
    fr.set_defaults(func=_feedback_rows)
    for p in (r, rb, st, sh, rt, mo, fr):
        p.add_argument("--state-dir", default=".slimserve", help="where `slimserve up` keeps up.json (.slimserve)")
        p.add_argument("--aws", action="store_true", help="act on the deployed stack (its outputs), not `slimserve up`")
        p.add_argument("--stack", help="with --aws: the stack's name (default: SlimserveServing)")
    for p in (r, rb, st, sh):
        p.add_argument("--table", help="act on this registry table directly, without the stack's state machines")
        p.add_argument("--endpoint-url", help="with --table: AWS endpoint for every client (e.g. a moto server)")

    u = sub.add_parser("up", help="start the emulated account with the stack's resources and the local API")
    u.add_argument("--port", type=int, default=8080, help="local API port (default 8080; 0 picks a free one)")
    u.add_argument("--moto-port", type=int, default=5000, help="emulated AWS endpoint port (default 5000; 0: free)")
    u.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    u.add_argument("--model", help="model served (default: cdk.json's slimserve:modelName)")
    u.add_argument("--state-dir", default=".slimserve", help="synth cache and up.json (default .slimserve)")
    u.add_argument("-c", "--context", action="append", metavar="KEY=VALUE",
                   help="CDK context, e.g. -c slimserve:releaseBakeSeconds=10 (repeatable)")
    u.add_argument("--routing-ttl", help="seconds the inference function caches the routing item (default: "
                                         "the stack's)")
    u.add_argument("--alarm-interval", type=float, default=10.0, help="seconds between alarm evaluations (10)")
    u.set_defaults(func=_up)

    t = sub.add_parser("train", help="validate data, train a teacher, distil a student, export a bundle")
    t.add_argument("--data", required=True, help="CSV or Parquet table with the target column")
    t.add_argument("--target", required=True, help="label column")
    t.add_argument("--task", choices=["classification", "regression"], help="default: inferred from the target")
    t.add_argument("--out", required=True, help="output folder (bundle in OUT/bundle)")
    t.add_argument("--seed", type=int, default=7, help="split and model seed: same data and seed, same metrics")
    t.add_argument("--teacher", default="hgb", choices=["hgb", "xgboost", "mlp"])
    t.add_argument("--student", default="auto", choices=["auto", "hgb", "logreg", "tree", "mlp"],
                   help="auto (default): the smallest of logreg, mlp, hgb within 1 point of the teacher")
    t.add_argument("--temperature", default="auto",
                   help="distillation temperature (default auto: 1 or 2, the better on the validation split)")
    t.add_argument("--augment", type=float, default=10.0,
                   help="synthetic rows (MUNGE) per training row, labelled by the teacher (default 10; 0: none)")
    t.add_argument("--quantize", action="store_true", help=QUANTIZE_HELP)
    t.add_argument("--name", default="model", help="model name in the bundle")
    t.add_argument("--with-feedback", metavar="FILE", help="append these labelled rows (`slimserve feedback-rows`) "
                                                           "to the data; without it no label enters training")
    t.add_argument("--on", choices=["local", "sagemaker"], default="local")
    t.add_argument("--role", help="SageMaker execution role ARN (--on sagemaker)")
    t.add_argument("--region", help="AWS region (--on sagemaker; default: the session's)")
    t.set_defaults(func=_train)

    d = sub.add_parser("demo", help="train, bundle, serve and call a model on the local emulation")
    d.add_argument("--workdir", default="demo-output", help="where the demo writes its files")
    d.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SlimserveError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
