"""Unit tests mean what they say: pure logic, with neither AWS emulation nor package builds."""

from __future__ import annotations

import ast
from pathlib import Path

UNIT = Path(__file__).resolve().parent
# Modules whose import puts a test in the integration layer: AWS clients, the emulated account, pip.
# (botocore's exception classes are plain data: a unit test may build a ClientError.)
FORBIDDEN = ("moto", "boto3", "pipeline.local.emulation", "pip")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offending(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))


def test_no_unit_test_imports_aws_emulation_or_pip() -> None:
    found = {p.name: offending(imported_modules(p)) for p in sorted(UNIT.glob("test_*.py"))}
    assert {name: mods for name, mods in found.items() if mods} == {}


def test_the_check_sees_a_moto_import(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text("import json\nfrom moto import mock_aws\nimport boto3.session\n"
                      "from pipeline.local import apigw\n")
    assert offending(imported_modules(sample)) == ["boto3.session", "moto"]
