"""What an explanation costs per row: predict alone (the baseline) against predict plus explain, in one run.

Two bundles on breast cancer (30 numeric features) behind a StandardScaler: a logistic regression
(exact linear contributions) and a 100-tree random forest (path-dependent TreeSHAP over every
leaf). Each is loaded as serving loads it, warmed once (the explainer is built on the first
request that asks), then timed at 1, 10 and 100 rows a request, taking the median of --repeats.

Run: .venv/bin/python benchmarks/explain.py [--repeats N] [--max-depth D]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROWS = (1, 10, 100)


def _median_seconds(call: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _predict_and_explain(model: Any, instances: list[list[Any]]) -> None:
    answer = model.predict(instances)
    model.explain(instances, answer.predictions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per figure (median)")
    parser.add_argument("--max-depth", type=int, default=0, help="forest depth limit (0: grown fully, the default)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from functions.common.bundle import directory_reader, load_model
    from pipeline.bundler import build_bundle, sample_instances

    frame = load_breast_cancer(as_frame=True).frame
    X, y = frame.drop(columns=["target"]), frame["target"]
    forest = RandomForestClassifier(n_estimators=100, max_depth=args.max_depth or None, random_state=0)
    models = {"linear (logistic regression)": LogisticRegression(max_iter=5000),
              f"forest (100 trees, depth {args.max_depth or 'unlimited'})": forest}
    print(f"{'model':<38} {'rows':>5} {'predict/row':>12} {'+explain/row':>13} {'ratio':>7}  explain.json")
    with tempfile.TemporaryDirectory() as tmp:
        for label, final in models.items():
            model = make_pipeline(StandardScaler(), final).fit(X, y)
            out = Path(tmp) / label.split()[0]
            result = build_bundle(model, frame, out, name="cancer", version="v1", target="target")
            served = load_model(directory_reader(out))
            served.explain(sample_instances(X.head(1)))  # builds the explainer, as the first request would
            size = result.manifest.sizes.get("explain.json", 0)
            for rows in ROWS:
                instances = sample_instances(X.head(rows))
                base = _median_seconds(lambda m=served, r=instances: m.predict(r), args.repeats)
                explained = _median_seconds(lambda m=served, r=instances: _predict_and_explain(m, r), args.repeats)
                print(f"{label:<38} {rows:>5} {base / rows * 1e6:>10.1f}us {explained / rows * 1e6:>11.1f}us "
                      f"{explained / base:>6.1f}x  {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
