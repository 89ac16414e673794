"""ELF inspection in pure Python (any build machine, either architecture) and the library checks
built on it: which libraries nothing needs, which copies are duplicates, what does not resolve."""

from __future__ import annotations

import hashlib
import mmap
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Shared objects the Lambda python3.12 runtime (Amazon Linux 2023) provides: glibc, the GCC
# runtime and zlib (numpy's bundled libgfortran needs libz.so.1). Anything else a shared object
# in the layer needs must be in the layer itself.
SYSTEM_LIBRARIES = frozenset({
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1",
    "libresolv.so.2", "libcrypt.so.1", "libnsl.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
    "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1",
})

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
    evidence: dict[str, Any] = {"needed_by_module": {}, "needed_by": {}}
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
                lib_rel = lib.relative_to(root).as_posix()
                for name in lib_names:
                    if name in info.needed:
                        # a DT_NEEDED entry is the stronger evidence: it replaces a byte match
                        if not kept.get(lib_rel, "").startswith("DT_NEEDED"):
                            kept[lib_rel] = f"DT_NEEDED of {rel}"
                        evidence["needed_by"].setdefault(lib_rel, []).append(rel)
                    elif data.find(name.encode()) != -1:
                        kept.setdefault(lib_rel, f"{name!r} appears in {rel}")
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


_FILE_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")


def names_whole(data: bytes | mmap.mmap, name: str) -> bool:
    """Whether ``name`` occurs in ``data`` as a whole file name: not inside a longer one, so that
    ``libfoo.so`` is not found in ``libfoo.so.26`` (substring search would keep every copy)."""
    needle = name.encode()
    start = 0
    while (at := data.find(needle, start)) != -1:
        end = at + len(needle)
        before = data[at - 1] if at > 0 else None
        after = data[end] if end < len(data) else None
        if before not in _FILE_NAME_BYTES and after not in _FILE_NAME_BYTES:
            return True
        start = at + 1
    return False


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def duplicate_libraries(root: Path, candidates: Sequence[Path]) -> tuple[list[Path], dict[str, str], dict[str, Any]]:
    """Redundant identical copies among ``candidates`` (shared libraries under ``root``).

    Candidates in one folder with the same bytes are one library under several names (a wheel
    cannot hold the ``libfoo.so -> libfoo.so.26`` symlinks, so pip writes each as a full file).
    The copies whose names other shared objects list in DT_NEEDED stay; if none is listed, all
    stay. Any other copy goes, unless another shared object names it as a whole string (a
    possible dlopen), a .py file names it, or a shared object in that folder cannot be parsed."""
    groups: dict[tuple[Path, int, str], list[Path]] = {}
    for lib in candidates:
        groups.setdefault((lib.parent, lib.stat().st_size, _file_digest(lib)), []).append(lib)
    copies = [sorted(group) for group in groups.values() if len(group) > 1]
    members = {lib for group in copies for lib in group}
    others = [p for p in shared_objects(root) if p not in members]
    needed: dict[str, list[str]] = {}
    unparsed_dirs: dict[Path, str] = {}
    for obj in others:
        info = elf_info(obj)
        rel = obj.relative_to(root).as_posix()
        if info is None:
            unparsed_dirs.setdefault(obj.parent, rel)
            continue
        for name in info.needed:
            needed.setdefault(name, []).append(rel)
    py_texts = [(py.relative_to(root).as_posix(), py.read_text("utf-8", errors="replace"))
                for py in sorted(root.rglob("*.py"))]
    removable: list[Path] = []
    kept: dict[str, str] = {}
    evidence: dict[str, Any] = {"groups": [], "shared_objects_checked": len(others)}
    for group in copies:
        wanted = [lib for lib in group if lib.name in needed]
        entry: dict[str, Any] = {"copies": [lib.relative_to(root).as_posix() for lib in group],
                                 "bytes_each": group[0].stat().st_size,
                                 "needed_as": {lib.name: len(needed[lib.name]) for lib in wanted}}
        evidence["groups"].append(entry)
        for lib in group:
            rel = lib.relative_to(root).as_posix()
            if lib in wanted:
                continue
            if not wanted:
                kept[rel] = "no copy of it is named in any DT_NEEDED entry"
            elif lib.parent in unparsed_dirs:
                kept[rel] = f"cannot parse {unparsed_dirs[lib.parent]}"
            elif (reason := _named_whole(root, lib.name, others, py_texts)) is not None:
                kept[rel] = reason
            else:
                removable.append(lib)
    evidence["removed"] = [lib.relative_to(root).as_posix() for lib in removable]
    evidence["kept"] = kept
    return removable, kept, evidence


def _named_whole(root: Path, name: str, objects: Sequence[Path], py_texts: Sequence[tuple[str, str]]) -> str | None:
    """Where ``name`` appears as a whole file name: in a shared object's bytes (a possible dlopen) or a
    .py file (ctypes); None when nowhere."""
    for obj in objects:
        with obj.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if names_whole(data, name):
                return f"{name!r} appears in {obj.relative_to(root).as_posix()}"
    return next((f"{name!r} appears in {py}" for py, text in py_texts
                 if names_whole(text.encode("utf-8", "replace"), name)), None)


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
