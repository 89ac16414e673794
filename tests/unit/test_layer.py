"""The runtime Lambda layer: trimming rules on a fake tree (fast), and one real build (slow)."""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("slimserve_layer_build", REPO_ROOT / "layers" / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


layer_build = _load_build_script()


def write_elf(path: Path, needed: Iterable[str] = (), soname: str | None = None, runpath: str | None = None,
              machine: int = 62, payload: bytes = b"") -> Path:
    """A minimal 64-bit little-endian ELF shared object: a .dynstr and a .dynamic section."""
    needed = list(needed)
    strtab, offsets = b"\0", {}
    for name in [*needed, soname, runpath]:
        if name:
            offsets[name] = len(strtab)
            strtab += name.encode() + b"\0"
    dynamic = b"".join(struct.pack("<qQ", 1, offsets[n]) for n in needed)
    if soname:
        dynamic += struct.pack("<qQ", 14, offsets[soname])
    if runpath:
        dynamic += struct.pack("<qQ", 29, offsets[runpath])
    dynamic += struct.pack("<qQ", 0, 0)
    strtab_at = 64
    dynamic_at = strtab_at + len(strtab)
    sections_at = dynamic_at + len(dynamic) + len(payload)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 3, machine, 1, 0, 0, sections_at, 0, 64, 0, 0, 64, 3, 0)
    sections = bytes(64) + struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, strtab_at, len(strtab), 0, 0, 1, 0) \
        + struct.pack("<IIQQQQIIQQ", 0, 6, 0, 0, dynamic_at, len(dynamic), 1, 0, 8, 16)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + strtab + dynamic + payload + sections)
    return path


def touch(root: Path, *names: str, content: str = "x = 1\n") -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


PYBIND = "onnxruntime/capi/onnxruntime_pybind11_state.cpython-312-x86_64-linux-gnu.so"
ORT_LIB = "onnxruntime/capi/libonnxruntime.so.1.31.1"
SYSTEM = ["libdl.so.2", "libstdc++.so.6", "libm.so.6", "libgcc_s.so.1", "libc.so.6", "ld-linux-x86-64.so.2"]


def fake_layer(root: Path, pybind_needed: Iterable[str] = SYSTEM, pybind_payload: bytes = b"") -> Path:
    """A layer's python/ folder shaped like the real one, small."""
    touch(root, "numpy/__init__.py", "numpy/_core/__init__.py", "numpy/testing/__init__.py",
          "numpy/random/__init__.py", "numpy/linalg/__init__.py", "numpy/_core/tests/test_a.py",
          "numpy/tests/test_b.py", "numpy/linalg/tests/test_c.py", "numpy/conftest.py", "numpy/f2py/__init__.py",
          "numpy/_core/include/numpy/ndarraytypes.h", "numpy/_core/lib/libnpymath.a", "numpy/random/lib/libnpyrandom.a",
          "numpy/random/_examples/cython/setup.py", "numpy/_pyinstaller/hook-numpy.py", "numpy/__init__.pxd",
          "numpy/random/c_distributions.pxd", "numpy/__init__.pyi", "numpy/py.typed",
          "numpy-2.4.6.dist-info/METADATA", "numpy-2.4.6.dist-info/RECORD",
          "numpy-2.4.6.dist-info/licenses/LICENSE.txt",
          "onnxruntime/__init__.py", "onnxruntime/LICENSE", "onnxruntime/ThirdPartyNotices.txt",
          "onnxruntime/capi/__init__.py", "onnxruntime/capi/_pybind_state.py", "onnxruntime/tools/convert.py",
          "onnxruntime/transformers/models/bert/x.py", "onnxruntime/quantization/quantize.py",
          "onnxruntime/datasets/mul_1.onnx", "onnxruntime/backend/backend.py",
          "pydantic/__init__.py", "pydantic/__pycache__/main.cpython-311.pyc", "wrapt-stubs/__init__.pyi",
          "bin/f2py", "bin/onnxruntime_test",
          "aws_lambda_powertools/event_handler/openapi/swagger_ui/__init__.py",
          "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui-bundle.min.js",
          "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui.min.css")
    write_elf(root / "numpy/_core/_multiarray_umath.cpython-312-x86_64-linux-gnu.so",
              ["libscipy_openblas64_-ab.so", "libc.so.6"], runpath="$ORIGIN/../../numpy.libs")
    write_elf(root / "numpy.libs/libscipy_openblas64_-ab.so", ["libgfortran-cd.so.5", "libc.so.6"],
              soname="libscipy_openblas64_-ab.so", runpath="$ORIGIN")
    write_elf(root / "numpy.libs/libgfortran-cd.so.5", ["libz.so.1", "libc.so.6"], soname="libgfortran-cd.so.5")
    write_elf(root / "numpy/_core/_multiarray_tests.cpython-312-x86_64-linux-gnu.so", ["libc.so.6"])
    write_elf(root / "numpy/_core/_umath_tests.cpython-312-x86_64-linux-gnu.so", ["libc.so.6"])
    write_elf(root / "numpy/_core/_simd.cpython-312-x86_64-linux-gnu.so", ["libc.so.6"])
    write_elf(root / PYBIND, pybind_needed, runpath="$ORIGIN", payload=pybind_payload)
    write_elf(root / ORT_LIB, SYSTEM, soname="libonnxruntime.so.1", runpath="$ORIGIN")
    write_elf(root / "onnxruntime/capi/libonnxruntime_providers_shared.so", ["libc.so.6"],
              soname="libonnxruntime_providers_shared.so")
    return root


