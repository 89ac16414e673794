"""Cold start as Lambda pays it, from the layer as built, against scikit-learn in the same run.

Each cold start is a fresh python3.12 process (-B: it writes no bytecode) that sees only what Lambda
would, in Lambda's order: the function code as the CDK asset stages it, the runtime layer copied
read-only from layers/build/runtime, and the runtime's boto3 (compiled by 3.12, as Lambda ships it).
It is timed from spawn to the first answer: interpreter start, imports, the bundle read through the
S3 client from a local moto server, the session, one request. Tracer on as on Lambda
(POWERTOOLS_TRACE_DISABLED=false, the X-Ray emitter pointed at a local UDP sink).

  slimserve, sampled    the inference handler, first request sampled by X-Ray
  slimserve, unsampled  the same, first request not sampled
  slimserve, Tracer off POWERTOOLS_TRACE_DISABLED=true
  scikit-learn          scikit-learn + joblib (3.12 wheels, compiled by 3.12), the same pipeline
                        pickled, read through the same S3 client, one predict_proba
  floor                 numpy + onnxruntime + the S3 client + the session + one run

The variants take turns (interleaved) so load from other processes falls on all of them alike;
median, min and max are printed, each with its ratio to the floor's median. Then the handler's
warm latency in the same interpreter: Tracer on (sampled and unsampled requests) and off.

Run: .venv/bin/python benchmarks/coldstart.py [--runs N] [--warm N] [--python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers")]

from slimserve_layers.import_test import RUNTIME_PROVIDED, find_python312, lambda_env  # noqa: E402
from slimserve_layers.recipes import ARCHES  # noqa: E402

CHILD = Path(__file__).resolve().parent / "coldstart_child.py"
LAYER = ROOT / "layers" / "build" / "runtime" / "python"
CACHE = ROOT / "layers" / "build" / "bench-py312"  # 3.12 copies of the SDK and of scikit-learn, reused
BUCKET = "slimserve-bench"
VARIANTS = ("slimserve, sampled", "slimserve, unsampled", "slimserve, Tracer off", "scikit-learn", "floor")


def compile312(python: str, folder: Path) -> None:
    """Bytecode as a prebuilt runtime or layer ships it: compiled by 3.12, never checked."""
    subprocess.run([python, "-s", "-E", "-m", "compileall", "-q", "-j0", "--invalidation-mode", "unchecked-hash",
                    str(folder)], check=True, env={"PYTHONHASHSEED": "0", "PATH": os.environ.get("PATH", "")})


def runtime_sdk(python: str) -> Path:
    """boto3, botocore and their dependencies from the build venv, compiled by 3.12 (Lambda's
    runtime ships its SDK with bytecode)."""
    import importlib.metadata

    stamp = ",".join(f"{d}={importlib.metadata.version(d)}" for d in ("boto3", "botocore", "s3transfer"))
    folder = CACHE / "runtime"
    if (folder / ".stamp").exists() and (folder / ".stamp").read_text() == stamp:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    import importlib.util

    for name in RUNTIME_PROVIDED:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if spec.submodule_search_locations:
            shutil.copytree(origin.parent, folder / origin.parent.name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, folder / origin.name)
    compile312(python, folder)
    (folder / ".stamp").write_text(stamp)
    return folder


def sklearn_stack(python: str) -> Path:
    """scikit-learn and joblib at the build venv's versions, as cp312 wheels for Lambda, compiled by 3.12."""
    import importlib.metadata

    import numpy

    pins = [f"scikit-learn=={importlib.metadata.version('scikit-learn')}",
            f"joblib=={importlib.metadata.version('joblib')}", f"numpy=={numpy.__version__}"]
    folder = CACHE / "sklearn"
    if (folder / ".stamp").exists() and (folder / ".stamp").read_text() == " ".join(pins):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    platforms = [arg for tag in ARCHES["x86_64"][1] for arg in ("--platform", tag)]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-conflicts", "--target", str(folder),
                    "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:", *platforms, *pins],
                   check=True)
    for junk in folder.glob("*/tests"):
        shutil.rmtree(junk)
    compile312(python, folder)
    (folder / ".stamp").write_text(" ".join(pins))
    return folder


