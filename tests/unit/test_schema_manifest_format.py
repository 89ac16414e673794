"""The manifest format: older bundles keep loading, a newer format is refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from functions.common.bundle import directory_reader, load_model
from functions.common.errors import BundleError
from functions.common.manifest import FORMAT_VERSION, PANDAS_MISSING_MARKERS, sha256_hex

# The v1 fields: what a bundle written before format 2 holds.
V1_FEATURE_KEYS = {"name", "type", "nullable", "minimum", "maximum", "categories"}


@pytest.fixture
def bundle(rf_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(rf_bundle, tmp_path / "b"))


def _rewrite(path: Path, change: dict[str, object]) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(change)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_new_bundle_carries_the_current_format(bundle: Path) -> None:
    assert json.loads((bundle / "manifest.json").read_text())["format_version"] == FORMAT_VERSION == 4


def test_a_version_1_manifest_still_loads_and_serves(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    v1 = {k: v for k, v in manifest.items() if k not in ("ignored_columns", "missing_markers")}
    v1["format_version"] = 1
    v1["features"] = [{k: v for k, v in f.items() if k in V1_FEATURE_KEYS} for f in manifest["features"]]
    (bundle / "manifest.json").write_text(json.dumps(v1))
    model = load_model(directory_reader(bundle))
    assert model.manifest.format_version == 1
    assert model.manifest.ignored_columns == []
    assert all(f.unknown_categories == "refuse" for f in model.manifest.features)
    assert model.predict([[1.0] * len(v1["features"])]).predictions[0] in (0, 1)


def test_a_newer_format_is_refused_with_its_own_code(bundle: Path) -> None:
    _rewrite(bundle, {"format_version": FORMAT_VERSION + 1, "a_field_from_the_future": True})
    with pytest.raises(BundleError) as info:
        load_model(directory_reader(bundle))
    assert info.value.code == "unsupported_format_version" and info.value.status == 503
    assert f"format_version {FORMAT_VERSION + 1}" in info.value.message


def test_a_pinned_manifest_is_checked_before_its_format(bundle: Path) -> None:
    _rewrite(bundle, {"format_version": FORMAT_VERSION + 1})
    with pytest.raises(BundleError, match="pinned sha256"):
        load_model(directory_reader(bundle), expected_manifest_sha256=sha256_hex(b"another manifest"))


def test_the_default_missing_markers_are_pandas_own() -> None:
    from pandas._libs.parsers import STR_NA_VALUES

    assert set(PANDAS_MISSING_MARKERS) == set(STR_NA_VALUES)
