"""Serving uses onnxruntime only: no scikit-learn, no scipy, and nothing is ever unpickled. And what the
inference function imports at cold start and for its first prediction: no pydantic and no Powertools
event handler (together ~140 ms of every cold start); the OpenAPI document brings them in when it is
first asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, sys
unpickled = []
def audit(event, args):
    if event == "pickle.find_class":
        unpickled.append(args)
sys.addaudithook(audit)
import pickle
def refuse(*a, **k):
    raise AssertionError("pickle used at serving time")
pickle.load = pickle.loads = refuse

from functions.inference import handler
from pipeline.local.apigw import LambdaContext, proxy_event

model = handler.holder.load()
row = [1.0] * len(model.manifest.features)
event = proxy_event("POST", "/predict", json.dumps({"instances": [row]}), {"Content-Type": "application/json"})
result = handler.lambda_handler(event, LambdaContext())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy", "skl2onnx", "joblib", "pandas"))
found = {"status": result["statusCode"], "heavy": heavy, "unpickled": [str(u) for u in unpickled]}
print("RESULT " + json.dumps(found))
"""


def probe(code: str, bundle: Path) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter serving ``bundle``; what it printed after RESULT."""
    env = {**os.environ, "MODEL_URI": str(bundle), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, done.stdout + done.stderr
    found: dict[str, Any] = json.loads(line[len("RESULT "):])
    return found


def test_serving_path_loads_no_sklearn_scipy_or_pickle(rf_bundle: Path) -> None:
    result = probe(PROBE, rf_bundle)
    assert result["status"] == 200
    assert result["heavy"] == []
    assert result["unpickled"] == []

COLD_PROBE = r"""
import json, sys
from functions.inference import handler
from pipeline.local.apigw import LambdaContext, proxy_event

def loaded():
    return sorted(m for m in ("pydantic", "pydantic_core", "aws_lambda_powertools.event_handler",
                              "aws_lambda_powertools.utilities.data_classes") if m in sys.modules)

at_import = loaded()
row = [1.0] * len(handler.holder.load().manifest.features)
event = proxy_event("POST", "/predict", json.dumps({"instances": [row]}), {"Content-Type": "application/json"})
status = handler.lambda_handler(event, LambdaContext())["statusCode"]
after_predict = loaded()
document = handler.lambda_handler(proxy_event("GET", "/openapi.json"), LambdaContext())
found = {"at_import": at_import, "status": status, "after_predict": after_predict,
         "openapi": document["statusCode"], "after_openapi": loaded()}
print("RESULT " + json.dumps(found))
"""


def test_no_pydantic_nor_event_handler_until_the_openapi_document(rf_bundle: Path) -> None:
    result = probe(COLD_PROBE, rf_bundle)
    assert result["status"] == 200 and result["openapi"] == 200
    assert result["at_import"] == [] and result["after_predict"] == []
    assert "pydantic" in result["after_openapi"]  # the document is built from the pydantic models
