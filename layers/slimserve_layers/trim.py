"""Trimming a layer: rule-named files, libraries nothing needs, duplicate copies, empty folders."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .elf import duplicate_libraries, is_elf, unneeded_libraries
from .size import tree_bytes


@dataclass(frozen=True)
class TrimRule:
    name: str
    patterns: tuple[str, ...]  # Path.glob patterns relative to the layer's python/ folder
    why: str
    # The rule is skipped when this text (or any of these texts) appears in any .py file of the
    # function code.
    unless_code_mentions: str | tuple[str, ...] | None = None

    def guards(self) -> tuple[str, ...]:
        if self.unless_code_mentions is None:
            return ()
        if isinstance(self.unless_code_mentions, str):
            return (self.unless_code_mentions,)
        return tuple(self.unless_code_mentions)


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


def trim(root: Path, rules: Sequence[TrimRule], conditional: Sequence[str] = (), code_root: Path | None = None,
         duplicates: Sequence[str] = ()) -> TrimResult:
    """Remove what the rules name under ``root`` (a layer's python/ folder), then the conditional
    libraries that nothing in the layer needs, then the redundant identical copies of libraries
    matching ``duplicates``, then folders left empty. ``code_root`` is the function code that
    guarded rules (``unless_code_mentions``) look at."""
    result = TrimResult()
    code = [p.read_text("utf-8", errors="replace") for p in sorted(code_root.rglob("*.py"))] if code_root else []
    for rule in rules:
        _apply_rule(root, rule, code, result)
    for pattern in conditional:
        candidates = sorted(p for p in root.glob(pattern) if p.is_file())
        if candidates:
            removable, kept, evidence = unneeded_libraries(root, candidates)
            _unlink(root, "unlinked-library", pattern, removable, kept, evidence, result)
    for pattern in duplicates:
        candidates = sorted(p for p in root.glob(pattern) if p.is_file() and not p.is_symlink() and is_elf(p))
        if candidates:
            removable, kept, evidence = duplicate_libraries(root, candidates)
            _unlink(root, "duplicate-library", f"duplicates:{pattern}", removable, kept, evidence, result)
    _remove_empty_dirs(root)
    return result


def _apply_rule(root: Path, rule: TrimRule, code: list[str], result: TrimResult) -> None:
    mentioned = next((g for g in rule.guards() if any(g in text for text in code)), None)
    if mentioned is not None:
        result.kept[rule.name] = f"the function code mentions {mentioned!r}"
        return
    for pattern in rule.patterns:
        # sorted + existence check: a folder removed by an earlier match takes its contents along
        for path in sorted(root.glob(pattern)):
            if not (path.exists() or path.is_symlink()):
                continue
            size = tree_bytes(path)
            _remove(path)
            result.removed.append(Removed(rule.name, path.relative_to(root).as_posix(), size))


def _unlink(root: Path, rule: str, key: str, removable: list[Path], kept: dict[str, str], evidence: dict[str, Any],
            result: TrimResult) -> None:
    result.evidence[key] = evidence
    result.kept.update(kept)
    for path in removable:
        size = path.lstat().st_size
        path.unlink()
        result.removed.append(Removed(rule, path.relative_to(root).as_posix(), size))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _remove_empty_dirs(root: Path) -> None:
    for folder in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
                         key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def removed_modules(result: TrimResult) -> list[str]:
    """Import names of the modules a trim removed (``pkg/mod.py``, ``pkg/_ext.cpython-312-*.so``),
    outside removed folders such as tests/: the import test requires each to be unimportable."""
    names = []
    for removed in result.removed:
        folder, _, name = removed.path.rpartition("/")
        package = folder.replace("/", ".")
        if name.endswith(".py") and name != "__init__.py":
            names.append(f"{package}.{name[:-3]}" if package else name[:-3])
        elif ".cpython-" in name and name.endswith(".so"):
            stem = name.split(".", 1)[0]
            names.append(f"{package}.{stem}" if package else stem)
    return sorted(names)
