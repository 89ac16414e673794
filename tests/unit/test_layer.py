"""The runtime Lambda layer: trimming rules on a fake tree (fast), and one real build (slow)."""

from __future__ import annotations

import importlib.metadata
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


# --------------------------------------------------------------------------------------------
# The parquet layer (pyarrow), stacked on the runtime layer
# --------------------------------------------------------------------------------------------

PA = "pyarrow"
EXT = ".cpython-312-x86_64-linux-gnu.so"
# What every pyarrow 26 extension module and libarrow_python list in DT_NEEDED (readelf -d).
ARROW_CORE = ["libarrow_substrait.so.2600", "libarrow_dataset.so.2600", "libparquet.so.2600", "libarrow_acero.so.2600",
              "libarrow_compute.so.2600", "libarrow.so.2600", "libstdc++.so.6", "libc.so.6"]
PYTHON_NEEDED = ["libarrow_python.so.2600", *ARROW_CORE]


def fake_pyarrow(root: Path, python_payload: bytes = b"") -> Path:
    """A parquet layer's python/ folder shaped like pyarrow 26.0.1's wheel, small."""
    touch(root, f"{PA}/__init__.py", f"{PA}/fs.py", f"{PA}/dataset.py", f"{PA}/compute.py",
          f"{PA}/parquet/__init__.py", f"{PA}/parquet/core.py", f"{PA}/vendored/docscrape.py", f"{PA}/flight.py",
          f"{PA}/substrait.py", f"{PA}/orc.py",
          f"{PA}/conftest.py", f"{PA}/tests/test_parquet.py", f"{PA}/tests/data/orc/a.orc",
          f"{PA}/include/arrow/api.h", f"{PA}/includes/libarrow.pxd", f"{PA}/src/arrow/python/common.cc",
          f"{PA}/src/arrow/python/common.h", f"{PA}/lib.pyx", f"{PA}/lib.pxd", f"{PA}/array.pxi", f"{PA}/__init__.pxd",
          f"{PA}/_flight.pyx", f"{PA}/gandiva.pyx", f"{PA}/__init__.pyi", f"{PA}/py.typed",
          "pyarrow-26.0.1.dist-info/METADATA", "pyarrow-26.0.1.dist-info/RECORD",
          "pyarrow-26.0.1.dist-info/licenses/LICENSE.txt")
    for module in ("lib", "_compute", "_fs", "_parquet", "_dataset", "_acero", "_csv", "_parquet_encryption"):
        extra = ["libarrow_python_parquet_encryption.so.2600"] if module == "_parquet_encryption" else []
        write_elf(root / f"{PA}/{module}{EXT}", [*extra, *PYTHON_NEEDED], runpath="$ORIGIN")
    write_elf(root / f"{PA}/_flight{EXT}",
              ["libarrow_python_flight.so.2600", *PYTHON_NEEDED, "libarrow_flight.so.2600"], runpath="$ORIGIN")
    write_elf(root / f"{PA}/_s3fs{EXT}", [*PYTHON_NEEDED, "libarrow_s3.so.2600"], runpath="$ORIGIN")
    for module in ("_gcsfs", "_azurefs", "_hdfs", "_orc", "_dataset_orc", "_substrait", "_pyarrow_cpp_tests"):
        write_elf(root / f"{PA}/{module}{EXT}", PYTHON_NEEDED, runpath="$ORIGIN")
    libs = {"libarrow.so.2600": [], "libarrow_compute.so.2600": ["libarrow.so.2600"],
            "libparquet.so.2600": ["libarrow.so.2600"], "libarrow_acero.so.2600": ["libarrow_compute.so.2600"],
            "libarrow_dataset.so.2600": ["libparquet.so.2600", "libarrow_acero.so.2600"],
            "libarrow_substrait.so.2600": ["libarrow_dataset.so.2600"], "libarrow_flight.so.2600": ["libarrow.so.2600"],
            "libarrow_s3.so.2600": ["libarrow.so.2600"]}
    for name, needed in libs.items():
        write_elf(root / f"{PA}/{name}", [*needed, "libstdc++.so.6", "libc.so.6"], soname=name, runpath="$ORIGIN")
    # A wheel holds no symlinks: three identical files per versioned library.
    for suffix in ("", ".2600", ".2600.1.0"):
        write_elf(root / f"{PA}/libarrow_python.so{suffix}", ARROW_CORE, soname="libarrow_python.so.2600",
                  runpath="$ORIGIN", payload=python_payload)
        write_elf(root / f"{PA}/libarrow_python_flight.so{suffix}",
                  ["libarrow_python.so.2600", "libarrow_flight.so.2600", *ARROW_CORE],
                  soname="libarrow_python_flight.so.2600", runpath="$ORIGIN")
        write_elf(root / f"{PA}/libarrow_python_parquet_encryption.so{suffix}", PYTHON_NEEDED,
                  soname="libarrow_python_parquet_encryption.so.2600", runpath="$ORIGIN")
    return root


