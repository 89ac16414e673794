"""The Lambda layer build's logic on fake trees: trimming rules of both layers, the ELF reader,
duplicate detection, requirements, the stacked build's checks with a stubbed pip, and the import
checks' harness. No pip, no network: the real builds are in tests/integration/test_layer_build.py."""

from __future__ import annotations

import importlib.metadata
import json
import struct
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT / "layers") not in sys.path:  # the layer build is a package beside its script, not installed
    sys.path.insert(0, str(REPO_ROOT / "layers"))

from slimserve_layers import build as layer_build  # noqa: E402
from slimserve_layers import import_test  # noqa: E402
from slimserve_layers.elf import ElfInfo, elf_info, names_whole, unresolved_libraries  # noqa: E402
from slimserve_layers.recipes import FUNCTION_CODE, RECIPES, forbidden_distributions  # noqa: E402
from slimserve_layers.requirements import FORBIDDEN_DISTRIBUTIONS, read_requirements  # noqa: E402
from slimserve_layers.size import MIB, function_code_bytes  # noqa: E402
from slimserve_layers.trim import TrimResult, removed_modules, trim  # noqa: E402

RUNTIME, PARQUET = RECIPES["runtime"], RECIPES["parquet"]


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


def runtime_trim(root: Path, code_root: Path) -> TrimResult:
    return trim(root, RUNTIME.rules, RUNTIME.conditional, code_root, RUNTIME.duplicates)


@pytest.fixture
def code_root(tmp_path: Path) -> Path:
    touch(tmp_path / "functions", "inference/handler.py", content="app = APIGatewayRestResolver()\n")
    return tmp_path / "functions"


def test_trim_removes_what_is_never_imported_and_keeps_the_rest(tmp_path: Path, code_root: Path) -> None:
    root = fake_layer(tmp_path / "python")
    result = runtime_trim(root, code_root)

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
    assert unresolved_libraries(root, "x86_64") == ([], [])


@pytest.mark.parametrize("how", ["needed", "dlopen-string", "python"])
def test_onnxruntime_library_is_kept_when_anything_may_load_it(tmp_path: Path, code_root: Path, how: str) -> None:
    needed = [*SYSTEM, "libonnxruntime.so.1"] if how == "needed" else SYSTEM
    payload = b"\0libonnxruntime.so.1.31.1\0" if how == "dlopen-string" else b""
    root = fake_layer(tmp_path / "python", pybind_needed=needed, pybind_payload=payload)
    if how == "python":
        touch(root, "onnxruntime/capi/_ld_preload.py", content="ctypes.CDLL('libonnxruntime.so.1')\n")
    result = runtime_trim(root, code_root)
    assert (root / ORT_LIB).is_file()
    assert ORT_LIB in result.kept and "unlinked-library" not in result.by_rule()


def test_swagger_assets_are_kept_when_the_function_code_enables_swagger(tmp_path: Path, code_root: Path) -> None:
    (code_root / "inference" / "handler.py").write_text("app.enable_swagger(path='/docs')\n")
    root = fake_layer(tmp_path / "python")
    result = runtime_trim(root, code_root)
    assert (root / "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui-bundle.min.js").is_file()
    assert "powertools-swagger-assets" in result.kept


def test_elf_reader(tmp_path: Path) -> None:
    lib = write_elf(tmp_path / "liba.so", ["libc.so.6", "libb.so.2"], soname="liba.so.1", runpath="$ORIGIN:/x",
                    machine=183)
    info = elf_info(lib)
    assert info == ElfInfo("aarch64", ("libc.so.6", "libb.so.2"), "liba.so.1", ("$ORIGIN", "/x"))
    touch(tmp_path, "not_elf.so")
    assert elf_info(tmp_path / "not_elf.so") is None


def test_unresolved_libraries_names_what_neither_the_layer_nor_lambda_provides(tmp_path: Path) -> None:
    write_elf(tmp_path / "pkg/_ext.so", ["libc.so.6", "libz.so.1", "libhelper.so.1", "libmissing.so.3"],
              runpath="$ORIGIN/../pkg.libs")
    write_elf(tmp_path / "pkg.libs/libhelper.so.1", ["libc.so.6"], soname="libhelper.so.1")
    write_elf(tmp_path / "other/_arm.so", ["libc.so.6"], machine=183)
    unresolved, wrong_arch = unresolved_libraries(tmp_path, "x86_64")
    assert unresolved == ["pkg/_ext.so needs libmissing.so.3"]
    assert wrong_arch == ["other/_arm.so (aarch64)"]


def test_requirements_must_be_pinned_and_exclude_what_lambda_or_training_provides(tmp_path: Path) -> None:
    pins = read_requirements(RUNTIME.requirements)
    assert pins["onnxruntime"] == "1.31.1" and pins["aws-lambda-powertools"] == "3.37.0"
    assert pins["numpy"].startswith("2.")
    assert not set(pins) & FORBIDDEN_DISTRIBUTIONS
    for bad in ["numpy>=2\n", "scipy==1.14.1\n", "boto3==1.35.0\n", "numpy==2.4.6\nnumpy==2.4.6\n", "# nothing\n"]:
        (tmp_path / "r.txt").write_text(bad)
        with pytest.raises(ValueError):
            read_requirements(tmp_path / "r.txt")


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
    assert import_test.find_python312(str(fake)) != str(fake)


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


