"""Serving uses onnxruntime only: no scikit-learn, no scipy, and nothing is ever unpickled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_serving_path_loads_no_sklearn_scipy_or_pickle(rf_bundle: Path) -> None:
    env = {**os.environ, "MODEL_URI": str(rf_bundle), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, done.stdout + done.stderr
    result = json.loads(line[len("RESULT "):])
    assert result["status"] == 200
    assert result["heavy"] == []
    assert result["unpickled"] == []
