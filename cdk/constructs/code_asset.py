"""The function code asset, staged: the `functions/` package's .py files with bytecode compiled by
Python 3.12 beside them.

Lambda's /var/task is read-only, so without bytecode every cold start compiles every module of the
function code it imports. The .pyc files are checked-hash: the interpreter compares the source's
hash with the one the .pyc was built from, so an edited source never runs stale bytecode (the
layers, immutable, use unchecked-hash). The file names inside the bytecode are the ones Lambda
sees (/var/task/functions/...) and the hash seed is fixed, so the same sources give the same
bytes: the asset hash, and so the template, change only when the code does.

Plain Python on purpose (no aws_cdk import): the layer build and the cold-start benchmark use it too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

PACKAGE = "functions"
LAMBDA_TASK_ROOT = "/var/task"
BYTECODE_TAG = "cpython-312"
CACHE_DIR = Path(tempfile.gettempdir()) / "slimserve-function-code"


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


def compile_tree(python: str, folder: Path, *, invalidation: str, shown_as: str) -> None:
    """Compile every .py under ``folder`` with ``python`` (3.12); the bytecode names its files as
    if ``folder`` were ``shown_as`` (where Lambda extracts it), so tracebacks and the bytes match."""
    subprocess.run([python, "-s", "-E", "-m", "compileall", "-q", "-j0", "--invalidation-mode", invalidation,
                    "-s", str(folder), "-p", shown_as, str(folder)],
                   check=True, env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"})


def function_sources(root: Path) -> list[Path]:
    """The .py files of `functions/` under ``root`` (no caches), sorted."""
    return sorted(p for p in (root / PACKAGE).rglob("*.py") if "__pycache__" not in p.relative_to(root).parts)


def stage_function_code(root: Path, python: str | None = None, cache: Path = CACHE_DIR) -> Path:
    """A folder holding `functions/` from ``root``: its .py files and, with a Python 3.12 found, their
    checked-hash .pyc. Content-addressed under ``cache``, so synthesizing again reuses it."""
    sources = function_sources(root)
    compiler = find_python312(python)
    digest = hashlib.sha256((BYTECODE_TAG if compiler else "sources-only").encode())
    for source in sources:
        digest.update(source.relative_to(root).as_posix().encode() + b"\0" + source.read_bytes() + b"\0")
    staged = cache / digest.hexdigest()[:32]
    if staged.is_dir():
        return staged
    if compiler is None:
        warnings.warn("no python3.12 found (set SLIMSERVE_PYTHON312): the function code ships without bytecode, "
                      "and every cold start compiles it", stacklevel=2)
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
    building.chmod(0o755)
    for source in sources:
        target = building / source.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    if compiler is not None:
        compile_tree(compiler, building, invalidation="checked-hash", shown_as=LAMBDA_TASK_ROOT)
    try:
        building.rename(staged)
    except OSError:  # staged by another process meanwhile: same content
        shutil.rmtree(building, ignore_errors=True)
    return staged