def parquet_trim(root: Path, code_root: Path) -> object:
    return layer_build.trim(root, rules=layer_build.PARQUET_TRIM_RULES,
                            conditional=layer_build.CONDITIONAL_PARQUET_LIBRARIES, code_root=code_root,
                            duplicates=layer_build.DUPLICATE_PARQUET_LIBRARIES)


@pytest.fixture
def batch_code(tmp_path: Path) -> Path:
    touch(tmp_path / "functions", "batch/formats.py", content="import pyarrow.parquet as pq\npq.ParquetFile(path)\n")
    return tmp_path / "functions"


def test_parquet_trim_keeps_what_pyarrow_parquet_loads_and_removes_the_rest(tmp_path: Path, batch_code: Path) -> None:
    root = fake_pyarrow(tmp_path / "python")
    result = parquet_trim(root, batch_code)

    gone = [f"{PA}/{p}" for p in (
        "flight.py", f"_flight{EXT}", "libarrow_flight.so.2600", "libarrow_python_flight.so",
        "libarrow_python_flight.so.2600", "libarrow_python_flight.so.2600.1.0", "substrait.py", f"_substrait{EXT}",
        "orc.py", f"_orc{EXT}", f"_dataset_orc{EXT}", f"_s3fs{EXT}", f"_gcsfs{EXT}", f"_azurefs{EXT}", f"_hdfs{EXT}",
        "libarrow_s3.so.2600", "tests", "conftest.py", f"_pyarrow_cpp_tests{EXT}", "include", "includes", "src",
        "lib.pyx", "lib.pxd", "array.pxi", "__init__.pxd", "_flight.pyx", "gandiva.pyx", "__init__.pyi",
        "libarrow_python.so", "libarrow_python.so.2600.1.0", "libarrow_python_parquet_encryption.so",
        "libarrow_python_parquet_encryption.so.2600.1.0")]
    kept = [f"{PA}/{p}" for p in (
        "__init__.py", "fs.py", "dataset.py", "compute.py", "parquet/__init__.py", "parquet/core.py",
        "vendored/docscrape.py", "py.typed", f"lib{EXT}", f"_compute{EXT}", f"_fs{EXT}", f"_parquet{EXT}",
        f"_dataset{EXT}", f"_acero{EXT}", f"_csv{EXT}", f"_parquet_encryption{EXT}", "libarrow.so.2600",
        "libarrow_compute.so.2600", "libparquet.so.2600", "libarrow_acero.so.2600", "libarrow_dataset.so.2600",
        "libarrow_substrait.so.2600", "libarrow_python.so.2600", "libarrow_python_parquet_encryption.so.2600")]
    kept += ["pyarrow-26.0.1.dist-info/METADATA", "pyarrow-26.0.1.dist-info/licenses/LICENSE.txt"]
    assert [p for p in gone if (root / p).exists()] == []
    assert [p for p in kept if not (root / p).exists()] == []
    assert {"type-stubs", "pyarrow-tests", "pyarrow-build-time", "pyarrow-flight", "pyarrow-substrait-module",
            "pyarrow-orc", "pyarrow-remote-filesystems", "unlinked-library",
            "duplicate-library"} == set(result.by_rule())
    # libarrow_python lists these in DT_NEEDED, so every build verifies and reports why they stay
    for lib in ("libarrow_substrait.so.2600", "libarrow_acero.so.2600", "libarrow_dataset.so.2600"):
        assert result.kept[f"{PA}/{lib}"].startswith("DT_NEEDED of ")
        needed_by = result.evidence[f"{PA}/{lib.split('.')[0]}.so*"]["needed_by"][f"{PA}/{lib}"]
        assert f"{PA}/libarrow_python.so.2600" in needed_by and f"{PA}/lib{EXT}" in needed_by
    groups = result.evidence[f"duplicates:{PA}/lib*.so*"]["groups"]
    assert {g["copies"][1]: g["needed_as"] for g in groups} == {
        f"{PA}/libarrow_python.so.2600": {"libarrow_python.so.2600": 8},
        f"{PA}/libarrow_python_parquet_encryption.so.2600": {"libarrow_python_parquet_encryption.so.2600": 1}}
    assert layer_build.unresolved_libraries(root, "x86_64") == ([], [])
    assert layer_build.removed_modules(result) == sorted(
        f"{PA}.{m}" for m in ("flight", "_flight", "substrait", "_substrait", "orc", "_orc", "_dataset_orc", "_s3fs",
                              "_gcsfs", "_azurefs", "_hdfs", "conftest", "_pyarrow_cpp_tests"))


