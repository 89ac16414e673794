"""One cold start, run by benchmarks/coldstart.py in a fresh python3.12 (-B -s -E -S) that sees
only what Lambda would: the function code, the layer (read-only), the runtime's SDK.

argv[1] is a JSON config: ``mode`` (slimserve, sklearn or floor), ``path`` (sys.path in Lambda's
order), the S3 location of the model, the event to answer, and ``warm`` (requests to time after
the first one). Prints READY once the first answer is out; the parent times spawn -> READY.
Writes the warm timings, if any, as JSON to ``result``.
"""

import json
import os
import sys

cfg = json.loads(sys.argv[1])
sys.path[:0] = cfg["path"]

import time  # noqa: E402

SAMPLED = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
UNSAMPLED = "Root=1-5759e988-bd862e3fe1be46a994272794;Parent=53995c3f42cd8ad9;Sampled=0"


class Context:
    function_name = "slimserve-bench"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:slimserve-bench"
    memory_limit_in_mb = 1024
    aws_request_id = "bench"
    log_group_name = "/aws/lambda/slimserve-bench"
    log_stream_name = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def s3_object(key: str) -> bytes:
    import boto3

    body: bytes = boto3.client("s3").get_object(Bucket=cfg["bucket"], Key=key)["Body"].read()
    return body


def floor():  # type: ignore[no-untyped-def]
    """numpy + onnxruntime + the S3 client + one run: what no serving code can go below."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(s3_object(cfg["onnx_key"]), options, providers=["CPUExecutionProvider"])
    row = np.asarray(cfg["row"], dtype=cfg["dtype"]).reshape(1, -1)
    inputs = [i.name for i in session.get_inputs()]
    feeds = {inputs[0]: row} if len(inputs) == 1 else {name: row[:, [j]] for j, name in enumerate(inputs)}
    outputs = session.run(None, feeds)
    return lambda: json.dumps([o.tolist() if hasattr(o, "tolist") else o for o in outputs])


def sklearn():  # type: ignore[no-untyped-def]
    """scikit-learn + joblib, the pickled pipeline read through the same S3 client, one row."""
    import io

    import joblib
    import numpy as np

    estimator = joblib.load(io.BytesIO(s3_object(cfg["joblib_key"])))
    proba = estimator.predict_proba(np.asarray(cfg["row"], dtype=np.float64).reshape(1, -1))
    return lambda: json.dumps({"predictions": estimator.classes_[proba.argmax(axis=1)].tolist(),
                               "probabilities": proba.tolist()})


def slimserve():  # type: ignore[no-untyped-def]
    """The inference handler as shipped: import (the bundle loads in the init phase), one request."""
    import importlib

    handler = importlib.import_module("functions.inference.handler")
    context = Context()

    def invoke() -> None:
        response = handler.lambda_handler(cfg["event"], context)
        assert response["statusCode"] == 200, response

    os.environ["_X_AMZN_TRACE_ID"] = SAMPLED if cfg["sampled"] else UNSAMPLED
    invoke()
    return invoke


def warm(invoke, n: int, trace_id: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    os.environ["_X_AMZN_TRACE_ID"] = trace_id  # the runtime sets it per invocation
    for _ in range(min(n, 200)):
        invoke()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        invoke()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {"p50_us": samples[len(samples) // 2] * 1e6, "p99_us": samples[int(len(samples) * 0.99)] * 1e6}


invoke = {"floor": floor, "sklearn": sklearn, "slimserve": slimserve}[cfg["mode"]]()
sys.stdout.write("\nREADY\n")  # after the EMF lines of the first request, which go to stdout as on Lambda
sys.stdout.flush()
if cfg.get("warm"):
    with open(os.devnull, "w") as sink:
        os.dup2(sink.fileno(), 1)
        timings = {"sampled": warm(invoke, cfg["warm"], SAMPLED), "unsampled": warm(invoke, cfg["warm"], UNSAMPLED)}
    with open(cfg["result"], "w") as f:
        json.dump(timings, f)
