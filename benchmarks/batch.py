"""Batch scoring benchmark: streamed ONNX scoring against pandas read_csv + scikit-learn, one run.

For each file size, each side runs in a fresh process so that peak RSS is its own:
  - slimserve: `score_file` streaming the CSV in 5,000-row chunks, writing scored/ and rejected/
    outputs and the manifest (more work than the baseline, which writes nothing)
  - baseline: pandas.read_csv of the whole file, then the scikit-learn Pipeline's predict_proba
  - baseline + write: the same, then DataFrame.to_csv of the input with the predictions appended

Run: .venv/bin/python benchmarks/batch.py [--rows 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SLIMSERVE = """
import json, sys, time
def hwm():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
from pathlib import Path
from functions.batch.scoring import Source, score_file
from functions.batch.stores import LocalStore
from functions.common.bundle import directory_reader, load_model
bundle, path, out = sys.argv[1:4]
model = load_model(directory_reader(bundle), max_rows=1_000_000, threads=int(sys.argv[4]))
base = hwm()
start = time.perf_counter()
with open(path, "rb") as f:
    m = score_file(model, LocalStore(out), Source("local", "incoming/" + Path(path).name), f).manifest
seconds = time.perf_counter() - start
assert m["status"] == "complete", m
peak = hwm()
print(json.dumps({"seconds": seconds, "rows": m["rows"]["scored"], "peak_mib": peak / 1024,
                  "growth_mib": (peak - base) / 1024}))
"""

BASELINE = """
import json, sys, time, warnings
def hwm():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
warnings.filterwarnings("ignore")
import joblib, pandas as pd
model_path, path = sys.argv[1:3]
model = joblib.load(model_path)
base = hwm()
start = time.perf_counter()
frame = pd.read_csv(path)
proba = model.predict_proba(frame[model.feature_names_in_])
if len(sys.argv) > 3:  # the same baseline, also writing what slimserve writes (input + predictions)
    frame["prediction"] = model.classes_[proba.argmax(axis=1)]
    for j, c in enumerate(model.classes_):
        frame[f"probability_{c}"] = proba[:, j]
    frame.to_csv(sys.argv[3], index=False)
seconds = time.perf_counter() - start
peak = hwm()
print(json.dumps({"seconds": seconds, "rows": len(proba), "peak_mib": peak / 1024,
                  "growth_mib": (peak - base) / 1024}))
"""


def make_csv(rows: int, path: Path) -> None:
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            sample = frame.sample(n, replace=True, random_state=int(rng.integers(1 << 31)))
            noisy = sample * rng.normal(1.0, 0.02, size=sample.shape)
            noisy.round(5).to_csv(f, index=False, header=start == 0)
    del pd


def run(code: str, *args: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    args = parser.parse_args()

    import joblib

    from pipeline.bundler import build_bundle
    from pipeline.demo import train_demo_model

    work = Path(tempfile.mkdtemp(prefix="slimserve-batch-bench-"))
    model_path, holdout = train_demo_model(work)
    import pandas as pd

    build_bundle(joblib.load(model_path), pd.read_csv(holdout), work / "bundle", name="bench", version="v1",
                 target="target")
    print("model: 100-tree random forest behind a StandardScaler (breast cancer, 30 numeric features)")
    print(f"python {sys.version.split()[0]}; each side in a fresh process; RSS growth = peak minus after-imports\n")
    head = f"{'rows':>10} {'MiB':>6} | {'slimserve rows/s':>16} {'peak/growth MiB':>16} | " \
           f"{'pandas+sklearn rows/s':>21} {'peak/growth MiB':>16} | {'speed':>6} {'growth':>7} | " \
           f"{'baseline+write rows/s':>21} {'speed':>6}"
    print(head)
    print("-" * len(head))
    for rows in args.rows:
        path = work / f"rows-{rows}.csv"
        make_csv(rows, path)
        ours = run(SLIMSERVE, str(work / "bundle"), str(path), str(work / f"out-{rows}"), str(args.threads))
        base = run(BASELINE, str(model_path), str(path))
        written = run(BASELINE, str(model_path), str(path), str(work / f"baseline-{rows}.csv"))
        assert ours["rows"] == base["rows"] == written["rows"] == rows
        ours_rate, base_rate, write_rate = rows / ours["seconds"], rows / base["seconds"], rows / written["seconds"]
        print(f"{rows:>10,} {path.stat().st_size / 2**20:>6.0f} | {ours_rate:>16,.0f} "
              f"{ours['peak_mib']:>7.0f}/{ours['growth_mib']:<8.0f} | {base_rate:>21,.0f} "
              f"{base['peak_mib']:>7.0f}/{base['growth_mib']:<8.0f} | {ours_rate / base_rate:>5.2f}x "
              f"{ours['growth_mib'] / max(base['growth_mib'], 1):>6.2f}x | {write_rate:>21,.0f} "
              f"{ours_rate / write_rate:>5.2f}x")
        path.unlink()


if __name__ == "__main__":
    main()
