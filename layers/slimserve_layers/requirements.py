"""The pinned lists the layers are installed from, and what a layer folder holds after pip."""

from __future__ import annotations

import re
from pathlib import Path

# Distributions that must never be in a layer: the runtime ships the AWS SDK, and the training
# stack (scikit-learn + scipy + numpy is ~254 MiB alone) is what the ONNX export exists to avoid.
FORBIDDEN_DISTRIBUTIONS = frozenset({
    "boto3", "botocore", "s3transfer", "scikit-learn", "scipy", "sympy", "pandas", "onnx", "skl2onnx",
    "protobuf", "flatbuffers", "coloredlogs", "torch",
})


def canonical(name: str) -> str:
    """A distribution name as PEP 503 normalizes it (``Typing_Extensions`` -> ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path, forbidden: frozenset[str] = FORBIDDEN_DISTRIBUTIONS,
                      layer: str = "runtime") -> dict[str, str]:
    """``name==version`` lines only (comments and blank lines allowed); anything else is refused,
    and so is any distribution in ``forbidden``."""
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
        if name in forbidden:
            where = "" if name in FORBIDDEN_DISTRIBUTIONS else " (the layer below it already holds it)"
            raise ValueError(f"{path}:{number}: {name} must not be in the {layer} layer{where}")
        pins[name] = match.group(2)
    if not pins:
        raise ValueError(f"{path} lists no packages")
    return pins


def installed_distributions(root: Path) -> dict[str, str]:
    """Name -> version of every distribution installed under ``root`` (its ``*.dist-info``)."""
    found = {}
    for meta in root.glob("*.dist-info/METADATA"):
        headers = meta.read_text("utf-8", errors="replace").split("\n\n", 1)[0]
        name = re.search(r"^Name: (.+)$", headers, re.M)
        version = re.search(r"^Version: (.+)$", headers, re.M)
        if name and version:
            found[canonical(name.group(1).strip())] = version.group(1).strip()
    return found