@pytest.mark.parametrize("how", ["dlopen-string", "python", "not-needed"])
def test_duplicate_library_copies_stay_when_anything_may_load_them(tmp_path: Path, batch_code: Path,
                                                                    how: str) -> None:
    root = fake_pyarrow(tmp_path / "python")
    if how == "dlopen-string":  # a whole-string mention in another shared object
        write_elf(root / f"{PA}/_loader{EXT}", ["libc.so.6"], payload=b"\0cannot load libarrow_python.so: %s\0")
    elif how == "python":
        touch(root, f"{PA}/_preload.py", content="ctypes.CDLL(os.path.join(here, 'libarrow_python.so'))\n")
    else:  # nobody lists any copy of the encryption library in DT_NEEDED
        (root / f"{PA}/_parquet_encryption{EXT}").unlink()
    result = parquet_trim(root, batch_code)
    if how == "not-needed":
        for suffix in ("", ".2600", ".2600.1.0"):
            lib = f"{PA}/libarrow_python_parquet_encryption.so{suffix}"
            assert (root / lib).is_file() and result.kept[lib] == "no copy of it is named in any DT_NEEDED entry"
    else:
        assert (root / f"{PA}/libarrow_python.so").is_file()
        assert "libarrow_python.so" in result.kept[f"{PA}/libarrow_python.so"]
        assert not (root / f"{PA}/libarrow_python.so.2600.1.0").exists()  # not named: still removed


def test_a_longer_name_is_not_a_mention(tmp_path: Path, batch_code: Path) -> None:
    # Every extension module holds "libarrow_python.so.2600": that must not keep "libarrow_python.so".
    root = fake_pyarrow(tmp_path / "python", python_payload=b"\0libarrow_python.so.2600.1.0-x\0")
    parquet_trim(root, batch_code)
    assert not (root / f"{PA}/libarrow_python.so").exists()
    assert layer_build.names_whole(b"\0libfoo.so\0", "libfoo.so")
    assert layer_build.names_whole(b"/opt/python/libfoo.so\0", "libfoo.so")
    assert layer_build.names_whole(b"failed to load libfoo.so: %s", "libfoo.so")
    assert not layer_build.names_whole(b"\0libfoo.so.26\0", "libfoo.so")
    assert not layer_build.names_whole(b"\0xlibfoo.so\0", "libfoo.so")


