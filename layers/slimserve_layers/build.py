"""One layer build, step by step: install, trim, library checks, size, import test, report."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdk.constructs.code_asset import BYTECODE_TAG, compile_tree

from .elf import SYSTEM_LIBRARIES, unresolved_libraries
from .import_test import find_python312, parquet_import_test, runtime_import_test
from .install import installed_wheels, pip_install
from .recipes import ARCHES, FUNCTION_CODE, PYTHON_VERSION, RECIPES, REPO_ROOT, Recipe, forbidden_distributions
from .requirements import installed_distributions, read_requirements
from .size import (
    LAMBDA_UNZIPPED_LIMIT_BYTES,
    MIB,
    combined_size,
    function_code_bytes,
    mib,
    size_breakdown,
    tree_bytes,
    zipped_bytes,
)
from .trim import TrimResult, removed_modules, trim

LAYER_PATH = "/opt/python"  # where Lambda extracts a layer's python/ folder
UNCHECKED_HASH = 0b01


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


def stacked_layer(recipe: Recipe, arch: str, layer_out: Path | None) -> dict[str, Any] | None:
    """What is known about the already built layer ``recipe`` is stacked on: its folder, size,
    architecture (from its report) and whether it can serve the import test."""
    if recipe.stacked_on is None:
        return None
    below = RECIPES[recipe.stacked_on]
    out = Path(layer_out or below.out).resolve()
    info: dict[str, Any] = {"name": below.name, "layer": str(out), "built": (out / "python").is_dir()}
    if not info["built"]:
        info["why_unusable"] = (f"the {below.name} layer is not built at {out} (build it first: "
                                f"python layers/build.py --recipe {below.name} --arch {arch}, or `make layer`)")
        return info
    info["unzipped_bytes"] = tree_bytes(out)
    info["unzipped_mib"] = mib(info["unzipped_bytes"])
    report_file = out.parent / f"{out.name}-report.json"
    try:
        below_report = json.loads(report_file.read_text())
    except (OSError, ValueError):
        below_report = {}
    info["arch"] = below_report.get("arch")
    info["report_ok"] = below_report.get("ok")
    if info["arch"] is not None and info["arch"] != arch:
        info["why_unusable"] = f"the {below.name} layer at {out} is built for {info['arch']}, not {arch}"
    return info


@dataclass
class Build:
    """One build in progress: where it goes, what it checks against, and what it found so far."""

    recipe: Recipe
    arch: str
    out: Path
    requirements: Path
    max_mib: float
    warn_mib: float
    below: dict[str, Any] | None
    report: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def layer_python(self) -> Path:
        return self.out / "python"

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - started


def _install(b: Build, pins: dict[str, str], tmp: Path) -> None:
    with b.step("install"):
        pip_report = tmp / "pip-report.json"
        pip_install(b.requirements, b.layer_python, ARCHES[b.arch][1], pip_report)
    b.report["wheels"] = installed_wheels(pip_report)
    installed = installed_distributions(b.layer_python)
    b.report["installed"] = dict(sorted(installed.items()))
    if installed != pins:
        b.problems.append(f"installed set differs from the requirements: installed {installed}, pinned {pins}")


def _trim(b: Build) -> TrimResult:
    before = tree_bytes(b.out)
    spec = b.recipe
    with b.step("trim"):
        trimmed = trim(b.layer_python, spec.rules, spec.conditional, FUNCTION_CODE, spec.duplicates)
    b.report["trim"] = {"before_bytes": before, "before_mib": mib(before), "removed_bytes": trimmed.bytes,
                        "removed_mib": mib(trimmed.bytes),
                        "by_rule": {k: {**v, "mib": mib(v["bytes"])} for k, v in trimmed.by_rule().items()},
                        "rules": {r.name: {"patterns": list(r.patterns), "why": r.why} for r in spec.rules},
                        "conditional": trimmed.evidence, "kept": trimmed.kept}
    if spec.name != "runtime":
        b.report["trim"]["removed"] = [{"rule": r.rule, "path": r.path, "bytes": r.bytes} for r in trimmed.removed]
    leftovers = [p.relative_to(b.layer_python).as_posix() for p in b.layer_python.rglob("*")
                 if p.name == "__pycache__" or p.suffix in (".pyc", ".pyi")]
    if leftovers:
        b.problems.append(f"trim left {leftovers[:5]}")
    return trimmed


def _bytecode(b: Build, python: str | None) -> None:
    """Compile the layer with python3.12 (.pyc files do not depend on the machine architecture).
    Unchecked-hash: the layer never changes once published, so the interpreter need not stat or hash
    a source to trust its .pyc; the names inside are /opt/python/..., where Lambda extracts it."""
    with b.step("bytecode"):
        compiler = find_python312(python)
        if compiler is None:
            b.problems.append("the layer's bytecode needs a python3.12 interpreter (bytecode is version-specific): "
                              "put one on PATH or in ~/.pyenv, pass --python, or build with --no-bytecode")
            return
        compile_tree(compiler, b.layer_python, invalidation="unchecked-hash", shown_as=LAYER_PATH)
    missing = [p.relative_to(b.layer_python).as_posix() for p in b.layer_python.rglob("*.py")
               if not pyc_of(p).is_file()]
    bytecode = list(b.layer_python.rglob(f"*.{BYTECODE_TAG}.pyc"))
    checked = [p.relative_to(b.layer_python).as_posix() for p in bytecode if pyc_flags(p) != UNCHECKED_HASH]
    size = sum(p.stat().st_size for p in bytecode)
    b.report["bytecode"] = {"python": compiler, "invalidation": "unchecked-hash", "files": len(bytecode),
                            "bytes": size, "mib": mib(size), "sources_without_bytecode": missing[:20]}
    if missing:
        b.problems.append(f"{len(missing)} modules got no 3.12 bytecode: {missing[:5]}")
    if checked:
        b.problems.append(f"bytecode that is not unchecked-hash: {checked[:5]}")


def pyc_of(source: Path) -> Path:
    return source.parent / "__pycache__" / f"{source.stem}.{BYTECODE_TAG}.pyc"


def pyc_flags(pyc: Path) -> int:
    """The PEP 552 flags word of a .pyc: 0 timestamp, 0b01 unchecked-hash, 0b11 checked-hash."""
    with pyc.open("rb") as f:
        return int.from_bytes(f.read(8)[4:8], "little")


def bytecode_files(layer_python: Path) -> set[str]:
    return {p.relative_to(layer_python).as_posix() for p in layer_python.rglob("*.pyc")}


def _check_libraries(b: Build) -> None:
    machine = ARCHES[b.arch][0]
    with b.step("library_check"):
        unresolved, wrong_arch = unresolved_libraries(b.layer_python, machine)
    b.report["shared_libraries"] = {"unresolved": unresolved, "wrong_architecture": wrong_arch,
                                    "runtime_provided": sorted(SYSTEM_LIBRARIES)}
    if unresolved:
        b.problems.append(f"shared libraries need what neither the layer nor Lambda provides: {unresolved}")
    if wrong_arch:
        b.problems.append(f"shared objects for another architecture than {machine}: {wrong_arch}")


def _measure(b: Build) -> int:
    with b.step("measure_and_zip"):
        unzipped = tree_bytes(b.out)
        zipped = zipped_bytes(b.out)
    breakdown = size_breakdown(b.layer_python)
    b.report["size"] = {"unzipped_bytes": unzipped, "unzipped_mib": mib(unzipped), "zipped_bytes": zipped,
                        "zipped_mib": mib(zipped), "files": sum(1 for p in b.out.rglob("*") if p.is_file()),
                        "warn_mib": b.warn_mib, "max_mib": b.max_mib,
                        "lambda_limit_share": round(unzipped / LAMBDA_UNZIPPED_LIMIT_BYTES, 3),
                        "by_distribution": [{"name": d["name"], "bytes": d["bytes"], "mib": mib(d["bytes"]),
                                             "entries": d["entries"]} for d in breakdown]}
    if unzipped > b.max_mib * MIB:
        b.problems.append(f"layer is {mib(unzipped)} MiB unzipped: over --max-mib {b.max_mib}")
    elif unzipped > b.warn_mib * MIB:
        b.warnings.append(f"layer is {mib(unzipped)} MiB unzipped: over the {b.warn_mib} MiB target")
    return unzipped


def _check_stacking(b: Build, unzipped: int) -> Path | None:
    """The combined size and the top-level names against the layer below; its python/ folder when
    the import test can use it."""
    below, name = b.below, b.recipe.name
    if below is None:
        return None
    b.report["stacked_on"] = below
    combined = combined_size(name, unzipped, below, function_code_bytes(FUNCTION_CODE))
    b.report["size"]["combined"] = combined
    if combined["total_bytes"] > LAMBDA_UNZIPPED_LIMIT_BYTES:
        b.problems.append(f"{below['name']} layer + {name} layer + function code are "
                          f"{combined['total_mib']} MiB unzipped: over Lambda's "
                          f"{LAMBDA_UNZIPPED_LIMIT_BYTES} bytes ({combined['limit_mib']} MiB)")
    if not below["built"]:
        b.warnings.append(f"{below['why_unusable']}: the combined size counts this layer and the "
                          "function code only")
    elif "why_unusable" in below:
        b.warnings.append(f"{below['why_unusable']}: the combined size is approximate")
    elif below.get("arch") is None or below.get("report_ok") is not True:
        b.warnings.append(f"the {below['name']} layer at {below['layer']} has no passing report beside it")
    shared = sorted({p.name for p in b.layer_python.iterdir()}
                    & {p.name for p in (Path(below["layer"]) / "python").iterdir()}) if below["built"] else []
    if shared:
        # Lambda extracts both layers into one /opt/python: one would overwrite the other.
        b.problems.append(f"top-level names in both the {below['name']} layer and this one: {shared}")
    return None if "why_unusable" in below else Path(below["layer"]) / "python"


def _import_test(b: Build, run: bool, python: str | None, trimmed: TrimResult, below_python: Path | None,
                 tmp: Path) -> None:
    compiled = bytecode_files(b.layer_python)
    with b.step("import_test"):
        if not run:
            test = {"status": "skipped", "reason": "SKIPPED import test: --skip-import-test"}
        else:
            work = tmp / "import-test"
            work.mkdir()
            if b.recipe.name == "runtime":
                test = runtime_import_test(b.layer_python, b.arch, python, work)
            else:
                why = b.below.get("why_unusable") if b.below else None
                test = parquet_import_test(b.layer_python, below_python, b.arch, python, work, why,
                                           removed_modules(trimmed))
    b.report["import_test"] = test
    if test["status"] == "failed":
        b.problems.append("import test failed")
    written = sorted(bytecode_files(b.layer_python) - compiled)
    if written:  # Lambda's /opt is read-only: what it would have to compile at every cold start
        b.problems.append(f"the import test wrote bytecode into the layer: {written[:5]}")


def _start(recipe: str, arch: str, out: Path | None, requirements: Path | None, max_mib: float | None,
           warn_mib: float | None, runtime_layer: Path | None) -> Build:
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    spec = RECIPES[recipe]
    b = Build(recipe=spec, arch=arch, out=Path(out or spec.out).resolve(),
              requirements=Path(requirements or spec.requirements),
              max_mib=spec.max_mib if max_mib is None else max_mib,
              warn_mib=spec.warn_mib if warn_mib is None else warn_mib,
              below=stacked_layer(spec, arch, runtime_layer), report={})
    b.report.update({"recipe": spec.name, "layer": str(b.out), "arch": arch, "python_version": PYTHON_VERSION,
                     "platforms": list(ARCHES[arch][1]), "requirements": str(b.requirements)})
    if b.below is not None and b.below["layer"] == str(b.out):
        raise ValueError(f"--out {b.out} is the {b.below['name']} layer this one is stacked on")
    return b


def build(arch: str = "x86_64", out: Path | None = None, requirements: Path | None = None,
          max_mib: float | None = None, warn_mib: float | None = None, python: str | None = None,
          run_import_test: bool = True, report_path: Path | None = None, bytecode: bool = True,
          recipe: str = "runtime", runtime_layer: Path | None = None) -> dict[str, Any]:
    """Build, trim, check and measure the layer of ``recipe``; returns the report (also written to
    disk). ``out``, ``requirements``, ``max_mib`` and ``warn_mib`` default to the recipe's.
    ``runtime_layer``: the built runtime layer folder a stacked recipe (parquet) is checked
    against (default ``layers/build/runtime``).

    ``bytecode``: precompile the layer with python3.12 (unchecked-hash .pyc). On by default: it
    adds ~9 MiB unzipped and saves most of a second per cold start (Lambda's /opt is read-only,
    so without it every cold start compiles every module it imports)."""
    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHES)}")
    b = _start(recipe, arch, out, requirements, max_mib, warn_mib, runtime_layer)
    pins = read_requirements(b.requirements, forbidden_distributions(b.recipe), b.recipe.name)
    started = time.perf_counter()
    clean_output(b.out)
    with tempfile.TemporaryDirectory(prefix="slimserve-layer-") as tmp:
        _install(b, pins, Path(tmp))
        trimmed = _trim(b)
        b.report["bytecode"] = False
        if bytecode:
            _bytecode(b, python)
        _check_libraries(b)
        unzipped = _measure(b)
        below_python = _check_stacking(b, unzipped)
        _import_test(b, run_import_test, python, trimmed, below_python, Path(tmp))
    b.timings["total"] = time.perf_counter() - started
    return _write_report(b, Path(report_path) if report_path else b.out.parent / f"{b.out.name}-report.json")


def _write_report(b: Build, path: Path) -> dict[str, Any]:
    report = b.report
    report["timings_s"] = {k: round(v, 2) for k, v in b.timings.items()}
    report["warnings"] = b.warnings
    report["problems"] = b.problems
    report["ok"] = not b.problems
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    report["report_path"] = str(path)
    return report
