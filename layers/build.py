#!/usr/bin/env python3
"""Build the slimserve runtime Lambda layer (python3.12) without Docker.

    python layers/build.py [--arch x86_64|arm64] [--out layers/build/runtime] [--max-mib 100]

1. ``pip install --platform manylinux_* --only-binary=:all: --python-version 3.12 --no-deps
   --target <out>/python -r layers/runtime/requirements.txt``: prebuilt wheels for Lambda's
   platform, whatever this machine is; the pinned list is the whole dependency set.
2. Trim what is never imported at runtime (rules in ``TRIM_RULES``, each with its reason), and
   onnxruntime's ``capi/libonnxruntime.so*`` only when no shared object in the layer needs it.
   Shared libraries are never stripped (``strip`` broke numpy's import).
3. Check that every shared object's DT_NEEDED resolves inside the layer or to a library the
   Lambda python3.12 runtime (Amazon Linux 2023) provides, then measure the unzipped and zipped
   size: warn above ``--warn-mib`` (80), fail above ``--max-mib`` (100). Lambda's limit is 250 MB
   unzipped for the function and all its layers together.
4. Import test (same-arch builds, when a python3.12 interpreter exists): a fresh interpreter with
   no site-packages sees only the layer, the function code and stand-ins for the SDK the Lambda
   runtime ships (boto3/botocore); it imports onnxruntime, numpy, pydantic and powertools, runs a
   tiny ONNX model (written here with ``onnx``, which the layer does not carry), imports
   ``functions.inference.handler`` with a MODEL_URI that does not exist (it fails closed) and
   invokes it, and checks that scikit-learn, scipy, sympy, pandas and onnx are not importable.
5. Write the summary to ``<out>-report.json`` beside the layer folder (a layer holds only
   ``python/``).

Exit status: 0 built and checked; 1 a check failed (size, import test, unresolved libraries,
installed set differs from the requirements); 2 bad arguments or requirements.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import mmap
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAYERS_DIR = Path(__file__).resolve().parent
REPO_ROOT = LAYERS_DIR.parent
DEFAULT_REQUIREMENTS = LAYERS_DIR / "runtime" / "requirements.txt"
DEFAULT_OUT = LAYERS_DIR / "build" / "runtime"
PYTHON_VERSION = "3.12"
MIB = 1024 * 1024
DEFAULT_MAX_MIB = 100.0
DEFAULT_WARN_MIB = 80.0
LAMBDA_UNZIPPED_LIMIT_BYTES = 262_144_000  # 250 MB: function code + all layers, unzipped

# Lambda architecture -> (machine name, pip platform tags). pip also accepts older manylinux_2_x
# tags than the ones named; Lambda python3.12 runs Amazon Linux 2023 (glibc 2.34).
ARCHES: dict[str, tuple[str, tuple[str, ...]]] = {
    "x86_64": ("x86_64", ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64")),
    "arm64": ("aarch64", ("manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64")),
}

# Distributions that must never be in this layer: the runtime ships the AWS SDK, and the training
# stack (scikit-learn + scipy + numpy is ~254 MiB alone) is what the ONNX export exists to avoid.
FORBIDDEN_DISTRIBUTIONS = frozenset({
    "boto3", "botocore", "s3transfer", "scikit-learn", "scipy", "sympy", "pandas", "onnx", "skl2onnx",
    "protobuf", "flatbuffers", "coloredlogs", "torch",
})
# Import names the import test requires to be absent (the interpreter sees no site-packages).
MUST_NOT_IMPORT = ("sklearn", "scipy", "sympy", "pandas", "onnx", "skl2onnx")

# Shared objects the Lambda python3.12 runtime (Amazon Linux 2023) provides: glibc, the GCC
# runtime and zlib (numpy's bundled libgfortran needs libz.so.1). Anything else a shared object
# in the layer needs must be in the layer itself.
SYSTEM_LIBRARIES = frozenset({
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1",
    "libresolv.so.2", "libcrypt.so.1", "libnsl.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
    "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1",
})


# --------------------------------------------------------------------------------------------
# Trimming
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrimRule:
    name: str
    patterns: tuple[str, ...]  # Path.glob patterns relative to the layer's python/ folder
    why: str
    # The rule is skipped when this text appears in any .py file of the function code.
    unless_code_mentions: str | None = None


TRIM_RULES: tuple[TrimRule, ...] = (
    TrimRule("bytecode", ("**/__pycache__", "**/*.pyc", "**/*.pyo"),
             "compiled by the build's Python (not 3.12); Lambda's /opt is read-only, so 3.12 compiles "
             "in memory at import"),
    TrimRule("console-scripts", ("bin",),
             "pip --target's console scripts (f2py, numpy-config, onnxruntime_test, jp.py) carry the "
             "build venv's shebang; nothing in Lambda runs them"),
    TrimRule("type-stubs", ("**/*.pyi", "*-stubs"),
             "typing stubs (and stub-only packages such as wrapt-stubs) are read by type checkers, "
             "never imported"),
    TrimRule("numpy-tests", (
        "numpy/**/tests", "numpy/conftest.py",
        "numpy/_core/_*_tests.*.so",  # _multiarray_tests, _umath_tests, _rational_tests, ...
        "numpy/_core/_simd.*.so",     # SIMD test harness ("for testing only")
    ), "numpy's test suite and its test-only extension modules: outside tests/ they are named only "
       "by conftest.py, the PyInstaller hook and a function in numpy/testing/print_coercion_tables.py"),
    TrimRule("numpy-build-time", (
        "numpy/f2py", "numpy/_core/include", "numpy/_core/lib", "numpy/random/lib",
        "numpy/random/_examples", "numpy/_pyinstaller", "numpy/**/*.pxd", "numpy/**/*.pyx",
    ), "C headers, static libraries, pkg-config and Cython declarations, f2py (imported lazily, only "
       "on `numpy.f2py` access) and PyInstaller hooks: for building or freezing, never imported"),
    TrimRule("onnxruntime-tooling", (
        "onnxruntime/tools", "onnxruntime/transformers", "onnxruntime/quantization",
        "onnxruntime/datasets", "onnxruntime/backend",
    ), "model conversion, optimisation and quantisation tools, example data and the ONNX backend API "
       "(which needs `onnx`): `import onnxruntime` and InferenceSession never import them (its "
       "__init__ reaches transformers.machine_info only inside a GPU-info helper, and only when "
       "psutil, cpuinfo and py3nvml are installed)"),
    TrimRule("powertools-swagger-assets", (
        "aws_lambda_powertools/event_handler/openapi/swagger_ui/*.js",
        "aws_lambda_powertools/event_handler/openapi/swagger_ui/*.css",
    ), "the Swagger UI bundle that APIGatewayRestResolver.enable_swagger() serves when given no "
       "swagger_base_url; read from disk only by that route. The handler serves /openapi.json "
       "(kept: the schema is generated by Python code), not Swagger UI. Skipped when the function "
       "code calls enable_swagger", unless_code_mentions="enable_swagger"),
)
FUNCTION_CODE = REPO_ROOT / "functions"

# onnxruntime's wheel carries the C-API library next to the Python binding. The binding
# (capi/onnxruntime_pybind11_state*.so) links the runtime statically: for 1.31.1 on x86_64,
# `readelf -d` lists NEEDED libdl, librt, libpthread, libstdc++, libm, libgcc_s, libc,
# ld-linux-x86-64 and RUNPATH $ORIGIN, and no libonnxruntime.so.1; the name "libonnxruntime.so"
# appears nowhere in its bytes (the only libonnxruntime_* names it dlopen()s are the optional
# execution-provider plugins such as libonnxruntime_providers_cuda.so) nor in any .py file. The
# build does not trust that: it removes the library only after repeating these checks on every
# shared object and .py file of the layer it has just installed (see unneeded_libraries).
CONDITIONAL_LIBRARIES = ("onnxruntime/capi/libonnxruntime.so*",)


@dataclass
class Removed:
    rule: str
    path: str  # relative to the python/ folder
    bytes: int


@dataclass
class TrimResult:
    removed: list[Removed] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # conditional candidates kept, with why
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removed)

    def by_rule(self) -> dict[str, dict[str, int]]:
        summary: dict[str, dict[str, int]] = {}
        for r in self.removed:
            entry = summary.setdefault(r.rule, {"entries": 0, "bytes": 0})
            entry["entries"] += 1
            entry["bytes"] += r.bytes
        return summary


def tree_bytes(path: Path) -> int:
    """Apparent size of a file, or of every regular file under a folder (what Lambda counts)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def trim(root: Path, rules: Sequence[TrimRule] = TRIM_RULES,
         conditional: Sequence[str] = CONDITIONAL_LIBRARIES, code_root: Path | None = FUNCTION_CODE) -> TrimResult:
    """Remove what the rules name under ``root`` (a layer's python/ folder), then the conditional
    libraries that nothing in the layer needs, then folders left empty. ``code_root`` is the
    function code that guarded rules (``unless_code_mentions``) look at."""
    result = TrimResult()
    code = [p.read_text("utf-8", errors="replace") for p in sorted(code_root.rglob("*.py"))] if code_root else []
    for rule in rules:
        if rule.unless_code_mentions and any(rule.unless_code_mentions in text for text in code):
            result.kept[rule.name] = f"the function code mentions {rule.unless_code_mentions!r}"
            continue
        for pattern in rule.patterns:
            # sorted + existence check: a folder removed by an earlier match takes its contents along
            for path in sorted(root.glob(pattern)):
                if not (path.exists() or path.is_symlink()):
                    continue
                size = tree_bytes(path)
                _remove(path)
                result.removed.append(Removed(rule.name, path.relative_to(root).as_posix(), size))
    for pattern in conditional:
        candidates = sorted(p for p in root.glob(pattern) if p.is_file())
        if not candidates:
            continue
        removable, kept, evidence = unneeded_libraries(root, candidates)
        result.evidence[pattern] = evidence
        result.kept.update(kept)
        for path in removable:
            size = path.lstat().st_size
            path.unlink()
            result.removed.append(Removed("unlinked-library", path.relative_to(root).as_posix(), size))
    _remove_empty_dirs(root)
    return result


