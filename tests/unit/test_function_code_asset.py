"""The staged function code: every module with checked-hash bytecode compiled by Python 3.12, the
same bytes on every staging, and an edited source never runs stale bytecode."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cdk.constructs.code_asset import find_python312, function_sources, stage_function_code

PYTHON312 = find_python312()
pytestmark = pytest.mark.skipif(PYTHON312 is None, reason="needs a python3.12 (the bytecode is version-specific)")
REPO_ROOT = Path(__file__).resolve().parents[2]
MAGIC_312 = (3531).to_bytes(2, "little") + b"\r\n"
CHECKED_HASH = 0b11  # PEP 552: hash-based, check_source


def _pyc(source: Path) -> Path:
    return source.parent / "__pycache__" / f"{source.stem}.cpython-312.pyc"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_every_module_of_the_functions_package_has_checked_hash_312_bytecode(tmp_path: Path) -> None:
    staged = stage_function_code(REPO_ROOT, cache=tmp_path)
    sources = function_sources(staged)
    assert {s.relative_to(staged) for s in sources} == {s.relative_to(REPO_ROOT) for s in function_sources(REPO_ROOT)}
    for source in sources:
        header = _pyc(source).read_bytes()[:8]
        assert header[:4] == MAGIC_312, source
        assert int.from_bytes(header[4:8], "little") == CHECKED_HASH, source
    assert {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()} == {
        p.relative_to(staged).as_posix() for s in sources for p in (s, _pyc(s))}


def test_staging_twice_gives_the_same_bytes_named_as_lambda_sees_them(tmp_path: Path) -> None:
    root = _tree(tmp_path / "repo", {"functions/__init__.py": "", "functions/a.py": "KEYS = {'x', 'y', 'z'}\n"})
    first = stage_function_code(root, cache=tmp_path / "one")
    second = stage_function_code(root, cache=tmp_path / "two")
    for source in function_sources(first):
        twin = second / source.relative_to(first)
        assert _pyc(source).read_bytes() == _pyc(twin).read_bytes()
    shown = subprocess.run([str(PYTHON312), "-c", "import marshal,sys; f=open(sys.argv[1],'rb'); f.read(16); "
                            "print(marshal.load(f).co_filename)", str(_pyc(first / "functions" / "a.py"))],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert shown == "/var/task/functions/a.py"


def test_an_edited_source_runs_its_new_code_not_the_bytecode(tmp_path: Path) -> None:
    root = _tree(tmp_path / "repo", {"functions/__init__.py": "", "functions/answer.py": "VALUE = 1\n"})
    staged = stage_function_code(root, cache=tmp_path / "cache")
    (staged / "functions" / "answer.py").write_text("VALUE = 2\n")  # e.g. a fix edited in the console
    out = subprocess.run([str(PYTHON312), "-B", "-c", "import functions.answer as a; print(a.VALUE)"], cwd=staged,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "2"


def test_a_changed_source_is_staged_afresh(tmp_path: Path) -> None:
    root = _tree(tmp_path / "repo", {"functions/__init__.py": "", "functions/a.py": "A = 1\n"})
    before = stage_function_code(root, cache=tmp_path / "cache")
    (root / "functions" / "a.py").write_text("A = 2\n")
    after = stage_function_code(root, cache=tmp_path / "cache")
    assert after != before and (after / "functions" / "a.py").read_text() == "A = 2\n"
