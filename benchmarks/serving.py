"""Serving benchmark: the inference handler on ONNX against the same handler on scikit-learn.

Everything is measured in one run, on the same 100-tree random forest and the same rows:
  - single-row latency, event in -> response out (Powertools included), p50 / p99
  - raw onnxruntime session.run and raw scikit-learn predict_proba on that row
  - rows/s for one 10,000-row request
  - package size: the runtime layer against the scikit-learn stack
The handler as Lambda runs it (python3.12, the built layer, Tracer on and off) beside its floors is
benchmarks/handler.py; cold start is benchmarks/coldstart.py (`make bench` runs all three).

Run: .venv/bin/python benchmarks/serving.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentiles(fn: Callable[[], Any], n: int, warmup: int = 200) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def timed(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def build(workdir: Path) -> tuple[Path, Path, Any]:
    import joblib
    import pandas as pd

    from pipeline.bundler import build_bundle
    from pipeline.demo import train_demo_model

    model_path, holdout_path = train_demo_model(workdir)
    holdout = pd.read_csv(holdout_path)
    build_bundle(joblib.load(model_path), holdout, workdir / "bundle", name="bench", version="v1", target="target")
    return model_path, workdir / "bundle", holdout.drop(columns=["target"])


class SklearnBacked:
    """The same handler and validation, with scikit-learn predict_proba in place of onnxruntime."""

    def __init__(self, onnx_model: Any, estimator: Any) -> None:
        self._onnx, self._estimator = onnx_model, estimator
        self.manifest, self.version, self.schema = onnx_model.manifest, onnx_model.version, onnx_model.schema

    def predict(self, instances: Any) -> Any:
        import numpy as np

        from functions.common.bundle import Prediction

        (matrix,) = self.schema.to_feeds(instances).values()
        proba = self._estimator.predict_proba(matrix)
        labels = np.asarray(self._estimator.classes_)[proba.argmax(axis=1)]
        return Prediction(predictions=labels.tolist(), probabilities=proba.tolist())


def dir_size(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths if p.exists() for f in p.rglob("*") if f.is_file())


def site_packages_size(names: list[str]) -> float:
    import importlib.util

    total = 0
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            root = Path(next(iter(spec.submodule_search_locations)))
            total += dir_size([root, root.parent / f"{name}.libs", root.parent / f"{name.replace('_', '-')}.libs"])
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    n = 500 if args.quick else 3000

    import warnings

    import joblib

    warnings.filterwarnings("ignore", category=UserWarning)  # sklearn's feature-name warning: not what we measure
    work = Path(tempfile.mkdtemp(prefix="slimserve-bench-"))
    model_path, bundle, rows = build(work)
    os.environ.update({"MODEL_URI": str(bundle), "POWERTOOLS_LOG_LEVEL": "WARNING"})
    from functions.inference import handler
    from pipeline.local.apigw import LambdaContext, proxy_event

    onnx_model = handler.holder.load()
    estimator = joblib.load(model_path)
    row = json.loads(rows.head(1).to_json(orient="records"))
    big = json.loads(rows.sample(10_000, replace=True, random_state=0).to_json(orient="values"))
    headers = {"Content-Type": "application/json"}
    one_event = proxy_event("POST", "/predict", json.dumps({"instances": row}), headers)
    big_event = proxy_event("POST", "/predict", json.dumps({"instances": big}), headers)
    ctx = LambdaContext()
    feeds = onnx_model.schema.to_feeds(row)
    x_row = next(iter(feeds.values()))
    x_big = next(iter(onnx_model.schema.to_feeds(big).values()))
    sklearn_model = SklearnBacked(onnx_model, estimator)

    def invoke(event: dict[str, Any]) -> None:
        assert handler.lambda_handler(event, ctx)["statusCode"] == 200

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # EMF lines go to stdout, as on Lambda
        raw_onnx = percentiles(lambda: onnx_model.session.run(None, feeds), n)
        raw_sklearn = percentiles(lambda: estimator.predict_proba(x_row), max(n // 10, 100), warmup=20)
        handler_onnx = percentiles(lambda: invoke(one_event), n)
        big_onnx = timed(lambda: invoke(big_event), 5)
        raw_big_onnx = timed(lambda: onnx_model.session.run(None, {next(iter(feeds)): x_big}), 5)
        handler.holder._model = sklearn_model  # the same handler, scikit-learn inside
        try:
            handler_sklearn = percentiles(lambda: invoke(one_event), max(n // 10, 100), warmup=20)
            big_sklearn = timed(lambda: invoke(big_event), 3)
        finally:
            handler.holder._model = onnx_model

    layer_report = ROOT / "layers" / "build" / "runtime-report.json"
    layer_mib = None
    if layer_report.exists():
        report = json.loads(layer_report.read_text())
        layer_mib = report.get("size", {}).get("unzipped_mib")
    onnx_stack = site_packages_size(["onnxruntime", "numpy"])
    sklearn_stack = site_packages_size(["sklearn", "scipy", "numpy", "joblib", "threadpoolctl"])

    print(f"model: 100-tree random forest behind a StandardScaler, breast cancer, 30 features "
          f"(bundle input {onnx_model.manifest.onnx.input_dtype})")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; latencies in microseconds; n={n}\n")
    print(f"{'measure':<46}{'slimserve (ONNX)':>18}{'scikit-learn':>16}{'ratio':>9}")
    line = "{:<46}{:>18}{:>16}{:>9}"
    print(line.format("single row, handler p50 (event -> response)", f"{handler_onnx[0]:.0f}",
                      f"{handler_sklearn[0]:.0f}", f"{handler_sklearn[0] / handler_onnx[0]:.1f}x"))
    print(line.format("single row, handler p99", f"{handler_onnx[1]:.0f}", f"{handler_sklearn[1]:.0f}",
                      f"{handler_sklearn[1] / handler_onnx[1]:.1f}x"))
    print(line.format("single row, raw model call p50", f"{raw_onnx[0]:.0f}", f"{raw_sklearn[0]:.0f}",
                      f"{raw_sklearn[0] / raw_onnx[0]:.1f}x"))
    print(line.format("10,000-row request, rows/s (handler)", f"{10_000 / big_onnx:,.0f}",
                      f"{10_000 / big_sklearn:,.0f}", f"{big_sklearn / big_onnx:.1f}x"))
    print(line.format("package, installed MiB (numpy included)", f"{onnx_stack:.0f}", f"{sklearn_stack:.0f}",
                      f"{sklearn_stack / onnx_stack:.1f}x"))
    if layer_mib is not None:
        print(line.format("Lambda layer as built, unzipped MiB", f"{layer_mib:.0f}", "-", "-"))
    overhead = handler_onnx[0] - raw_onnx[0]
    print(f"\nhandler p50 / raw onnxruntime p50: {handler_onnx[0] / raw_onnx[0]:.1f}x "
          f"({overhead:.0f} us outside the model: event parsing, validation, JSON, logging, metrics)")
    print(f"10,000 rows: raw onnxruntime {raw_big_onnx * 1e3:.1f} ms of {big_onnx * 1e3:.1f} ms in the handler")
    targets = [("handler p50 < 1 ms", handler_onnx[0] < 1000), ("handler >= 20x faster than scikit-learn",
               handler_sklearn[0] / handler_onnx[0] >= 20)]
    if layer_mib is not None:
        targets.append(("layer <= 95 MiB unzipped", layer_mib <= 95))
    print("targets: " + ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in targets))


if __name__ == "__main__":
    main()
