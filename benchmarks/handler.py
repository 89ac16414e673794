"""The inference handler, warm, one row at a time, as Lambda runs it: Tracer on and off, beside its floors.

Each side is a python3.12 worker that sees what Lambda would (the function code, the built runtime
layer from layers/build/runtime, the runtime's SDK), with Lambda's environment variables. Every
request is a fresh API Gateway proxy event through the real ``lambda_handler``, with its own request
id, Lambda request id and trace id (the ``X-Amzn-Trace-Id`` header and ``_X_AMZN_TRACE_ID``, set
between invocations as the runtime sets it). Request capture is off (its default).

  Tracer on, sampled     POWERTOOLS_TRACE_DISABLED unset, the X-Ray emitter pointed at a local UDP
                         sink (AWS_XRAY_DAEMON_ADDRESS), the request sampled: segments are sent
  Tracer on, unsampled   the same worker, the request not sampled
  Tracer off             POWERTOOLS_TRACE_DISABLED=true
  minimal handler        the floor of a correct handler: json.loads, to_feeds, session.run, json.dumps
  Model.predict          the model call the handler makes (to_feeds, run, labels, lists)
  session.run            onnxruntime alone, on the row's feeds

The variants take turns in blocks (interleaved) so load from other processes falls on all of them
alike; p50 and p99 are over every request of a variant.

With ``--compare DIR`` (a folder holding another version's ``functions/``, e.g. from
``git archive <commit> functions | tar -x -C DIR``) that version's handler takes turns too, Tracer on
and off: before and after under the same load.

Run: .venv/bin/python benchmarks/handler.py [--requests N] [--block N] [--python PATH] [--compare DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "layers" / "build" / "runtime" / "python"
HANDLER_VARIANTS = ("Tracer on, sampled", "Tracer on, unsampled", "Tracer off")
FLOORS = ("minimal handler", "Model.predict", "session.run")
COMPARED = "--compare: "
GOALS = {"p50": 120.0, "p99": 400.0}  # us, one row, Tracer on


# -- the parent: build the bundle, start the workers, take turns, report -------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="timed requests per variant")
    parser.add_argument("--block", type=int, default=500,
                        help="requests per turn (the first after a switch runs on cold caches: keep them under 1%%)")
    parser.add_argument("--python", help="the python3.12 to run (default: search, as the layer build does)")
    parser.add_argument("--compare", type=Path, help="a folder with another version's functions/, timed beside")
    args = parser.parse_args()

    sys.path[:0] = [str(ROOT), str(ROOT / "layers"), str(Path(__file__).resolve().parent)]
    from coldstart import UdpSink, runtime_sdk
    from slimserve_layers.import_test import find_python312, lambda_env

    python = find_python312(args.python)
    found = python is not None and (LAYER / "numpy").is_dir()
    if not found:
        print("handler: no python3.12 or no built runtime layer (make layer): running in this interpreter with "
              f"the dev venv's packages instead, python {sys.version.split()[0]}")
        python = sys.executable
    work = Path(tempfile.mkdtemp(prefix="slimserve-handler-bench-"))
    bundle, row = build_bundle(work)
    sink = UdpSink()
    env = lambda_env(work, ROOT)
    env.update({"MODEL_URI": str(bundle), "AWS_XRAY_DAEMON_ADDRESS": sink.address,
                "POWERTOOLS_SERVICE_NAME": "slimserve-inference"})
    for name in ("POWERTOOLS_LOG_LEVEL", "POWERTOOLS_TRACE_DISABLED", "_X_AMZN_TRACE_ID",
                 "POWERTOOLS_METRICS_NAMESPACE"):
        env.pop(name, None)  # as deployed: the stack sets none of these
    path = [str(ROOT), str(LAYER), str(runtime_sdk(python))] if found else [str(ROOT), *sys.path]
    cfg = {"path": path, "row": row}
    traced = Worker(python, cfg, env)
    untraced = Worker(python, cfg, {**env, "POWERTOOLS_TRACE_DISABLED": "true"})
    workers = [traced, untraced]
    plan = [(traced, "handler", True), (traced, "handler", False), (untraced, "handler", False),
            (untraced, "minimal", False), (untraced, "predict", False), (untraced, "session", False)]
    names = HANDLER_VARIANTS + FLOORS
    if args.compare is not None:
        other = {**cfg, "path": [str(args.compare.resolve()), *path[1:]]}
        workers += [Worker(python, other, env), Worker(python, other, {**env, "POWERTOOLS_TRACE_DISABLED": "true"})]
        plan += [(workers[2], "handler", True), (workers[2], "handler", False), (workers[3], "handler", False)]
        names += tuple(f"{COMPARED}{name}" for name in HANDLER_VARIANTS)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    try:
        for worker, what, sampled in plan:  # warm-up, untimed
            worker.run(what, sampled, 300)
        while len(samples[names[0]]) < args.requests:
            for name, (worker, what, sampled) in zip(names, plan, strict=True):
                samples[name] += worker.run(what, sampled, args.block)
        versions = traced.run("version", False, 0)
    finally:
        for worker in workers:
            worker.close()
    report(samples, versions, python, found, sink.datagrams)
    return 0


def build_bundle(work: Path) -> tuple[Path, dict[str, Any]]:
    import warnings

    import joblib
    import pandas as pd

    from pipeline.bundler import build_bundle as bundle_model
    from pipeline.demo import train_demo_model

    warnings.filterwarnings("ignore")
    model_path, holdout_path = train_demo_model(work)
    holdout = pd.read_csv(holdout_path)
    bundle_model(joblib.load(model_path), holdout, work / "bundle", name="bench", version="v1", target="target")
    row = json.loads(holdout.drop(columns=["target"]).head(1).to_json(orient="records"))[0]
    return work / "bundle", row


class Worker:
    """A python3.12 process that imports the handler once and times what it is asked to, in blocks."""

    def __init__(self, python: str, cfg: dict[str, Any], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([python, "-B", "-s", "-E", "-S", __file__, "--worker", json.dumps(cfg)],
                                     env=env, cwd=env["HOME"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def run(self, what: str, sampled: bool, n: int) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"what": what, "sampled": sampled, "n": n}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def percentile(samples: list[list[float]], q: float, column: int = 0) -> float:
    """Of wall-clock time (column 0) or the thread's CPU time (column 1), in microseconds."""
    ordered = sorted(sample[column] for sample in samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e6


def report(samples: dict[str, list[list[float]]], versions: dict[str, str], python: str, found: bool,
           datagrams: int) -> None:
    where = "the built runtime layer (layers/build/runtime)" if found else "the dev venv (no built layer)"
    print(f"handler, warm, one row: python {versions['python']} ({python}) with {where}; "
          f"aws-lambda-powertools {versions['powertools']}, onnxruntime {versions['onnxruntime']}; "
          f"{os.cpu_count()} cores; request capture off")
    n = len(samples[HANDLER_VARIANTS[0]])
    print(f"{n} requests per variant, interleaved in blocks; X-Ray datagrams received by the UDP sink: {datagrams}\n")
    print(f"{'one row, microseconds':<28}{'p50':>8}{'p99':>8}{'CPU p50':>9}{'CPU p99':>9}")
    for name, values in samples.items():
        if name == FLOORS[0]:
            print("floors:")
        if name.startswith(COMPARED) and name.endswith(HANDLER_VARIANTS[0]):
            print("the --compare version:")
            name = name.removeprefix(COMPARED)
        name = name.removeprefix(COMPARED)
        print(f"{name:<28}{percentile(values, 0.5):>8.0f}{percentile(values, 0.99):>8.0f}"
              f"{percentile(values, 0.5, 1):>9.0f}{percentile(values, 0.99, 1):>9.0f}")
    print("(p50, p99: wall clock, from the call to its answer; CPU: the thread's own CPU time, which other "
          "processes on a shared machine do not inflate)")
    on = HANDLER_VARIANTS[:2]
    p50 = max(percentile(samples[v], 0.5) for v in on)
    p99, cpu99 = max(percentile(samples[v], 0.99) for v in on), max(percentile(samples[v], 0.99, 1) for v in on)
    run = percentile(samples["session.run"], 0.5)
    predict = percentile(samples["Model.predict"], 0.5)
    goals = [(f"Tracer on p50 <= {GOALS['p50']:.0f} us", p50 <= GOALS["p50"]),
             (f"Tracer on p99 <= {GOALS['p99']:.0f} us (wall)", p99 <= GOALS["p99"]),
             (f"(CPU) {cpu99:.0f} us", cpu99 <= GOALS["p99"]),
             ("Model.predict <= 2x session.run", predict <= 2 * run)]
    print(f"\nTracer on (worse of sampled and unsampled): p50 {p50:.0f} us, p99 {p99:.0f} us (CPU {cpu99:.0f}); "
          f"Model.predict / session.run p50: {predict / run:.2f}x")
    print("goals: " + ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in goals))


