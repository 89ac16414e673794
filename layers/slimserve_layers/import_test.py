"""The import test: a fresh python3.12 that sees only what Lambda would (function code, the layers,
the stdlib, stand-ins for the runtime's SDK) runs ``import_checks/<recipe>.py`` and prints its verdict."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdk.constructs.code_asset import find_python312

from .recipes import ARCHES, MUST_NOT_IMPORT, REPO_ROOT

__all__ = ["find_python312", "parquet_import_test", "runtime_import_test"]

CHECKS_DIR = Path(__file__).resolve().parent / "import_checks"


# Stand-ins for the AWS SDK that the Lambda python3.12 runtime puts on sys.path after the layers
# (aws-xray-sdk imports botocore; bundle.py imports boto3 for s3:// URIs). Pure Python, so the
# build interpreter's copies serve; they are linked into a temporary folder one by one so that
# nothing else from the build's site-packages becomes visible.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "dateutil", "six", "urllib3", "jmespath")


def runtime_standin(folder: Path) -> list[str]:
    linked = []
    for name in RUNTIME_PROVIDED:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        source = origin.parent if spec.submodule_search_locations else origin
        (folder / source.name).symlink_to(source, target_is_directory=source.is_dir())
        linked.append(name)
    return linked


def write_test_model(path: Path) -> dict[str, Any]:
    """A 2-node model, Add then ai.onnx.ml LinearRegressor: core and ML-domain operators, as in
    exported scikit-learn pipelines. Returns what the subprocess needs to check the result."""
    import onnx
    from onnx import TensorProto, helper

    coefficients, intercept = [0.5, -1.0, 2.0], 0.25
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"]),
         helper.make_node("LinearRegressor", ["s"], ["y"], domain="ai.onnx.ml",
                          coefficients=coefficients, intercepts=[intercept])],
        "slimserve_layer_check",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                              producer_name="slimserve-layer-build")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"path": str(path), "coefficients": coefficients, "intercept": intercept}


def _test_interpreter(arch: str, explicit_python: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """The python3.12 to run an import test with, or why the test is skipped."""
    machine = ARCHES[arch][0]
    host = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    if sys.platform != "linux" or host != machine:
        return None, {"status": "skipped", "reason": f"SKIPPED import test: cross-architecture build "
                                                     f"({arch} layer on {sys.platform}/{host}); it cannot run here"}
    python = find_python312(explicit_python)
    if python is None:
        return None, {"status": "skipped", "reason": "SKIPPED import test: no python3.12 interpreter "
                                                     "(put one on PATH, in ~/.pyenv, or pass --python)"}
    return python, None


def lambda_task(work: Path) -> tuple[Path, Path, list[str]]:
    """/var/task with the function code alone (a link to functions/, not the whole repository) and
    the runtime-provided SDK stand-in folder."""
    task, runtime = work / "task", work / "runtime"
    for folder in (task, runtime):
        folder.mkdir()
    (task / "functions").symlink_to(REPO_ROOT / "functions", target_is_directory=True)
    return task, runtime, runtime_standin(runtime)


def lambda_env(work: Path, task: Path) -> dict[str, str]:
    """The environment a Lambda function sees (fake credentials, no model bundle), nothing more."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(work), "TZ": "UTC",
        # what Lambda sets; LAMBDA_TASK_ROOT makes Powertools Tracer behave as in Lambda (enabled, patching)
        "LAMBDA_TASK_ROOT": str(task), "AWS_LAMBDA_FUNCTION_NAME": "slimserve-layer-check",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR", "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
        "POWERTOOLS_METRICS_NAMESPACE": "SlimserveLayerCheck", "POWERTOOLS_LOG_LEVEL": "WARNING",
        # the handler must fail closed on a bundle that is not there
        "MODEL_URI": str(work / "no-such-model"),
    }


def run_checks(python: str, recipe: str, cfg: dict[str, Any], env: dict[str, str], work: Path) -> dict[str, Any]:
    """Run ``import_checks/<recipe>.py`` with ``python`` and read back its verdict line.

    ``cfg`` names the folders in Lambda's order: ``task`` (function code), ``below`` (layers this
    one is stacked on), ``layer``, ``runtime`` (the SDK stand-ins), and what the checks need."""
    # -E: ignore PYTHON* variables; -s, -S: no user or system site-packages (the checks set sys.path
    # explicitly); -B: write no __pycache__ into the layer or the checks folder.
    command = [python, "-B", "-s", "-E", "-S", str(CHECKS_DIR / f"{recipe}.py"), json.dumps(cfg)]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env, timeout=300)
    elapsed = time.perf_counter() - started
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("SLIMSERVE_IMPORT_TEST ")), None)
    if line is None:
        return {"status": "failed", "python": python, "returncode": proc.returncode,
                "reason": "the test interpreter printed no result", "stdout": proc.stdout[-4000:],
                "stderr": proc.stderr[-4000:]}
    detail = json.loads(line.split(" ", 1)[1])
    status = "passed" if detail.pop("ok") and proc.returncode == 0 else "failed"
    return {"status": status, "python": python, "seconds": round(elapsed, 2),
            **detail, **({"stderr": proc.stderr[-4000:]} if status == "failed" else {})}


def runtime_import_test(layer_python: Path, arch: str, explicit_python: str | None, work: Path) -> dict[str, Any]:
    """The runtime layer as the inference function sees it: the stack imports, a tiny ONNX model
    runs, and functions.inference.handler answers without a 500 though its model is missing."""
    python, skipped = _test_interpreter(arch, explicit_python)
    if python is None:
        return skipped or {}
    task, runtime, linked = lambda_task(work)
    model_dir = work / "model"
    model_dir.mkdir()
    try:
        model = write_test_model(model_dir / "tiny.onnx")
    except ImportError:
        model = None
    cfg = {"task": str(task), "layer": str(layer_python), "runtime": str(runtime), "model": model,
           "must_not_import": list(MUST_NOT_IMPORT)}
    return {**run_checks(python, "runtime", cfg, lambda_env(work, task), work),
            "runtime_standins": linked}


def parquet_import_test(layer_python: Path, runtime_python: Path | None, arch: str, explicit_python: str | None,
                        work: Path, why_no_runtime: str | None = None,
                        trimmed_modules: Sequence[str] = ()) -> dict[str, Any]:
    """The parquet layer over the runtime layer, as the batch functions see them: pyarrow writes
    and reads Parquet (every codec), the trimmed modules are gone, and the repository's
    functions.common.tabular.ParquetReader and batch scoring.OutputWriter read and write Parquet."""
    python, skipped = _test_interpreter(arch, explicit_python)
    if python is None:
        return skipped or {}
    if runtime_python is None:
        return {"status": "skipped", "reason": f"SKIPPED import test: {why_no_runtime or 'no runtime layer'}"}
    task, runtime, linked = lambda_task(work)
    files = work / "files"
    files.mkdir()
    cfg = {"task": str(task), "layer": str(layer_python), "runtime": str(runtime),
           "below": {"runtime_layer": str(runtime_python)}, "work": str(files),
           "must_not_import": list(MUST_NOT_IMPORT), "trimmed_modules": list(trimmed_modules)}
    return {**run_checks(python, "parquet", cfg, lambda_env(work, task), work),
            "runtime_standins": linked}