@pytest.fixture
def code_root(tmp_path: Path) -> Path:
    touch(tmp_path / "functions", "inference/handler.py", content="app = APIGatewayRestResolver()\n")
    return tmp_path / "functions"


def test_trim_removes_what_is_never_imported_and_keeps_the_rest(tmp_path: Path, code_root: Path) -> None:
    root = fake_layer(tmp_path / "python")
    result = layer_build.trim(root, code_root=code_root)

    gone = ["numpy/_core/tests", "numpy/tests", "numpy/linalg/tests", "numpy/conftest.py", "numpy/f2py",
            "numpy/_core/include", "numpy/_core/lib", "numpy/random/lib", "numpy/random/_examples",
            "numpy/_pyinstaller", "numpy/__init__.pxd", "numpy/random/c_distributions.pxd", "numpy/__init__.pyi",
            "numpy/_core/_multiarray_tests.cpython-312-x86_64-linux-gnu.so",
            "numpy/_core/_umath_tests.cpython-312-x86_64-linux-gnu.so",
            "numpy/_core/_simd.cpython-312-x86_64-linux-gnu.so",
            "onnxruntime/tools", "onnxruntime/transformers", "onnxruntime/quantization", "onnxruntime/datasets",
            "onnxruntime/backend", ORT_LIB, "pydantic/__pycache__", "wrapt-stubs", "bin",
            "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui-bundle.min.js",
            "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui.min.css"]
    kept = ["numpy/__init__.py", "numpy/testing/__init__.py", "numpy/random/__init__.py", "numpy/linalg/__init__.py",
            "numpy/py.typed", "numpy/_core/_multiarray_umath.cpython-312-x86_64-linux-gnu.so",
            "numpy.libs/libscipy_openblas64_-ab.so", "numpy.libs/libgfortran-cd.so.5",
            "numpy-2.4.6.dist-info/METADATA", "numpy-2.4.6.dist-info/RECORD",
            "numpy-2.4.6.dist-info/licenses/LICENSE.txt", "onnxruntime/LICENSE", "onnxruntime/ThirdPartyNotices.txt",
            PYBIND, "onnxruntime/capi/libonnxruntime_providers_shared.so", "onnxruntime/capi/_pybind_state.py",
            "pydantic/__init__.py", "aws_lambda_powertools/event_handler/openapi/swagger_ui/__init__.py"]
    assert [p for p in gone if (root / p).exists()] == []
    assert [p for p in kept if not (root / p).exists()] == []
    assert not any(root.rglob("__pycache__")) and not any(root.rglob("*.pyi"))
    rules = result.by_rule()
    assert {"bytecode", "console-scripts", "type-stubs", "numpy-tests", "numpy-build-time",
            "onnxruntime-tooling", "powertools-swagger-assets", "unlinked-library"} == set(rules)
    assert result.bytes == sum(r["bytes"] for r in rules.values()) > 0
    evidence = result.evidence["onnxruntime/capi/libonnxruntime.so*"]
    assert evidence["removed"] == [ORT_LIB] and evidence["needed_by_module"][PYBIND] == SYSTEM
    assert layer_build.unresolved_libraries(root, "x86_64") == ([], [])


@pytest.mark.parametrize("how", ["needed", "dlopen-string", "python"])
def test_onnxruntime_library_is_kept_when_anything_may_load_it(tmp_path: Path, code_root: Path, how: str) -> None:
    needed = [*SYSTEM, "libonnxruntime.so.1"] if how == "needed" else SYSTEM
    payload = b"\0libonnxruntime.so.1.31.1\0" if how == "dlopen-string" else b""
    root = fake_layer(tmp_path / "python", pybind_needed=needed, pybind_payload=payload)
    if how == "python":
        touch(root, "onnxruntime/capi/_ld_preload.py", content="ctypes.CDLL('libonnxruntime.so.1')\n")
    result = layer_build.trim(root, code_root=code_root)
    assert (root / ORT_LIB).is_file()
    assert ORT_LIB in result.kept and "unlinked-library" not in result.by_rule()


def test_swagger_assets_are_kept_when_the_function_code_enables_swagger(tmp_path: Path, code_root: Path) -> None:
    (code_root / "inference" / "handler.py").write_text("app.enable_swagger(path='/docs')\n")
    root = fake_layer(tmp_path / "python")
    result = layer_build.trim(root, code_root=code_root)
    assert (root / "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui-bundle.min.js").is_file()
    assert "powertools-swagger-assets" in result.kept