def parquet_trim(root: Path, code_root: Path) -> TrimResult:
    return trim(root, PARQUET.rules, PARQUET.conditional, code_root, PARQUET.duplicates)


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
    assert unresolved_libraries(root, "x86_64") == ([], [])
    assert removed_modules(result) == sorted(
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
    assert names_whole(b"\0libfoo.so\0", "libfoo.so")
    assert names_whole(b"/opt/python/libfoo.so\0", "libfoo.so")
    assert names_whole(b"failed to load libfoo.so: %s", "libfoo.so")
    assert not names_whole(b"\0libfoo.so.26\0", "libfoo.so")
    assert not names_whole(b"\0xlibfoo.so\0", "libfoo.so")


def test_remote_filesystems_stay_when_the_function_code_uses_pyarrow_fs(tmp_path: Path, batch_code: Path) -> None:
    (batch_code / "batch" / "formats.py").write_text("from pyarrow import fs\nfs.S3FileSystem()  # pyarrow.fs\n")
    root = fake_pyarrow(tmp_path / "python")
    result = parquet_trim(root, batch_code)
    assert "pyarrow-remote-filesystems" in result.kept
    assert (root / f"{PA}/_s3fs{EXT}").is_file() and (root / f"{PA}/libarrow_s3.so.2600").is_file()
    assert result.kept[f"{PA}/libarrow_s3.so.2600"] == f"DT_NEEDED of {PA}/_s3fs{EXT}"
    assert not (root / f"{PA}/libarrow_flight.so.2600").exists()


def test_parquet_requirements_pin_the_venv_pyarrow_and_refuse_what_the_runtime_layer_holds(tmp_path: Path) -> None:
    recipe = PARQUET
    forbidden = forbidden_distributions(recipe)
    pins = read_requirements(recipe.requirements, forbidden, "parquet")
    assert pins == {"pyarrow": importlib.metadata.version("pyarrow")}
    assert {"numpy", "onnxruntime", "pydantic", "pandas", "boto3"} <= forbidden
    for bad, message in [("numpy==2.4.6\n", "layer below it already holds it"), ("pandas==2.2.3\n", "parquet layer"),
                         ("pyarrow>=26\n", "not pinned")]:
        (tmp_path / "r.txt").write_text(bad)
        with pytest.raises(ValueError, match=message):
            read_requirements(tmp_path / "r.txt", forbidden, "parquet")
    assert RUNTIME.out == REPO_ROOT / "layers" / "build" / "runtime" and recipe.stacked_on == "runtime"
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
                               run_import_test=False, bytecode=False)
    combined = report["size"]["combined"]
    assert combined["limit_bytes"] == 262_144_000
    assert combined["total_bytes"] == sum(combined["parts_bytes"].values())
    assert combined["parts_bytes"]["parquet"] == report["size"]["unzipped_bytes"]
    assert combined["parts_bytes"]["function_code"] == function_code_bytes(FUNCTION_CODE) > 0
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




def test_import_checks_are_files_run_with_lambdas_path_order_and_report_each_failure(tmp_path: Path) -> None:
    """The runtime checks over an empty layer, run by this Python (no python3.12 needed): each
    missing package is a failed check with its error, the checks' own files count as neither the
    layer nor "elsewhere", and the verdict is a failure."""
    layer = tmp_path / "runtime" / "python"
    layer.mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    task, runtime, linked = import_test.lambda_task(work)
    cfg = {"task": str(task), "layer": str(layer), "runtime": str(runtime), "model": None,
           "must_not_import": ["sklearn", "onnx"]}
    result = import_test.run_checks(sys.executable, "runtime", cfg, import_test.lambda_env(work, task), work)

    assert result["status"] == "failed" and "botocore" in linked
    checks = result["checks"]
    assert checks["forbidden packages absent"] == {"ok": True, "detail": ["sklearn", "onnx"]}
    assert checks["runtime SDK stand-in"]["ok"], checks["runtime SDK stand-in"]
    assert checks["numpy"]["error"] == "ModuleNotFoundError: No module named 'numpy'"
    assert not checks["functions.inference.handler"]["ok"]
    assert result["sys_path"][:2] == [str(task), str(layer)] and result["sys_path"][-1] == str(runtime)
    assert result["modules_from"]["elsewhere"] == [] and result["modules_from"]["layer"] == []
    assert "botocore" in result["modules_from"]["runtime"]
    assert not any(layer.rglob("__pycache__"))


@pytest.mark.skipif(import_test.find_python312() is None, reason="needs a python3.12 (bytecode is version-specific)")
def test_layer_bytecode_is_312_unchecked_hash_for_every_module(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer_build, "pip_install", _fake_pip(fake_pyarrow))
    _fake_runtime_layer(tmp_path / "runtime", 84 * MIB, "x86_64", None)
    report = layer_build.build(arch="x86_64", out=tmp_path / "parquet", recipe="parquet",
                               runtime_layer=tmp_path / "runtime", run_import_test=False)
    layer = tmp_path / "parquet" / "python"
    modules = list(layer.rglob("*.py"))
    assert report["ok"], report["problems"]
    assert modules and report["bytecode"]["files"] == len(modules)
    assert report["bytecode"]["sources_without_bytecode"] == []
    for module in modules:
        pyc = module.parent / "__pycache__" / f"{module.stem}.cpython-312.pyc"
        assert layer_build.pyc_flags(pyc) == layer_build.UNCHECKED_HASH, pyc


def test_layer_without_python312_is_refused_unless_asked_for_no_bytecode(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer_build, "pip_install", _fake_pip(fake_pyarrow))
    monkeypatch.setattr(layer_build, "find_python312", lambda _explicit=None: None)
    _fake_runtime_layer(tmp_path / "runtime", 84 * MIB, "x86_64", None)
    report = layer_build.build(arch="x86_64", out=tmp_path / "parquet", recipe="parquet",
                               runtime_layer=tmp_path / "runtime", run_import_test=False)
    assert not report["ok"] and any("--no-bytecode" in p for p in report["problems"]), report["problems"]
    assert not any((tmp_path / "parquet").rglob("*.pyc"))
