"""What every import check shares. Runs inside the test interpreter (python3.12 -B -s -E -S), never in
the build's Python: importing it puts sys.path in Lambda's order; ``finish`` prints the verdict.

Lambda's order is function code (/var/task), layers (/opt/python), stdlib, runtime-provided SDK.
Lambda extracts a function's layers into the one /opt/python, in order (a later layer's file
replaces an earlier one's). Here the layers below this one ("below") come first, each its own
entry: the same imports, because the build refuses top-level names that two layers share.
"""

import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

CHECKS_DIR = os.path.dirname(os.path.abspath(__file__))  # this folder: the checks themselves, not the layer
cfg: dict[str, Any] = json.loads(sys.argv[1])
stdlib = [p for p in sys.path if p and os.path.abspath(p) != CHECKS_DIR
          and "site-packages" not in p and "dist-packages" not in p]
sys.path[:] = [cfg["task"], *cfg.get("below", {}).values(), cfg["layer"], *stdlib, cfg["runtime"]]
result: dict[str, Any] = {"python": sys.version.split()[0], "sys_path": sys.path, "checks": {}, "timings_ms": {},
                          "versions": {}}


def check(name: str, fn: Callable[[], Any]) -> None:
    """Run one check; record its detail, or its error and traceback, under ``name``."""
    try:
        value = fn()
        result["checks"][name] = {"ok": True, **({"detail": value} if value is not None else {})}
    except BaseException as exc:
        result["checks"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                  "traceback": traceback.format_exc(limit=8)}


def timed(name: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    value = fn()
    result["timings_ms"][name] = round((time.perf_counter() - started) * 1e3, 1)
    return value


def absent() -> list[str]:
    present = [m for m in cfg["must_not_import"] if importlib.util.find_spec(m) is not None]
    assert not present, f"importable but must not be: {present}"
    return list(cfg["must_not_import"])


def use_runtime_sdk() -> None:
    # Imported first and timed apart: on Lambda the runtime's botocore is precompiled; here it is
    # a stand-in compiled at import, which should not count against the layer.
    timed("import botocore (runtime stand-in)", lambda: importlib.import_module("botocore.session"))
    importlib.import_module("botocore.client")


def _under(path: str, root: str) -> bool:
    return path.startswith(os.path.abspath(root) + os.sep)


def _module_origins(roots: dict[str, str]) -> dict[str, list[str]]:
    """Top-level names of the loaded modules, by the root they came from (stdlib and these checks
    are not listed; anything from nowhere expected is "elsewhere")."""
    origins: dict[str, set[str]] = {**{k: set() for k in roots}, "elsewhere": set()}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        path = os.path.abspath(path)
        if _under(path, CHECKS_DIR):
            continue
        where = next((k for k, r in roots.items() if _under(path, r)), None)
        if where is None:
            where = "elsewhere" if not any(_under(path, p) for p in stdlib) else None
        if where:
            origins[where].add(name.split(".")[0])
    return {k: sorted(v) for k, v in origins.items()}


def _loaded_libraries(roots: dict[str, str]) -> dict[str, list[str]]:
    """Shared objects mapped into the process, by root: what the imports really loaded."""
    real_roots = {k: os.path.realpath(r) for k, r in roots.items()}
    loaded: dict[str, set[str]] = {k: set() for k in roots}
    try:
        with open("/proc/self/maps") as maps:
            for entry in maps:
                fields = entry.split(maxsplit=5)
                path = fields[5].strip() if len(fields) == 6 else ""
                for k, r in real_roots.items():
                    if ".so" in path and path.startswith(r + os.sep):
                        loaded[k].add(os.path.relpath(path, r))
    except OSError:
        pass
    return {k: sorted(v) for k, v in loaded.items() if v}


def finish() -> None:
    """Where every loaded module and shared object came from, and the verdict, as one line."""
    roots = {"task": cfg["task"], "layer": cfg["layer"], "runtime": cfg["runtime"], **cfg.get("below", {})}
    result["modules_from"] = _module_origins(roots)
    result["loaded_libraries"] = _loaded_libraries(roots)
    result["ok"] = all(c["ok"] for c in result["checks"].values()) and not result["modules_from"]["elsewhere"]
    print("SLIMSERVE_IMPORT_TEST " + json.dumps(result))