def test_elf_reader(tmp_path: Path) -> None:
    lib = write_elf(tmp_path / "liba.so", ["libc.so.6", "libb.so.2"], soname="liba.so.1", runpath="$ORIGIN:/x",
                    machine=183)
    info = layer_build.elf_info(lib)
    assert info == layer_build.ElfInfo("aarch64", ("libc.so.6", "libb.so.2"), "liba.so.1", ("$ORIGIN", "/x"))
    touch(tmp_path, "not_elf.so")
    assert layer_build.elf_info(tmp_path / "not_elf.so") is None


def test_unresolved_libraries_names_what_neither_the_layer_nor_lambda_provides(tmp_path: Path) -> None:
    write_elf(tmp_path / "pkg/_ext.so", ["libc.so.6", "libz.so.1", "libhelper.so.1", "libmissing.so.3"],
              runpath="$ORIGIN/../pkg.libs")
    write_elf(tmp_path / "pkg.libs/libhelper.so.1", ["libc.so.6"], soname="libhelper.so.1")
    write_elf(tmp_path / "other/_arm.so", ["libc.so.6"], machine=183)
    unresolved, wrong_arch = layer_build.unresolved_libraries(tmp_path, "x86_64")
    assert unresolved == ["pkg/_ext.so needs libmissing.so.3"]
    assert wrong_arch == ["other/_arm.so (aarch64)"]


def test_requirements_must_be_pinned_and_exclude_what_lambda_or_training_provides(tmp_path: Path) -> None:
    pins = layer_build.read_requirements(layer_build.DEFAULT_REQUIREMENTS)
    assert pins["onnxruntime"] == "1.31.1" and pins["aws-lambda-powertools"] == "3.37.0"
    assert pins["numpy"].startswith("2.")
    assert not set(pins) & layer_build.FORBIDDEN_DISTRIBUTIONS
    for bad in ["numpy>=2\n", "scipy==1.14.1\n", "boto3==1.35.0\n", "numpy==2.4.6\nnumpy==2.4.6\n", "# nothing\n"]:
        (tmp_path / "r.txt").write_text(bad)
        with pytest.raises(ValueError):
            layer_build.read_requirements(tmp_path / "r.txt")


def test_output_folder_is_only_cleaned_when_it_holds_a_previous_layer(tmp_path: Path) -> None:
    previous = tmp_path / "runtime"
    touch(previous, "python/numpy/__init__.py")
    layer_build.clean_output(previous)
    assert previous.is_dir() and not any(previous.iterdir())
    touch(tmp_path / "elsewhere", "notes.txt")
    with pytest.raises(ValueError):
        layer_build.clean_output(tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "notes.txt").exists()
    with pytest.raises(ValueError):
        layer_build.clean_output(REPO_ROOT)


def test_python312_finder_rejects_an_interpreter_that_is_not_312(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "python3.12"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho cpython 3 11\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SLIMSERVE_PYTHON312", raising=False)
    assert layer_build.find_python312(str(fake)) != str(fake)


@pytest.mark.slow
def test_real_build_is_small_complete_and_imports(tmp_path: Path,
                                                  record_property: Callable[[str, object], None]) -> None:
    """Really builds the layer (wheels from PyPI), then checks what it holds and the import test."""
    arch = "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"
    out = tmp_path / "runtime"
    status = layer_build.main(["--arch", arch, "--out", str(out)])
    report = json.loads((tmp_path / "runtime-report.json").read_text())
    size = report["size"]
    record_property("layer_unzipped_mib", size["unzipped_mib"])
    record_property("layer_zipped_mib", size["zipped_mib"])
    print(f"layer {arch}: {size['unzipped_mib']} MiB unzipped, {size['zipped_mib']} MiB zipped; "
          + ", ".join(f"{d['name']} {d['mib']}" for d in size["by_distribution"][:5]))
    assert status == 0 and report["problems"] == [], report["problems"]

    assert sorted(p.name for p in out.iterdir()) == ["python"]  # a layer holds python/ only
    layer = out / "python"
    assert size["unzipped_bytes"] < 100 * MIB
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) == size["unzipped_bytes"]
    assert 0 < size["zipped_bytes"] < size["unzipped_bytes"]
    for name in ("sklearn", "scipy", "sympy", "pandas", "onnx", "boto3", "botocore"):
        assert not (layer / name).exists(), name
    assert not any(re.match(r"(scikit_learn|scipy|sympy|boto3|botocore)-", p.name) for p in layer.glob("*.dist-info"))
    assert not any(layer.rglob("__pycache__")) and not any(layer.rglob("*.pyc"))
    assert report["installed"] == layer_build.read_requirements(layer_build.DEFAULT_REQUIREMENTS)
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
        assert layer_build.elf_info(pybind).needed == tuple(re.findall(r"\(NEEDED\).*\[(.+?)\]", printed))

    test = report["import_test"]
    if test["status"] == "skipped":
        pytest.skip(test["reason"])
    failed = {k: v.get("error") for k, v in test.get("checks", {}).items() if not v["ok"]}
    assert test["status"] == "passed", failed or test
    assert test["modules_from"]["elsewhere"] == []
    assert {"numpy", "onnxruntime", "pydantic", "aws_lambda_powertools"} <= set(test["modules_from"]["layer"])