def _remove_empty_dirs(root: Path) -> None:
    for folder in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
                         key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


# --------------------------------------------------------------------------------------------
# ELF inspection (pure Python, so it works on any build machine and for either architecture)
# --------------------------------------------------------------------------------------------

ELF_MACHINES = {3: "x86", 62: "x86_64", 40: "arm", 183: "aarch64"}
SHT_DYNAMIC, DT_NULL, DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH = 6, 0, 1, 14, 15, 29


@dataclass(frozen=True)
class ElfInfo:
    machine: str
    needed: tuple[str, ...]
    soname: str | None
    rpath: tuple[str, ...]  # DT_RUNPATH, or DT_RPATH when there is no RUNPATH


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def elf_info(path: Path) -> ElfInfo | None:
    """The dynamic section of a 64-bit little-endian ELF file (what ``readelf -d`` prints), or
    None when the file is not one or has no dynamic section."""
    with path.open("rb") as f:
        if f.read(4) != b"\x7fELF":
            return None
        f.seek(0)
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            return None
    with data:
        if len(data) < 64 or data[4] != 2 or data[5] != 1:  # ELFCLASS64, ELFDATA2LSB
            return None
        (machine,) = struct.unpack_from("<H", data, 0x12)
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        sections = []
        for i in range(shnum):
            base = shoff + i * shentsize
            if base + 64 > len(data):
                return None
            _name, sh_type, _flags, _addr, offset, size, link, _info, _align, _entsize = struct.unpack_from(
                "<IIQQQQIIQQ", data, base)
            sections.append((sh_type, offset, size, link))
        dynamic = next((s for s in sections if s[0] == SHT_DYNAMIC), None)
        if dynamic is None or dynamic[3] >= len(sections):
            return None
        _, dyn_offset, dyn_size, strtab_index = dynamic
        str_offset = sections[strtab_index][1]

        def string(at: int) -> str:
            start = str_offset + at
            end = data.find(b"\0", start)
            return data[start:end].decode("utf-8", "replace")

        needed: list[str] = []
        soname = None
        rpath: list[str] = []
        runpath: list[str] = []
        for at in range(dyn_offset, dyn_offset + dyn_size - 15, 16):
            tag, value = struct.unpack_from("<qQ", data, at)
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                needed.append(string(value))
            elif tag == DT_SONAME:
                soname = string(value)
            elif tag == DT_RPATH:
                rpath.extend(p for p in string(value).split(":") if p)
            elif tag == DT_RUNPATH:
                runpath.extend(p for p in string(value).split(":") if p)
        return ElfInfo(ELF_MACHINES.get(machine, str(machine)), tuple(needed), soname, tuple(runpath or rpath))


