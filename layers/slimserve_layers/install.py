"""pip, asked for Lambda's wheels whatever machine this is, and what it says it installed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .recipes import PYTHON_VERSION
from .requirements import canonical


def pip_install(requirements: Path, target: Path, platforms: Sequence[str], report: Path) -> None:
    """``pip install --no-deps`` of the pinned list into ``target``, prebuilt wheels only, for
    Lambda's CPython on ``platforms``; pip's JSON report goes to ``report``."""
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
               "--quiet", "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION,
               "--no-deps", "--no-compile", "--target", str(target), "--report", str(report)]
    for tag in platforms:
        command += ["--platform", tag]
    command += ["-r", str(requirements)]
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def installed_wheels(pip_report: Path) -> list[dict[str, Any]]:
    """Name, version, file and sha256 of every wheel pip's report lists, sorted by name."""
    wheels = []
    for item in json.loads(pip_report.read_text()).get("install", []):
        info = item.get("download_info", {})
        meta = item.get("metadata", {})
        wheels.append({"name": meta.get("name"), "version": meta.get("version"),
                       "file": info.get("url", "").rsplit("/", 1)[-1].split("#")[0],
                       "sha256": info.get("archive_info", {}).get("hashes", {}).get("sha256")})
    return sorted(wheels, key=lambda w: canonical(w["name"] or ""))
