"""The inference function's code asset ships the `functions/` package's .py files, their Python 3.12
bytecode when a python3.12 is found, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_lambda as lambda_
from synth_helpers import REPO_ROOT, Synth

from cdk.constructs.code_asset import find_python312
from cdk.constructs.function import function_code

pytestmark = pytest.mark.slow  # reads the staged asset of a full synth


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _with_bytecode(sources: set[str]) -> set[str]:
    """The sources and, with a python3.12 to compile them, their .pyc (checked-hash: see test_function_code_asset)."""
    if find_python312() is None:
        return sources
    return sources | {str(Path(s).parent / "__pycache__" / f"{Path(s).stem}.cpython-312.pyc") for s in sources}


def _staged_function_dir(synth: Synth) -> Path:
    (fn,) = [f for f in synth.resources("AWS::Lambda::Function").values()
             if f["Properties"]["Handler"] == "functions.inference.handler.lambda_handler"]
    asset_hash = fn["Properties"]["Code"]["S3Key"].removesuffix(".zip")
    staged = synth.outdir / f"asset.{asset_hash}"
    assert staged.is_dir(), f"function asset not staged at {staged}"
    return staged


def test_staged_asset_is_exactly_the_functions_python_files(default_synth: Synth) -> None:
    staged = _files(_staged_function_dir(default_synth))
    in_repo = {f for f in _files(REPO_ROOT / "functions") if f.endswith(".py") and "__pycache__" not in f}
    assert staged == _with_bytecode({f"functions/{f}" for f in in_repo})
    assert "functions/inference/handler.py" in staged  # the handler path the function names


def test_excludes_drop_everything_a_checkout_may_hold(tmp_path: Path) -> None:
    """Same exclude rules, on a tree seeded with the junk a real checkout accumulates."""
    root = tmp_path / "repo"
    wanted = {"functions/__init__.py", "functions/inference/__init__.py", "functions/inference/handler.py"}
    junk = {"functions/inference/__pycache__/handler.cpython-312.pyc", "functions/common/notes.md",
            "functions/.DS_Store", "functions/inference/model.onnx", "tests/unit/test_handler.py",
            ".venv/lib/site.py", "cdk.out/asset.x/app.py", "node_modules/aws-cdk/index.js",
            "layers/build/runtime/python/numpy/__init__.py", "pipeline/cli.py", "cdk/app.py", "setup.py",
            ".git/config", "README.md"}
    for rel in wanted | junk:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")

    app = App(outdir=str(tmp_path / "out"))
    stack = Stack(app, "AssetTest")
    lambda_.Function(stack, "Fn", code=function_code(root), handler="functions.inference.handler.lambda_handler",
                     runtime=lambda_.Runtime.PYTHON_3_12)
    app.synth()
    template = json.loads((tmp_path / "out" / "AssetTest.template.json").read_text())
    (fn,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    staged = tmp_path / "out" / f"asset.{fn['Properties']['Code']['S3Key'].removesuffix('.zip')}"
    assert _files(staged) == _with_bytecode(wanted)