def shared_objects(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and (".so" in path.name) and is_elf(path):
            yield path


def unneeded_libraries(root: Path, candidates: Sequence[Path]) -> tuple[list[Path], dict[str, str], dict[str, Any]]:
    """Which candidate libraries no other shared object or Python file in ``root`` needs.

    A candidate stays when any other shared object lists it (by file name or SONAME) in DT_NEEDED,
    when its name appears in another shared object's bytes (a possible dlopen), when a .py file
    names it (ctypes), or when a shared object under the same package cannot be parsed."""
    names: dict[Path, set[str]] = {}
    for lib in candidates:
        info = elf_info(lib)
        stem = lib.name.split(".so")[0] + ".so"  # libonnxruntime.so.1.31.1 -> libonnxruntime.so
        names[lib] = {lib.name, stem} | ({info.soname} if info and info.soname else set())
    kept: dict[str, str] = {}
    evidence: dict[str, Any] = {"needed_by_module": {}}
    others = [p for p in shared_objects(root) if p not in names]
    candidate_dirs = {lib.parent for lib in candidates}
    for obj in others:
        rel = obj.relative_to(root).as_posix()
        info = elf_info(obj)
        if info is None:
            if obj.parent in candidate_dirs:
                for lib in candidates:
                    kept.setdefault(lib.relative_to(root).as_posix(), f"cannot parse {rel}")
            continue
        if obj.parent in candidate_dirs:
            evidence["needed_by_module"][rel] = list(info.needed)
        with obj.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for lib, lib_names in names.items():
                for name in lib_names:
                    if name in info.needed:
                        kept.setdefault(lib.relative_to(root).as_posix(), f"DT_NEEDED of {rel}")
                    elif data.find(name.encode()) != -1:
                        kept.setdefault(lib.relative_to(root).as_posix(), f"{name!r} appears in {rel}")
    for py in root.rglob("*.py"):
        text = py.read_text("utf-8", errors="replace")
        for lib, lib_names in names.items():
            for name in lib_names:
                if name in text:
                    kept.setdefault(lib.relative_to(root).as_posix(), f"{name!r} appears in {py.relative_to(root)}")
    removable = [lib for lib in candidates if lib.relative_to(root).as_posix() not in kept]
    evidence["searched_names"] = sorted(set().union(*names.values()))
    evidence["shared_objects_checked"] = len(others)
    evidence["removed"] = [lib.relative_to(root).as_posix() for lib in removable]
    evidence["kept"] = kept
    return removable, kept, evidence


def unresolved_libraries(root: Path, machine: str) -> tuple[list[str], list[str]]:
    """(unresolved DT_NEEDED entries, wrong-architecture objects) over the layer's shared objects.

    An entry resolves when it is a runtime-provided library or a file in one of the object's
    RUNPATH/RPATH folders ($ORIGIN expanded) or next to it."""
    unresolved, wrong_arch = [], []
    for obj in shared_objects(root):
        info = elf_info(obj)
        rel = obj.relative_to(root).as_posix()
        if info is None:
            continue
        if info.machine != machine:
            wrong_arch.append(f"{rel} ({info.machine})")
        search = [obj.parent] + [Path(p.replace("$ORIGIN", str(obj.parent)).replace("${ORIGIN}", str(obj.parent)))
                                 for p in info.rpath]
        for name in info.needed:
            if name in SYSTEM_LIBRARIES or any((d / name).is_file() for d in search):
                continue
            unresolved.append(f"{rel} needs {name}")
    return unresolved, wrong_arch


# --------------------------------------------------------------------------------------------
# Requirements, install, sizes
# --------------------------------------------------------------------------------------------

def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path) -> dict[str, str]:
    """``name==version`` lines only (comments and blank lines allowed); anything else is refused."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)", line)
        if not match:
            raise ValueError(f"{path}:{number}: {line!r} is not pinned as name==version")
        name = canonical(match.group(1))
        if name in pins:
            raise ValueError(f"{path}:{number}: {name} is listed twice")
        if name in FORBIDDEN_DISTRIBUTIONS:
            raise ValueError(f"{path}:{number}: {name} must not be in the runtime layer")
        pins[name] = match.group(2)
    if not pins:
        raise ValueError(f"{path} lists no packages")
    return pins


def pip_install(requirements: Path, target: Path, platforms: Sequence[str], report: Path) -> None:
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
               "--quiet", "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION,
               "--no-deps", "--no-compile", "--target", str(target), "--report", str(report)]
    for tag in platforms:
        command += ["--platform", tag]
    command += ["-r", str(requirements)]
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def installed_distributions(root: Path) -> dict[str, str]:
    found = {}
    for meta in root.glob("*.dist-info/METADATA"):
        headers = meta.read_text("utf-8", errors="replace").split("\n\n", 1)[0]
        name = re.search(r"^Name: (.+)$", headers, re.M)
        version = re.search(r"^Version: (.+)$", headers, re.M)
        if name and version:
            found[canonical(name.group(1).strip())] = version.group(1).strip()
    return found


def size_breakdown(root: Path) -> list[dict[str, Any]]:
    """Bytes per distribution: its import packages, its ``.libs`` folder and its dist-info, from
    each dist-info's RECORD; unclaimed top-level entries count under their own name."""
    owner: dict[str, str] = {}
    for record in root.glob("*.dist-info/RECORD"):
        dist = record.parent.name.split("-")[0]
        owner[record.parent.name] = dist
        for line in record.read_text("utf-8", errors="replace").splitlines():
            top = line.split(",", 1)[0].split("/", 1)[0]
            if top and not top.startswith(".."):
                owner.setdefault(top, dist)
    totals: dict[str, dict[str, Any]] = {}
    for entry in sorted(root.iterdir()):
        size = tree_bytes(entry)
        dist = owner.get(entry.name, entry.name)
        slot = totals.setdefault(dist, {"name": dist, "bytes": 0, "entries": []})
        slot["bytes"] += size
        slot["entries"].append(entry.name)
    return sorted(totals.values(), key=lambda s: s["bytes"], reverse=True)