def test_remote_filesystems_stay_when_the_function_code_uses_pyarrow_fs(tmp_path: Path, batch_code: Path) -> None:
    (batch_code / "batch" / "formats.py").write_text("from pyarrow import fs\nfs.S3FileSystem()  # pyarrow.fs\n")
    root = fake_pyarrow(tmp_path / "python")
    result = parquet_trim(root, batch_code)
    assert "pyarrow-remote-filesystems" in result.kept
    assert (root / f"{PA}/_s3fs{EXT}").is_file() and (root / f"{PA}/libarrow_s3.so.2600").is_file()
    assert result.kept[f"{PA}/libarrow_s3.so.2600"] == f"DT_NEEDED of {PA}/_s3fs{EXT}"
    assert not (root / f"{PA}/libarrow_flight.so.2600").exists()


def test_parquet_requirements_pin_the_venv_pyarrow_and_refuse_what_the_runtime_layer_holds(tmp_path: Path) -> None:
    recipe = layer_build.RECIPES["parquet"]
    forbidden = layer_build.forbidden_distributions(recipe)
    pins = layer_build.read_requirements(recipe.requirements, forbidden, "parquet")
    assert pins == {"pyarrow": importlib.metadata.version("pyarrow")}
    assert {"numpy", "onnxruntime", "pydantic", "pandas", "boto3"} <= forbidden
    for bad, message in [("numpy==2.4.6\n", "layer below it already holds it"), ("pandas==2.2.3\n", "parquet layer"),
                         ("pyarrow>=26\n", "not pinned")]:
        (tmp_path / "r.txt").write_text(bad)
        with pytest.raises(ValueError, match=message):
            layer_build.read_requirements(tmp_path / "r.txt", forbidden, "parquet")
    assert layer_build.RECIPES["runtime"].out == layer_build.DEFAULT_OUT and recipe.stacked_on == "runtime"
    assert recipe.out == REPO_ROOT / "layers" / "build" / "parquet"


def _fake_pip(tree: Callable[[Path], object]) -> Callable[..., None]:
    """pip_install's stand-in: lays out ``tree`` and the pip report the build reads; no network."""
    def install(requirements: Path, target: Path, platforms: Iterable[str], report: Path) -> None:
        tree(target)
        meta = target / "pyarrow-26.0.1.dist-info" / "METADATA"
        meta.write_text(f"Metadata-Version: 2.1\nName: pyarrow\nVersion: {importlib.metadata.version('pyarrow')}\n\n")
        report.write_text(json.dumps({"install": [{
            "metadata": {"name": "pyarrow", "version": importlib.metadata.version("pyarrow")},
            "download_info": {"url": "https://example.invalid/pyarrow.whl",
                              "archive_info": {"hashes": {"sha256": "0" * 64}}}}]}))
    return install


def _fake_runtime_layer(folder: Path, size: int, arch: str = "x86_64", extra: str | None = None) -> Path:
    """A built runtime layer of ``size`` apparent bytes (one sparse file) with its report beside it."""
    (folder / "python" / "numpy").mkdir(parents=True)
    with (folder / "python" / "numpy" / "big.bin").open("wb") as f:
        f.truncate(size)
    if extra:
        (folder / "python" / extra).mkdir()
    (folder.parent / f"{folder.name}-report.json").write_text(json.dumps({"arch": arch, "ok": True}))
    return folder


@pytest.mark.parametrize(("runtime_mib", "extra", "arch", "problem", "warning"), [
    (84, None, "x86_64", None, None),
    (252, None, "x86_64", "over Lambda's 262144000 bytes", None),
    (84, "pyarrow", "x86_64", "top-level names in both the runtime layer and this one: ['pyarrow']", None),
    (84, None, "arm64", None, "built for arm64, not x86_64: the combined size is approximate"),
    (None, None, "x86_64", None, "the runtime layer is not built at"),
])
def test_parquet_build_checks_the_combined_size_and_the_layer_below(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime_mib: int | None, extra: str | None, arch: str,
        problem: str | None, warning: str | None) -> None:
    monkeypatch.setattr(layer_build, "pip_install", _fake_pip(fake_pyarrow))
    runtime = tmp_path / "runtime"
    if runtime_mib is not None:
        _fake_runtime_layer(runtime, runtime_mib * MIB, arch, extra)
    report = layer_build.build(arch="x86_64", out=tmp_path / "parquet", recipe="parquet", runtime_layer=runtime,
                               run_import_test=False)
    combined = report["size"]["combined"]
    assert combined["limit_bytes"] == 262_144_000
    assert combined["total_bytes"] == sum(combined["parts_bytes"].values())
    assert combined["parts_bytes"]["parquet"] == report["size"]["unzipped_bytes"]
    assert combined["parts_bytes"]["function_code"] == layer_build.function_code_bytes() > 0
    assert combined["counts_layer_below"] == (runtime_mib is not None)
    if runtime_mib is not None:
        assert combined["parts_bytes"]["runtime"] == runtime_mib * MIB
    assert (tmp_path / "parquet-report.json").is_file() and report["recipe"] == "parquet"
    assert not (tmp_path / "parquet" / "python" / PA / "libarrow_flight.so.2600").exists()
    if problem:
        assert not report["ok"] and any(problem in p for p in report["problems"]), report["problems"]
    else:
        assert report["ok"], report["problems"]
    if warning:
        assert any(warning in w for w in report["warnings"]), report["warnings"]
    else:
        assert report["warnings"] == []