# -- the worker: runs in python3.12 with Lambda's sys.path ----------------------------------------------

def worker(cfg: dict[str, Any]) -> None:
    sys.path[:0] = cfg["path"]
    protocol = os.fdopen(os.dup(1), "w")  # answers go here; standard output (logs, EMF) goes nowhere
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    import uuid

    from functions.inference import handler

    model = handler.holder.load()
    body = json.dumps({"instances": [cfg["row"]]})
    feeds = model.schema.to_feeds([cfg["row"]])
    outputs = model._outputs  # the floor runs what the model runs

    def minimal(event: dict[str, Any], context: Any) -> dict[str, Any]:
        """The least a correct handler does: parse, check and convert the row, run, answer."""
        instances = json.loads(event["body"])["instances"]
        (proba,) = model.session.run(outputs, model.schema.to_feeds(instances))
        labels = [model.manifest.classes[i] for i in proba.argmax(axis=1).tolist()]
        return {"statusCode": 200, "body": json.dumps({"predictions": labels, "probabilities": proba.tolist()})}

    rows = [cfg["row"]]
    calls = {"handler": handler.lambda_handler, "minimal": minimal,
             "predict": lambda event, context: model.predict(rows),
             "session": lambda event, context: model.session.run(outputs, feeds)}
    for line in sys.stdin:
        command = json.loads(line)
        if command["what"] == "version":
            import aws_lambda_powertools
            import onnxruntime

            protocol.write(json.dumps({"python": sys.version.split()[0], "onnxruntime": onnxruntime.__version__,
                                       "powertools": getattr(aws_lambda_powertools, "__version__", "?")}) + "\n")
            protocol.flush()
            continue
        call, n = calls[command["what"]], command["n"]
        flag = "1" if command["sampled"] else "0"
        requests = []
        for _ in range(n):  # built before the clock starts, as API Gateway and the runtime build them
            request_id, trace = str(uuid.uuid4()), f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}"
            trace_id = f"{trace};Parent={uuid.uuid4().hex[:16]};Sampled={flag}"
            event = proxy_event(body, request_id, trace_id)
            requests.append((event, Context(str(uuid.uuid4())), trace_id))
        timings = []
        clock, cpu = time.perf_counter, time.thread_time
        for event, context, trace_id in requests:
            os.environ["_X_AMZN_TRACE_ID"] = trace_id  # the runtime's work between invocations
            started, started_cpu = clock(), cpu()
            response = call(event, context)
            timings.append((clock() - started, cpu() - started_cpu))
            if command["what"] in ("handler", "minimal"):
                assert response["statusCode"] == 200, response
        protocol.write(json.dumps(timings) + "\n")
        protocol.flush()


