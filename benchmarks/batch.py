"""Batch scoring benchmark: a 1M x 20 CSV scored by slimserve against its earlier versions and pandas.

The file holds 20 float columns at full precision, as pandas' to_csv writes floats (~390 MB); the
model is a logistic regression behind a StandardScaler. Every measurement runs in a fresh child
process (peak RSS is that process's VmHWM, imports included), pinned with taskset to one core
and then to two; the variants take turns, round after round, and the table gives medians:
  - this tree: `score_file` from the working tree, writing scored/, rejected/ and the manifest
  - each --refs commit: the same call with the batch modules (tabular, scoring, stores) of that commit
  - pandas read + predict: read_csv of the whole file, then the scikit-learn pipeline's predict_proba
  - pandas read + predict + to_csv: the same, writing the input with the answer appended
  - floor: onnxruntime alone on the already parsed array, in the same 5,000-row chunks
Beside the wall-clock seconds, each variant's CPU seconds (all its threads): on a machine shared
with other work, one core's CPU seconds move less than its wall clock.

Run: .venv/bin/python benchmarks/batch.py [--rows 1000000] [--runs 3] [--refs 62feb15 5d2105b]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 5000
BATCH_MODULES = ("functions/common/tabular.py", "functions/batch/scoring.py", "functions/batch/stores.py")


def child_slimserve(functions_root: str, bundle: str, path: str, out: str) -> dict[str, object]:
    sys.path.insert(0, functions_root)
    from functions.batch.scoring import Source, score_file
    from functions.batch.stores import LocalStore
    from functions.common.bundle import directory_reader, load_model

    model = load_model(directory_reader(bundle), max_rows=1_000_000, threads=1)
    start, cpu = time.perf_counter(), time.process_time()
    with open(path, "rb") as f:
        manifest = score_file(model, LocalStore(out), Source("local", "incoming/" + Path(path).name), f).manifest
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert manifest["status"] == "complete", manifest
    return {"seconds": seconds, "cpu": cpu, "rows": manifest["rows"]["scored"],
            "rejected": manifest["rows"]["rejected"], "sha256": manifest["outputs"]["scored"]["sha256"],
            "pandas": "pandas" in sys.modules}


def child_pandas(model_path: str, path: str, out: str = "") -> dict[str, object]:
    import warnings

    warnings.filterwarnings("ignore")
    import joblib
    import pandas as pd

    model = joblib.load(model_path)
    start, cpu = time.perf_counter(), time.process_time()
    frame = pd.read_csv(path)
    proba = model.predict_proba(frame[model.feature_names_in_])
    if out:  # also write what slimserve writes: the input with the prediction and probabilities appended
        frame["prediction"] = model.classes_[proba.argmax(axis=1)]
        for j, c in enumerate(model.classes_):
            frame[f"probability_{c}"] = proba[:, j]
        frame.to_csv(out, index=False)
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "rows": len(proba)}


def child_floor(bundle: str, array: str) -> dict[str, object]:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(Path(bundle) / "model.onnx"), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    matrix = np.load(array)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(matrix), CHUNK):
        session.run(None, {name: matrix[i:i + CHUNK]})
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "rows": len(matrix)}


def child(kind: str, args: list[str]) -> None:
    result = {"slimserve": child_slimserve, "pandas": child_pandas, "floor": child_floor}[kind](*args)
    result["peak_mib"] = peak_mib()
    print(json.dumps(result))


def peak_mib() -> float:
    """This process's peak RSS, imports included. Not ru_maxrss: Linux carries it across exec, so a
    child would report the benchmark's own peak when that is higher."""
    status = Path("/proc/self/status")
    if status.is_file():
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM")) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- setup -----------------------------------------------------------------------------------------

def prepare(work: Path, rows: int, decimals: int | None) -> tuple[Path, Path, Path, Path]:
    """The model, its bundle, the CSV and the parsed array, made once per work folder."""
    import joblib
    import numpy as np
    import pandas as pd

    stem = f"rows-{rows}" + ("" if decimals is None else f"-{decimals}dp")
    model_path, bundle, csv_path, array = work / "model.joblib", work / "bundle", work / f"{stem}.csv", \
        work / f"{stem}.npy"
    names = [f"f{i}" for i in range(20)]
    if not (bundle / "manifest.json").is_file():
        from sklearn.datasets import make_classification
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from pipeline.bundler import build_bundle

        x, y = make_classification(n_samples=5000, n_features=20, n_informative=10, random_state=0)
        frame = pd.DataFrame(x, columns=names)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(frame, y)
        joblib.dump(model, model_path)
        build_bundle(model, frame.assign(target=y).head(1000), bundle, name="bench", version="v1", target="target")
    if not csv_path.is_file():
        rng = np.random.default_rng(0)
        with csv_path.open("w") as f:
            for start in range(0, rows, 100_000):
                block = rng.normal(0, 2, size=(min(100_000, rows - start), 20))
                block = block if decimals is None else block.round(decimals)
                pd.DataFrame(block, columns=names).to_csv(f, index=False, header=start == 0)
    if not array.is_file():
        np.save(array, pd.read_csv(csv_path).to_numpy(np.float32))
    return model_path, bundle, csv_path, array


