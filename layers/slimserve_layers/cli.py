"""``python layers/build.py``: the command line of the layer build.

Exit status: 0 built and checked; 1 a check failed (size, combined size, import test, unresolved
libraries, installed set differs from the requirements); 2 bad arguments or requirements.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from .build import build
from .recipes import ARCHES, RECIPES
from .report import print_summary


def parser() -> argparse.ArgumentParser:
    runtime, parquet = RECIPES["runtime"], RECIPES["parquet"]
    p = argparse.ArgumentParser(description="Build the slimserve Lambda layers (python3.12) without Docker.")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="runtime",
                   help="which layer: runtime (every function) or parquet (pyarrow, batch functions)")
    p.add_argument("--arch", choices=sorted(ARCHES), default="x86_64")
    p.add_argument("--out", type=Path, help="layer folder (gets python/; default layers/build/<recipe>)")
    p.add_argument("--requirements", type=Path, help="default layers/<recipe>/requirements.txt")
    p.add_argument("--max-mib", type=float, help="fail above this unzipped size (default: runtime "
                   f"{runtime.max_mib:g}, parquet {parquet.max_mib:g})")
    p.add_argument("--warn-mib", type=float, help="warn above this unzipped size (default: runtime "
                   f"{runtime.warn_mib:g}, parquet {parquet.warn_mib:g})")
    p.add_argument("--runtime-layer", type=Path, help="parquet recipe: the built runtime layer it is "
                   "stacked on, for the import test and the combined size (default layers/build/runtime)")
    p.add_argument("--python", help="python3.12 interpreter for the import test (default: search)")
    p.add_argument("--skip-import-test", action="store_true")
    p.add_argument("--no-bytecode", dest="bytecode", action="store_false",
                   help="ship no .pyc (default: unchecked-hash .pyc compiled by python3.12, +~9 MiB unzipped; "
                   "without them every cold start compiles every module it imports, /opt being read-only)")
    p.add_argument("--report", type=Path, help="summary JSON (default: <out>-report.json beside --out)")
    return p


def main(argv: Iterable[str] | None = None) -> int:
    args = parser().parse_args(list(argv) if argv is not None else None)
    try:
        report = build(arch=args.arch, out=args.out, requirements=args.requirements, max_mib=args.max_mib,
                       warn_mib=args.warn_mib, python=args.python, run_import_test=not args.skip_import_test,
                       report_path=args.report, bytecode=args.bytecode, recipe=args.recipe,
                       runtime_layer=args.runtime_layer)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: pip failed with exit status {exc.returncode}", file=sys.stderr)
        return 1
    print_summary(report)
    return 0 if report["ok"] else 1