@pytest.mark.slow
def test_real_parquet_build_is_trimmed_fits_beside_the_runtime_layer_and_imports(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    """Really builds the runtime layer (no import test) and the parquet layer over it (with one)."""
    arch = "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"
    runtime, out = tmp_path / "runtime", tmp_path / "parquet"
    assert layer_build.main(["--arch", arch, "--out", str(runtime), "--skip-import-test"]) == 0
    status = layer_build.main(["--recipe", "parquet", "--arch", arch, "--out", str(out),
                               "--runtime-layer", str(runtime)])
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
    assert size["unzipped_bytes"] < layer_build.PARQUET_MAX_MIB * MIB
    assert size["unzipped_bytes"] < trim["before_bytes"] - 50 * MIB  # Flight and S3 alone are ~47 MiB
    combined = size["combined"]
    assert combined["counts_layer_below"] and combined["parts_bytes"]["runtime"] > 50 * MIB
    assert combined["total_bytes"] < layer_build.LAMBDA_UNZIPPED_LIMIT_BYTES
    names = [p.relative_to(layer).as_posix() for p in layer.rglob("*")]
    for pattern in (r"flight", r"pyarrow/_?substrait\.", r"_s3fs|libarrow_s3", r"(^|/)_?orc", r"/include(s)?(/|$)",
                    r"/src(/|$)", r"/tests(/|$)", r"\.(pxd|pyx|pxi|h|cc|pyi)$", r"__pycache__", r"^numpy"):
        assert not [n for n in names if re.search(pattern, n)], pattern
    libs = sorted(p.name for p in layer.glob("pyarrow/lib*.so*"))
    assert [n for n in libs if n.startswith("libarrow_python.")] == ["libarrow_python.so.2600"]
    for kept in ("libarrow.so.2600", "libparquet.so.2600", "libarrow_compute.so.2600", "libarrow_dataset.so.2600",
                 "libarrow_acero.so.2600", "libarrow_substrait.so.2600"):
        assert kept in libs, kept
    assert report["shared_libraries"]["unresolved"] == [] and report["shared_libraries"]["wrong_architecture"] == []
    if shutil.which("readelf"):
        lib = next(layer.glob("pyarrow/lib.cpython-312-*.so"))
        printed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
        assert layer_build.elf_info(lib).needed == tuple(re.findall(r"\(NEEDED\).*\[(.+?)\]", printed))

    test = report["import_test"]
    if test["status"] == "skipped":
        assert layer_build.find_python312() is None, test["reason"]  # skipped only without python3.12
        pytest.skip(test["reason"])
    failed = {k: v.get("error") for k, v in test.get("checks", {}).items() if not v["ok"]}
    assert test["status"] == "passed", failed or test
    assert test["modules_from"]["elsewhere"] == []
    assert "pyarrow" in test["modules_from"]["layer"] and "numpy" in test["modules_from"]["runtime_layer"]
    loaded = test["loaded_libraries"]["layer"]
    assert "pyarrow/libparquet.so.2600" in loaded
    assert not [n for n in loaded if "flight" in n or "s3" in n]