def checkout(ref: str, work: Path) -> Path:
    """The working tree's ``functions/`` with the batch path's modules as they were at ``ref`` (the
    bundle loader and schema stay current, so that today's bundle loads)."""
    target = work / f"ref-{ref}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ROOT / "functions", target / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    for module in BATCH_MODULES:
        text = subprocess.run(["git", "show", f"{ref}:{module}"], cwd=ROOT, capture_output=True, check=True).stdout
        (target / module).write_bytes(text)
    return target


def measure(cores: str, kind: str, *args: str) -> dict[str, float]:
    pin = ["taskset", "-c", cores] if shutil.which("taskset") else []
    done = subprocess.run([*pin, sys.executable, str(Path(__file__).resolve()), "--child", kind, *args],
                          capture_output=True, text=True, cwd=ROOT, check=False,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"{kind} {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").is_file() else "?"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--decimals", type=int, default=None, help="round the values (default: full precision)")
    parser.add_argument("--runs", type=int, default=3, help="rounds; the table gives medians (default 3)")
    parser.add_argument("--refs", nargs="*", default=["62feb15", "5d2105b"],
                        help="earlier commits to run beside the working tree (default: before pyarrow, first pass)")
    parser.add_argument("--cores", nargs="+", default=["0", "0,1"], help="taskset CPU lists (default: one, two)")
    parser.add_argument("--work", type=Path, default=None, help="folder to keep the file and bundle in between runs")
    parser.add_argument("--no-write-baseline", action="store_true", help="skip pandas + to_csv (the slowest)")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    sys.path.insert(0, str(ROOT))
    work = args.work or Path(tempfile.mkdtemp(prefix="slimserve-batch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model_path, bundle, csv_path, array = prepare(work, args.rows, args.decimals)
    variants: dict[str, tuple[str, ...]] = {"this tree": ("slimserve", str(ROOT), str(bundle), str(csv_path))}
    for ref in args.refs:
        variants[ref] = ("slimserve", str(checkout(ref, work)), str(bundle), str(csv_path))
    variants["pandas read+predict"] = ("pandas", str(model_path), str(csv_path))
    if not args.no_write_baseline:
        variants["pandas read+predict+to_csv"] = ("pandas", str(model_path), str(csv_path), str(work / "pd-out.csv"))
    variants["floor: onnxruntime alone"] = ("floor", str(bundle), str(array))

    precision = "full precision" if args.decimals is None else f"{args.decimals} decimals"
    print(f"file: {args.rows:,} rows x 20 floats, {precision}, {csv_path.stat().st_size / 2**20:.0f} MiB; "
          "model: StandardScaler + LogisticRegression")
    print(f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; load average at start: {load()}")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for round_ in range(args.runs):
        for cores in args.cores:
            for name, (kind, *rest) in variants.items():
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                extra = [str(out)] if kind == "slimserve" else []
                results.setdefault((cores, name), []).append(measure(cores, kind, *rest, *extra))
        print(f"round {round_ + 1}/{args.runs} done; load average {load()}", flush=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    (work / "pd-out.csv").unlink(missing_ok=True)
    report(results, args.cores, list(variants), args.rows)
    print(f"load average at end: {load()}")


def report(results: dict[tuple[str, str], list[dict[str, float]]], cores_list: list[str], names: list[str],
           rows: int) -> None:
    for cores in cores_list:
        ours = statistics.median(r["seconds"] for r in results[(cores, "this tree")])
        ours_cpu = statistics.median(r["cpu"] for r in results[(cores, "this tree")])
        print(f"\ntaskset -c {cores} ({len(cores.split(','))} core(s)); median (min-max) of "
              f"{len(results[(cores, names[0])])} runs")
        head = (f"{'':30} {'seconds':>18} {'rows/s':>10} {'peak MiB':>9} {'time vs ours':>13} {'CPU s':>6} "
                f"{'vs ours':>7}")
        print(head)
        print("-" * len(head))
        for name in names:
            runs = results[(cores, name)]
            seconds = [r["seconds"] for r in runs]
            median = statistics.median(seconds)
            peak = statistics.median(r["peak_mib"] for r in runs)
            speed = "" if name == "this tree" else f"{median / ours:.2f}x"
            cpu = statistics.median(r["cpu"] for r in runs)
            cpu_ratio = "" if name == "this tree" else f"{cpu / ours_cpu:.2f}x"
            print(f"{name:30} {median:7.2f} ({min(seconds):.2f}-{max(seconds):.2f}) {rows / median:>10,.0f} "
                  f"{peak:>9.0f} {speed:>13} {cpu:>6.2f} {cpu_ratio:>7}")
        same = {name: results[(cores, name)][0].get("sha256") == results[(cores, "this tree")][0]["sha256"]
                for name in names if "sha256" in results[(cores, name)][0] and name != "this tree"}
        pandas = [name for name in names if results[(cores, name)][0].get("pandas")]
        print(f"scored output byte-identical to this tree's: {same or '-'}; pandas imported by: {pandas or 'none'}")


if __name__ == "__main__":
    main()
