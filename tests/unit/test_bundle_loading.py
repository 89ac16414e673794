"""Loading fails closed: a missing, corrupt or tampered bundle is refused with a clear reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from functions.common.bundle import directory_reader, first_max, load_model, reader_for_uri
from functions.common.errors import BundleError
from functions.common.manifest import sha256_hex


@pytest.fixture
def bundle(rf_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(rf_bundle, tmp_path / "b"))


def refusal(path: Path, **kwargs: str) -> str:
    with pytest.raises(BundleError) as info:
        load_model(directory_reader(path), **kwargs)
    assert info.value.status == 503
    return info.value.message


def test_good_bundle_loads_and_predicts(bundle: Path) -> None:
    model = load_model(reader_for_uri(str(bundle)))
    manifest = json.loads((bundle / "manifest.json").read_text())
    result = model.predict([[1.0] * len(manifest["features"])])
    assert result.predictions[0] in (0, 1)
    assert result.probabilities is not None and abs(sum(result.probabilities[0]) - 1) < 1e-5


def test_tampered_model_is_refused(bundle: Path) -> None:
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    assert "does not match its sha256" in refusal(bundle)


def test_missing_model_is_refused(bundle: Path) -> None:
    (bundle / "model.onnx").unlink()
    assert "model.onnx" in refusal(bundle) and "missing" in refusal(bundle)


def test_missing_manifest_is_refused(tmp_path: Path) -> None:
    assert "manifest.json" in refusal(tmp_path)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"name": "x"}'])
def test_corrupt_manifest_is_refused(bundle: Path, text: str) -> None:
    (bundle / "manifest.json").write_text(text)
    assert "not a valid manifest" in refusal(bundle)


def test_corrupt_onnx_with_matching_hash_is_refused(bundle: Path) -> None:
    """An attacker who rewrites the manifest too still cannot get a broken graph served."""
    garbage = b"not an onnx graph"
    (bundle / "model.onnx").write_bytes(garbage)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = sha256_hex(garbage)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert "cannot be loaded by onnxruntime" in refusal(bundle)


def test_consistent_rewrite_is_caught_by_a_pinned_manifest_hash(bundle: Path, mixed_bundle: Path) -> None:
    pinned = sha256_hex((bundle / "manifest.json").read_bytes())
    load_model(directory_reader(bundle), expected_manifest_sha256=pinned)
    for name in ("manifest.json", "model.onnx"):  # swap in another, self-consistent bundle
        shutil.copy(mixed_bundle / name, bundle / name)
    assert "pinned sha256" in refusal(bundle, expected_manifest_sha256=pinned)


def test_manifest_that_disagrees_with_the_graph_is_refused(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["onnx"]["inputs"] = ["features"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert "inputs" in refusal(bundle)


def test_unknown_uri_scheme_is_refused() -> None:
    with pytest.raises(BundleError, match="unsupported model URI scheme"):
        reader_for_uri("https://example.com/model")


def test_ties_go_to_the_first_class_like_scikit_learn() -> None:
    # 0.5 + float32 rounding: ONNX may say 0.50000006 vs 0.49999994 for a 50/50 vote
    proba = np.array([[0.49999994, 0.50000006], [0.2, 0.8], [0.5, 0.5], [0.7, 0.3]])
    assert first_max(proba).tolist() == [0, 1, 0, 0]
