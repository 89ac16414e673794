"""The Lambda layers really built (wheels from PyPI, trimmed, checked, import-tested with python3.12
where one exists): slow, and the only layer tests that run pip."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT / "layers") not in sys.path:  # the layer build is a package beside its script, not installed
    sys.path.insert(0, str(REPO_ROOT / "layers"))

from slimserve_layers.cli import main  # noqa: E402
from slimserve_layers.elf import elf_info  # noqa: E402
from slimserve_layers.import_test import find_python312  # noqa: E402
from slimserve_layers.recipes import RECIPES  # noqa: E402
from slimserve_layers.requirements import read_requirements  # noqa: E402
from slimserve_layers.size import LAMBDA_UNZIPPED_LIMIT_BYTES, MIB  # noqa: E402

# Without a python3.12 the build cannot compile the layer's bytecode: it must then be asked not to.
NO_BYTECODE = [] if find_python312() else ["--no-bytecode"]
MAGIC_312 = (3531).to_bytes(2, "little") + b"\r\n"
UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, source not checked


def host_arch() -> str:
    return "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"


@pytest.mark.slow
def test_real_build_is_small_complete_and_imports(tmp_path: Path,
                                                  record_property: Callable[[str, object], None]) -> None:
    """Really builds the layer (wheels from PyPI) with the script the Makefile runs, then checks what
    it holds and the import test."""
    arch = host_arch()
    out = tmp_path / "runtime"
    status = subprocess.run([sys.executable, str(REPO_ROOT / "layers" / "build.py"), "--arch", arch, "--out", str(out),
                             *NO_BYTECODE], cwd=tmp_path).returncode
    report = json.loads((tmp_path / "runtime-report.json").read_text())
    size = report["size"]
    record_property("layer_unzipped_mib", size["unzipped_mib"])
    record_property("layer_zipped_mib", size["zipped_mib"])
    print(f"layer {arch}: {size['unzipped_mib']} MiB unzipped, {size['zipped_mib']} MiB zipped; "
          + ", ".join(f"{d['name']} {d['mib']}" for d in size["by_distribution"][:5]))
    assert status == 0 and report["problems"] == [], report["problems"]

    assert sorted(p.name for p in out.iterdir()) == ["python"]  # a layer holds python/ only
    layer = out / "python"
    assert size["unzipped_bytes"] <= 95 * MIB
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) == size["unzipped_bytes"]
    assert 0 < size["zipped_bytes"] < size["unzipped_bytes"]
    for name in ("sklearn", "scipy", "sympy", "pandas", "onnx", "boto3", "botocore"):
        assert not (layer / name).exists(), name
    assert not any(re.match(r"(scikit_learn|scipy|sympy|boto3|botocore)-", p.name) for p in layer.glob("*.dist-info"))
    assert_bytecode(layer, report)
    assert report["installed"] == read_requirements(RECIPES["runtime"].requirements)
    assert list(layer.glob("onnxruntime/capi/onnxruntime_pybind11_state.cpython-312-*.so"))
    assert list(layer.glob("numpy/_core/_multiarray_umath.cpython-312-*.so"))
    assert list(layer.glob("numpy.libs/*.so*"))
    assert list(layer.glob("*.dist-info/licenses/*")) or list(layer.glob("*.dist-info/LICENSE*"))
    for lib in layer.glob("onnxruntime/capi/libonnxruntime.so*"):  # kept only with a stated reason
        assert lib.relative_to(layer).as_posix() in report["trim"]["kept"]
    assert report["shared_libraries"]["unresolved"] == []

    if shutil.which("readelf"):  # the pure-Python ELF reader agrees with binutils
        pybind = next(layer.glob("onnxruntime/capi/onnxruntime_pybind11_state*.so"))
        printed = subprocess.run(["readelf", "-d", str(pybind)], capture_output=True, text=True, check=True).stdout
        assert elf_info(pybind).needed == tuple(re.findall(r"\(NEEDED\).*\[(.+?)\]", printed))

    test = report["import_test"]
    if test["status"] == "skipped":
        pytest.skip(test["reason"])
    failed = {k: v.get("error") for k, v in test.get("checks", {}).items() if not v["ok"]}
    assert test["status"] == "passed", failed or test
    assert test["modules_from"]["elsewhere"] == []
    assert {"numpy", "onnxruntime", "pydantic", "aws_lambda_powertools"} <= set(test["modules_from"]["layer"])


@pytest.mark.slow
def test_real_parquet_build_is_trimmed_fits_beside_the_runtime_layer_and_imports(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    """Really builds the runtime layer (no import test) and the parquet layer over it (with one)."""
    arch = host_arch()
    runtime, out = tmp_path / "runtime", tmp_path / "parquet"
    assert main(["--arch", arch, "--out", str(runtime), "--skip-import-test", *NO_BYTECODE]) == 0
    status = main(["--recipe", "parquet", "--arch", arch, "--out", str(out),
                               "--runtime-layer", str(runtime), *NO_BYTECODE])
    report = json.loads((tmp_path / "parquet-report.json").read_text())
    size, trim = report["size"], report["trim"]
    record_property("parquet_before_trim_mib", trim["before_mib"])
    record_property("parquet_unzipped_mib", size["unzipped_mib"])
    record_property("combined_mib", size["combined"]["total_mib"])
    print(f"parquet layer {arch}: {trim['before_mib']} MiB installed, {size['unzipped_mib']} MiB trimmed, "
          f"{size['zipped_mib']} MiB zipped; with runtime + code {size['combined']['total_mib']} MiB")
    assert status == 0 and report["problems"] == [], report["problems"]

    assert sorted(p.name for p in out.iterdir()) == ["python"]
    layer = out / "python"
    assert report["installed"] == {"pyarrow": importlib.metadata.version("pyarrow")}
    assert sorted(p.name for p in layer.iterdir()) == ["pyarrow", f"pyarrow-{report['installed']['pyarrow']}.dist-info"]
    assert size["unzipped_bytes"] < RECIPES["parquet"].max_mib * MIB
    assert size["unzipped_bytes"] < trim["before_bytes"] - 50 * MIB  # Flight and S3 alone are ~47 MiB
    combined = size["combined"]
    assert combined["counts_layer_below"] and combined["parts_bytes"]["runtime"] > 50 * MIB
    assert combined["total_bytes"] < LAMBDA_UNZIPPED_LIMIT_BYTES
    names = [p.relative_to(layer).as_posix() for p in layer.rglob("*")]
    for pattern in (r"flight", r"pyarrow/_?substrait\.", r"_s3fs|libarrow_s3", r"(^|/)_?orc", r"/include(s)?(/|$)",
                    r"/src(/|$)", r"/tests(/|$)", r"\.(pxd|pyx|pxi|h|cc|pyi)$", r"^numpy"):
        assert not [n for n in names if re.search(pattern, n)], pattern
    assert_bytecode(layer, report)
    libs = sorted(p.name for p in layer.glob("pyarrow/lib*.so*"))
    assert [n for n in libs if n.startswith("libarrow_python.")] == ["libarrow_python.so.2600"]
    for kept in ("libarrow.so.2600", "libparquet.so.2600", "libarrow_compute.so.2600", "libarrow_dataset.so.2600",
                 "libarrow_acero.so.2600", "libarrow_substrait.so.2600"):
        assert kept in libs, kept
    assert report["shared_libraries"]["unresolved"] == [] and report["shared_libraries"]["wrong_architecture"] == []
    if shutil.which("readelf"):
        lib = next(layer.glob("pyarrow/lib.cpython-312-*.so"))
        printed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
        assert elf_info(lib).needed == tuple(re.findall(r"\(NEEDED\).*\[(.+?)\]", printed))

    test = report["import_test"]
    if test["status"] == "skipped":
        assert find_python312() is None, test["reason"]  # skipped only without python3.12
        pytest.skip(test["reason"])
    failed = {k: v.get("error") for k, v in test.get("checks", {}).items() if not v["ok"]}
    assert test["status"] == "passed", failed or test
    assert test["modules_from"]["elsewhere"] == []
    assert "pyarrow" in test["modules_from"]["layer"] and "numpy" in test["modules_from"]["runtime_layer"]
    loaded = test["loaded_libraries"]["layer"]
    assert "pyarrow/libparquet.so.2600" in loaded
    assert not [n for n in loaded if "flight" in n or "s3" in n]


def assert_bytecode(layer: Path, report: dict[str, object]) -> None:
    """Every module has bytecode by python3.12, unchecked-hash (the layer is immutable), and nothing
    else was compiled, by the build's interpreter or the import test. Without python3.12: none."""
    pycs = list(layer.rglob("*.pyc"))
    if NO_BYTECODE:
        assert pycs == [] and not any(layer.rglob("__pycache__"))
        return
    modules = list(layer.rglob("*.py"))
    assert all((m.parent / "__pycache__" / f"{m.stem}.cpython-312.pyc").is_file() for m in modules)
    assert len(pycs) == len(modules) and report["bytecode"]["files"] == len(modules)  # type: ignore[index]
    for pyc in pycs:
        header = pyc.read_bytes()[:8]
        assert header[:4] == MAGIC_312 and int.from_bytes(header[4:], "little") == UNCHECKED_HASH, pyc
