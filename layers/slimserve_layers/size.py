"""What Lambda counts: unzipped bytes of a layer (and of the function code), and the zip."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
LAMBDA_UNZIPPED_LIMIT_BYTES = 262_144_000  # 250 MB: function code + all layers, unzipped


def mib(n: int) -> float:
    return round(n / MIB, 2)


def tree_bytes(path: Path) -> int:
    """Apparent size of a file, or of every regular file under a folder (what Lambda counts)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


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


def function_code_bytes(root: Path) -> int:
    """Unzipped size of the function code asset (the .py files under functions/, as
    cdk/constructs/serving_api.function_code ships them): it counts toward the 250 MB too."""
    return sum(p.stat().st_size for p in root.rglob("*.py") if "__pycache__" not in p.parts) if root.is_dir() else 0


def combined_size(name: str, layer_bytes: int, below: dict[str, Any] | None, code_bytes: int) -> dict[str, Any]:
    """Layer ``name`` + the layer below it (when built) + the function code, against Lambda's limit."""
    parts = {"function_code": code_bytes}
    if below is not None and below.get("built"):
        parts[below["name"]] = below["unzipped_bytes"]
    parts[name] = layer_bytes
    total = sum(parts.values())
    return {"parts_bytes": parts, "parts_mib": {k: mib(v) for k, v in parts.items()},
            "total_bytes": total, "total_mib": mib(total), "limit_bytes": LAMBDA_UNZIPPED_LIMIT_BYTES,
            "limit_mib": mib(LAMBDA_UNZIPPED_LIMIT_BYTES), "share": round(total / LAMBDA_UNZIPPED_LIMIT_BYTES, 3),
            "headroom_mib": mib(LAMBDA_UNZIPPED_LIMIT_BYTES - total),
            "counts_layer_below": below is not None and bool(below.get("built"))}
