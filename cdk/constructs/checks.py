"""Prop checks shared by the constructs: each raises ValueError naming `<Owner>.<prop>` before any resource exists."""

from __future__ import annotations

import re

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def check_range(owner: str, name: str, value: float, low: float, high: float | None = None, hint: str = "") -> None:
    """`<owner>.<name> must be between <low> and <high>, got <value> (<hint>)`; no `high` means `>= <low>`."""
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        why = f" ({hint})" if hint else ""
        raise ValueError(f"{owner}.{name} must be {bounds}, got {value}{why}")


def check_key_prefix(owner: str, name: str, prefix: str) -> None:
    """A relative S3 key prefix ending with '/', without '*' or '//' (grants append '*' to it)."""
    if not prefix or not prefix.endswith("/") or prefix.startswith("/") or "*" in prefix or "//" in prefix:
        raise ValueError(
            f"{owner}.{name} must be a relative key prefix ending with '/' and without '*' or '//', "
            f"e.g. 'models/churn/3/', got {prefix!r}")


def check_sha256(owner: str, name: str, value: str | None) -> None:
    if value is not None and not _SHA256.match(value):
        raise ValueError(f"{owner}.{name} must be 64 hex characters (a sha256 digest)")
