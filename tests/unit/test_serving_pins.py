"""One set of versions for serving code: the Lambda layers' pinned lists (layers/*/requirements.txt)
are the source; the venv the tests run in, pyproject's dependencies and the SageMaker jobs'
requirements must say the same, or the tests would pass on another onnxruntime than Lambda runs."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

from pipeline.training.sagemaker_jobs import JOB_REQUIREMENTS

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT / "layers") not in sys.path:  # the layer build is a package beside its script, not installed
    sys.path.insert(0, str(REPO_ROOT / "layers"))

from slimserve_layers.recipes import layer_pins  # noqa: E402
from slimserve_layers.requirements import canonical  # noqa: E402

LAYER_PINS = layer_pins()
SERVING = {"onnxruntime", "numpy", "pydantic", "pydantic-core", "aws-lambda-powertools", "pyarrow"}
REINSTALL = "run `make test` (or `make .venv/.installed`) to reinstall the venv with the layers' versions"


def specifiers(requirements: list[str]) -> dict[str, str]:
    """Canonical name -> version specifier (``==2.4.6``, ``>=2.0``) of PEP 508 lines, extras dropped."""
    found = {}
    for line in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;#]*?)\s*(#.*)?", line)
        assert match, f"cannot read the requirement {line!r}"
        found[canonical(match.group(1))] = match.group(3).replace(" ", "")
    return found


def mismatches(pinned: dict[str, str], layer: dict[str, str]) -> dict[str, str]:
    """Each package both name whose specifier is not exactly ``==<the layer's version>``."""
    return {name: spec for name, spec in pinned.items() if name in layer and spec != f"=={layer[name]}"}


def test_the_layers_pin_every_serving_package() -> None:
    assert set(LAYER_PINS) >= SERVING


@pytest.mark.parametrize("name", sorted(LAYER_PINS))
def test_the_venv_runs_the_layers_version(name: str) -> None:
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{name} is not installed in the venv; {REINSTALL}")
    assert installed == LAYER_PINS[name], f"{name} {installed} in the venv, {LAYER_PINS[name]} on Lambda; {REINSTALL}"


def test_pyproject_pins_the_serving_packages_at_the_layers_versions() -> None:
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = specifiers(dependencies)
    assert mismatches(pinned, LAYER_PINS) == {}
    assert {"onnxruntime", "numpy", "pydantic", "aws-lambda-powertools", "pyarrow"} <= set(pinned)


def test_the_sagemaker_jobs_run_the_layers_versions() -> None:
    """The export job measures ONNX parity and writes the manifest: with Lambda's onnxruntime,
    numpy and pydantic, so the parity figure holds for what serves."""
    pinned = specifiers(JOB_REQUIREMENTS)
    assert mismatches(pinned, LAYER_PINS) == {}
    assert {"onnxruntime", "numpy", "pydantic"} <= set(pinned)


def test_a_range_or_another_version_is_a_mismatch() -> None:
    layer = {"onnxruntime": "1.31.1", "numpy": "2.4.6"}
    pinned = specifiers(["onnxruntime>=1.20", "numpy == 2.4.6", "aws-lambda-powertools[tracer]==3.37.0  # note",
                         "pyarrow==26.0.1"])
    assert pinned["aws-lambda-powertools"] == "==3.37.0"
    assert mismatches(pinned, layer) == {"onnxruntime": ">=1.20"}
    assert mismatches(specifiers(["numpy==2.4.5"]), layer) == {"numpy": "==2.4.5"}