def zipped_bytes(layer_dir: Path) -> int:
    """Size of the layer zip (python/ at the root, deflate level 6 as `zip` and CDK assets use)."""
    with tempfile.TemporaryDirectory(prefix="slimserve-layer-zip-") as tmp:
        archive = Path(tmp) / "layer.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for path in sorted(layer_dir.rglob("*")):
                zf.write(path, path.relative_to(layer_dir).as_posix())
        return archive.stat().st_size


def mib(n: int) -> float:
    return round(n / MIB, 2)


# --------------------------------------------------------------------------------------------
# Import test
# --------------------------------------------------------------------------------------------

def find_python312(explicit: str | None = None) -> str | None:
    """A working CPython 3.12: ``explicit``, $SLIMSERVE_PYTHON312, ``python3.12`` on PATH, then
    pyenv's and the usual install folders. Each candidate is run once to check it really is 3.12
    (a pyenv shim on PATH may exist and still refuse to run)."""
    candidates: list[str] = []
    for value in (explicit, os.environ.get("SLIMSERVE_PYTHON312"), shutil.which("python3.12")):
        if value:
            candidates.append(value)
    home = Path.home()
    candidates += sorted((str(p) for p in (home / ".pyenv" / "versions").glob("3.12*/bin/python3.12")), reverse=True)
    candidates += ["/usr/local/bin/python3.12", "/usr/bin/python3.12", "/opt/python/3.12/bin/python3.12"]
    seen = set()
    for candidate in candidates:
        if candidate in seen or not os.access(candidate, os.X_OK):
            continue
        seen.add(candidate)
        try:
            out = subprocess.run([candidate, "-S", "-c", "import sys,platform;"
                                  "print(sys.implementation.name, *sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.split() == ["cpython", "3", "12"]:
            return candidate
        if explicit and candidate == explicit:
            print(f"warning: --python {explicit} is not a working CPython 3.12", file=sys.stderr)
    return None


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


IMPORT_TEST_CODE = r'''
import importlib.util, json, os, sys, time, traceback
cfg = json.loads(sys.argv[1])
stdlib = [p for p in sys.path if p and "site-packages" not in p and "dist-packages" not in p]
# Lambda's order: function code (/var/task), layers (/opt/python), stdlib, runtime-provided SDK.
sys.path[:] = [cfg["task"], cfg["layer"], *stdlib, cfg["runtime"]]
result = {"python": sys.version.split()[0], "sys_path": sys.path, "checks": {}, "timings_ms": {}, "versions": {}}

def check(name, fn):
    try:
        value = fn()
        result["checks"][name] = {"ok": True, **({"detail": value} if value is not None else {})}
    except BaseException as exc:
        result["checks"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                  "traceback": traceback.format_exc(limit=8)}

def timed(name, fn):
    started = time.perf_counter()
    value = fn()
    result["timings_ms"][name] = round((time.perf_counter() - started) * 1e3, 1)
    return value

def absent():
    present = [m for m in cfg["must_not_import"] if importlib.util.find_spec(m) is not None]
    assert not present, f"importable but must not be: {present}"
    return cfg["must_not_import"]

def use_runtime_sdk():
    # Imported first and timed apart: on Lambda the runtime's botocore is precompiled; here it is
    # a stand-in compiled at import, which should not count against the layer.
    timed("import botocore (runtime stand-in)", lambda: importlib.import_module("botocore.session"))
    importlib.import_module("botocore.client")

def use_numpy():
    import numpy as np
    result["versions"]["numpy"] = np.__version__
    m = np.array([[2.0, 1.0], [1.0, 3.0]])
    assert np.allclose(np.linalg.inv(m) @ m, np.eye(2))  # OpenBLAS from numpy.libs
    assert np.random.default_rng(0).random(3).shape == (3,)

def use_onnxruntime():
    import numpy as np
    import onnxruntime as ort
    result["versions"]["onnxruntime"] = ort.__version__
    result["providers"] = ort.get_available_providers()
    if cfg["model"] is None:
        return "no test model (onnx not installed in the build environment)"
    model = cfg["model"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = timed("InferenceSession", lambda: ort.InferenceSession(model["path"], options,
                                                                     providers=["CPUExecutionProvider"]))
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((2, 3), dtype=np.float32)
    (y,) = session.run(None, {"a": a, "b": b})
    expected = (a + b) @ np.array(model["coefficients"], dtype=np.float32) + model["intercept"]
    assert np.allclose(y.ravel(), expected, atol=1e-6), (y, expected)
    return {"output": y.ravel().tolist()}

def use_pydantic():
    import pydantic
    result["versions"]["pydantic"] = pydantic.VERSION
    class Row(pydantic.BaseModel):
        x: float
    assert Row.model_validate({"x": "1.5"}).x == 1.5

def use_powertools():
    from aws_lambda_powertools import Logger, Metrics, Tracer  # noqa: F401
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver  # noqa: F401
    from aws_lambda_powertools.shared.version import VERSION
    result["versions"]["aws_lambda_powertools"] = VERSION

def event(method, path, body=None):
    return {"resource": path, "path": path, "httpMethod": method,
            "headers": {"Content-Type": "application/json"},
            "multiValueHeaders": {"Content-Type": ["application/json"]},
            "queryStringParameters": None, "multiValueQueryStringParameters": None,
            "pathParameters": None, "stageVariables": None, "isBase64Encoded": False,
            "body": None if body is None else json.dumps(body),
            "requestContext": {"requestId": "layer-check", "resourcePath": path, "httpMethod": method,
                               "path": "/prod" + path, "stage": "prod", "accountId": "123456789012",
                               "identity": {"sourceIp": "127.0.0.1"}}}

class Context:
    function_name = "slimserve-layer-check"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:slimserve-layer-check"
    memory_limit_in_mb = 1024
    aws_request_id = "layer-check"
    log_group_name = "/aws/lambda/slimserve-layer-check"
    log_stream_name = "layer-check"
    def get_remaining_time_in_millis(self):
        return 30_000

def use_handler():
    # The whole chain (numpy, onnxruntime, pydantic, powertools, X-Ray patching, model load
    # attempt) in a fresh interpreter: a cold-start proxy for the layer's code.
    module = "functions.inference.handler"
    handler = timed(f"import {module}", lambda: importlib.import_module(module))
    statuses = {}
    for name, ev in [("GET /health", event("GET", "/health")),
                     ("GET /openapi.json", event("GET", "/openapi.json")),
                     ("POST /predict (bad body)", event("POST", "/predict", {"not_instances": 1})),
                     ("POST /predict", event("POST", "/predict", {"instances": [[1.0, 2.0]]}))]:
        response = handler.lambda_handler(ev, Context())
        json.loads(response["body"])
        statuses[name] = response["statusCode"]
    # 500 is the handler's answer to an unexpected exception, e.g. an import failing at request time.
    assert all(code != 500 for code in statuses.values()), statuses
    return statuses

check("forbidden packages absent", absent)
check("runtime SDK stand-in", use_runtime_sdk)
check("functions.inference.handler", use_handler)
check("numpy", use_numpy)
check("onnxruntime InferenceSession", use_onnxruntime)
check("pydantic", use_pydantic)
check("aws_lambda_powertools", use_powertools)

roots = {"task": cfg["task"], "layer": cfg["layer"], "runtime": cfg["runtime"]}
origins = {"layer": set(), "runtime": set(), "task": set(), "elsewhere": set()}
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if not path:
        continue
    path = os.path.abspath(path)
    where = next((k for k, r in roots.items() if path.startswith(os.path.abspath(r) + os.sep)), None)
    if where is None:
        where = "elsewhere" if not any(path.startswith(os.path.abspath(p) + os.sep) for p in stdlib) else None
    if where:
        origins[where].add(name.split(".")[0])
result["modules_from"] = {k: sorted(v) for k, v in origins.items()}
result["ok"] = all(c["ok"] for c in result["checks"].values()) and not origins["elsewhere"]
print("SLIMSERVE_IMPORT_TEST " + json.dumps(result))
'''


def import_test(layer_python: Path, arch: str, explicit_python: str | None, work: Path) -> dict[str, Any]:
    machine = ARCHES[arch][0]
    host = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    if sys.platform != "linux" or host != machine:
        return {"status": "skipped", "reason": f"SKIPPED import test: cross-architecture build "
                                               f"({arch} layer on {sys.platform}/{host}); it cannot run here"}
    python = find_python312(explicit_python)
    if python is None:
        return {"status": "skipped", "reason": "SKIPPED import test: no python3.12 interpreter "
                                               "(put one on PATH, in ~/.pyenv, or pass --python)"}
    task, runtime, model_dir = work / "task", work / "runtime", work / "model"
    for folder in (task, runtime, model_dir):
        folder.mkdir()
    # /var/task holds only the function code: link functions/ alone, not the whole repository.
    (task / "functions").symlink_to(REPO_ROOT / "functions", target_is_directory=True)
    linked = runtime_standin(runtime)
    try:
        model = write_test_model(model_dir / "tiny.onnx")
    except ImportError:
        model = None
    cfg = {"task": str(task), "layer": str(layer_python), "runtime": str(runtime), "model": model,
           "must_not_import": list(MUST_NOT_IMPORT)}
    env = {
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
    # -E: ignore PYTHON* variables; -s, -S: no user or system site-packages (sys.path is set
    # explicitly by the code); -B: write no __pycache__ into the layer.
    command = [python, "-B", "-s", "-E", "-S", "-c", IMPORT_TEST_CODE, json.dumps(cfg)]
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
    return {"status": status, "python": python, "seconds": round(elapsed, 2), "runtime_standins": linked,
            **detail, **({"stderr": proc.stderr[-4000:]} if status == "failed" else {})}


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------

def clean_output(out: Path) -> None:
    """Delete a previous build, refusing anything that does not look like one."""
    out = out.resolve()
    if out == REPO_ROOT or out in REPO_ROOT.parents or out == Path.home() or len(out.parts) < 3:
        raise ValueError(f"refusing to use {out} as the layer output folder")
    if out.exists():
        unexpected = [p.name for p in out.iterdir() if p.name != "python"]
        if unexpected:
            raise ValueError(f"{out} holds {unexpected[:5]}: not a layer build folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def build(arch: str = "x86_64", out: Path = DEFAULT_OUT, requirements: Path = DEFAULT_REQUIREMENTS,
          max_mib: float = DEFAULT_MAX_MIB, warn_mib: float = DEFAULT_WARN_MIB, python: str | None = None,
          run_import_test: bool = True, report_path: Path | None = None, bytecode: bool = False) -> dict[str, Any]:
    """Build, trim, check and measure the layer; returns the report (also written to disk).

    ``bytecode``: precompile the layer with python3.12 (unchecked-hash .pyc). Off by default: it
    adds ~9 MiB unzipped, and saves ~0.5 s of compiling per cold start (Lambda's /opt is
    read-only, so without it every cold start compiles what it imports)."""
    out = Path(out).resolve()
    report_path = Path(report_path) if report_path else out.parent / f"{out.name}-report.json"
    machine, platforms = ARCHES[arch]
    pins = read_requirements(Path(requirements))
    timings: dict[str, float] = {}
    problems: list[str] = []
    warnings: list[str] = []
    report: dict[str, Any] = {"layer": str(out), "arch": arch, "python_version": PYTHON_VERSION,
                              "platforms": list(platforms), "requirements": str(requirements)}
    started = time.perf_counter()

    clean_output(out)
    layer_python = out / "python"
    with tempfile.TemporaryDirectory(prefix="slimserve-layer-") as tmp:
        t = time.perf_counter()
        pip_report = Path(tmp) / "pip-report.json"
        pip_install(Path(requirements), layer_python, platforms, pip_report)
        timings["install"] = time.perf_counter() - t
        wheels = []
        for item in json.loads(pip_report.read_text()).get("install", []):
            info = item.get("download_info", {})
            meta = item.get("metadata", {})
            wheels.append({"name": meta.get("name"), "version": meta.get("version"),
                           "file": info.get("url", "").rsplit("/", 1)[-1].split("#")[0],
                           "sha256": info.get("archive_info", {}).get("hashes", {}).get("sha256")})
        report["wheels"] = sorted(wheels, key=lambda w: canonical(w["name"] or ""))

        installed = installed_distributions(layer_python)
        report["installed"] = dict(sorted(installed.items()))
        if installed != pins:
            problems.append(f"installed set differs from the requirements: installed {installed}, pinned {pins}")
        before = tree_bytes(out)

        t = time.perf_counter()
        trimmed = trim(layer_python)
        timings["trim"] = time.perf_counter() - t
        report["trim"] = {"before_bytes": before, "before_mib": mib(before), "removed_bytes": trimmed.bytes,
                          "removed_mib": mib(trimmed.bytes),
                          "by_rule": {k: {**v, "mib": mib(v["bytes"])} for k, v in trimmed.by_rule().items()},
                          "rules": {r.name: {"patterns": list(r.patterns), "why": r.why} for r in TRIM_RULES},
                          "conditional": trimmed.evidence, "kept": trimmed.kept}
        leftovers = [p.relative_to(layer_python).as_posix() for p in layer_python.rglob("*")
                     if p.name == "__pycache__" or p.suffix in (".pyc", ".pyi")]
        if leftovers:
            problems.append(f"trim left {leftovers[:5]}")

        report["bytecode"] = False
        if bytecode:
            t = time.perf_counter()
            compiler = find_python312(python)
            if compiler is None:
                problems.append("--bytecode needs a python3.12 interpreter (bytecode is version-specific)")
            else:
                # .pyc files do not depend on the machine architecture: this works for arm64 too.
                subprocess.run([compiler, "-s", "-E", "-m", "compileall", "-q", "-j0",
                                "--invalidation-mode", "unchecked-hash", str(layer_python)], check=True)
                report["bytecode"] = True
            timings["bytecode"] = time.perf_counter() - t

        t = time.perf_counter()
        unresolved, wrong_arch = unresolved_libraries(layer_python, machine)
        report["shared_libraries"] = {"unresolved": unresolved, "wrong_architecture": wrong_arch,
                                      "runtime_provided": sorted(SYSTEM_LIBRARIES)}
        if unresolved:
            problems.append(f"shared libraries need what neither the layer nor Lambda provides: {unresolved}")
        if wrong_arch:
            problems.append(f"shared objects for another architecture than {machine}: {wrong_arch}")
        timings["library_check"] = time.perf_counter() - t

        t = time.perf_counter()
        unzipped = tree_bytes(out)
        zipped = zipped_bytes(out)
        timings["measure_and_zip"] = time.perf_counter() - t
        breakdown = size_breakdown(layer_python)
        report["size"] = {"unzipped_bytes": unzipped, "unzipped_mib": mib(unzipped), "zipped_bytes": zipped,
                          "zipped_mib": mib(zipped), "files": sum(1 for p in out.rglob("*") if p.is_file()),
                          "warn_mib": warn_mib, "max_mib": max_mib,
                          "lambda_limit_share": round(unzipped / LAMBDA_UNZIPPED_LIMIT_BYTES, 3),
                          "by_distribution": [{"name": b["name"], "bytes": b["bytes"], "mib": mib(b["bytes"]),
                                               "entries": b["entries"]} for b in breakdown]}
        if unzipped > max_mib * MIB:
            problems.append(f"layer is {mib(unzipped)} MiB unzipped: over --max-mib {max_mib}")
        elif unzipped > warn_mib * MIB:
            warnings.append(f"layer is {mib(unzipped)} MiB unzipped: over the {warn_mib} MiB target")

        t = time.perf_counter()
        if run_import_test:
            work = Path(tmp) / "import-test"
            work.mkdir()
            report["import_test"] = import_test(layer_python, arch, python, work)
        else:
            report["import_test"] = {"status": "skipped", "reason": "SKIPPED import test: --skip-import-test"}
        timings["import_test"] = time.perf_counter() - t
        if report["import_test"]["status"] == "failed":
            problems.append("import test failed")
        if not report["bytecode"] and any(layer_python.rglob("__pycache__")):
            problems.append("the import test wrote __pycache__ into the layer")

    timings["total"] = time.perf_counter() - started
    report["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    report["warnings"] = warnings
    report["problems"] = problems
    report["ok"] = not problems
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    report["report_path"] = str(report_path)
    return report


def print_summary(report: dict[str, Any], top: int = 10) -> None:
    size, trim_info = report["size"], report["trim"]
    print(f"\nslimserve runtime layer ({report['arch']}, python{report['python_version']}): {report['layer']}")
    print("  installed: " + ", ".join(f"{k}=={v}" for k, v in report["installed"].items()))
    print(f"  before trim {trim_info['before_mib']:.2f} MiB; trimmed {trim_info['removed_mib']:.2f} MiB:")
    for rule, info in trim_info["by_rule"].items():
        print(f"    {rule:<26} {info['mib']:>7.2f} MiB  ({info['entries']} entries)")
    for pattern, evidence in trim_info["conditional"].items():
        print(f"    {pattern}: removed {evidence['removed'] or 'nothing'}; kept {evidence['kept'] or 'nothing'}")
    print(f"  unzipped {size['unzipped_mib']:.2f} MiB ({size['files']} files, "
          f"{size['lambda_limit_share']:.0%} of Lambda's 250 MB); zipped {size['zipped_mib']:.2f} MiB")
    print(f"  largest distributions (top {top}):")
    for entry in size["by_distribution"][:top]:
        print(f"    {entry['name']:<24} {entry['mib']:>7.2f} MiB")
    test = report["import_test"]
    if test["status"] == "skipped":
        print(f"  {test['reason']}")
    else:
        print(f"  import test {test['status'].upper()} with {test.get('python')} ({test.get('seconds', '?')} s)")
        for name, check in test.get("checks", {}).items():
            mark = "ok " if check["ok"] else "FAIL"
            print(f"    [{mark}] {name}" + (f": {check.get('detail')}" if check.get("detail") else "")
                  + (f": {check['error']}" if not check["ok"] else ""))
        if test.get("timings_ms"):
            cache = "with" if report["bytecode"] else "no"
            print(f"    timings (ms, {cache} bytecode cache): "
                  + ", ".join(f"{k} {v}" for k, v in test["timings_ms"].items()))
        if test.get("modules_from"):
            print(f"    from the runtime stand-in: {test['modules_from']['runtime']}; "
                  f"from elsewhere: {test['modules_from']['elsewhere'] or 'nothing'}")
        if test["status"] == "failed":
            for check in test.get("checks", {}).values():
                if not check["ok"]:
                    print(check.get("traceback", ""), file=sys.stderr)
            if test.get("stderr"):
                print(test["stderr"], file=sys.stderr)
    print("  timings (s): " + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()))
    for warning in report["warnings"]:
        print(f"  WARNING: {warning}")
    for problem in report["problems"]:
        print(f"  PROBLEM: {problem}", file=sys.stderr)
    print(f"  report: {report['report_path']}")


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHES), default="x86_64")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="layer folder (gets python/)")
    parser.add_argument("--requirements", type=Path, default=DEFAULT_REQUIREMENTS)
    parser.add_argument("--max-mib", type=float, default=DEFAULT_MAX_MIB, help="fail above this unzipped size")
    parser.add_argument("--warn-mib", type=float, default=DEFAULT_WARN_MIB, help="warn above this unzipped size")
    parser.add_argument("--python", help="python3.12 interpreter for the import test (default: search)")
    parser.add_argument("--skip-import-test", action="store_true")
    parser.add_argument("--bytecode", action="store_true",
                        help="precompile .pyc with python3.12 (+~9 MiB, ~0.5 s less compiling per cold start)")
    parser.add_argument("--report", type=Path, help="summary JSON (default: <out>-report.json beside --out)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        report = build(arch=args.arch, out=args.out, requirements=args.requirements, max_mib=args.max_mib,
                       warn_mib=args.warn_mib, python=args.python, run_import_test=not args.skip_import_test,
                       report_path=args.report, bytecode=args.bytecode)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: pip failed with exit status {exc.returncode}", file=sys.stderr)
        return 1
    print_summary(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