class Context:
    function_name = "slimserve-inference"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:slimserve-inference:live"
    memory_limit_in_mb = 1024
    log_group_name = "/aws/lambda/slimserve-inference"
    log_stream_name = "2026/01/01/[$LATEST]bench"

    def __init__(self, aws_request_id: str) -> None:
        self.aws_request_id = aws_request_id

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def proxy_event(body: str, request_id: str, trace_id: str) -> dict[str, Any]:
    """An API Gateway REST proxy event for POST /predict (the shape pipeline.local.apigw builds)."""
    headers = {"Content-Type": "application/json", "Host": "abc.execute-api.us-east-1.amazonaws.com",
               "User-Agent": "bench", "X-Amzn-Trace-Id": trace_id, "X-Forwarded-For": "203.0.113.7"}
    return {"resource": "/predict", "path": "/predict", "httpMethod": "POST", "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()}, "queryStringParameters": None,
            "multiValueQueryStringParameters": None, "pathParameters": None, "stageVariables": None,
            "requestContext": {"resourcePath": "/predict", "httpMethod": "POST", "path": "/prod/predict",
                               "stage": "prod", "requestId": request_id, "extendedRequestId": request_id,
                               "requestTimeEpoch": int(time.time() * 1000), "protocol": "HTTP/1.1",
                               "accountId": "123456789012", "apiId": "abc",
                               "identity": {"sourceIp": "203.0.113.7", "userAgent": "bench"}},
            "body": body, "isBase64Encoded": False}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
