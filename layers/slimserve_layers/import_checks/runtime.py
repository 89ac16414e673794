"""Import check of the runtime layer, run by the layer build in a fresh python3.12 that sees only
the function code, the layer, the stdlib and stand-ins for the runtime's boto3/botocore.

It imports the stack, runs a tiny ONNX model, imports functions.inference.handler with a MODEL_URI
that does not exist and invokes it with Tracer enabled as on Lambda: no answer may be a 500.
"""

import importlib
import json
from typing import Any

from _harness import absent, cfg, check, finish, result, timed, use_runtime_sdk


def use_numpy() -> None:
    import numpy as np
    result["versions"]["numpy"] = np.__version__
    m = np.array([[2.0, 1.0], [1.0, 3.0]])
    assert np.allclose(np.linalg.inv(m) @ m, np.eye(2))  # OpenBLAS from numpy.libs
    assert np.random.default_rng(0).random(3).shape == (3,)


def use_onnxruntime() -> Any:
    import numpy as np
    import onnxruntime as ort
    result["versions"]["onnxruntime"] = ort.__version__
    result["providers"] = ort.get_available_providers()
    if cfg["model"] is None:
        return "no test model (onnx not installed in the build environment)"
    model = cfg["model"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = timed("InferenceSession", lambda: ort.InferenceSession(model["path"], options,
                                                                     providers=["CPUExecutionProvider"]))
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((2, 3), dtype=np.float32)
    (y,) = session.run(None, {"a": a, "b": b})
    expected = (a + b) @ np.array(model["coefficients"], dtype=np.float32) + model["intercept"]
    assert np.allclose(y.ravel(), expected, atol=1e-6), (y, expected)
    return {"output": y.ravel().tolist()}


def use_pydantic() -> None:
    import pydantic
    result["versions"]["pydantic"] = pydantic.VERSION

    class Row(pydantic.BaseModel):
        x: float

    assert Row.model_validate({"x": "1.5"}).x == 1.5


def use_powertools() -> None:
    from aws_lambda_powertools import Logger, Metrics, Tracer  # noqa: F401
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver  # noqa: F401
    from aws_lambda_powertools.shared.version import VERSION
    result["versions"]["aws_lambda_powertools"] = VERSION


def event(method: str, path: str, body: Any = None) -> dict[str, Any]:
    """An API Gateway REST (v1) proxy event, as Lambda receives it."""
    return {"resource": path, "path": path, "httpMethod": method,
            "headers": {"Content-Type": "application/json"},
            "multiValueHeaders": {"Content-Type": ["application/json"]},
            "queryStringParameters": None, "multiValueQueryStringParameters": None,
            "pathParameters": None, "stageVariables": None, "isBase64Encoded": False,
            "body": None if body is None else json.dumps(body),
            "requestContext": {"requestId": "layer-check", "resourcePath": path, "httpMethod": method,
                               "path": "/prod" + path, "stage": "prod", "accountId": "123456789012",
                               "identity": {"sourceIp": "127.0.0.1"}}}


class Context:
    function_name = "slimserve-layer-check"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:slimserve-layer-check"
    memory_limit_in_mb = 1024
    aws_request_id = "layer-check"
    log_group_name = "/aws/lambda/slimserve-layer-check"
    log_stream_name = "layer-check"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def use_handler() -> dict[str, int]:
    # The whole chain (numpy, onnxruntime, pydantic, powertools, X-Ray patching, model load
    # attempt) in a fresh interpreter: a cold-start proxy for the layer's code.
    module = "functions.inference.handler"
    handler = timed(f"import {module}", lambda: importlib.import_module(module))
    statuses = {}
    for name, ev in [("GET /health", event("GET", "/health")),
                     ("GET /openapi.json", event("GET", "/openapi.json")),
                     ("POST /predict (bad body)", event("POST", "/predict", {"not_instances": 1})),
                     ("POST /predict", event("POST", "/predict", {"instances": [[1.0, 2.0]]}))]:
        response = handler.lambda_handler(ev, Context())
        json.loads(response["body"])
        statuses[name] = response["statusCode"]
    # 500 is the handler's answer to an unexpected exception, e.g. an import failing at request time.
    assert all(code != 500 for code in statuses.values()), statuses
    return statuses


check("forbidden packages absent", absent)
check("runtime SDK stand-in", use_runtime_sdk)
check("functions.inference.handler", use_handler)
check("numpy", use_numpy)
check("onnxruntime InferenceSession", use_onnxruntime)
check("pydantic", use_pydantic)
check("aws_lambda_powertools", use_powertools)
finish()