def staged_function_code(python: str, dest: Path) -> Path:
    """The function code as the CDK asset ships it."""
    try:
        from cdk.constructs.code_asset import stage_function_code
    except ImportError:  # before the asset carried bytecode: the sources alone
        shutil.copytree(ROOT / "functions", dest / "functions", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return dest
    return stage_function_code(ROOT, python=python)


def read_only_copy(src: Path, dest: Path, bytecode: bool = True) -> Path:
    shutil.copytree(src, dest, symlinks=True, ignore=None if bytecode else shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a-w", str(dest)], check=True)
    return dest


def pyc_count(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.pyc"))


class UdpSink:
    """Where the X-Ray emitter sends segments: counted, then dropped."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.datagrams = 0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            self.sock.recv(65536)
            self.datagrams += 1


def prepare_model(work: Path, endpoint: str) -> dict[str, Any]:
    """Train the demo model, bundle it and put the bundle and the pickled pipeline into moto S3."""
    import boto3
    import joblib
    import pandas as pd

    from pipeline.bundler import build_bundle
    from pipeline.demo import train_demo_model
    from pipeline.local.apigw import proxy_event

    model_path, holdout_path = train_demo_model(work)
    holdout = pd.read_csv(holdout_path)
    bundle = work / "bundle"
    build_bundle(joblib.load(model_path), holdout, bundle, name="bench", version="v1", target="target")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket=BUCKET)
    for f in bundle.rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), BUCKET, f"bench/v1/{f.relative_to(bundle).as_posix()}")
    s3.upload_file(str(model_path), BUCKET, "sklearn/model.joblib")
    rows = holdout.drop(columns=["target"])
    row = json.loads(rows.head(1).to_json(orient="records"))
    event = proxy_event("POST", "/predict", json.dumps({"instances": row}), {"Content-Type": "application/json"})
    signature = json.loads((bundle / "manifest.json").read_text())["onnx"]
    return {"bucket": BUCKET, "onnx_key": "bench/v1/model.onnx", "joblib_key": "sklearn/model.joblib",
            "row": rows.iloc[0].tolist(), "dtype": signature["input_dtype"], "event": event,
            "model_uri": f"s3://{BUCKET}/bench/v1"}


def cold_start(python: str, cfg: dict[str, Any], env: dict[str, str], cwd: Path, flags: tuple[str, ...] = ()) -> float:
    """Seconds from spawn to the first answer."""
    started = time.perf_counter()
    proc = subprocess.Popen([python, "-B", "-s", "-E", "-S", *flags, str(CHILD), json.dumps(cfg)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = any(line.strip() == "READY" for line in proc.stdout)  # after the first request's EMF lines
    elapsed = time.perf_counter() - started
    _, err = proc.communicate(timeout=600)
    if not ready or proc.returncode != 0:
        raise RuntimeError(f"{cfg['mode']} failed (exit {proc.returncode}): {err[-3000:]}")
    if "-X" in flags:
        print_import_profile(err)
    return elapsed


def print_import_profile(stderr: str, top: int = 30) -> None:
    """The slowest imports of one cold start (python -X importtime), cumulative, heaviest first."""
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            own, cumulative, name = line.removeprefix("import time:").split("|")
            rows.append((int(cumulative), int(own), name.rstrip()))
    print(f"{'cumulative ms':>14}{'own ms':>8}  module (python -X importtime, one cold start)")
    for cumulative, own, name in sorted(rows, reverse=True)[:top]:
        print(f"{cumulative / 1000:>14.1f}{own / 1000:>8.1f}  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="cold starts per variant (interleaved)")
    parser.add_argument("--warm", type=int, default=2000, help="warm requests per figure (0: none)")
    parser.add_argument("--without-bytecode", action="store_true",
                        help="add a variant: the handler from the same layer and code with their .pyc removed")
    parser.add_argument("--profile-imports", action="store_true",
                        help="one cold start of the handler under -X importtime: its slowest imports, then stop")
    parser.add_argument("--python", help="the python3.12 to run (default: search, as the layer build does)")
    args = parser.parse_args()

    python = find_python312(args.python)
    if python is None:
        print("cold start: no python3.12 interpreter found (put one on PATH, in ~/.pyenv, or pass --python); "
              "Lambda runs 3.12, and another version's figure would mislead: no cold-start figure")
        return 0
    if not (LAYER / "numpy").is_dir():
        print(f"cold start: no runtime layer at {LAYER}: build it first (make layer)")
        return 1

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    work = Path(tempfile.mkdtemp(prefix="slimserve-coldstart-"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        return run(args, python, work, server)
    finally:
        server.stop()
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, python: str, work: Path, server: Any) -> int:
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import warnings

    warnings.filterwarnings("ignore")
    model = prepare_model(work / "model", endpoint)
    sdk, sklearn = runtime_sdk(python), sklearn_stack(python)
    task = read_only_copy(staged_function_code(python, work / "stage"), work / "task")
    layer = read_only_copy(LAYER, work / "opt" / "python")
    sklearn_ro = read_only_copy(sklearn, work / "sklearn")
    before = {p: pyc_count(p) for p in (task, layer)}
    variants = VARIANTS
    if args.without_bytecode:
        bare = [str(read_only_copy(task, work / "task-bare", bytecode=False)),
                str(read_only_copy(LAYER, work / "opt-bare" / "python", bytecode=False))]
        variants = (*VARIANTS[:1], "slimserve, no bytecode", *VARIANTS[1:])
    sink = UdpSink()

    env = lambda_env(work, task)
    env.update({"MODEL_URI": model["model_uri"], "AWS_ENDPOINT_URL_S3": endpoint, "POWERTOOLS_TRACE_DISABLED": "false",
                "AWS_XRAY_DAEMON_ADDRESS": sink.address, "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR"})
    env.pop("_X_AMZN_TRACE_ID", None)  # set per request by the child
    base = {k: model[k] for k in ("bucket", "onnx_key", "joblib_key", "row", "dtype", "event")}
    slim_path, runtime_path = [str(task), str(layer)], [str(sdk)]
    configs: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
        "slimserve, sampled": ({**base, "mode": "slimserve", "sampled": True, "path": slim_path + runtime_path}, env),
        "slimserve, unsampled": ({**base, "mode": "slimserve", "sampled": False, "path": slim_path + runtime_path},
                                 env),
        "slimserve, Tracer off": ({**base, "mode": "slimserve", "sampled": False, "path": slim_path + runtime_path},
                                  {**env, "POWERTOOLS_TRACE_DISABLED": "true"}),
        "scikit-learn": ({**base, "mode": "sklearn", "path": [str(sklearn_ro), *runtime_path]}, env),
        "floor": ({**base, "mode": "floor", "path": [str(layer), *runtime_path]}, env),
    }
    if args.without_bytecode:
        configs["slimserve, no bytecode"] = ({**base, "mode": "slimserve", "sampled": True,
                                              "path": bare + runtime_path}, env)
    if args.profile_imports:
        cold_start(python, configs["slimserve, sampled"][0], env, work, ("-X", "importtime"))
        return 0
    for name in variants:  # one untimed start each: the files come into the page cache, as on a warm host
        cold_start(python, configs[name][0], configs[name][1], work)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name in variants:
            times[name].append(cold_start(python, configs[name][0], configs[name][1], work))
    written = {str(p): pyc_count(p) - n for p, n in before.items() if pyc_count(p) != n}

    warm: dict[str, dict[str, dict[str, float]]] = {}
    if args.warm:
        for name in ("slimserve, sampled", "slimserve, Tracer off"):
            result = work / f"warm-{len(warm)}.json"
            cfg, variant_env = configs[name]
            cold_start(python, {**cfg, "warm": args.warm, "result": str(result)}, variant_env, work)
            warm[name] = json.loads(result.read_text())

    report(python, times, warm, sink.datagrams, written, layer, task, args)
    return 0


def report(python: str, times: dict[str, list[float]], warm: dict[str, dict[str, dict[str, float]]],
           datagrams: int, written: dict[str, int], layer: Path, task: Path, args: argparse.Namespace) -> None:
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                             text=True).stdout.strip()
    floor = statistics.median(times["floor"])

    def paired(a: str, b: str) -> float:  # the median of per-round ratios: a round shares one load
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    print(f"cold start as Lambda pays it: python {version} ({python}), {os.cpu_count()} cores, "
          f"{args.runs} interleaved runs per variant")
    print(f"layer: {pyc_count(layer)} .pyc files read-only; function code: {pyc_count(task)} .pyc files; "
          f"X-Ray segments received by the UDP sink: {datagrams}")
    print(f"\n{'cold start (spawn -> first answer), s':<34}{'median':>8}{'min':>8}{'max':>8}{'floor':>8}"
          f"{'x floor':>9}")
    for name in times:
        t = times[name]
        print(f"{name:<34}{statistics.median(t):>8.3f}{min(t):>8.3f}{max(t):>8.3f}{floor:>8.3f}"
              f"{paired(name, 'floor'):>8.2f}x")
    print("(x floor: the median over rounds of the variant's time over the floor's time in the same round)")
    to_floor, sk_ratio = paired("slimserve, sampled", "floor"), paired("scikit-learn", "slimserve, sampled")
    print(f"\nscikit-learn / slimserve (sampled), paired by round: {sk_ratio:.1f}x")
    if warm:
        print(f"\n{'warm handler, one row (us)':<34}{'p50':>8}{'p99':>8}")
        for name, label in (("slimserve, sampled", "Tracer on"), ("slimserve, Tracer off", "Tracer off")):
            if name not in warm:
                continue
            for sampling, figures in warm[name].items():
                if label == "Tracer off" and sampling == "sampled":
                    continue
                tag = f"{label}, {sampling}" if label == "Tracer on" else label
                print(f"{tag:<34}{figures['p50_us']:>8.0f}{figures['p99_us']:>8.0f}")
    if written:
        print(f"\nWARNING: bytecode was written during the runs: {written}")
    goals = [(f"cold start {to_floor:.2f}x its floor (goal <= 1.5x)", to_floor <= 1.5),
             (f"1/{sk_ratio:.1f} of scikit-learn's (goal <= 1/3)", sk_ratio >= 3)]
    print("goals: " + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in goals))
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    spread = max(max(t) / min(t) for t in times.values())
    print(f"noise: the widest max/min within one variant is {spread:.2f}x (other processes share the cores)")


if __name__ == "__main__":
    sys.exit(main())
